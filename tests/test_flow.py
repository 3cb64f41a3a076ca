"""The data_refresh flow as users run it: a real Prefect run (ephemeral API), real mmseqs, real DuckDB."""
import ast
import json

import pytest

from flows.cli import main as plm
from flows.data_refresh import data_refresh
from pipeline_lib.lineage import LineageStore
from pipeline_lib.sequences.shards import verify_manifest
from tests.conftest import ROOT


def overrides(tmp_path, *extra):
    return [f"workdir={tmp_path / 'work'}",
            "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]",
            *extra]


@pytest.fixture(scope="module")
def first_run(prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("flow")
    result = data_refresh(str(ROOT / "configs" / "demo.yaml"), overrides(tmp))
    return tmp, result


def test_first_run_produces_verified_shards_and_lineage(first_run):
    tmp, res = first_run
    assert not any(s.cached for name, s in res.stages.items() if name != "source")
    assert verify_manifest(res.shards_dir) == []
    ing = res.stages["ingest"].stats
    assert ing["records_in"] == ing["kept"] + ing["duplicates"] + ing["quarantined"] and ing["kept"] > 2000
    store = LineageStore(res.lineage)
    runs = store.runs()
    assert runs[0]["run_id"] == res.run_id and runs[0]["status"] == "completed"


def test_trace_reaches_source_files_with_mmseqs_version(first_run):
    _, res = first_run
    shard = next(p for p in res.stages["shards"].outputs.values() if p.kind == "shard")
    chain = LineageStore(res.lineage).trace(shard.path)
    stages = [s["stage"] for s in chain]
    assert stages[0] == "shards" and {"ingest", "cluster", "cluster_level", "split", "source"} <= set(stages)
    cluster = next(s for s in chain if s["stage"] == "cluster")
    assert json.loads(cluster["tool_versions"])["mmseqs"]
    levels = [json.loads(s["params"])["level"] for s in chain if s["stage"] == "cluster_level"]
    assert sorted(lv["min_seq_id"] for lv in levels) == [0.5, 0.9]         # one step per level, each traced
    ingest = next(s for s in chain if s["stage"] == "ingest")
    assert any(i["kind"] == "source_fasta" and "pyswrd" in i["path"] for i in ingest["inputs"])


def test_rerun_is_cached_and_param_change_recomputes_only_downstream(first_run):
    tmp, res1 = first_run
    res2 = data_refresh(str(ROOT / "configs" / "demo.yaml"), overrides(tmp))
    assert all(res2.stages[s].cached for s in ("ingest", "cluster", "split", "shards"))
    assert res2.shards_dir == res1.shards_dir
    res3 = data_refresh(str(ROOT / "configs" / "demo.yaml"), overrides(tmp, "split.valid_fraction=0.2"))
    assert res3.stages["ingest"].cached and res3.stages["cluster"].cached
    assert not res3.stages["split"].cached and not res3.stages["shards"].cached
    statuses = LineageStore(res3.lineage).query(
        "SELECT stage, status FROM steps WHERE run_id=? ORDER BY started_at", [res3.run_id])
    assert [(r["stage"], r["status"]) for r in statuses][1:] == [
        ("ingest", "cached"), ("cluster_level", "cached"), ("cluster_level", "cached"), ("cluster", "cached"),
        ("split", "completed"), ("audit_target", "completed"), ("audit_chunk", "completed"),
        ("audit", "completed"), ("shards_partition", "completed"),
        ("shards", "completed")]


def test_failed_stage_marks_run_and_step_failed(prefect_harness, tmp_path):
    import gzip

    cut = tmp_path / "cut.fa.gz"
    data = gzip.compress(b">a\n" + b"MKVLA" * 20000 + b"\n")
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception, match="cut.fa.gz"):
        data_refresh(str(ROOT / "configs" / "demo.yaml"),
                     overrides(tmp_path, f"source={{kind: fasta, paths: [{cut}]}}"))
    store = LineageStore(tmp_path / "work" / "lineage.duckdb")
    run = store.runs()[0]
    assert run["status"] == "failed"
    step = store.query("SELECT status, error FROM steps WHERE stage='ingest'")[0]
    assert step["status"] == "failed" and "truncated" in step["error"]
    assert not list((tmp_path / "work" / "stages" / "ingest").glob("*/_SUCCESS.json"))
    with pytest.raises(Exception, match="nope.fa"):  # a missing input fails the run before any stage
        data_refresh(str(ROOT / "configs" / "demo.yaml"),
                     overrides(tmp_path, f"source={{kind: fasta, paths: [{tmp_path / 'nope.fa'}]}}"))
    assert "nope.fa" in store.query("SELECT error FROM runs ORDER BY started_at DESC LIMIT 1")[0]["error"]


