"""Per-rank loader of optimizer steps: each item is the ``grad_accum`` micro-batches of one step
(sequence batches, or MSA batches for ``architecture: msa_transformer``).

    loader = StepLoader(cfg, shards_dir, rank=0, world_size=8)
    for micro_batches in loader:          # list[Batch], len == cfg.grad_accum
        ...
    state = loader.state_dict()           # save with the checkpoint; StepLoader(..., state=state) resumes

Data shards: micro-batch ``m`` of rank ``r`` reads virtual replica ``v = r * grad_accum + m``, split over
the dataloader workers, i.e. data shard ``v * W + w`` of ``world_size * grad_accum * W``. The global
batch of a step therefore depends only on world_size x grad_accum (1 process x 2 micro-batches sees
exactly what 2 processes x 1 see). Workers produce whole steps; the DataLoader takes them round-robin.

Exact resume: every step carries the stream positions its worker will continue from; the loader keeps
the latest per worker plus which worker is next, and a resumed loader renumbers the workers so that
worker is the DataLoader's first.
"""
from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from pipeline_lib.models.flavors import alphabet_for
from pipeline_lib.train.batching import Batch, Batcher, Masker
from pipeline_lib.train.config import TrainConfig
from pipeline_lib.train.data import Position, SampleStream, ShardIndex
from pipeline_lib.train.msa_data import MsaShardIndex, msa_micro_batches

__all__ = ["StepLoader", "micro_batches", "build_index"]


def build_index(cfg: TrainConfig, shards_dir: str | Path, split: str | None = None, *,
                cache_dir: str | Path | None = None) -> ShardIndex:
    """The shard index of ``split`` (default ``cfg.split``): sequence / SaProt shards, or MSA shards
    (one row per MSA, no clusters); ``cache_dir`` caches the cluster index."""
    split = split or cfg.split
    if cfg.architecture == "msa_transformer":
        return MsaShardIndex(shards_dir, split=split, column=cfg.column)
    return ShardIndex(shards_dir, split=split, column=cfg.column, cluster_level=cfg.cluster_level,
                      cache_dir=cache_dir)


def micro_batches(index: ShardIndex, cfg: TrainConfig, *, shard: int, num_shards: int,
                  state: Position | None = None, seed: int | None = None) -> Iterator[tuple[Batch, Position]]:
    """Endless (batch, resume position) pairs of one data shard (``seed`` default: ``cfg.seed``)."""
    if cfg.architecture == "msa_transformer":
        return msa_micro_batches(index, cfg, shard=shard, num_shards=num_shards, state=state, seed=seed)
    seed = cfg.seed if seed is None else seed
    ab = alphabet_for(cfg.vocab)
    masker = Masker(ab, max_len=cfg.max_len, mask_prob=cfg.mask_prob, mask_token_prob=cfg.mask_token_prob,
                    random_token_prob=cfg.random_token_prob, seed=seed, include_special=index.include_special,
                    saprot_mask=cfg.saprot_mask)
    batcher = Batcher(max_len=cfg.max_len, batch_tokens=cfg.batch_tokens, packing=cfg.packing, pad_id=ab.pad_idx)
    stream = SampleStream(index, shard=shard, num_shards=num_shards, seed=seed, window=cfg.shuffle_window,
                          state=state)
    samples = ((pos, masker(r.tokens, row=r.row, epoch=pos["epoch"], id=r.id)) for pos, r in stream)
    return batcher.batches(samples)


class _Steps(IterableDataset):
    """Yields (logical worker, micro-batches of one step, positions to resume each sub-stream from)."""

    def __init__(self, index: ShardIndex, cfg: TrainConfig, rank: int, world_size: int, n_workers: int,
                 states: list[list[Position | None]], rotation: int) -> None:
        self.index, self.cfg, self.rank, self.world = index, cfg, rank, world_size
        self.n_workers, self.states, self.rotation = n_workers, states, rotation

    def __iter__(self) -> Iterator[tuple[int, list[Batch], list[Position]]]:
        info = get_worker_info()
        w = ((info.id if info else 0) + self.rotation) % self.n_workers
        accum = self.cfg.grad_accum
        num_shards = self.world * accum * self.n_workers
        streams = [micro_batches(self.index, self.cfg, shard=(self.rank * accum + m) * self.n_workers + w,
                                 num_shards=num_shards, state=self.states[w][m]) for m in range(accum)]
        while True:
            pairs = [next(s) for s in streams]
            yield w, [b for b, _ in pairs], [p for _, p in pairs]


def _identity(x: Any) -> Any:
    return x


class StepLoader:
    """Iterates over steps (lists of ``grad_accum`` micro-batches) for one rank; state_dict() resumes exactly."""

    def __init__(self, cfg: TrainConfig, shards_dir: str | Path, *, rank: int = 0, world_size: int = 1,
                 state: dict[str, Any] | None = None, pin_memory: bool = False,
                 index: ShardIndex | None = None, cache_dir: str | Path | None = None) -> None:
        self.cfg, self.rank, self.world = cfg, rank, world_size
        self.n_workers = max(1, cfg.num_workers)
        self.index = index or build_index(cfg, shards_dir, cache_dir=cache_dir)
        layout = {"world_size": world_size, "grad_accum": cfg.grad_accum, "workers": self.n_workers}
        if state is not None:
            saved = {k: state.get(k) for k in layout}
            if saved != layout:
                raise ValueError(f"data loader state was saved with {saved}, this run has {layout}; "
                                 f"resume with the same ranks, grad_accum and num_workers")
            self._states = [list(s) for s in state["positions"]]
            self._next = int(state["next_worker"])
        else:
            self._states = [[None] * cfg.grad_accum for _ in range(self.n_workers)]
            self._next = 0
        self._layout, self._pin = layout, pin_memory

    def __iter__(self) -> Iterator[list[Batch]]:
        ds = _Steps(self.index, self.cfg, self.rank, self.world, self.n_workers,
                    [list(s) for s in self._states], rotation=self._next)
        if self.cfg.num_workers == 0:
            source: Any = iter(ds)
        else:
            source = iter(DataLoader(ds, batch_size=None, num_workers=self.cfg.num_workers, collate_fn=_identity,
                                     pin_memory=self._pin, persistent_workers=False, prefetch_factor=2))
        for w, batches, positions in source:
            self._states[w] = positions
            self._next = (w + 1) % self.n_workers
            yield batches

    def state_dict(self) -> dict[str, Any]:
        return {**self._layout, "positions": [list(s) for s in self._states], "next_worker": self._next}
