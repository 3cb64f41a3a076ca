"""The evaluate stage: one checkpoint (a Hugging Face ``EsmForMaskedLM`` directory) on held-out shards,
contact structures and DMS assays, as metric rows.

    result = evaluate_checkpoint(Path("work/.../hf"), shards_dir, EvaluateConfig(enabled=True), contact_structures)
    result.rows                                 # metric rows; result.dms: per-assay results (variant_table)

Our own training checkpoints are exported to that layout first (``export_checkpoint_hf``), so public
ESM-2 directories and our checkpoints are evaluated by the same code.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import torch

from pipeline_lib.errors import PipelineError
from pipeline_lib.evaluate.config import EvaluateConfig
from pipeline_lib.evaluate.contacts import evaluate_contacts_config
from pipeline_lib.evaluate.model import HFMaskedLM
from pipeline_lib.evaluate.perplexity import evaluate_perplexity
from pipeline_lib.evaluate.report import MetricRow, collect_rows
from pipeline_lib.evaluate.variants import AssayResult, evaluate_dms
from pipeline_lib.structures.config import StructuresConfig
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET

__all__ = ["load_hf_model", "evaluate_checkpoint", "resolve_checkpoint", "CheckpointEvaluation"]

log = logging.getLogger(__name__)


def resolve_checkpoint(path: Path, export_dir: Path) -> Path:
    """A Hugging Face directory for ``path``: itself, its ``hf/`` folder, or an export of our checkpoint."""
    if (path / "config.json").is_file():
        return path
    if (path / "hf" / "config.json").is_file():
        return path / "hf"
    from pipeline_lib.train.checkpoint import export_checkpoint_hf

    if path.is_dir():
        export_checkpoint_hf(path, export_dir)
        return export_dir
    raise PipelineError(f"not a checkpoint or Hugging Face model directory: {path}")


def load_hf_model(hf_dir: Path) -> HFMaskedLM:
    from transformers import EsmForMaskedLM

    model = EsmForMaskedLM.from_pretrained(str(hf_dir)).eval()
    alphabet = SAPROT_ALPHABET if model.config.vocab_size == len(SAPROT_ALPHABET) else ESM_ALPHABET
    return HFMaskedLM(model, alphabet)


@dataclass
class CheckpointEvaluation:
    rows: list[MetricRow]                                   # every metric
    dms: list[AssayResult] = field(default_factory=list)    # per-assay results, per-variant scores included


def evaluate_checkpoint(hf_dir: Path, shards_dir: Path | None, cfg: EvaluateConfig,
                        contact_structures: list[str] | None = None,
                        structures_cfg: StructuresConfig | None = None) -> CheckpointEvaluation:
    """Every enabled evaluation of one model; ``contact_structures`` fill an empty contacts config, and
    SaProt models score assays that name a structure with its 3Di string (encoded per ``structures_cfg``)."""
    from pipeline_lib.structures.config import StructuresConfig
    from pipeline_lib.structures.stage import threedi_of_structure

    scfg = structures_cfg or StructuresConfig()
    model = load_hf_model(hf_dir)
    perplexity, dms, contacts = [], [], None
    with torch.inference_mode():
        if cfg.perplexity.enabled and shards_dir is not None:
            perplexity = evaluate_perplexity(model, shards_dir, cfg.perplexity, batch_size=cfg.batch_size,
                                             window=cfg.window_size)
        if cfg.dms.enabled and cfg.dms.files:
            dms = evaluate_dms(model, cfg.dms, window=cfg.window_size, batch_size=cfg.batch_size,
                               threedi_for_structure=lambda path, chain: threedi_of_structure(path, chain, scfg))
        contacts_cfg = cfg.contacts
        if contacts_cfg.enabled and not contacts_cfg.test_structures and contact_structures:
            n_train = contacts_cfg.train_structures
            if isinstance(n_train, int):  # keep at least one held-out structure
                n_train = max(1, min(n_train, len(contact_structures) - 1))
            contacts_cfg = contacts_cfg.model_copy(update={"test_structures": contact_structures,
                                                           "train_structures": n_train})
        if contacts_cfg.enabled and len(contacts_cfg.test_structures) >= 2 or (
                contacts_cfg.enabled and not isinstance(contacts_cfg.train_structures, int)):
            contacts = evaluate_contacts_config(model, contacts_cfg, window=cfg.window_size)
    rows = collect_rows(perplexity=perplexity, dms=dms, contacts=contacts)
    log.info("evaluation of %s: %d metrics", hf_dir, len(rows))
    return CheckpointEvaluation(rows, list(dms))
