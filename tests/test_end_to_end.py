"""`plm run` end to end on a small corpus: data -> structures -> train -> evaluate -> report, with lineage all
the way; the Prefect UI artifacts of the stages that only this run exercises, and what the dashboard reads."""
import json
import math
from pathlib import Path

import pytest

from flows.cli import _compare, _print_summary
from flows.end_to_end import end_to_end, evaluate_flow
from pipeline_lib.dashboard import data as dashboard_data
from pipeline_lib.dashboard import figures
from pipeline_lib.lineage import LineageStore
from tasks.artifacts import flow_run_artifacts
from tests.conftest import ROOT
from tests.helpers import family_fasta

SMALL_TRAIN = ["train.total_steps=6", "train.checkpoint_every=3", "train.warmup_steps=1", "train.batch_tokens=2048",
               "evaluate.perplexity.pseudo_max_sequences=2", "evaluate.perplexity.max_sequences=8"]


@pytest.fixture(scope="module")
def e2e(prefect_harness, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("e2e")
    fa = tmp / "in.fa"
    family_fasta(fa, families=20, mutants=2, unrelated=30, length=90)
    args = [f"workdir={tmp / 'work'}", f"source={{kind: fasta, paths: [{fa}]}}",
            "split.valid_fraction=0.2", "split.test_fraction=0.2", *SMALL_TRAIN]
    return tmp, args, end_to_end(str(ROOT / "configs" / "demo.yaml"), args)


def test_checkpoint_lineage_leads_back_to_shards_and_source(e2e):
    _, _, res = e2e
    hf = res.stages["train"].outputs["hf"]
    chain = LineageStore(res.lineage).trace(hf.path)
    stages = [s["stage"] for s in chain]
    assert stages[0] == "train" and {"shards", "split", "cluster", "ingest", "source"} <= set(stages)
    train_inputs = {i["kind"] for i in chain[0]["inputs"]}
    assert {"manifest", "shard"} <= train_inputs


def test_training_metrics_and_evaluation_in_lineage(e2e):
    _, _, res = e2e
    store = LineageStore(res.lineage)
    loss = store.query("SELECT step, value FROM metrics WHERE run_id=? AND name='loss' ORDER BY step", [res.run_id])
    assert [r["step"] for r in loss] == list(range(1, 7)) and all(r["value"] > 0 for r in loss)
    evals = {r["name"] for r in store.query("SELECT name FROM metrics WHERE run_id=? AND name LIKE 'eval/%'",
                                             [res.run_id])}
    assert {"eval/perplexity/valid", "eval/perplexity/test"} <= evals
    assert any(n.startswith("eval/contact_precision") for n in evals)


def test_exported_model_loads_in_transformers(e2e):
    transformers = pytest.importorskip("transformers")
    _, _, res = e2e
    model = transformers.EsmForMaskedLM.from_pretrained(res.stages["train"].outputs["hf"].path)
    assert model.config.vocab_size == 33


def test_rerun_is_fully_cached_and_compare_lists_checkpoints(e2e):
    tmp, args, res = e2e
    again = end_to_end(str(ROOT / "configs" / "demo.yaml"), args)
    assert all(again.stages[s].cached
               for s in ("ingest", "cluster", "split", "shards", "structures", "train", "evaluate"))
    from pathlib import Path

    hf = res.stages["train"].outputs["hf"].path
    same = evaluate_flow(str(ROOT / "configs" / "demo.yaml"), args, [hf])
    assert same.stages["evaluate_0"].cached  # the same model on the same data is not evaluated twice
    step3 = Path(hf).parent / "checkpoints" / "step_00000003"
    other = evaluate_flow(str(ROOT / "configs" / "demo.yaml"), args, [str(step3)])
    assert not other.stages["evaluate_0"].cached and other.stages["evaluate_0"].stats["checkpoint"] == "step_00000003"
    table = _compare(tmp / "work" / "lineage.duckdb")
    header = table.splitlines()[0]
    assert "step-6" in header and "step_00000003" in header and "perplexity" in table
    manifest = json.loads((res.shards_dir / "manifest.json").read_text())
    assert manifest["splits"]["train"]["rows"] > 0


def test_msa_stage_builds_msas_with_the_query_first(e2e):
    import pyarrow.parquet as pq

    _, _, res = e2e
    msa = res.stages["msa"]
    table = pq.read_table(msa.path("msas.parquet")).to_pylist()
    assert len(table) == msa.stats["msas"] > 0
    for row in table:
        assert row["headers"][0] == row["query_id"] and 1 <= row["neff"] <= row["depth"]
        assert {len(r) for r in row["rows"]} == {row["query_length"]}
    fam = [r for r in table if r["query_id"].startswith("fam")]
    assert fam and max(r["depth"] for r in fam) >= 3  # a parent finds its point mutants
    steps = LineageStore(res.lineage).query("SELECT tool_versions FROM steps WHERE run_id=? AND stage='msa_batch'",
                                            [res.run_id])
    assert steps and all(json.loads(s["tool_versions"])["mmseqs"] for s in steps)


def test_progress_artifacts_of_structures_msa_batches_and_training(e2e):
    _, _, res = e2e
    bars = {a.key: a for a in flow_run_artifacts(res.run_id) if a.type == "progress"}
    structures = bars["structures-embedded"]  # files encoded, updated as each batch completes
    assert float(structures.data) == 100.0
    assert structures.description.startswith(f"structures embedded: {res.stages['structures'].stats['files_in']} files")
    n = len(LineageStore(res.lineage).query("SELECT 1 FROM steps WHERE run_id=? AND stage='msa_batch'", [res.run_id]))
    assert n >= 2 and float(bars["msa-batches"].data) == 100.0 and bars["msa-batches"].description == \
        f"{n} / {n} batches done"
    for i in range(n):  # each batch: its chain of mmseqs commands
        batch = bars[f"msa-batch-{i:05d}"]
        assert float(batch.data) == 100.0 and "commands" in batch.description
    steps = bars["train-steps"]
    assert float(steps.data) == 100.0 and steps.description == "train-steps: 6 / 6 steps"


def test_dashboard_reads_the_real_training_metrics(e2e):
    """The names training logs are the ones the dashboard charts first (no stray `ppl` chart)."""
    _, _, res = e2e
    curves = dashboard_data.training_curves(res.lineage, res.run_id)
    assert figures.metric_order(curves)[:4] == ["loss", "perplexity", "lr", "tokens_per_s"] and "ppl" not in curves
    assert curves["loss"]["step"] == curves["perplexity"]["step"] == list(range(1, 7))
    assert curves["perplexity"]["value"] == pytest.approx([math.exp(v) for v in curves["loss"]["value"]])


def test_run_writes_the_report_and_records_it_in_lineage(e2e, capsys):
    from pipeline_lib.dashboard.figures import STATUS_COLORS

    tmp, _, res = e2e
    report = Path(res.report)
    assert report == tmp / "work" / "reports" / f"{res.run_id}.html"
    text = report.read_text()
    done = f"<td style='color:{STATUS_COLORS['completed']};font-weight:600'>completed</td>"
    assert f"<td>{res.run_id[:8]}</td><td>end_to_end</td><td>demo</td>{done}" in text  # written after the run closed
    assert "eval/perplexity/valid" in text and "Sequence lengths" in text
    art = LineageStore(res.lineage).show(str(report))["artifact"]
    assert art["kind"] == "report" and [(s["stage"], s["status"], s["run_id"]) for s in art["produced_by"]] == \
        [("report", "completed", res.run_id)]
    _print_summary(res)
    assert f"report:     {report}" in capsys.readouterr().out