def test_cli_lineage_and_config_errors(first_run, capsys, tmp_path):
    _, res = first_run
    assert plm(["lineage", "runs", "--db", res.lineage]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0].split()[:4] == ["run", "id", "flow", "status"] and res.run_id in out
    assert out.splitlines()[0].rstrip().endswith("error")
    shard = next(p for p in res.stages["shards"].outputs.values() if p.kind == "shard")
    assert plm(["lineage", "trace", shard.path, "--db", res.lineage]) == 0
    out = capsys.readouterr().out
    assert out.startswith("└─ shards") and "   └─ split" in out and "mmseqs" in out and "source_fasta" in out
    assert plm(["lineage", "show", res.run_id, "--db", res.lineage]) == 0
    out = capsys.readouterr().out   # for people: the run, then a table of its steps
    assert out.startswith(f"run {res.run_id}  data_refresh  completed") and "why it ran" in out
    assert any(line.split()[:2] == ["ingest", "completed"] for line in out.splitlines())
    assert plm(["lineage", "show", res.run_id, "--db", res.lineage, "--json"]) == 0
    run = json.loads(capsys.readouterr().out)
    assert run["run"]["status"] == "completed"
    assert {s["stage"] for s in run["steps"]} >= {"source", "ingest", "cluster", "split", "shards"}
    assert plm(["lineage", "show", shard.path, "--db", res.lineage]) == 0
    out = capsys.readouterr().out
    assert out.startswith("artifact ") and f"sha256 {shard.content_hash}" in out and "made by  shards" in out
    assert plm(["lineage", "show", shard.path, "--db", res.lineage, "--json"]) == 0
    art = json.loads(capsys.readouterr().out)
    assert art["artifact"]["content_hash"] == shard.content_hash
    produced_by = art["artifact"]["produced_by"]   # the first run's step, and the cached reruns' since
    assert {s["stage"] for s in produced_by} == {"shards"} and produced_by[0]["status"] == "completed"
    assert plm(["lineage", "show", "--db", res.lineage]) == 2
    assert "needs a PATH_OR_ID" in capsys.readouterr().err
    assert plm(["lineage", "show", "no-such-thing", "--db", res.lineage]) == 2
    assert "nothing in lineage matches 'no-such-thing'" in capsys.readouterr().err
    assert plm(["lineage", "runs", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "no lineage database" in capsys.readouterr().err
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster:\n  threads: lots\n")
    assert plm(["data", str(bad)]) == 2
    assert "cluster.threads" in capsys.readouterr().err


def _syntax_nodes(*packages: str):
    """(path, node) for every AST node of every module under the given top-level packages."""
    for package in packages:
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                yield path, node


def test_library_layer_never_imports_prefect():
    for path, node in _syntax_nodes("pipeline_lib"):
        names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
            [node.module or ""] if isinstance(node, ast.ImportFrom) else []
        assert not any(n == "prefect" or n.startswith("prefect.") for n in names), path


def test_duckdb_connections_print_no_progress_bar_to_stdout(capfd):
    """DuckDB draws its own progress bar on stdout for queries over 2 s; every connection we open turns it off."""
    import duckdb

    from pipeline_lib.io import duckdb_connect

    query = "SELECT count(*) FROM range(100000000) t(i) WHERE i % 7 = 3"
    plain = duckdb.connect()
    plain.execute("SET progress_bar_time=0")  # draw at once, not after 2 s
    plain.sql(query).fetchall()
    assert "%" in capfd.readouterr().out  # the bar DuckDB draws by default ...
    ours = duckdb_connect()
    ours.execute("SET progress_bar_time=0")
    ours.sql(query).fetchall()
    assert capfd.readouterr().out == ""  # ... and none from our connections, which the code below always uses
    for path, node in _syntax_nodes("pipeline_lib", "tasks", "flows"):
        if path == ROOT / "pipeline_lib" / "io.py":
            continue
        is_call = isinstance(node, ast.Attribute) and node.attr == "connect" and \
            isinstance(node.value, ast.Name) and node.value.id == "duckdb"
        assert not is_call, f"{path}:{node.lineno}: use pipeline_lib.io.duckdb_connect"


def test_uniref_source_end_to_end_with_release_check(prefect_harness, tmp_path):
    """A UniProt-like FTP tree on 127.0.0.1: download, verify, ingest ... shards; then 'no new release'."""
    import gzip
    import hashlib

    from http_server import LocalHTTPServer

    from tests.helpers import family_fasta

    fa = tmp_path / "src.fa"
    family_fasta(fa, families=4, mutants=2, unrelated=6, length=80)
    lines = fa.read_text().splitlines()
    uniref = "\n".join(f">UniRef50_{line[1:]} Test protein n=1 Tax=Test TaxID=1 RepID={line[1:]}"
                       if line.startswith(">") else line for line in lines) + "\n"
    gz = gzip.compress(uniref.encode())
    metalink = (f'<?xml version="1.0"?><metalink xmlns="http://www.metalinker.org/" version="3.0"><version>2099_01'
                f'</version><files><file name="uniref50.fasta.gz"><size>{len(gz)}</size><verification>'
                f'<hash type="md5">{hashlib.md5(gz).hexdigest()}</hash></verification></file></files></metalink>')
    with LocalHTTPServer(tmp_path / "www") as srv:
        srv.put("/pub/uniref/uniref50/uniref50.fasta.gz", gz)
        srv.put("/pub/uniref/uniref50/RELEASE.metalink", metalink.encode())
        args = overrides(tmp_path, f"source={{kind: uniref, base_url: '{srv.url('/pub')}', database: uniref50}}",
                         "ingest.min_length=11")
        res = data_refresh(str(ROOT / "configs" / "demo.yaml"), args, if_changed=True)
        assert res.status == "completed" and res.release.changed
        assert res.stages["source"].stats["release"] == "2099_01"
        assert res.stages["ingest"].stats["kept"] == 4 * 3 + 6
        src = res.stages["source"].outputs["source_0"]
        assert src.meta["release"] == "2099_01" and "2099_01" in src.path
        again = data_refresh(str(ROOT / "configs" / "demo.yaml"), args, if_changed=True)
        assert again.status == "no_new_release" and again.release.previous_run == res.run_id
        assert LineageStore(again.lineage).show(again.run_id)["run"]["status"] == "no_new_release"


def test_library_log_lines_reach_the_runs_logs_in_prefect(prefect_harness):
    """Progress lines, mmseqs heartbeats and counts are logged by pipeline_lib, which Prefect's root config
    drops below WARNING: every flow's run attaches the library logger to Prefect's API handler at its level."""
    import logging
    import time
    import warnings
    from uuid import UUID

    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId
    from prefect.runtime import flow_run

    from flows.runs import library_logging

    lib, prefect_logger = logging.getLogger("pipeline_lib"), logging.getLogger("prefect")
    saved = lib.level, list(lib.handlers), prefect_logger.level
    lib.setLevel(logging.NOTSET)
    prefect_logger.setLevel(logging.INFO)  # as PREFECT_LOGGING_LEVEL=INFO (the CLI's default) sets it

    @flow
    def probe() -> tuple[str, int]:
        library_logging()
        library_logging()  # idempotent: one handler, one copy of each line
        logging.getLogger("pipeline_lib.progress").info("probe: %d records", 42)
        logging.getLogger("pipeline_lib.progress").debug("probe: below the level")
        return str(flow_run.id), lib.getEffectiveLevel()

    try:
        run_id, level = probe()
        with warnings.catch_warnings():  # outside a run: printed, not sent, and no "missing flow run" warning
            warnings.simplefilter("error")
            logging.getLogger("pipeline_lib.progress").warning("probe: outside any run")
    finally:
        lib.setLevel(saved[0])
        lib.handlers[:] = saved[1]
        prefect_logger.setLevel(saved[2])
    assert level == logging.INFO  # Prefect's level (it also reaches the console through the root handler)
    deadline, found = time.monotonic() + 20, []
    with get_client(sync_client=True) as client:
        while not found and time.monotonic() < deadline:
            logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[UUID(run_id)])))
            found = [log for log in logs if log.name == "pipeline_lib.progress"]
            time.sleep(0.5)
    assert [log.message for log in found] == ["probe: 42 records"]  # once, in the run's logs in the UI
