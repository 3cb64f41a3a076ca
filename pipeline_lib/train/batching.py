"""Crop and mask samples, and group them into token-budget batches (packed rows or padded).

    masker = Masker(ESM_ALPHABET, max_len=1024, seed=0)
    batcher = Batcher(max_len=1024, batch_tokens=65536, packing=True, pad_id=1)
    for batch, resume_at in batcher.batches((pos, masker(row, epoch=pos["epoch"])) for pos, row in stream):
        ...

Masking (ESM-2 / BERT, fairseq's count rule): ``int(p * L + u)`` residue positions (never <cls>/<eos>/
<pad>), chosen without replacement; of those 80% -> <mask>, 10% -> a random standard amino acid, 10%
unchanged; labels hold the original ids there and -100 elsewhere. SaProt: ``aa_hash`` replaces the amino
acid by ``#`` and keeps the 3Di letter (random: another amino acid, same 3Di letter). Crop: a random
window of ``max_len - 2`` residues, re-wrapped in <cls>/<eos>. The random draws of a sample are a pure
function of (seed, epoch, row), so a resumed stream masks exactly as the first one did.

Batches: packed rows of ``max_len`` tokens, ``batch_tokens // max_len`` rows, filled first-fit in stream
order (``doc_ids``, restarting ``position_ids`` and ``cu_seqlens`` for varlen attention), or one sequence
per row padded to the batch maximum (rounded up to 8) with rows x length <= ``batch_tokens``.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, fields

import numpy as np
import torch

from pipeline_lib.errors import DataValidationError
from pipeline_lib.tokenizer import SAPROT_3DI, SAPROT_AA, Alphabet

__all__ = ["Sample", "Batch", "Masker", "Batcher", "IGNORE", "CANONICAL_AA"]

IGNORE = -100
CANONICAL_AA = "ACDEFGHIKLMNPQRSTVWY"


@dataclass
class Sample:
    row: int
    id: str
    tokens: np.ndarray   # model input (masked), int64, with <cls>/<eos>
    labels: np.ndarray   # original ids at predicted positions, IGNORE elsewhere


@dataclass
class Batch:
    tokens: torch.Tensor                   # (B, T) int64
    labels: torch.Tensor                   # (B, T) int64, IGNORE where not predicted
    position_ids: torch.Tensor | None = None  # (B, T) int64; None for MSA batches
    doc_ids: torch.Tensor | None = None    # (B, T) int32, packed only; -1 on padding
    cu_seqlens: torch.Tensor | None = None  # (S + 1,) int32 over the flattened rows, padding tails included
    max_seqlen: int = 0
    ids: list[str] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)
    n_tokens: int = 0                      # non-pad tokens
    n_targets: int = 0                     # predicted positions

    def _map(self, fn) -> Batch:
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = fn(v) if isinstance(v, torch.Tensor) else v
        return type(self)(**out)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> Batch:
        return self._map(lambda t: t.to(device, non_blocking=non_blocking))

    def pin_memory(self) -> Batch:  # called by DataLoader(pin_memory=True)
        return self._map(lambda t: t.pin_memory())

    def model_inputs(self) -> dict[str, object]:
        return {"position_ids": self.position_ids, "doc_ids": self.doc_ids, "cu_seqlens": self.cu_seqlens,
                "max_seqlen": self.max_seqlen}


class Masker:
    """Crop + mask one stored token row (a pure function of seed, epoch and row number)."""

    def __init__(self, alphabet: Alphabet, *, max_len: int = 1024, mask_prob: float = 0.15,
                 mask_token_prob: float = 0.8, random_token_prob: float = 0.1, seed: int = 0,
                 include_special: bool = True, saprot_mask: str = "aa_hash") -> None:
        self.ab, self.max_len, self.seed = alphabet, max_len, seed
        self.mask_prob, self.p_mask, self.p_rand = mask_prob, mask_token_prob, random_token_prob
        self.include_special = include_special
        self.special = np.zeros(len(alphabet), dtype=bool)
        self.special[list(alphabet.special_ids)] = True
        self.saprot = alphabet.name == "saprot"
        self.saprot_hash = self.saprot and saprot_mask == "aa_hash"
        if self.saprot:
            self.n3di = len(SAPROT_3DI)
            self.canonical = np.array([SAPROT_AA.index(a) for a in CANONICAL_AA], dtype=np.int64)
        else:
            self.canonical = np.array([alphabet.index[a] for a in CANONICAL_AA], dtype=np.int64)

    def _crop(self, tokens: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        body = tokens[1:-1] if self.include_special else tokens
        keep = self.max_len - 2
        if len(body) > keep:
            start = int(rng.integers(0, len(body) - keep + 1))
            body = body[start:start + keep]
        return np.concatenate(([self.ab.cls_idx], body, [self.ab.eos_idx])).astype(np.int64)

    def _replacements(self, orig: np.ndarray, kind: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """New ids for the chosen positions: kind 0 -> mask, 1 -> random residue, 2 -> unchanged."""
        out = orig.copy()
        rand_aa = self.canonical[rng.integers(0, len(self.canonical), size=len(orig))]
        if self.saprot:  # pair id = 5 + aa * 21 + 3di; keep the 3Di letter
            di = (orig - 5) % self.n3di
            hash_aa = SAPROT_AA.index("#")
            masked = 5 + hash_aa * self.n3di + di if self.saprot_hash else np.full_like(orig, self.ab.mask_idx)
            out = np.where(kind == 0, masked, np.where(kind == 1, 5 + rand_aa * self.n3di + di, orig))
        else:
            out = np.where(kind == 0, self.ab.mask_idx, np.where(kind == 1, rand_aa, orig))
        return out.astype(np.int64)

    def __call__(self, tokens: np.ndarray, *, row: int, epoch: int, id: str = "") -> Sample:
        if len(tokens) and (tokens.max() >= len(self.ab) or tokens.min() < 0):
            raise DataValidationError(f"token id outside the {self.ab.name} vocabulary ({len(self.ab)})", record=id)
        rng = np.random.default_rng([self.seed, epoch, row, 0x3A5C])
        toks = self._crop(tokens, rng)
        residues = np.flatnonzero(~self.special[toks])
        n = min(len(residues), int(self.mask_prob * len(residues) + rng.random()))
        chosen = np.sort(rng.choice(residues, size=n, replace=False)) if n else residues[:0]
        u = rng.random(n)
        kind = np.where(u < self.p_mask, 0, np.where(u < self.p_mask + self.p_rand, 1, 2))
        labels = np.full(len(toks), IGNORE, dtype=np.int64)
        labels[chosen] = toks[chosen]
        inputs = toks.copy()
        inputs[chosen] = self._replacements(toks[chosen], kind, rng)
        return Sample(row=row, id=id, tokens=inputs, labels=labels)


class Batcher:
    """Group samples into batches of at most ``batch_tokens`` tokens; yields (batch, resume position)."""

    def __init__(self, *, max_len: int, batch_tokens: int, packing: bool, pad_id: int, pad_multiple: int = 8) -> None:
        if batch_tokens < max_len:
            raise ValueError(f"batch_tokens {batch_tokens} < max_len {max_len}")
        self.max_len, self.budget, self.packing, self.pad_id = max_len, batch_tokens, packing, pad_id
        self.n_rows = batch_tokens // max_len
        self.pad_multiple = pad_multiple

    def _padded_len(self, n: int) -> int:
        return -(-n // self.pad_multiple) * self.pad_multiple

    def batches(self, samples: Iterable[tuple[dict, Sample]]) -> Iterator[tuple[Batch, dict]]:
        """Each batch comes with the position of the first sample *not* in it (where a resume starts)."""
        rows: list[list[Sample]] = []
        fill: list[int] = []
        for pos, s in samples:
            n = len(s.tokens)
            if self.packing:
                slot = next((i for i, f in enumerate(fill) if f + n <= self.max_len), None)
                if slot is None and len(rows) < self.n_rows:
                    rows.append([])
                    fill.append(0)
                    slot = len(rows) - 1
                if slot is None:
                    yield self._pack(rows), pos
                    rows, fill, slot = [[]], [0], 0
                rows[slot].append(s)
                fill[slot] += n
            else:
                width = self._padded_len(max([n] + fill))
                if rows and (len(rows) + 1) * width > self.budget:
                    yield self._pad(rows), pos
                    rows, fill = [], []
                rows.append([s])
                fill.append(n)

    def _pad(self, rows: list[list[Sample]]) -> Batch:
        samples = [r[0] for r in rows]
        t = self._padded_len(max(len(s.tokens) for s in samples))
        tokens = np.full((len(samples), t), self.pad_id, dtype=np.int64)
        labels = np.full((len(samples), t), IGNORE, dtype=np.int64)
        for i, s in enumerate(samples):
            tokens[i, :len(s.tokens)] = s.tokens
            labels[i, :len(s.labels)] = s.labels
        pos = np.broadcast_to(np.arange(t), tokens.shape).copy()
        return self._finish(tokens, labels, pos, None, None, 0, samples)

    def _pack(self, rows: list[list[Sample]]) -> Batch:
        t = self.max_len
        shape = (len(rows), t)
        tokens = np.full(shape, self.pad_id, dtype=np.int64)
        labels = np.full(shape, IGNORE, dtype=np.int64)
        pos = np.zeros(shape, dtype=np.int64)
        doc = np.full(shape, -1, dtype=np.int32)
        seg_lens: list[int] = []
        for r, row in enumerate(rows):
            at = 0
            for d, s in enumerate(row):
                n = len(s.tokens)
                tokens[r, at:at + n], labels[r, at:at + n] = s.tokens, s.labels
                pos[r, at:at + n], doc[r, at:at + n] = np.arange(n), d
                seg_lens.append(n)
                at += n
            if at < t:
                seg_lens.append(t - at)  # the padding tail is a segment of its own for varlen
        cu = np.concatenate(([0], np.cumsum(seg_lens))).astype(np.int32)
        samples = [s for row in rows for s in row]
        return self._finish(tokens, labels, pos, doc, cu, max(seg_lens), samples)

    def _finish(self, tokens: np.ndarray, labels: np.ndarray, pos: np.ndarray, doc: np.ndarray | None,
                cu: np.ndarray | None, max_seqlen: int, samples: list[Sample]) -> Batch:
        return Batch(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
                     position_ids=torch.from_numpy(pos),
                     doc_ids=None if doc is None else torch.from_numpy(doc),
                     cu_seqlens=None if cu is None else torch.from_numpy(cu), max_seqlen=max_seqlen,
                     ids=[s.id for s in samples], rows=[s.row for s in samples],
                     n_tokens=int(sum(len(s.tokens) for s in samples)),
                     n_targets=int(sum(int((s.labels != IGNORE).sum()) for s in samples)))
