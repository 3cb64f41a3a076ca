"""The leakage audit on planted near-duplicates: families of ~98 % identical point mutants split by a 100 % level
land in different splits (leakage the audit must find, as the true families say), split by a 50 % level they stay
together (no hit); `split.audit.max_identity` fails the build naming the closest pair."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest

from flows.data_refresh import data_refresh
from pipeline_lib.errors import DataValidationError
from pipeline_lib.lineage import LineageStore
from tests.conftest import ROOT
from tests.helpers import family_fasta


def _args(tmp_path, fasta, level: str, *extra: str) -> list[str]:
    return [f"workdir={tmp_path / 'w'}", f"source={{kind: fasta, paths: [{fasta}]}}",
            f"cluster.levels=[{{name: c, min_seq_id: {level}, method: linclust}}]",
            "split.valid_fraction=0.25", "split.test_fraction=0.25", *extra]


def _family(seq_id: str) -> str:
    return seq_id.split("_")[0]


def test_audit_finds_planted_leakage_and_none_when_families_stay_together(prefect_harness, tmp_path):
    fasta = tmp_path / "families.fa"
    family_fasta(fasta, families=12, mutants=3, unrelated=12, length=150)
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"), _args(tmp_path / "a", fasta, "1.0"))
    split = {r["id"]: r["split"] for r in pq.read_table(res.stages["split"].path("splits.parquet")).to_pylist()}
    audit = pq.read_table(res.stages["audit"].path("audit.parquet")).to_pylist()
    assert {r["id"] for r in audit} == {i for i, s in split.items() if s != "train"}  # every held-out sequence
    train_families = {_family(i) for i, s in split.items() if s == "train" and i.startswith("fam")}
    for r in audit:  # the truth: a held-out family member with a family member in train is a ~96-98 % hit
        leaked = r["id"].startswith("fam") and _family(r["id"]) in train_families
        assert (r["identity"] >= 0.9) == leaked, r
        if leaked:
            assert _family(r["nearest_train_id"]) == _family(r["id"]) and split[r["nearest_train_id"]] == "train"
        else:
            assert r["nearest_train_id"] is None and r["identity"] == 0.0
    stats = res.stages["audit"].stats
    for name in ("valid", "test"):
        rows = [r for r in audit if split[r["id"]] == name]
        share = sum(r["identity"] >= 0.9 for r in rows) / len(rows)
        assert stats[name]["share_ge_90"] == pytest.approx(share) and stats[name]["queries"] == len(rows)
    assert max(stats["valid"]["share_ge_90"], stats["test"]["share_ge_90"]) > 0  # leakage was planted
    metrics = {r["name"]: r["value"] for r in LineageStore(res.lineage).query(
        "SELECT name, value FROM metrics WHERE run_id = ? AND name LIKE 'audit/%'", [res.run_id])}
    assert metrics["audit/valid/share_ge_90"] == pytest.approx(stats["valid"]["share_ge_90"])
    from pipeline_lib.dashboard.report import render_report

    page = render_report(res.lineage, res.run_id)  # the report's audit table names the closest pair
    worst = max((stats[s] for s in ("valid", "test")), key=lambda m: m["max_identity"])["closest"]
    assert "Leakage audit" in page and f"{worst['id']} ~ {worst['train_id']}" in page
    together = data_refresh(str(ROOT / "configs" / "demo.yaml"), _args(tmp_path / "b", fasta, "0.5"))
    assert all(together.stages["audit"].stats[s]["max_identity"] == 0.0 for s in ("valid", "test"))
    # query-sharded: chunks of 8 held-out queries, side by side on the thread runner, give the same hits in the
    # same order as the one search above, and the same audit (the data stages are served from cache)
    chunked = data_refresh(str(ROOT / "configs" / "demo.yaml"), _args(tmp_path / "a", fasta, "1.0",
                                                                      "split.audit.chunk_queries=8"))
    assert chunked.stages["split"].cached and not chunked.stages["audit"].cached
    one, many = chunk_hits(res), chunk_hits(chunked)
    assert len(one) == 1 and len(many) == -(-len(audit) // 8) >= 3
    assert [line for f in many for line in f.read_text().splitlines()] == one[0].read_text().splitlines()
    assert pq.read_table(chunked.stages["audit"].path("audit.parquet")).equals(
        pq.read_table(res.stages["audit"].path("audit.parquet")))
    assert chunked.stages["audit"].stats["chunks"] == len(many)


def chunk_hits(result) -> list:
    """The hit files of a run's audit chunks, in chunk order (from lineage: step cache keys -> stage directories)."""
    import json
    from pathlib import Path

    workdir = Path(result.stages["audit"].directory).parents[2]
    steps = LineageStore(result.lineage).query(
        "SELECT cache_key, stats FROM steps WHERE run_id=? AND stage='audit_chunk'", [result.run_id])
    ordered = sorted(steps, key=lambda s: json.loads(s["stats"])["chunk"])
    return [workdir / "stages" / "audit_chunk" / s["cache_key"][:16] / "hits.tsv" for s in ordered]


