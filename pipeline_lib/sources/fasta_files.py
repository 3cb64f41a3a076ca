"""Resolve the ``fasta`` source's inputs (local paths, globs, http(s) URLs) to local files.

    paths = resolve_fasta_inputs(["data/*.fasta.gz", "https://example.org/extra.fa"], "work/downloads/urls")

Globs expand sorted and must match at least one file; URLs are downloaded (resumable, retried) to
``download_dir/<hash of url>-<file name>`` and reused by later runs. Tests: ``tests/test_uniref.py``.
"""
from __future__ import annotations

import glob
import hashlib
import logging
import os
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from pipeline_lib.errors import DataValidationError, PipelineError
from pipeline_lib.sources.download import download, redact_url

__all__ = ["resolve_fasta_inputs", "url_download_path"]

log = logging.getLogger(__name__)

_GLOB_CHARS = frozenset("*?[")


def url_download_path(url: str, download_dir: str | os.PathLike[str]) -> Path:
    """Where ``url`` is stored: its file name prefixed by a hash of the (redacted) URL, so names never clash."""
    name = Path(unquote(urlsplit(url).path)).name or "download"
    digest = hashlib.sha256(redact_url(url).encode()).hexdigest()[:12]
    return Path(download_dir) / f"{digest}-{name}"


def _expand(item: str) -> list[Path]:
    pattern = os.path.expanduser(item)
    matches = sorted(p for p in glob.glob(pattern, recursive=True) if os.path.isfile(p))
    if not matches:
        raise DataValidationError(f"glob {item!r} matches no file", path=item)
    return [Path(p) for p in matches]


def _local(item: str) -> Path:
    p = Path(os.path.expanduser(item))
    if not p.exists():
        raise DataValidationError("FASTA input not found", path=item)
    if not p.is_file():
        raise DataValidationError("FASTA input is not a file", path=item)
    return p


def resolve_fasta_inputs(paths: list[str], download_dir: str | os.PathLike[str],
                         **download_kwargs: Any) -> list[Path]:
    """Absolute local paths for ``paths`` in order, duplicates dropped. Keywords go to ``download``."""
    out: list[Path] = []
    for item in paths:
        scheme = urlsplit(item).scheme.lower() if "://" in item else ""
        if scheme in ("http", "https"):
            resolved = [download(item, url_download_path(item, download_dir), **download_kwargs).path]
        elif scheme:
            raise PipelineError(f"FASTA input {redact_url(item)}: scheme {scheme!r} is not supported "
                                "(use a local path, a glob or an http(s) URL)")
        elif _GLOB_CHARS & set(item) and not os.path.isfile(os.path.expanduser(item)):  # a file is never a pattern
            resolved = _expand(item)
        else:
            resolved = [_local(item)]
        for p in resolved:
            p = p.resolve()
            if p in out:
                log.info("FASTA input %s listed twice; using it once", p)
                continue
            out.append(p)
    return out
