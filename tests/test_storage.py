"""The data flow with its stages published to S3: a real moto S3 server on 127.0.0.1, real s3fs, pyarrow, DuckDB.

    .venv/bin/python -m pytest -q -p no:cacheprovider tests/test_storage.py
"""
import json
import logging
import time

import pytest

from flows.data_refresh import data_refresh
from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError
from pipeline_lib.io import sha256_bytes
from pipeline_lib.lineage import LineageStore
from pipeline_lib.sequences.shards import verify_manifest as verify_local_manifest
from pipeline_lib.storage import MARKER, duckdb_connection, open_url, shard_table, verify_manifest
from tests.conftest import ROOT

BUCKET = "plm-test"
KEY_ID, SECRET = "AKIAPLMFAKEKEYID0042", "plm-fake-secret-Zx9Qw7Rt5Yu3"  # recognisable in any leak
STAGES = ("ingest", "cluster", "split", "shards")


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A moto S3 server on a free port of 127.0.0.1 with one bucket; fake credentials in the environment."""
    from moto.server import ThreadedMotoServer

    home = tmp_path_factory.mktemp("aws")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                            "AWS_DEFAULT_REGION": "us-east-1", "AWS_CONFIG_FILE": str(home / "config"),
                            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials")}.items():
            mp.setenv(name, value)
        mp.delenv("AWS_PROFILE", raising=False)
        logging.getLogger("werkzeug").setLevel(logging.WARNING)  # one line per request otherwise
        server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            host, port = server.get_host_and_port()
            endpoint = f"http://{host}:{port}"
            fs, _ = open_url(f"s3://{BUCKET}", endpoint_url=endpoint)
            fs.mkdir(BUCKET)
            yield endpoint, fs
        finally:
            server.stop()


def _overrides(workdir, endpoint, *extra):
    return [f"workdir={workdir}", "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]",
            f"storage.url=s3://{BUCKET}/demo", f"storage.endpoint_url={endpoint}", *extra]


class _Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.INFO)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(self.format(record))


@pytest.fixture(scope="module")
def first_run(prefect_harness, s3, tmp_path_factory):
    """One run of the demo data flow onto S3, with every INFO log line of the run captured."""
    endpoint, _ = s3
    tmp = tmp_path_factory.mktemp("s3flow")
    handler, prefect_log = _Records(), logging.getLogger("prefect")
    before = prefect_log.level
    prefect_log.setLevel(logging.INFO)
    for name in ("", "prefect"):
        logging.getLogger(name).addHandler(handler)
    try:
        result = data_refresh(str(ROOT / "configs" / "demo.yaml"), _overrides(tmp / "work", endpoint))
    finally:
        for name in ("", "prefect"):
            logging.getLogger(name).removeHandler(handler)
        prefect_log.setLevel(before)
    return tmp, result, handler.lines


def _key(url: str) -> str:
    return url.removeprefix("s3://")


def test_stages_published_with_markers_and_matching_bytes(first_run, s3):
    _, res, _ = first_run
    _, fs = s3
    for stage in STAGES:
        out = res.stages[stage]
        assert out.url == f"s3://{BUCKET}/demo/stages/{stage}/{out.cache_key[:16]}"
        marker = json.loads(fs.cat_file(f"{_key(out.url)}/{MARKER}"))
        assert marker["cache_key"] == out.cache_key
        for name, art in out.outputs.items():  # the objects are the bytes the stage computed locally
            remote = marker["outputs"][name]
            assert remote["path"] == f"{out.url}/{name}" and remote["content_hash"] == art.content_hash
            assert sha256_bytes(fs.cat_file(_key(remote["path"]))) == art.content_hash
    assert verify_manifest(res.stages["shards"].url, fs) == []
    paths = [r["path"] for r in LineageStore(res.lineage).query(
        "SELECT a.path FROM edges e JOIN artifacts a USING (artifact_id) JOIN steps s USING (step_id) "
        "WHERE s.run_id=? AND s.stage IN ('cluster', 'split', 'shards')", [res.run_id])]
    assert paths and all(p.startswith(f"s3://{BUCKET}/demo/stages/") for p in paths)


def test_pyarrow_and_duckdb_read_shards_straight_from_s3(first_run, s3):
    _, res, _ = first_run
    _, fs = s3
    url = res.stages["shards"].url
    manifest = json.loads(fs.cat_file(f"{_key(url)}/manifest.json"))
    for split, info in manifest["splits"].items():
        table = shard_table(url, split, fs, columns=["id", "tokens"])
        assert table.num_rows == info["rows"] > 0
        count = duckdb_connection(fs).sql(f"SELECT count(*) FROM read_parquet('{url}/{split}/*.parquet')").fetchall()[0]
        assert count[0] == info["rows"]
    query = f"SELECT count(DISTINCT id) FROM read_parquet('{url}/*/*.parquet')"
    ids = duckdb_connection(fs).sql(query).fetchall()[0][0]
    assert ids == sum(info["rows"] for info in manifest["splits"].values())


def test_trace_by_s3_url(first_run):
    _, res, _ = first_run
    shard = next(a for a in res.stages["shards"].outputs.values() if a.kind == "shard")
    url = f"{res.stages['shards'].url}/{shard.path.rsplit('/stages/shards/', 1)[1].split('/', 1)[1]}"
    chain = LineageStore(res.lineage).trace(url)
    assert chain[0]["stage"] == "shards" and {"ingest", "cluster", "split"} <= {s["stage"] for s in chain}


def test_no_credentials_in_lineage_or_logs(first_run):
    tmp, res, lines = first_run
    assert any("shards" in line for line in lines)  # the capture did see the run's log lines
    text = "\n".join(lines)
    store = LineageStore(res.lineage)
    for table in ("runs", "steps", "artifacts", "metrics"):
        text += repr(store.query(f"SELECT * FROM {table}"))
    assert f"s3://{BUCKET}/demo" in text
    raw = b"".join(p.read_bytes() for p in (tmp / "work").glob("lineage.duckdb*"))
    for secret in (KEY_ID, SECRET):
        assert secret not in text and secret.encode() not in raw


def test_rerun_is_cached_and_uploads_nothing(first_run, s3):
    tmp, res1, _ = first_run
    endpoint, fs = s3
    before = {k: v["LastModified"] for k, v in fs.find(f"{BUCKET}/demo", detail=True).items()}
    time.sleep(1.1)  # S3 timestamps have one-second resolution: a re-upload would now show
    res2 = data_refresh(str(ROOT / "configs" / "demo.yaml"), _overrides(tmp / "work", endpoint))
    assert all(res2.stages[s].cached for s in STAGES)
    after = {k: v["LastModified"] for k, v in fs.find(f"{BUCKET}/demo", detail=True).items()}
    assert after == before


def test_stage_without_remote_marker_is_recomputed_on_a_fresh_machine(first_run, s3):
    """A crash mid-upload leaves objects but no marker: another machine (empty local cache) recomputes that
    stage, downloads the finished ones it needs, and publishes the recomputed one again."""
    tmp, res1, _ = first_run
    endpoint, fs = s3
    cluster_url = res1.stages["cluster"].url
    fs.rm(f"{_key(cluster_url)}/{MARKER}")
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"), _overrides(tmp / "fresh", endpoint))
    status = {r["stage"]: r["status"] for r in LineageStore(res.lineage).query(
        "SELECT stage, status FROM steps WHERE run_id=?", [res.run_id])}
    assert status["cluster"] == "completed"
    assert (status["ingest"], status["split"], status["shards"]) == ("cached",) * 3, status
    assert fs.exists(f"{_key(cluster_url)}/{MARKER}")
    assert res.stages["cluster"].outputs["clusters.parquet"].content_hash == \
        res1.stages["cluster"].outputs["clusters.parquet"].content_hash
    assert res.shards_dir.is_relative_to(tmp / "fresh") and verify_local_manifest(res.shards_dir) == []


def test_config_refuses_credentials():
    demo = ROOT / "configs" / "demo.yaml"
    for bad in ("storage.options={client_kwargs: {aws_secret_access_key: x}}", "storage.options={key: x}",
                "storage.endpoint_url=http://user:pw@127.0.0.1:9000", "storage.url=bucket/no-scheme"):
        with pytest.raises(ConfigError, match="storage"):
            load_config(demo, [bad])
    assert load_config(demo, ["storage.url=s3://b/p", "storage.options={use_ssl: false}"]).storage.url == "s3://b/p"


def test_materialise_checks_content_hashes(s3, tmp_path):
    """A downloaded stage is checked against its marker: a changed object fails loudly, leaving no local copy."""
    from dataclasses import asdict

    from pipeline_lib.errors import DataValidationError
    from pipeline_lib.lineage import artifact_for
    from pipeline_lib.storage import ObjectStore

    endpoint, fs = s3
    local = tmp_path / "stages" / "toy" / "0123456789abcdef"
    (local / "sub").mkdir(parents=True)
    (local / "a.txt").write_text("alpha\n")
    (local / "sub" / "b.txt").write_text("beta\n")
    marker = {"outputs": {"a.txt": asdict(artifact_for(local / "a.txt", "text")),
                          "sub": asdict(artifact_for(local / "sub", "dir"))}}
    store = ObjectStore(f"s3://{BUCKET}/unit", endpoint_url=endpoint)
    rel = "stages/toy/0123456789abcdef"
    assert store.read_marker(rel) is None and store.materialise(rel, tmp_path / "copy") is None
    assert store.publish(local, rel, marker) == 2
    assert store.read_marker(rel)["outputs"]["a.txt"]["path"] == f"s3://{BUCKET}/unit/{rel}/a.txt"
    copy = tmp_path / "other" / rel
    got = store.materialise(rel, copy)
    assert got["outputs"]["sub"]["path"] == str(copy / "sub") and (copy / "sub" / "b.txt").read_text() == "beta\n"
    fs.pipe_file(f"{BUCKET}/unit/{rel}/sub/b.txt", b"tampered\n")
    with pytest.raises(DataValidationError, match="sub"):
        store.materialise(rel, tmp_path / "third" / rel)
    assert not (tmp_path / "third" / rel).exists()


def test_retention_prunes_the_published_copies_too(prefect_harness, s3, tmp_path):
    """keep_releases=1 with storage.url: after a second release, the first release's stage directories are gone
    from the bucket as well as from the workdir, also one that this machine no longer held locally (as if
    computed elsewhere); the kept release's objects stay, and lineage lists the deleted URLs."""
    import shutil
    from pathlib import Path

    from tests.helpers import family_fasta

    endpoint, fs = s3
    fa, work, url = tmp_path / "upstream.fa", tmp_path / "work", f"s3://{BUCKET}/retention"
    results = []
    for seed in (20, 21):
        family_fasta(fa, seed=seed, families=2, mutants=2, unrelated=3, length=60)
        results.append(data_refresh(str(ROOT / "configs" / "demo.yaml"), [
            f"workdir={work}", f"source={{kind: fasta, paths: [{fa}]}}",
            "cluster.levels=[{name: c50, min_seq_id: 0.5}]",
            f"storage.url={url}", f"storage.endpoint_url={endpoint}", "retention.keep_releases=1"]))
        if seed == 20:
            shutil.rmtree(results[0].stages["split"].directory)  # only in the bucket now
    r1, r2 = results
    assert all(r1.stages[s].cache_key != r2.stages[s].cache_key for s in STAGES)
    for stage in STAGES:
        assert fs.find(_key(r1.stages[stage].url)) == [] and not Path(r1.stages[stage].directory).exists()
        assert fs.exists(f"{_key(r2.stages[stage].url)}/{MARKER}") and Path(r2.stages[stage].directory).is_dir()
    store = LineageStore(r2.lineage)
    stats = json.loads(store.query("SELECT stats FROM steps WHERE run_id=? AND stage='retention'",
                                   [r2.run_id])[0]["stats"])
    base = r1.stages["ingest"].url.rsplit("/stages/", 1)[0]
    partitions = {f"{base}/stages/{r['stage']}/{r['cache_key'][:16]}" for r in store.query(
        "SELECT stage, cache_key FROM steps WHERE run_id=? AND stage IN ('shards_partition', 'audit_target', "
        "'audit_chunk')", [r1.run_id])}
    assert len(partitions) == 3  # (one shard partition: the default partition_rows; one audit target and chunk)
    assert {d["url"] for d in stats["deleted"] if d["url"]} == {r1.stages[s].url for s in
                                                                 (*STAGES, "cluster_c50", "audit")} | partitions
    assert stats["freed_remote_bytes"] == sum(d["remote_bytes"] for d in stats["deleted"]) > 0
    shard = next(a for a in r1.stages["shards"].outputs.values() if a.kind == "shard")
    shard_url = f"{r1.stages['shards'].url}/{Path(shard.path).relative_to(r1.stages['shards'].directory)}"
    used_by = store.show(shard_url)["artifact"]["used_by"]
    assert any(u["stage"] == "retention" and u["run_id"] == r2.run_id for u in used_by)
