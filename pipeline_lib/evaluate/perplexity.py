"""Held-out perplexity of a masked language model over token shards, and pseudo-perplexity.

    results = evaluate_perplexity(HFMaskedLM(model), "work/shards", cfg.evaluate.perplexity,
                                  batch_size=16, window=1022)
    for r in results: print(r.split, r.metric, r.value, r.n_tokens)

Shards are read one Parquet row group at a time (``<shards>/<split>/part-*.parquet``, the order of
``manifest.json`` when present). The token column is ``tokens`` (ESM-2 ids with ``<cls>``/``<eos>``) for an
ESM alphabet and ``sa_tokens`` for a structure-aware (SaProt) one.

Masked perplexity: in every sequence ``max(1, round(mask_fraction x residues))`` residue positions are
drawn by one generator per split seeded with ``mask_seed`` (the same positions for every checkpoint and
batch size) and replaced by the mask: ``<mask>`` for ESM, ``#`` + the original 3Di letter for SaProt.
Perplexity = exp(mean negative log-likelihood of the original tokens over all masked positions of the
split). Pseudo-perplexity masks every position in turn (L forward passes per sequence, batched) on the
first ``pseudo_max_sequences`` sequences. Sequences longer than ``window`` residues are cut into
near-equal consecutive chunks, each wrapped in ``<cls>``/``<eos>``.
"""
from __future__ import annotations

import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import PerplexityConfig
from pipeline_lib.evaluate.model import MaskedLM, pad_batch
from pipeline_lib.schemas import token_buffers
from pipeline_lib.tokenizer import Alphabet

__all__ = ["PerplexityResult", "token_column", "shard_files", "iter_token_rows", "mask_lookup", "masked_nll",
           "pseudo_nll",
           "evaluate_perplexity"]

_BUFFER = 64  # batches gathered before sorting by length (less padding, bounded memory)


@dataclass(frozen=True)
class PerplexityResult:
    split: str
    metric: str          # "perplexity" or "pseudo_perplexity"
    nll_sum: float       # natural log
    n_tokens: int        # scored (masked) positions
    n_sequences: int

    @property
    def value(self) -> float:
        return math.exp(self.nll_sum / self.n_tokens) if self.n_tokens else float("nan")


def token_column(alphabet: Alphabet) -> str:
    return "tokens" if "A" in alphabet.index else "sa_tokens"


def shard_files(shards_dir: str | os.PathLike[str], split: str) -> list[Path]:
    """Parquet files of one split: the manifest's order when there is one, else sorted file names."""
    root = Path(shards_dir)
    manifest = root / "manifest.json"
    if manifest.is_file():
        info = json.loads(manifest.read_text()).get("splits", {}).get(split)
        if info is None:
            raise DataValidationError(f"split {split!r} is not in the shard manifest", path=str(manifest))
        return [root / f["path"] for f in info["files"]]
    if not (root / split).is_dir():
        raise DataValidationError(f"no shard folder for split {split!r}", path=str(root))
    return sorted((root / split).glob("*.parquet"))


def _check_specials(values: np.ndarray, offsets: np.ndarray, specials: tuple[int, int], path: Path,
                    rg: int) -> None:
    lengths = np.diff(offsets)
    ok = lengths >= 2
    if len(values):
        first = values[np.clip(offsets[:-1], 0, len(values) - 1)]
        last = values[np.clip(offsets[1:] - 1, 0, len(values) - 1)]
        ok &= (first == specials[0]) & (last == specials[1])
    if not ok.all():
        bad = int(np.flatnonzero(~ok)[0])
        raise DataValidationError("token row does not start with <cls> and end with <eos>", path=str(path),
                                  record=f"row group {rg}, row {bad}")


def iter_token_rows(files: list[Path], column: str, *, vocab_size: int, specials: tuple[int, int] = (0, 2),
                    max_sequences: int | None = None) -> Iterator[np.ndarray]:
    """Token arrays (int64, ``<cls>`` ... ``<eos>``), one row group in memory at a time.

    ``specials``: the (cls, eos) ids every row must start and end with.
    """
    n = 0
    for path in files:
        pf = pq.ParquetFile(path)
        if column not in pf.schema_arrow.names:
            raise DataValidationError(f"no {column!r} column (columns: {pf.schema_arrow.names})", path=str(path))
        for rg in range(pf.num_row_groups):
            offsets, values = token_buffers(pf.read_row_group(rg, columns=[column]).column(column))
            if len(values) and (values.min() < 0 or values.max() >= vocab_size):
                raise DataValidationError(f"token ids outside the model's vocabulary of {vocab_size}",
                                          path=str(path), record=f"row group {rg}")
            _check_specials(values, offsets, specials, path, rg)
            for i in range(len(offsets) - 1):
                if max_sequences is not None and n >= max_sequences:
                    return
                yield values[offsets[i]: offsets[i + 1]]
                n += 1


def mask_lookup(alphabet: Alphabet) -> np.ndarray:
    """int64 [V]: the token that masks each token (``<mask>``; SaProt ``#`` + the token's 3Di letter)."""
    lut = np.full(len(alphabet), alphabet.mask_idx, dtype=np.int64)
    for tok, i in alphabet.index.items():
        if len(tok) == 2 and ("#" + tok[1]) in alphabet.index:
            lut[i] = alphabet.index["#" + tok[1]]
    return lut


