"""Atomic file and directory writes, and content hashing.

Nothing is ever written under its final name: writers write ``<name>.tmp-<pid>-<rand>`` and rename,
so a killed run leaves at most temporary files, which the next run removes or overwrites.
"""
from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import secrets
import shutil
import tempfile
import threading
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline_lib.errors import PipelineError

__all__ = [
    "duckdb_connect",
    "atomic_path",
    "atomic_dir",
    "write_json_atomic",
    "sha256_file",
    "sha256_bytes",
    "stable_hash",
    "sql_str",
    "sql_path",
    "sql_paths",
    "literal_path",
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


# DuckDB expands these in every path its readers get (read_parquet/read_csv, a list too, with no escape): a
# workdir named ``w[1]`` would read ``w1``'s files, ``w*`` every sibling's
_GLOB_CHARS = frozenset("*?[]{}")
_LINKS: dict[str, Path] = {}
_LINKS_GUARD = threading.Lock()


def _plain_link(target: str) -> Path:
    """A symbolic link with a plain name to ``target``, in a temporary directory of this process."""
    with _LINKS_GUARD:
        if target not in _LINKS:
            if not _LINKS:
                root = Path(tempfile.mkdtemp(prefix="plm-literal-"))
                atexit.register(shutil.rmtree, root, True)
                _LINKS[""] = root
            suffix = "".join(c for c in Path(target).suffix if c.isalnum() or c == ".")
            link = _LINKS[""] / f"{hashlib.sha256(target.encode()).hexdigest()[:24]}{suffix}"
            link.symlink_to(target)
            _LINKS[target] = link
        return _LINKS[target]


def literal_path(path: str | os.PathLike[str]) -> str:
    """``path`` in a form DuckDB's file readers take literally: unchanged unless it holds a glob character, else
    the same file through a symbolic link with a plain name (in a temporary directory of this process, removed
    at exit) to its directory, or to the file when its own name holds one."""
    s = os.fspath(path)
    if "://" in s or _GLOB_CHARS.isdisjoint(s):
        return s
    target = Path(os.path.abspath(s))
    if _GLOB_CHARS.isdisjoint(target.name):
        return str(_plain_link(str(target.parent)) / target.name)
    return str(_plain_link(str(target)))


def sql_path(path: str | os.PathLike[str]) -> str:
    """A file path as a DuckDB string literal for ``read_parquet`` / ``read_csv``: read as that one file, never
    as a pattern (:func:`literal_path`), quotes doubled. Every DuckDB read of a project file goes through it."""
    return sql_str(literal_path(path))


def sql_paths(paths: Iterable[str | os.PathLike[str]]) -> str:
    """A list literal of :func:`sql_path` paths (one ``read_parquet`` over several files)."""
    return "[" + ", ".join(sql_path(p) for p in paths) + "]"


def sql_str(value: object) -> str:
    """A path as a DuckDB string literal (quotes doubled: ``o'brien`` is a valid directory name)."""
    return "'" + str(value).replace("'", "''") + "'"


def duckdb_connect(database: str | os.PathLike[str] = ":memory:", *, read_only: bool = False) -> Any:
    """A DuckDB connection without DuckDB's own progress bar, which it prints to stdout (not to our logs)
    on any query longer than two seconds: noise in long runs, and in the middle of our progress lines."""
    import duckdb

    if "?" in os.path.realpath(database) and str(database) != ":memory:":  # its write-ahead log would go astray
        raise PipelineError(f"DuckDB cannot keep a database under a path with '?': {database}")
    con = duckdb.connect(str(database), read_only=read_only)
    con.execute("SET enable_progress_bar_print=false")
    return con