def test_max_identity_fails_the_build_before_the_shards(prefect_harness, tmp_path):
    fasta = tmp_path / "families.fa"
    family_fasta(fasta, families=12, mutants=3, unrelated=12, length=150)
    with pytest.raises(DataValidationError, match=r"leakage audit: (valid|test) sequence fam\d+_\w+ is 0\.9\d+ "
                                                  r"identical to training sequence fam\d+_\w+"):
        data_refresh(str(ROOT / "configs" / "demo.yaml"),
                     _args(tmp_path, fasta, "1.0", "split.audit.max_identity=0.9"))
    assert not list((tmp_path / "w" / "stages").glob("shards/*/manifest.json"))


def test_decontaminating_train_against_held_out_removes_exactly_the_leaks(prefect_harness, tmp_path):
    """`split.decontaminate.held_out`: training sequences at >= 90 % identity to a valid or test sequence are
    quarantined (as the true families say, and nothing else), and the audit after it finds no such pair."""
    fasta = tmp_path / "families.fa"
    family_fasta(fasta, families=12, mutants=3, unrelated=12, length=150)
    res = data_refresh(str(ROOT / "configs" / "demo.yaml"),
                       _args(tmp_path, fasta, "1.0", "split.decontaminate.held_out=true",
                             "split.decontaminate.min_seq_id=0.9"))
    split = {r["id"]: r["split"] for r in pq.read_table(res.stages["split"].path("splits.parquet")).to_pylist()}
    removed = pq.read_table(res.stages["split"].path("quarantine.parquet")).to_pylist()
    assigned = {**split, **{r["id"]: "train" for r in removed}}  # removed rows were train
    held_families = {_family(i) for i, s in assigned.items() if s != "train" and i.startswith("fam")}
    truth = {i for i, s in assigned.items() if s == "train" and i.startswith("fam") and _family(i) in held_families}
    assert truth and {r["id"] for r in removed} == truth
    assert all(r["reason"] == "decontaminated" and "identity to held-out sequence fam" in r["detail"] for r in removed)
    assert res.stages["split"].stats["decontaminated"] == len(truth)
    assert all(res.stages["audit"].stats[s]["max_identity"] < 0.9 for s in ("valid", "test"))
    # query-sharded: the training rows searched in chunks of 40 sequence rows on the thread runner, against the
    # targets' database built (and, for several chunks, indexed) once, quarantine exactly the same rows
    chunked = data_refresh(str(ROOT / "configs" / "demo.yaml"),
                           _args(tmp_path, fasta, "1.0", "split.decontaminate.held_out=true",
                                 "split.decontaminate.min_seq_id=0.9", "split.decontaminate.chunk_rows=40"))
    steps = LineageStore(chunked.lineage).query(
        "SELECT stage, status, stats FROM steps WHERE run_id=? AND stage LIKE 'decontam%'", [chunked.run_id])
    rows = res.stages["ingest"].outputs["sequences.parquet"].rows
    assert sorted(s["stage"] for s in steps) == ["decontam_chunk"] * -(-rows // 40) + ["decontam_target"]
    assert pq.read_table(chunked.stages["split"].path("quarantine.parquet")).equals(
        pq.read_table(res.stages["split"].path("quarantine.parquet")))
    assert chunked.stages["split"].stats["decontam_chunks"] == -(-rows // 40) >= 2