def _chunks(n_residues: int, window: int) -> list[tuple[int, int]]:
    """Near-equal consecutive residue ranges [start, end) (0-based) of at most ``window`` residues."""
    k = max(1, -(-n_residues // window))
    edges = np.linspace(0, n_residues, k + 1).round().astype(int)
    return list(zip(edges[:-1].tolist(), edges[1:].tolist(), strict=False))


Item = tuple[np.ndarray, np.ndarray, np.ndarray]   # (input tokens, positions, target ids)


def _sum_nll(model: MaskedLM, items: list[Item], batch_size: int) -> float:
    """Sum of -log p(target) at the given positions, batching items of similar length together."""
    total = 0.0
    items = sorted(items, key=lambda it: len(it[0]))
    for b in range(0, len(items), batch_size):
        batch = items[b: b + batch_size]
        tokens = pad_batch([torch.from_numpy(it[0]) for it in batch], model.alphabet.pad_idx)
        logits = model.logits(tokens)
        bi = torch.cat([torch.full((len(it[1]),), i, dtype=torch.long) for i, it in enumerate(batch)])
        pi = torch.from_numpy(np.concatenate([it[1] for it in batch]))
        tgt = torch.from_numpy(np.concatenate([it[2] for it in batch])).to(logits.device)
        logp = torch.log_softmax(logits[bi.to(logits.device), pi.to(logits.device)], dim=-1)
        total -= float(logp.gather(1, tgt[:, None]).sum())
    return total


def _wrap(alphabet: Alphabet, body: np.ndarray) -> np.ndarray:
    return np.concatenate(([alphabet.cls_idx], body, [alphabet.eos_idx])).astype(np.int64)


def masked_nll(model: MaskedLM, rows: Iterator[np.ndarray], *, mask_fraction: float = 0.15, seed: int = 0,
               batch_size: int = 8, window: int = 1022) -> tuple[float, int, int]:
    """(NLL sum, masked positions, sequences) of masked-token prediction over ``rows``."""
    alphabet = model.alphabet
    lut = mask_lookup(alphabet)
    rng = np.random.default_rng(seed)
    items: list[Item] = []
    nll, n_tok, n_seq = 0.0, 0, 0
    for tokens in rows:
        body = tokens[1:-1]
        n = len(body)
        if n == 0:
            continue
        k = max(1, int(round(mask_fraction * n)))
        chosen = np.zeros(n, dtype=bool)
        chosen[rng.choice(n, size=k, replace=False)] = True
        masked = np.where(chosen, lut[body], body)
        for s, e in _chunks(n, window):
            pos = np.flatnonzero(chosen[s:e])
            if len(pos):
                items.append((_wrap(alphabet, masked[s:e]), pos + 1, body[s:e][pos]))
        n_tok += k
        n_seq += 1
        if len(items) >= _BUFFER * batch_size:
            nll += _sum_nll(model, items, batch_size)
            items = []
    return nll + (_sum_nll(model, items, batch_size) if items else 0.0), n_tok, n_seq


def pseudo_nll(model: MaskedLM, rows: Iterator[np.ndarray], *, batch_size: int = 8,
               window: int = 1022) -> tuple[float, int, int]:
    """(NLL sum, positions, sequences) with every residue masked in turn (one input per position)."""
    alphabet = model.alphabet
    lut = mask_lookup(alphabet)
    nll, n_tok, n_seq = 0.0, 0, 0
    for tokens in rows:
        body = tokens[1:-1]
        items: list[Item] = []
        for s, e in _chunks(len(body), window):
            chunk = _wrap(alphabet, body[s:e])
            for p in range(1, e - s + 1):
                x = chunk.copy()
                x[p] = lut[chunk[p]]
                items.append((x, np.array([p]), chunk[p: p + 1]))
        if items:
            nll += _sum_nll(model, items, batch_size)
            n_tok += len(items)
            n_seq += 1
    return nll, n_tok, n_seq


def evaluate_perplexity(model: MaskedLM, shards_dir: str | os.PathLike[str], cfg: PerplexityConfig, *,
                        batch_size: int = 8, window: int = 1022) -> list[PerplexityResult]:
    """Masked perplexity (and pseudo-perplexity when ``cfg.pseudo_max_sequences`` > 0) of every split."""
    column = token_column(model.alphabet)
    vocab = len(model.alphabet)
    specials = (model.alphabet.cls_idx, model.alphabet.eos_idx)
    out = []
    for split in cfg.splits:
        files = shard_files(shards_dir, split)
        rows = iter_token_rows(files, column, vocab_size=vocab, specials=specials, max_sequences=cfg.max_sequences)
        nll, n, seqs = masked_nll(model, rows, mask_fraction=cfg.mask_fraction, seed=cfg.mask_seed,
                                  batch_size=batch_size, window=window)
        out.append(PerplexityResult(split, "perplexity", nll, n, seqs))
        if cfg.pseudo_max_sequences:
            rows = iter_token_rows(files, column, vocab_size=vocab, specials=specials,
                                   max_sequences=cfg.pseudo_max_sequences)
            nll, n, seqs = pseudo_nll(model, rows, batch_size=batch_size, window=window)
            out.append(PerplexityResult(split, "pseudo_perplexity", nll, n, seqs))
    return out
