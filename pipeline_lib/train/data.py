"""Token shards -> an endless, resumable stream of training samples for one data shard.

    index = ShardIndex("work/shards", split="train", column="tokens", cluster_level="auto")  # -> coarsest
    stream = SampleStream(index, shard=0, num_shards=8, seed=0)
    for position, row in stream:                    # position: {"epoch", "window", "offset"}
        ...
    SampleStream(index, shard=0, num_shards=8, seed=0, state=position)   # restarts at that sample

Sampling (ESM-2): each epoch draws one member per cluster of ``cluster_level`` uniformly at random, so
every cluster is seen once per epoch whatever its size (``cluster_level`` None: every row once). The
cluster -> rows index is built from the cluster column alone (dictionary-encoded, one argsort); with
``cache_dir`` it is cached there under a key of the split's file hashes, so a restart does not read the
column again (the trainer uses ``<out>/index_cache/``; the shard directory, a finished stage output, is
never written to).

Streaming: the Parquet row group is the work unit. Each epoch the row groups are permuted (same order
on every rank) and dealt round-robin to the ``num_shards`` data shards (ranks x dataloader workers);
a shard reads ``window`` of its row groups at a time (only the token and id columns), keeps the drawn
rows and shuffles them. A position (epoch, window, offset) pins a sample exactly: everything random is
derived from (seed, epoch, shard, window), so there is no RNG state to carry besides the position.
"""
from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_path, stable_hash
from pipeline_lib.schemas import token_buffers

__all__ = ["ShardIndex", "SampleStream", "RawRow", "Position"]

log = logging.getLogger(__name__)
_CLUSTER_CACHE_VERSION = 1

Position = dict[str, int]  # {"epoch", "window", "offset"}
_EMPTY_EPOCHS_LIMIT = 64


@dataclass(frozen=True)
class RawRow:
    row: int             # global row number in the split (file order, then row order)
    id: str
    tokens: np.ndarray   # token ids as stored (int64)


