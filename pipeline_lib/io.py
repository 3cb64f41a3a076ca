"""Atomic file and directory writes, and content hashing.

Nothing is ever written under its final name: writers write ``<name>.tmp-<pid>-<rand>`` and rename,
so a killed run leaves at most temporary files, which the next run removes or overwrites.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import os
import secrets
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "duckdb_connect",
    "atomic_path",
    "atomic_dir",
    "write_json_atomic",
    "sha256_file",
    "sha256_bytes",
    "stable_hash",
    "sql_str",
    "TMP_MARK",
]

TMP_MARK = ".tmp-"  # in the name of everything written before its rename


def _tmp_name(final: Path) -> Path:
    return final.with_name(f"{final.name}{TMP_MARK}{os.getpid()}-{secrets.token_hex(4)}")


@contextlib.contextmanager
def atomic_path(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``final``; rename it to ``final`` when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    try:
        yield tmp
        if tmp.exists():
            with open(tmp, "rb") as fh:
                os.fsync(fh.fileno())
        os.replace(tmp, final)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(final: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary directory; it replaces ``final`` (if any) when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_name(final)
    tmp.mkdir()
    try:
        yield tmp
        if final.exists():
            old = _tmp_name(final)
            os.replace(final, old)
            os.replace(tmp, final)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def sha256_file(path: str | os.PathLike[str], chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def stable_hash(obj: Any) -> str:
    """sha256 of the canonical JSON of ``obj`` (sorted keys), for cache keys and config hashes."""
    return sha256_bytes(json.dumps(obj, sort_keys=True, default=str, separators=(",", ":")).encode())


def sql_str(value: object) -> str:
    """A path as a DuckDB string literal (quotes doubled: ``o'brien`` is a valid directory name)."""
    return "'" + str(value).replace("'", "''") + "'"


def duckdb_connect(database: str | os.PathLike[str] = ":memory:", *, read_only: bool = False) -> Any:
    """A DuckDB connection without DuckDB's own progress bar, which it prints to stdout (not to our logs)
    on any query longer than two seconds: noise in long runs, and in the middle of our progress lines."""
    import duckdb

    con = duckdb.connect(str(database), read_only=read_only)
    con.execute("SET enable_progress_bar_print=false")
    return con
