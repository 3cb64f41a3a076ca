"""The threads that write one split's shard files: each ``part-NNNNN.parquet`` is encoded and hashed on its own.

    budget = Budget(128 << 20); writer = SplitWriter(out / "train", schema, cfg, budget)
    writer.write(table) ...; files = writer.close()      # [{"path", "rows", "tokens", "bytes", "sha256"}]
    writer.abort()                                       # after a failure: threads joined, no partial file

The Parquet encoding of consecutive shards (the dominant cost) runs on both cores; a byte budget bounds what
waits in memory. Tokens are one byte each in a ``binary`` column, not dictionary-encoded: every row is
distinct, so a dictionary is built only to be thrown away. Used by :mod:`pipeline_lib.sequences.shards`.
"""
from __future__ import annotations

import queue
import threading
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from pipeline_lib.io import atomic_path, sha256_file
from pipeline_lib.sequences.config import ShardsConfig

__all__ = ["Budget", "SplitWriter"]


class Budget:
    """Bytes queued for the shard threads; ``take`` waits while over the limit (memory stays bounded)."""

    def __init__(self, limit: int) -> None:
        self.limit, self.used, self.cond = limit, 0, threading.Condition()

    def take(self, n: int) -> None:
        with self.cond:
            self.cond.wait_for(lambda: self.used == 0 or self.used + n <= self.limit)
            self.used += n

    def give(self, n: int) -> None:
        with self.cond:
            self.used -= n
            self.cond.notify_all()


class _Abort(Exception):
    """Sent to a shard thread when the run failed: its temporary file is removed, never renamed."""


class _ShardFile(threading.Thread):
    """Writes one ``part-NNNNN.parquet`` (atomically) from a queue of tables, then hashes it."""

    def __init__(self, final: Path, schema: pa.Schema, cfg: ShardsConfig, budget: Budget) -> None:
        super().__init__(name=f"shard {final.parent.name}/{final.name}", daemon=True)
        self.final, self.schema, self.cfg, self.budget = final, schema, cfg, budget
        self.queue: queue.Queue[pa.Table | _Abort | None] = queue.Queue()
        self.rows = self.tokens = 0
        self.error: BaseException | None = None
        self.info: dict[str, Any] = {}
        self.start()

    def put(self, table: pa.Table) -> None:
        if self.error is not None:
            raise self.error
        self.rows += table.num_rows
        self.tokens += int(pc.sum(table.column("length")).as_py() or 0) + 2 * table.num_rows
        self.budget.take(table.nbytes)
        self.queue.put(table)

    def end(self) -> None:
        """No more rows: the thread closes the file (and renames it) once the queue is written."""
        self.queue.put(None)

    def abort(self) -> None:
        """Stop without a result: the temporary file is deleted. Returns once the thread is gone."""
        self.queue.put(_Abort())
        self.join()

    def finish(self) -> dict[str, Any]:
        """Wait for the file (after :meth:`end`); returns its manifest entry."""
        self.join()
        if self.error is not None:
            raise self.error
        return self.info

    def run(self) -> None:
        try:
            with atomic_path(self.final) as tmp:
                dictionary = [f.name for f in self.schema if f.name != "tokens"]
                with pq.ParquetWriter(tmp, self.schema, compression="zstd", use_dictionary=dictionary,
                                      compression_level=self.cfg.compression_level) as writer:
                    while (table := self.queue.get()) is not None:
                        if isinstance(table, _Abort):
                            raise table
                        writer.write_table(table, row_group_size=self.cfg.row_group_rows)
                        self.budget.give(table.nbytes)
            self.info = {"path": f"{self.final.parent.name}/{self.final.name}", "rows": self.rows,
                         "tokens": self.tokens, "bytes": self.final.stat().st_size, "sha256": sha256_file(self.final)}
        except BaseException as exc:  # reported to the producer by put() / finish()
            self.error = exc
            while not isinstance(exc, _Abort) and (table := self.queue.get()) is not None:
                if isinstance(table, _Abort):
                    break
                self.budget.give(table.nbytes)  # the producer may still be putting: never leave it blocked


class SplitWriter:
    """Rolls the shard files of one split: ``rows_per_shard`` rows each, whole row groups of ``row_group_rows``."""

    def __init__(self, split_dir: Path, schema: pa.Schema, cfg: ShardsConfig, budget: Budget) -> None:
        self.dir, self.schema, self.cfg, self.budget = split_dir, schema, cfg, budget
        self.dir.mkdir(parents=True, exist_ok=True)
        self.done: list[_ShardFile] = []
        self.current: _ShardFile | None = None
        self.pending: list[pa.Table] = []
        self.pending_rows = 0

    def write(self, table: pa.Table) -> None:
        if table.num_rows:
            self.pending.append(table)
            self.pending_rows += table.num_rows
            self._drain(final=False)

    def _drain(self, final: bool) -> None:
        """Hand whole row groups (all that is left when ``final``) to the current shard's thread."""
        cfg = self.cfg
        while self.pending_rows and (final or self.pending_rows >= cfg.row_group_rows):
            if self.current is None:
                if len(self.done) >= 2:
                    self.done[-2].join()  # two files of a split encode at once (2 cores), not more
                name = self.dir / f"part-{len(self.done):05d}.parquet"
                self.current = _ShardFile(name, self.schema, cfg, self.budget)
            room = cfg.rows_per_shard - self.current.rows
            whole_groups = self.pending_rows // cfg.row_group_rows * cfg.row_group_rows
            take = min(room, self.pending_rows if final else whole_groups)
            table = pa.concat_tables(self.pending)
            self.current.put(table.slice(0, take))
            rest = table.slice(take)
            self.pending, self.pending_rows = ([rest] if rest.num_rows else []), rest.num_rows
            if self.current.rows >= cfg.rows_per_shard:
                self.current.end()
                self.done.append(self.current)
                self.current = None

    def abort(self) -> None:
        """After a failure: stop every thread of this split (the file being written is not kept)."""
        if self.current is not None:
            self.current.abort()
            self.current = None
        for f in self.done:
            f.join()

    def close(self) -> list[dict[str, Any]]:
        self._drain(final=True)
        if self.current is not None:
            self.current.end()
            self.done.append(self.current)
            self.current = None
        return [f.finish() for f in self.done]
