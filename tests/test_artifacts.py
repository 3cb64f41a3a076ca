"""Prefect UI artifacts: a real end_to_end run (data stages) on the ephemeral API, read back through the client;
downloads and batch fan-outs in real flow runs. The structures, MSA and training progress artifacts of a full
run are checked in tests/test_end_to_end.py (that run exists there already)."""
import json
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from http_server import LocalHTTPServer
from prefect import flow, task

from flows.end_to_end import end_to_end
from pipeline_lib.lineage import artifact_for
from pipeline_lib.progress import Progress
from tasks import data
from tasks.artifacts import (
    ProgressArtifact,
    artifact_key,
    flow_run_artifacts,
    progress_artifacts,
    results_with_progress,
    run_summary,
    stage_counts,
    stage_table,
)
from tasks.common import RunContext, StageOutput
from tests.conftest import ROOT
from tests.helpers import family_fasta

DEMO = str(ROOT / "configs" / "demo.yaml")


_artifacts = flow_run_artifacts


@pytest.fixture(scope="module")
def data_run(prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("artifacts")
    fa = tmp / "in.fa"
    groups = family_fasta(fa, families=3, mutants=2, unrelated=4, length=60)
    fa.write_text(fa.read_text() + ">too_short\nMKV\n>dup\n" + fa.read_text().split("\n")[1] + "\n")
    res = end_to_end(DEMO, [f"workdir={tmp / 'work'}", f"source={{kind: fasta, paths: [{fa}]}}",
                            "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]",
                            "structures.enabled=false", "msa.enabled=false", "train.enabled=false",
                            "evaluate.enabled=false"])
    return res, _artifacts(res.run_id), sum(len(ids) for ids in groups.values())


def _table(arts, key):
    rows = json.loads(next(a for a in arts if a.key == key and a.type == "table").data)
    return {r["count"]: r["value"] for r in rows}


def test_stage_tables_hold_the_real_counts(data_run):
    res, arts, n = data_run
    ingest, cluster, split, shards = (_table(arts, f"{s}-counts") for s in ("ingest", "cluster", "split", "shards"))
    st = res.stages
    assert ingest["records_in"] == n + 2 and ingest["quarantined"] == 1 and ingest["duplicates"] == 1
    assert ingest["kept"] == pq.read_metadata(st["ingest"].path("sequences.parquet")).num_rows == n
    clusters = pq.read_table(st["cluster"].path("clusters.parquet"))
    for level in ("c90", "c50"):
        assert cluster[f"clusters_per_level.{level}"] == len(set(clusters.column(f"cluster_{level}").to_pylist()))
    assert cluster["clusters_per_level.c90"] <= 4 + 3  # the 3 families collapse at 90 %
    sizes = pq.read_table(st["split"].path("splits.parquet")).column("split").value_counts().to_pylist()
    assert {f"sizes.{d['values']}": d["counts"] for d in sizes}.items() <= split.items()
    assert shards["train.tokens"] == st["shards"].stats["train"]["tokens"] > 0
    assert shards["train.rows"] == sum(pq.read_metadata(a.path).num_rows for a in st["shards"].outputs.values()
                                       if a.kind == "shard" and a.meta["split"] == "train")


def test_progress_and_summary_artifacts(data_run):
    res, arts, _ = data_run
    bars = [a for a in arts if a.type == "progress"]
    assert any(a.key.startswith("ingest-in-fa") and float(a.data) == 100.0 for a in bars)
    levels = [a for a in arts if a.key == "cluster-level-counts" and a.type == "table"]  # a task per level
    assert len(levels) == 2 and all("clusters" in {r["count"] for r in json.loads(a.data)} for a in levels)
    summary = next(a for a in arts if a.type == "markdown" and a.key == "demo-summary")
    assert res.run_id in summary.data
    for stage in ("ingest", "cluster", "split", "shards"):
        assert f"| {stage} | computed | `{res.stages[stage].cache_key[:16]}`" in summary.data


def test_summary_includes_evaluation_table_and_nothing_happens_outside_a_run(prefect_harness, tmp_path):
    table = tmp_path / "metrics.md"
    table.write_text("| metric | value |\n|---|---|\n| perplexity/valid | 12.5 |\n")
    out = StageOutput("evaluate", "k" * 64, str(tmp_path), False, {"metrics.md": artifact_for(table, "eval_table")},
                      {"metrics": 1, "checkpoint": "step-120"}, {})
    ctx = RunContext("run-x", str(tmp_path), str(tmp_path / "lineage.duckdb"))

    class Cfg:
        name = "eval-demo"

    stage_table(out)  # outside a run: no-op, no error
    bar = ProgressArtifact("outside", total=10)
    bar.set(5, force=True)
    assert not bar.enabled and bar.artifact_id is None

    @flow
    def summarize() -> str:
        from prefect.runtime import flow_run

        run_summary(ctx, Cfg, {"evaluate": out})
        return str(flow_run.id)

    arts = _artifacts(summarize())
    md = next(a for a in arts if a.key == "eval-demo-summary").data
    assert "## Evaluation: step-120" in md and "| perplexity/valid | 12.5 |" in md


def test_counts_flatten_nested_stats_and_keys_are_valid():
    rows = stage_counts({"sizes": {"train": 8, "valid": 1}, "commands": [["mmseqs"]], "ok": True, "x": 1.5})
    assert rows == [{"count": "sizes.train", "value": 8}, {"count": "sizes.valid", "value": 1},
                    {"count": "x", "value": 1.5}]
    assert artifact_key("msa_batch", "Counts") == "msa-batch-counts"
    assert artifact_key("ingest uniprot.fasta.gz") == "ingest-uniprot-fasta-gz"


def _flow_run_id() -> str:
    from prefect.runtime import flow_run

    return str(flow_run.id)


def test_http_source_download_gets_a_progress_artifact(prefect_harness, tmp_path):
    """source_url (the side-by-side downloads of a fasta source's URLs) reports bytes as `download-<file>`; a
    download that asks for no progress (AlphaFold DB models, thousands of small files) makes no artifact."""
    body = b"".join(b">s%d\n%s\n" % (i, b"MKV" * 100) for i in range(3000))
    ctx = RunContext("run-x", str(tmp_path / "work"), str(tmp_path / "lineage.duckdb"))
    with LocalHTTPServer(tmp_path / "www") as srv:
        srv.put("/proteins.fa", body)
        srv.put("/model.pdb", b"ATOM\n" * 100)

        @task
        def quiet_download() -> None:
            from pipeline_lib.sources.download import download

            with progress_artifacts():
                download(srv.url("/model.pdb"), tmp_path / "model.pdb", progress=False)

        @flow
        def fetch_one() -> tuple[str, str]:
            quiet_download()
            return data.source_url(ctx, srv.url("/proteins.fa"))["path"], _flow_run_id()

        path, run_id = fetch_one()
    assert Path(path).read_bytes() == body
    bars = [a for a in _artifacts(run_id) if a.type == "progress"]
    assert [a.key for a in bars] == [artifact_key("download", Path(path).name)]
    assert float(bars[0].data) == 100.0 and "download" in bars[0].description and "KB" in bars[0].description


def test_batch_fan_out_progress_counts_finished_batches(prefect_harness):
    """results_with_progress: results in submission order, the bar at 100 % with every batch done; a failed
    batch is counted as failed and its error raised."""
    @task
    def batch(i: int) -> int:
        with Progress(f"toy batch {i}", total=2, unit="steps", every_s=0) as p:
            p.update(2)
        if i < 0:
            raise ValueError(f"batch {i} failed")
        return i * i

    @task
    def with_progress(i: int) -> int:
        with progress_artifacts():
            return batch.fn(i)

    @flow
    def fan_out(items: list[int]) -> tuple[list[int] | str, str]:
        futures = [with_progress.submit(i) for i in items]
        try:
            return results_with_progress(futures, "toy-batches", "batches"), _flow_run_id()
        except ValueError as exc:
            return str(exc), _flow_run_id()

    results, run_id = fan_out([3, 1, 2, 0])
    assert results == [9, 1, 4, 0]
    arts = _artifacts(run_id)
    bar = next(a for a in arts if a.key == "toy-batches")
    assert float(bar.data) == 100.0 and bar.description == "4 / 4 batches done"
    assert {a.key for a in arts if a.key.startswith("toy-batch-")} == {f"toy-batch-{i}" for i in range(4)}

    error, run_id = fan_out([1, -1])
    assert error == "batch -1 failed"
    bar = next(a for a in _artifacts(run_id) if a.key == "toy-batches")
    assert float(bar.data) == 50.0 and bar.description == "1 / 2 batches done, 1 failed"
