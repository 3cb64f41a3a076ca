"""MSA Transformer training data: MSA shards -> cropped, subsampled, masked MSAs -> padded batches.

    index = MsaShardIndex("work/stages/msa/<key>/shards", split="train")
    for batch, resume_at in msa_micro_batches(index, cfg, shard=0, num_shards=1):
        logits = model(batch.tokens, output_mask=batch.labels != IGNORE)     # tokens: (B, R, C)

Reads the shards of :mod:`pipeline_lib.msa.tokens` (one row per MSA, ``msa_tokens`` depth x length ESM
ids, query first, no special tokens) through the same :class:`~pipeline_lib.train.data.SampleStream` as
the sequence shards (row groups dealt to ranks and workers, every MSA once per epoch, exact resume).

Per MSA (MSA Transformer recipe, a pure function of seed, epoch and row like :class:`Masker`):
- crop: a random window of ``max_len - 1`` columns, the same for every row; ``<cls>`` is prepended to
  every row (as ESM's MSA batch converter does), so a row has at most ``max_len`` tokens;
- depth: at most ``msa_max_rows`` rows and ``msa_max_tokens`` (2^14) tokens: the query (row 0) and
  uniformly drawn other rows, kept in their alignment order;
- masking: ``int(p * n + u)`` of the n maskable tokens of the whole MSA (residues, and gaps when
  ``msa_mask_gaps``; never ``<cls>`` or padding), 80% ``<mask>``, 10% a random standard amino acid,
  10% unchanged; labels hold the original ids there and -100 elsewhere.

Batches: MSAs padded with ``<pad>`` to the largest depth and width of the batch (rows x columns x
MSAs <= ``batch_tokens``); padded rows and columns are masked out of both attentions by the model.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch

from pipeline_lib.errors import DataValidationError
from pipeline_lib.msa.tokens import msa_arrays
from pipeline_lib.tokenizer import ESM_ALPHABET
from pipeline_lib.train.batching import CANONICAL_AA, IGNORE, Batch, Sample
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.data import Position, RawRow, SampleStream, ShardIndex

__all__ = ["MsaShardIndex", "MsaMasker", "MsaBatcher", "MsaBatch", "msa_micro_batches"]


class MsaShardIndex(ShardIndex):
    """Row groups of a split of MSA shards (one Parquet row per MSA, id column ``query_id``)."""

    def __init__(self, shards_dir: str | Path, *, split: str = "train", column: str = "msa_tokens") -> None:
        super().__init__(shards_dir, split=split, column=column, cluster_level=None, id_column="query_id")
        if self.manifest.get("kind") != "msa":
            raise DataValidationError(f"not an MSA shard manifest (kind {self.manifest.get('kind')!r}); "
                                      f"train.architecture msa_transformer reads the msa stage's shards",
                                      path=str(self.dir / "manifest.json"))

    def read_rows(self, unit: int, local_rows: np.ndarray, cache: dict[int, pq.ParquetFile]) -> list[RawRow]:
        """The given MSAs (0-based rows of the row group) as (depth, length) uint8 token matrices."""
        fi = int(self.unit_file[unit])
        pf = cache.get(fi)
        if pf is None:
            pf = cache[fi] = pq.ParquetFile(self.files[fi])
        table = pf.read_row_group(int(self.unit_rg[unit]), columns=[self.column, "query_id"]).take(pa.array(local_rows))
        ids = table.column("query_id").to_pylist()
        try:
            arrays = msa_arrays(table.column(self.column))
        except ValueError as exc:
            raise DataValidationError(f"row group {int(self.unit_rg[unit])}: {exc}", path=str(self.files[fi])) from None
        start = int(self.unit_start[unit])
        return [RawRow(start + int(r), ids[i], arrays[i]) for i, r in enumerate(local_rows)]


class MsaBatch(Batch):
    """Batch of padded MSAs: ``tokens`` / ``labels`` (B, R, C); the model takes no other inputs."""

    def model_inputs(self) -> dict[str, object]:
        return {}


class MsaMasker:
    """Crop columns, subsample rows and mask one stored MSA (a pure function of seed, epoch and row)."""

    def __init__(self, *, max_len: int = 1024, max_rows: int = 1024, max_tokens: int = 1 << 14,
                 mask_prob: float = 0.15, mask_token_prob: float = 0.8, random_token_prob: float = 0.1,
                 mask_gaps: bool = True, seed: int = 0) -> None:
        self.ab, self.max_len, self.max_rows, self.max_tokens = ESM_ALPHABET, max_len, max_rows, max_tokens
        self.mask_prob, self.p_mask, self.p_rand, self.seed = mask_prob, mask_token_prob, random_token_prob, seed
        self.maskable = np.ones(len(self.ab), dtype=bool)
        self.maskable[list(self.ab.special_ids)] = False
        if not mask_gaps:
            self.maskable[self.ab.index["-"]] = False
        self.canonical = np.array([self.ab.index[a] for a in CANONICAL_AA], dtype=np.int64)

    def crop(self, msa: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """(rows, columns + 1) int64 with a <cls> column: column window, then the query and random rows."""
        depth, length = msa.shape
        keep = self.max_len - 1
        if length > keep:
            start = int(rng.integers(0, length - keep + 1))
            msa = msa[:, start:start + keep]
        width = msa.shape[1] + 1
        n_rows = max(1, min(self.max_rows, self.max_tokens // width))
        if depth > n_rows:
            others = rng.choice(np.arange(1, depth), size=n_rows - 1, replace=False)
            msa = msa[np.concatenate(([0], np.sort(others)))]
        cls = np.full((msa.shape[0], 1), self.ab.cls_idx, dtype=np.int64)
        return np.concatenate((cls, msa.astype(np.int64)), axis=1)

    def __call__(self, msa: np.ndarray, *, row: int, epoch: int, id: str = "") -> Sample:
        if msa.ndim != 2 or msa.shape[0] == 0:
            raise DataValidationError(f"MSA must be a non-empty (depth, length) matrix, got shape {msa.shape}",
                                      record=id)
        if msa.size and msa.max() >= len(self.ab):
            raise DataValidationError(f"token id outside the esm2 vocabulary ({len(self.ab)})", record=id)
        rng = np.random.default_rng([self.seed, epoch, row, 0x45A7])
        toks = self.crop(msa, rng)
        flat = toks.ravel()
        candidates = np.flatnonzero(self.maskable[flat])
        n = min(len(candidates), int(self.mask_prob * len(candidates) + rng.random()))
        chosen = np.sort(rng.choice(candidates, size=n, replace=False)) if n else candidates[:0]
        u = rng.random(n)
        rand_aa = self.canonical[rng.integers(0, len(self.canonical), size=n)]
        keep_or_rand = np.where(u < self.p_mask + self.p_rand, rand_aa, flat[chosen])
        new = np.where(u < self.p_mask, self.ab.mask_idx, keep_or_rand)
        labels = np.full(flat.shape, IGNORE, dtype=np.int64)
        labels[chosen] = flat[chosen]
        inputs = flat.copy()
        inputs[chosen] = new
        return Sample(row=row, id=id, tokens=inputs.reshape(toks.shape), labels=labels.reshape(toks.shape))


@dataclass
class MsaBatcher:
    """Group MSAs into padded (B, R, C) batches of at most ``batch_tokens`` slots; yields (batch, resume)."""

    batch_tokens: int
    pad_id: int = ESM_ALPHABET.pad_idx

    def batches(self, samples: Iterable[tuple[dict, Sample]]) -> Iterator[tuple[MsaBatch, dict | None]]:
        """Each batch comes with the position of the first sample *not* in it; a finite stream's last,
        partial batch comes with None."""
        group: list[Sample] = []
        for pos, s in samples:
            r, c = s.tokens.shape
            if r * c > self.batch_tokens:
                raise DataValidationError(f"MSA of {r} x {c} tokens exceeds batch_tokens {self.batch_tokens}",
                                          record=s.id)
            rows = max([r] + [g.tokens.shape[0] for g in group])
            cols = max([c] + [g.tokens.shape[1] for g in group])
            if group and (len(group) + 1) * rows * cols > self.batch_tokens:
                yield self.collate(group), pos
                group = []
            group.append(s)
        if group:
            yield self.collate(group), None

    def collate(self, group: list[Sample]) -> MsaBatch:
        rows = max(s.tokens.shape[0] for s in group)
        cols = max(s.tokens.shape[1] for s in group)
        tokens = np.full((len(group), rows, cols), self.pad_id, dtype=np.int64)
        labels = np.full((len(group), rows, cols), IGNORE, dtype=np.int64)
        for i, s in enumerate(group):
            r, c = s.tokens.shape
            tokens[i, :r, :c], labels[i, :r, :c] = s.tokens, s.labels
        return MsaBatch(tokens=torch.from_numpy(tokens), labels=torch.from_numpy(labels),
                        ids=[s.id for s in group], rows=[s.row for s in group],
                        n_tokens=int(sum(s.tokens.size for s in group)),
                        n_targets=int(sum(int((s.labels != IGNORE).sum()) for s in group)))


def msa_micro_batches(index: ShardIndex, cfg: TrainConfig, *, shard: int, num_shards: int,
                      state: Position | None = None, seed: int | None = None) -> Iterator[tuple[MsaBatch, Position]]:
    """Endless (batch, resume position) pairs of one data shard of MSA shards."""
    seed = cfg.seed if seed is None else seed
    masker = MsaMasker(max_len=cfg.max_len, max_rows=cfg.msa_max_rows, max_tokens=cfg.msa_max_tokens,
                       mask_prob=cfg.mask_prob, mask_token_prob=cfg.mask_token_prob,
                       random_token_prob=cfg.random_token_prob, mask_gaps=cfg.msa_mask_gaps, seed=seed)
    stream = SampleStream(index, shard=shard, num_shards=num_shards, seed=seed, window=cfg.shuffle_window,
                          state=state)
    samples = ((pos, masker(r.tokens, row=r.row, epoch=pos["epoch"], id=r.id)) for pos, r in stream)
    return MsaBatcher(cfg.batch_tokens).batches(samples)  # type: ignore[return-value]  # endless: never None
