"""The cache protocol every unit of work follows: stages, shard partitions, structure batches, MSA batches.

    with claim(final, note="cluster of run 01a2..."):       # one builder per directory; killed runs' leftovers go
        data = read_marker(final)                           # None: not finished (or its outputs changed since)
        if data is None:
            with atomic_dir(final) as tmp:                  # build under <final>.tmp-<pid>-<rand>, renamed at the end
                ...                                         # write the outputs into tmp
                data = write_marker(tmp, final, {...})      # the marker last: it is what "finished" means

A directory counts as finished when it holds ``_SUCCESS.json`` (the datatrove "completions" idea) and every
output the marker lists still exists with its recorded size. The marker names the outputs inside the directory
by their relative path, so a workdir that is copied, moved or mounted elsewhere is still a cache; what it reads
back is absolute again. No Prefect here: ``tasks/common.run_stage`` adds retries, object storage and lineage.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

from pipeline_lib.io import TMP_MARK, write_json_atomic
from pipeline_lib.locks import FileLock

__all__ = ["MARKER", "claim", "read_marker", "write_marker", "remove_temporaries", "remove_temporaries_in"]

MARKER = "_SUCCESS.json"


def _remove(paths: Iterable[Path]) -> int:
    n = 0
    for tmp in paths:
        shutil.rmtree(tmp, ignore_errors=True) if tmp.is_dir() else tmp.unlink(missing_ok=True)
        n += 1
    return n


def remove_temporaries(final: Path) -> int:
    """Remove what killed runs left while building ``final`` (``<name>.tmp-<pid>-<rand>``); call under
    :func:`claim`, so that a directory another run is building is never touched. Returns the count."""
    return _remove(final.parent.glob(f"{final.name}{TMP_MARK}*"))


def remove_temporaries_in(directory: str | os.PathLike[str]) -> int:
    """Remove every temporary in ``directory`` (not recursive): for a directory one process writes in place
    (a training run's, under its own lock), whose files are each written atomically. Returns the count."""
    d = Path(directory)
    return _remove([p for p in d.iterdir() if TMP_MARK in p.name]) if d.is_dir() else 0


@contextlib.contextmanager
def claim(final: Path, note: str = "", sink: Callable[[str], Any] | None = None) -> Iterator[None]:
    """Hold ``final``'s lock (``<final>.lock``; a concurrent run waits here, saying for whom through ``sink``),
    with the temporaries of killed runs removed. The kernel drops the lock when its holder dies."""
    final.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(final.with_name(final.name + ".lock"), sink=sink, note=note):
        remove_temporaries(final)
        yield


def _outputs_of(data: dict[str, Any]) -> dict[str, dict[str, Any]]:
    outputs = data.get("outputs")
    return outputs if isinstance(outputs, dict) else {}


def read_marker(directory: Path, *, verify: bool = True) -> dict[str, Any] | None:
    """The marker of a finished ``directory`` with output paths made absolute, or None when it is not finished
    or (``verify``) an output it lists is gone or has another size than recorded."""
    marker = directory / MARKER
    if not marker.is_file():
        return None
    data = json.loads(marker.read_text())
    for art in _outputs_of(data).values():
        p = Path(art["path"])
        if not p.is_absolute():
            p = directory / p
            art["path"] = str(p)
        if verify and (not p.exists() or (p.is_file() and art.get("bytes") is not None
                                          and p.stat().st_size != art["bytes"])):
            return None  # outputs deleted or changed since: recompute
    return data


def write_marker(tmp: Path, final: Path, data: dict[str, Any]) -> dict[str, Any]:
    """Write ``data`` as the marker of ``tmp`` (the directory that becomes ``final``): output paths inside it are
    stored relative, others as given. Returns ``data`` with the paths inside pointing at ``final``."""
    stored = json.loads(json.dumps(data, default=str))
    tmp_abs, final_abs = tmp.resolve(), final.resolve() if final.exists() else final.absolute()
    for name, art in _outputs_of(stored).items():
        p = Path(art["path"])
        for base in (tmp_abs, final_abs):
            if p.is_relative_to(base):
                rel = p.relative_to(base).as_posix()
                art["path"] = rel
                _outputs_of(data)[name]["path"] = str(final / rel)
                break
    write_json_atomic(tmp / MARKER, stored)
    return data


def relative_to_root(path: str | os.PathLike[str], root: Path) -> str:
    """``path`` relative to ``root`` when inside it (for manifests), else unchanged."""
    p = Path(path)
    return p.relative_to(root).as_posix() if p.is_absolute() and p.is_relative_to(root) else str(p)
