"""The demo lineage DB that the dashboard tests read (test_dashboard.py, test_dashboard_browser.py): one real
demo data_refresh run, a fake training curve with evals, and a second run with pLDDT/MSA artifacts.

A test module uses the fixture by importing ``demo`` (and re-exporting it in ``__all__``); being
module-scoped, each module that does so builds its own demo run.
"""
from __future__ import annotations

import math
from datetime import timedelta
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from flows.data_refresh import data_refresh
from pipeline_lib import schemas
from pipeline_lib.lineage import LineageStore, RunRecord, StepRecord, artifact_for, utcnow
from tests.conftest import FIXTURES, ROOT

STRUCT_RUN = "run-with-structures-and-msas"


@pytest.fixture(scope="module")
def demo(prefect_harness, tmp_path_factory):
    """A real data_refresh run, a fake training curve with evals, and a second run with pLDDT/MSA artifacts."""
    tmp = tmp_path_factory.mktemp("dash")
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"), [
        f"workdir={tmp / 'work'}", "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]"])
    store = LineageStore(res.lineage)
    curve = []
    for step in range(0, 1000, 10):
        loss = 2.0 + 1.5 * math.exp(-step / 300)
        curve += [("loss", step, loss), ("perplexity", step, math.exp(loss)), ("lr", step, 4e-4 * min(1.0, step / 100)),
                  ("tokens_per_s", step, 9000.0 + step)]
    curve += [(f"eval/{m}", s, v) for s in (250, 500, 750) for m, v in (("perplexity", 12 - s / 100),
                                                                         ("spearman", 0.1 + s / 5000))]
    store.record_metrics(res.run_id, None, curve)
    _structure_run(store, tmp)
    return tmp, res


def _structure_run(store: LineageStore, tmp: Path) -> None:
    levels = ["c90", "c50"]
    table = pa.Table.from_pylist([{
        "id": f"P{i}", "seq_hash": "0" * 32, "cluster_c90": f"P{i}", "cluster_c50": f"P{i}", "length": 3,
        "tokens": bytes([0, 5, 2]), "aa_seq": "MAV", "threedi_seq": "dpq", "sa_tokens": [0, 1, 2],
        "mean_plddt": float(40 + i % 60), "structure_source": "test", "structure_version": "v4"} for i in range(300)],
        schema=schemas.structure_shard_schema(levels))
    shard = tmp / "structure_shard.parquet"
    pq.write_table(table, shard)
    depths = tmp / "msa_depths.parquet"
    pq.write_table(pa.table({"id": [f"P{i}" for i in range(40)], "depth": [1 + 7 * i for i in range(40)]}), depths)
    msas = [artifact_for(depths, "msa")] + [artifact_for(f, "msa") for f in sorted((FIXTURES / "msa").glob("*.a3m"))]
    store.start_run(RunRecord(STRUCT_RUN, "end_to_end", "structures", {}, "cfg", "test", str(tmp)))
    t = utcnow()
    store.record_step(StepRecord(STRUCT_RUN, "structures", {}, "k1", "completed", t, t + timedelta(seconds=2),
                                 outputs=[artifact_for(shard, "structure_shard", rows=300)]))
    store.record_step(StepRecord(STRUCT_RUN, "msa", {}, "k2", "completed", t, t + timedelta(seconds=1), outputs=msas))
    store.end_run(STRUCT_RUN, "completed")