class ShardIndex:
    """Row groups of a split, and the cluster -> rows index used to draw one member per cluster."""

    def __init__(self, shards_dir: str | Path, *, split: str = "train", column: str = "tokens",
                 cluster_level: str | None = None, id_column: str = "id",
                 cache_dir: str | Path | None = None) -> None:
        self.dir = Path(shards_dir)
        man_path = self.dir / "manifest.json"
        if not man_path.is_file():
            raise DataValidationError("no manifest.json in shard directory", path=str(self.dir))
        self.manifest: dict[str, Any] = json.loads(man_path.read_text())
        if split not in self.manifest.get("splits", {}):
            have = sorted(self.manifest.get("splits", {}))
            raise DataValidationError(f"split {split!r} not in manifest (has {have})", path=str(man_path))
        self.files = [self.dir / f["path"] for f in self.manifest["splits"][split]["files"]]
        if not self.files:
            raise DataValidationError(f"split {split!r} has no files", path=str(man_path))
        self.column, self.split = column, split
        if cluster_level == "auto":  # ESM-2: the coarsest level (UniRef50 over UniRef90 members)
            levels = self.manifest.get("cluster_levels") or []
            cluster_level = levels[-1] if levels else None
        self.include_special = bool(self.manifest.get("tokens_include_special", True))
        unit_file, unit_rg, unit_rows = [], [], []
        for fi, path in enumerate(self.files):
            pf = pq.ParquetFile(path)
            meta, names = pf.metadata, set(pf.schema_arrow.names)
            need = {column, id_column} | ({f"cluster_{cluster_level}"} if cluster_level else set())
            if not need <= names:
                raise DataValidationError(f"missing columns {sorted(need - names)}", path=str(path))
            for rg in range(meta.num_row_groups):
                unit_file.append(fi)
                unit_rg.append(rg)
                unit_rows.append(meta.row_group(rg).num_rows)
        self.unit_file = np.asarray(unit_file, dtype=np.int64)
        self.unit_rg = np.asarray(unit_rg, dtype=np.int64)
        self.unit_start = np.concatenate(([0], np.cumsum(unit_rows)[:-1])).astype(np.int64)
        self.num_rows = int(np.sum(unit_rows))
        self.num_units = len(unit_rows)
        self.cluster_level = cluster_level
        self.cluster_offsets: np.ndarray | None = None
        self.cluster_rows: np.ndarray | None = None
        if cluster_level:
            self._build_clusters(f"cluster_{cluster_level}", cache_dir)

    def cluster_cache_path(self, col: str, cache_dir: str | Path) -> Path:
        """Cache file of the cluster index of ``col`` in ``cache_dir``, named by a hash of the split's files'
        sha256 (or size and mtime): rewritten shards get a new name."""
        entries = self.manifest["splits"][self.split]["files"]
        ids = [[f["path"], f.get("sha256") or [(self.dir / f["path"]).stat().st_size,
                                               (self.dir / f["path"]).stat().st_mtime_ns]] for f in entries]
        key = stable_hash({"version": _CLUSTER_CACHE_VERSION, "split": self.split, "column": col, "files": ids})
        return Path(cache_dir) / f"{self.split}.{col}.{key[:16]}.npz"

    def _build_clusters(self, col: str, cache_dir: str | Path | None = None) -> None:
        """cluster -> rows index: from the cache when the split's files are unchanged, else from the cluster
        column of every file (one argsort), then cached (UniRef50 has tens of millions of rows)."""
        path = self.cluster_cache_path(col, cache_dir) if cache_dir is not None else None
        if path is not None and path.is_file():
            try:
                with np.load(path, allow_pickle=False) as z:
                    rows, offsets = z["cluster_rows"], z["cluster_offsets"]
                if len(rows) == self.num_rows and len(offsets) and offsets[-1] == self.num_rows:
                    self.cluster_rows, self.cluster_offsets = rows, offsets
                    return
            except Exception as exc:  # noqa: BLE001  # a damaged cache (any failure to read it) is rebuilt
                log.warning("ignoring cluster index cache %s: %s", path, exc)
        chunks = []
        for f in self.files:
            chunks += pq.read_table(f, columns=[col]).column(col).chunks
        encoded = pc.dictionary_encode(pa.chunked_array(chunks))
        codes = np.concatenate([c.indices.to_numpy(zero_copy_only=False) for c in encoded.chunks]).astype(np.int64)
        n_clusters = len(encoded.chunks[0].dictionary) if encoded.num_chunks else 0
        self.cluster_rows = np.argsort(codes, kind="stable")
        self.cluster_offsets = np.concatenate(([0], np.cumsum(np.bincount(codes, minlength=n_clusters))))
        if path is not None:
            try:
                with atomic_path(path) as tmp, open(tmp, "wb") as fh:
                    np.savez(fh, cluster_rows=self.cluster_rows, cluster_offsets=self.cluster_offsets)
            except OSError as exc:  # e.g. a read-only or full disk: train without the cache
                log.warning("cannot write cluster index cache %s: %s", path, exc)

    @property
    def num_clusters(self) -> int:
        return self.num_rows if self.cluster_offsets is None else len(self.cluster_offsets) - 1

    def select(self, epoch: int, seed: int) -> np.ndarray:
        """Sorted global rows drawn for ``epoch``: one uniform member per cluster (or every row)."""
        if self.cluster_offsets is None or self.cluster_rows is None:
            return np.arange(self.num_rows, dtype=np.int64)
        rng = np.random.default_rng([seed, epoch, 0x5E1EC7])
        counts = np.diff(self.cluster_offsets)
        pick = self.cluster_offsets[:-1] + (rng.random(len(counts)) * counts).astype(np.int64)
        return np.sort(self.cluster_rows[pick])

    def unit_order(self, epoch: int, seed: int) -> np.ndarray:
        return np.random.default_rng([seed, epoch, 0x0DE7]).permutation(self.num_units)

    def read_rows(self, unit: int, local_rows: np.ndarray, cache: dict[int, pq.ParquetFile]) -> list[RawRow]:
        """Read the given rows (0-based within the row group) of one unit: token and id columns only."""
        fi = int(self.unit_file[unit])
        pf = cache.get(fi)
        if pf is None:
            pf = cache[fi] = pq.ParquetFile(self.files[fi])
        table = pf.read_row_group(int(self.unit_rg[unit]), columns=[self.column, "id"]).take(pa.array(local_rows))
        offsets, values = token_buffers(table.column(self.column))
        ids = table.column("id").to_pylist()
        start = int(self.unit_start[unit])
        return [RawRow(start + int(r), ids[i], values[offsets[i]:offsets[i + 1]]) for i, r in enumerate(local_rows)]


