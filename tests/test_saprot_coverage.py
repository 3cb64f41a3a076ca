"""Structure coverage: the structures stage reports the share of rows with a structure per split and warns below
`structures.min_coverage`; SaProt training on a train split without any structure fails before training, naming
the sources and what they matched (before: it trained on '#' tokens only, exit 0)."""
from __future__ import annotations

import logging

import pytest

from flows.end_to_end import train_flow
from pipeline_lib.config import ShardsConfig
from pipeline_lib.errors import DataValidationError
from pipeline_lib.structures.config import DirectorySource, StructuresConfig
from pipeline_lib.structures.parse import parse_structure
from pipeline_lib.structures.stage import build_structure_shards, check_saprot_coverage
from tests.conftest import ROOT, fixture_path
from tests.test_structures_stage import _inputs


def _build(tmp_path, rows, **cfg):
    _inputs(tmp_path, rows)
    afdb = fixture_path("structures", "afdb")
    config = StructuresConfig(enabled=True, backend="mini3di", sources=[DirectorySource(path=str(afdb))], **cfg)
    return build_structure_shards(tmp_path / "sequences.parquet", tmp_path / "clusters.parquet",
                                  tmp_path / "splits.parquet", tmp_path / "out", config, levels=["c50"],
                                  shards_cfg=ShardsConfig(), download_dir=tmp_path / "dl")


def test_coverage_is_reported_per_split_and_low_coverage_warns(tmp_path, caplog):
    model = parse_structure(fixture_path("structures", "afdb", "AF-Q96HM7-F1-model_v4.pdb"))[0]
    rows = [{"id": "sp|Q96HM7|X", "accession": "Q96HM7", "sequence": model.sequence},
            *({"id": f"other{i}", "accession": f"P0000{i}", "sequence": "MKVLAAGIVLLA"} for i in range(3))]
    with caplog.at_level(logging.WARNING):
        res = _build(tmp_path, rows, min_coverage=0.5)
    assert res.stats["coverage"] == {"train": 0.25, "valid": None, "test": None}
    assert res.manifest["splits"]["train"]["rows_with_structure"] == 1 and res.manifest["coverage"]["train"] == 0.25
    assert "LOW STRUCTURE COVERAGE: 1 of 4 rows (25.00%)" in caplog.text and "below structures.min_coverage 50%" \
        in caplog.text
    check_saprot_coverage(res.manifest)  # one structure is enough to train
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        (tmp_path / "again").mkdir()
        _build(tmp_path / "again", rows, min_coverage=0.2)
    assert "LOW STRUCTURE COVERAGE" not in caplog.text


def test_no_training_row_with_a_structure_is_refused(tmp_path):
    rows = [{"id": f"other{i}", "accession": f"P0000{i}", "sequence": "MKVLAAGIVLLA"} for i in range(3)]
    res = _build(tmp_path, rows)
    assert res.stats["structures"] == 5 and res.stats["rows_with_structure"] == 0
    with pytest.raises(DataValidationError) as err:
        check_saprot_coverage(res.manifest)
    msg = str(err.value)
    assert "none of the 3 rows has a structure" in msg and "gave 5 structures" in msg
    assert f"directory {fixture_path('structures', 'afdb')}" in msg


def test_saprot_training_without_structures_fails_before_training(prefect_harness, tmp_path):
    fasta = tmp_path / "in.fa"
    fasta.write_text("".join(f">s{i}\n{'MKVLAAGIVLLAGHKLEWT'[i:] * 4}\n" for i in range(12)))
    args = [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{fasta}]}}", "train.vocab=saprot",
            "split.valid_fraction=0.2", "split.test_fraction=0.2", "msa.enabled=false", "train.total_steps=2",
            f"structures.sources=[{{kind: directory, path: {fixture_path('structures', 'afdb')}}}]"]
    with pytest.raises(DataValidationError, match="SaProt training on the 'train' split, where none of the"):
        train_flow(str(ROOT / "configs" / "demo.yaml"), args)
    assert not list((tmp_path / "work" / "stages").glob("train/*/checkpoints"))
