"""Lineage store: records, trace, concurrent writers, runs by id or unique prefix, and ``plm lineage``.

    .venv/bin/python -m pytest -q tests/test_lineage.py
"""
import json
import subprocess
import sys
import threading
from datetime import timedelta
from pathlib import Path

import pytest

from flows.cli import main as plm
from pipeline_lib.errors import PipelineError, RunLookupError
from pipeline_lib.lineage import ArtifactRecord, LineageStore, RunRecord, StepRecord, unique_prefixes, utcnow
from tests.conftest import ROOT


def test_many_stores_on_one_file_from_many_threads(tmp_path):
    """Task threads each make their own LineageStore on the same file; writes must not collide."""
    db = tmp_path / "l.duckdb"
    LineageStore(db).start_run(RunRecord("r1", "f", "n", {}, "h", "v", str(tmp_path)))
    errors = []

    def work(i: int) -> None:
        try:
            store = LineageStore(db)
            t = utcnow()
            out = ArtifactRecord(f"/x/{i}", "thing", f"hash{i}", rows=i)
            store.record_step(StepRecord("r1", f"s{i}", {"i": i}, f"k{i}", "completed", t, t + timedelta(seconds=1),
                                         outputs=[out]))
            store.record_metrics("r1", None, [("m", i, float(i))])
        except Exception as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    store = LineageStore(db)
    assert store.query("SELECT count(*) AS n FROM steps")[0]["n"] == 16
    assert store.query("SELECT count(*) AS n FROM metrics")[0]["n"] == 16
    chain = store.trace("/x/3")
    assert chain[0]["stage"] == "s3" and chain[0]["params"] == '{"i": 3}'


# --- runs by id or prefix -------------------------------------------------------------------------------

def scheduled_runs(db, n: int = 4) -> list[str]:
    """Runs as Prefect's scheduler names them: time-ordered UUIDs whose first 12 characters are the same
    (oldest first), each recorded as a flow records it; the second is a no_new_release refresh."""
    store = LineageStore(db)
    ids = [f"01a24b59-e3f1-7{i:03x}-8a5e-{i:012x}" for i in range(n)]
    t = utcnow() - timedelta(hours=n)
    for i, rid in enumerate(ids):
        store.start_run(RunRecord(rid, "data_refresh", "uniref50", {}, "cfg", "v", "/work",
                                  started_at=t + timedelta(hours=i)))
        store.end_run(rid, "no_new_release" if i == 1 else "completed")
    return ids


def test_an_ambiguous_prefix_is_an_error_naming_every_candidate(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    ids = scheduled_runs(store.path)
    for prefix in (ids[0][:8], ids[0][:12]):
        with pytest.raises(RunLookupError, match=f"run id prefix '{prefix}' matches 4 runs") as err:
            store.resolve_run(prefix)
        assert [r["run_id"] for r in err.value.candidates] == ids[::-1]          # newest first
        lines = str(err.value).splitlines()[1:]
        statuses = ["completed"] * 2 + ["no_new_release", "completed"]
        assert [line.split()[:3] for line in lines] == [[i, "data_refresh", s]
                                                        for i, s in zip(ids[::-1], statuses, strict=True)]
        with pytest.raises(RunLookupError, match="matches 4 runs"):       # never the oldest match
            store.show(prefix)
    with pytest.raises(RunLookupError, match="no run 'ffff'") as err:
        store.resolve_run("ffff")
    assert err.value.candidates == []
    with pytest.raises(PipelineError, match="nothing in lineage matches 'ffff'"):
        store.show("ffff")


def test_a_unique_prefix_or_an_exact_id_names_one_run(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    ids = scheduled_runs(store.path)
    prefixes = store.run_prefixes()
    assert len(set(prefixes.values())) == len(ids)
    for rid in ids:
        assert len(prefixes[rid]) >= 8 and rid.startswith(prefixes[rid])
        assert store.resolve_run(prefixes[rid])["run_id"] == rid == store.resolve_run(rid)["run_id"]
        assert store.show(prefixes[rid])["run"]["run_id"] == rid
    assert store.resolve_run(ids[1][:-2])["status"] == "no_new_release"
    store.start_run(RunRecord(ids[2][:20], "data_refresh", "uniref50", {}, "cfg", "v", "/work"))
    assert store.resolve_run(ids[2][:20])["run_id"] == ids[2][:20]       # an exact id wins over the longer one
    assert store.run_prefixes()[ids[2][:20]] == ids[2][:20]             # and is its own label in full
    assert unique_prefixes(["abc", "abd", "x"], min_len=2) == {"abc": "abc", "abd": "abd", "x": "x"}


def test_percent_and_underscore_are_literal(tmp_path):
    store = LineageStore(tmp_path / "l.duckdb")
    for rid in ("50%_off", "50a_off", "50abXoff"):
        store.start_run(RunRecord(rid, "data_refresh", "demo", {}, "cfg", "v", "/work"))
    assert store.resolve_run("50%")["run_id"] == "50%_off"              # LIKE '50%%' would match all three
    assert store.resolve_run("50a_")["run_id"] == "50a_off"             # LIKE '50a_%' would match two
    with pytest.raises(RunLookupError, match="no run '5_'"):
        store.resolve_run("5_")
    with pytest.raises(RunLookupError, match="empty run id"):
        store.resolve_run("")


# --- the plm lineage command ----------------------------------------------------------------------------

def test_plm_lineage_show_takes_a_config_with_overrides(tmp_path, capsys):
    db = tmp_path / "elsewhere.duckdb"
    ids = scheduled_runs(db)
    assert plm(["lineage", "show", ids[3][:8], "--set", f"lineage.path={db}"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("plm: error: run id prefix") and all(i in err for i in ids)
    assert plm(["lineage", "show", ids[3], "--config", str(ROOT / "configs/demo.yaml"), "--set",
                f"workdir={tmp_path}", "--set", f"lineage.path={db}", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["run"]["run_id"] == ids[3]
    assert plm(["lineage", "runs", "--db", str(db), "--set", "workdir=x"]) == 2
    assert "either --db or --config/--set" in capsys.readouterr().err


def test_piping_plm_output_into_head_ends_quietly(tmp_path):
    """The reader exits before plm writes (head -0: plm takes a second to start), or after one line (head -1:
    plm's 20 lines may or may not all reach the pipe first): no traceback, and 141 when the pipe broke."""
    db = tmp_path / "l.duckdb"
    scheduled_runs(db, n=25)
    plm_bin = Path(sys.executable).with_name("plm")
    for reader, codes in (("head -0", {141}), ("head -1", {0, 141})):
        proc = subprocess.run(["bash", "-c", f"set -o pipefail; '{plm_bin}' lineage runs --db '{db}' | {reader}"],
                              capture_output=True, text=True, timeout=120)
        assert "Traceback" not in proc.stderr and "BrokenPipeError" not in proc.stderr, proc.stderr
        assert proc.stderr == "" and proc.returncode in codes, (reader, proc.returncode, proc.stderr)
        assert len(proc.stdout.splitlines()) == int(reader[-1])


def test_recording_no_metrics_is_a_no_op(tmp_path):
    """`plm evaluate` with nothing to measure recorded an empty list: DuckDB's executemany raised."""
    store = LineageStore(tmp_path / "l.duckdb")
    store.record_metrics("r", None, [])
    store.record_metrics("r", None, [("ppl", 1, 2.5)])
    assert store.query("SELECT name, step, value FROM metrics") == [{"name": "ppl", "step": 1, "value": 2.5}]