class SampleStream:
    """Endless stream of (position, row) for data shard ``shard`` of ``num_shards``, resumable at a position."""

    def __init__(self, index: ShardIndex, *, shard: int, num_shards: int, seed: int, window: int = 4,
                 state: Position | None = None) -> None:
        if not 0 <= shard < num_shards:
            raise ValueError(f"shard {shard} not in [0, {num_shards})")
        if index.num_units < num_shards:
            raise DataValidationError(
                f"{index.num_units} row groups for {num_shards} data shards (ranks x grad_accum x workers); write "
                f"smaller row groups (shards.row_group_rows) or use fewer workers", path=str(index.dir))
        self.index, self.shard, self.num_shards, self.seed, self.window = index, shard, num_shards, seed, window
        self.state: Position = dict(state) if state else {"epoch": 0, "window": 0, "offset": 0}
        self._files: dict[int, pq.ParquetFile] = {}

    def _epoch_plan(self, epoch: int) -> list[tuple[int, np.ndarray]]:
        """This shard's units for ``epoch``, in order, each with its drawn local rows (units with none dropped)."""
        mine = self.index.unit_order(epoch, self.seed)[self.shard::self.num_shards]
        rows = self.index.select(epoch, self.seed)
        unit_of = np.searchsorted(self.index.unit_start, rows, side="right") - 1
        plan = []
        for u in mine:
            lo, hi = np.searchsorted(unit_of, [u, u + 1])
            if hi > lo:
                plan.append((int(u), rows[lo:hi] - self.index.unit_start[u]))
        return plan

    def _window_rows(self, plan: list[tuple[int, np.ndarray]], epoch: int, w: int) -> list[RawRow]:
        rows: list[RawRow] = []
        for unit, local in plan[w * self.window:(w + 1) * self.window]:
            rows += self.index.read_rows(unit, local, self._files)
        order = np.random.default_rng([self.seed, epoch, self.shard, self.num_shards, w]).permutation(len(rows))
        return [rows[i] for i in order]

    def __iter__(self) -> Iterator[tuple[Position, RawRow]]:
        epoch, w, offset = self.state["epoch"], self.state["window"], self.state["offset"]
        empty = 0
        while True:
            plan = self._epoch_plan(epoch)
            n_windows = -(-len(plan) // self.window)
            empty = empty + 1 if not plan else 0
            if empty > _EMPTY_EPOCHS_LIMIT:
                raise DataValidationError(f"data shard {self.shard}/{self.num_shards} drew no rows in "
                                          f"{_EMPTY_EPOCHS_LIMIT} epochs", path=str(self.index.dir))
            while w < n_windows:
                rows = self._window_rows(plan, epoch, w)
                for i in range(offset, len(rows)):
                    yield {"epoch": epoch, "window": w, "offset": i}, rows[i]
                w, offset = w + 1, 0
            epoch, w, offset = epoch + 1, 0, 0

    def __getstate__(self) -> dict[str, Any]:  # open Parquet handles do not cross process boundaries
        d = dict(self.__dict__)
        d["_files"] = {}
        return d
