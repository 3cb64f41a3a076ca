"""What a run can check before any stage starts: the files it will read exist, the split names it uses are
splits this config makes, and its model supports what it is asked to evaluate.

    check(cfg, "end_to_end")                                   # raises ConfigError listing every problem
    check(cfg, "evaluate", checkpoints=["work/ckpt/step-40"])

The CLI calls :func:`check` right after loading the config, before Prefect starts; each flow calls it again
when it loads its config (a deployment's run), so the failure is a failed run in lineage. Only what the flow
uses is checked: ``plm evaluate`` with perplexity off reads no sequence input, so a config whose FASTA is
elsewhere still scores DMS files. URLs are not fetched here (the source stage checks them).
"""
from __future__ import annotations

import glob
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path

from pipeline_lib.config import Config
from pipeline_lib.errors import ConfigError, PipelineError

__all__ = ["check", "problems", "checkpoint_vocab", "SPLITS", "FLOWS"]

SPLITS = ("train", "valid", "test")
FLOWS = ("data_refresh", "end_to_end", "structures", "msa", "train", "evaluate")
_GLOB_CHARS = frozenset("*?[")


def _missing(item: str, *, directory: bool = False) -> str | None:
    """Why local ``item`` (a path or a glob) cannot be read; None when it can, or when it is a URL."""
    if "://" in item:
        return None
    path = os.path.expanduser(item)
    if _GLOB_CHARS & set(item) and not os.path.exists(path):
        return None if glob.glob(path, recursive=True) else "the pattern matches no file"
    if not os.path.exists(path):
        return "no such file or directory"
    if directory and not os.path.isdir(path):
        return "not a directory"
    if not directory and os.path.isdir(path):
        return "a directory, not a file"
    return None


def checkpoint_vocab(path: str | os.PathLike[str]) -> str | None:
    """``"saprot"`` or ``"esm"`` for a checkpoint of ours (``meta.json``) or a Hugging Face directory
    (``config.json``, or its ``hf/`` folder); None when neither is there."""
    from pipeline_lib.tokenizer import SAPROT_ALPHABET

    p = Path(path)
    for cfg_file in (p / "config.json", p / "hf" / "config.json"):
        if cfg_file.is_file():
            size = json.loads(cfg_file.read_text()).get("vocab_size")
            return "saprot" if size == len(SAPROT_ALPHABET) else "esm"
    meta = p / "meta.json"
    if meta.is_file():
        return str(json.loads(meta.read_text()).get("vocab") or "esm")
    return None


def _data_inputs(cfg: Config) -> list[str]:
    out: list[str] = []
    if cfg.source.kind == "fasta":
        out += [f"source.paths.{i}: {p}: {why}" for i, p in enumerate(cfg.source.paths) if (why := _missing(p))]
    out += [f"split.decontaminate.fasta.{i}: {p}: {why}" for i, p in enumerate(cfg.split.decontaminate.fasta)
            if (why := _missing(p))]
    out += [f"cluster.levels.{i}.membership: {lv.membership}: {why}" for i, lv in enumerate(cfg.cluster.levels)
            if lv.membership and not lv.membership.startswith("release:") and (why := _missing(lv.membership))]
    return out


def _structure_inputs(cfg: Config) -> list[str]:
    out: list[str] = []
    for i, src in enumerate(cfg.structures.sources):
        if src.kind == "directory" and (why := _missing(src.path, directory=True)):
            out.append(f"structures.sources.{i}.path: {src.path}: {why}")
        elif src.kind == "archive":
            out += [f"structures.sources.{i}.paths.{k}: {p}: {why}" for k, p in enumerate(src.paths)
                    if (why := _missing(p))]
    return out


def _split_used(cfg: Config, key: str, split: str) -> str | None:
    if split not in SPLITS:
        return f"{key}: no split {split!r}; the splits are {list(SPLITS)}"
    fraction = {"valid": cfg.split.valid_fraction, "test": cfg.split.test_fraction}.get(split)
    if fraction == 0:
        return f"{key}: split {split!r} is empty (split.{split}_fraction is 0)"
    return None


def _evaluate(cfg: Config, checkpoints: Sequence[str]) -> list[str]:
    ev = cfg.evaluate
    out: list[str] = []
    if ev.perplexity.enabled:
        out += [why for i, s in enumerate(ev.perplexity.splits)
                if (why := _split_used(cfg, f"evaluate.perplexity.splits.{i}", s))]
    if ev.dms.enabled:
        for i, f in enumerate(ev.dms.files):
            named = (("path", f.path), ("structure", f.structure))
            out += [f"evaluate.dms.files.{i}.{key}: {p}: {why}" for key, p in named if p and (why := _missing(p))]
    if ev.contacts.enabled:
        lists = [("test_structures", ev.contacts.test_structures)]
        if not isinstance(ev.contacts.train_structures, int):
            lists.append(("train_structures", ev.contacts.train_structures))
        from pipeline_lib.evaluate.contacts import parse_spec

        out += [f"evaluate.contacts.{key}.{i}: {s}: {why}" for key, items in lists for i, s in enumerate(items)
                if (why := _missing(parse_spec(s).path))]
    for path in checkpoints:
        if not Path(path).is_dir():
            out.append(f"--checkpoint {path}: no such directory")
            continue
        vocab = checkpoint_vocab(path)
        if vocab is None:
            out.append(f"--checkpoint {path}: neither a checkpoint of this pipeline (meta.json) nor a Hugging Face "
                       "model directory (config.json)")
        elif vocab == "saprot" and ev.perplexity.enabled and cfg.train.vocab != "saprot":
            out.append(f"--checkpoint {path}: a SaProt (structure-aware) model, whose perplexity needs the "
                       f"structure shards' sa_tokens, which this config does not build (train.vocab="
                       f"{cfg.train.vocab}): set train.vocab=saprot and structures.enabled=true, or "
                       "evaluate.perplexity.enabled=false")
    return out


def _mpi(cfg: Config) -> list[str]:
    """cluster.mpi_runner needs an MPI build of mmseqs and the launcher on PATH."""
    runner = cfg.cluster.mpi_runner
    if not runner:
        return []
    from pipeline_lib.tools.mmseqs import find_mmseqs, is_mpi_build  # noqa: PLC0415

    out = [] if shutil.which(runner[0]) else [f"cluster.mpi_runner: {runner[0]} is not on PATH"]
    try:
        binary = cfg.cluster.binary or find_mmseqs()
    except PipelineError as exc:
        return [*out, f"cluster.mpi_runner: {exc}"]
    if not is_mpi_build(binary):
        out.append(f"cluster.mpi_runner: {binary} is not an MPI build of mmseqs (under {' '.join(runner)} every "
                   "rank would redo each step); set cluster.binary to one (docs/scale.md, 'Multi-node MMseqs2')")
    return out


def problems(cfg: Config, flow: str, *, checkpoints: Sequence[str] = ()) -> list[str]:
    """Every problem :func:`check` would report for ``flow`` (one of :data:`FLOWS`), in config order."""
    training = flow == "train" or (flow == "end_to_end" and cfg.train.enabled)
    evaluating = flow == "evaluate" or (training and flow == "end_to_end" and cfg.evaluate.enabled)
    reads_data = flow != "evaluate" or cfg.evaluate.perplexity.enabled
    out = _data_inputs(cfg) if reads_data else []
    if reads_data and flow != "structures":
        out += _mpi(cfg)
    if flow == "structures" or (cfg.structures.enabled and reads_data) or (training and cfg.train.vocab == "saprot"):
        out += _structure_inputs(cfg)
    if training:
        out += [why for key, s in (("train.split", cfg.train.split),) if (why := _split_used(cfg, key, s))]
        if cfg.train.eval_every:
            out += [why for why in [_split_used(cfg, "train.eval_split", cfg.train.eval_split)] if why]
    if evaluating:
        out += _evaluate(cfg, checkpoints)
        if training and cfg.train.architecture == "msa_transformer":
            out.append("evaluate.enabled: the evaluate stage scores ESM-2 / SaProt models, not the MSA "
                       "Transformer; set evaluate.enabled=false to train one")
    return out


def check(cfg: Config, flow: str, *, checkpoints: Sequence[str] = ()) -> None:
    """Raise :class:`ConfigError` naming every problem of ``cfg`` for ``flow`` (nothing runs, nothing is read
    beyond the file system's view of the inputs)."""
    found = problems(cfg, flow, checkpoints=checkpoints)
    if found:
        lines = "\n  ".join(found)
        raise ConfigError(f"{cfg.name}: this {flow} run cannot start:\n  {lines}")
