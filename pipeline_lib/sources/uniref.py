"""UniRef from UniProt's FTP layout: release check (metalink + release note) and verified download.

Layout under ``base_url`` (UniProt's ``pub/databases/uniprot`` on any mirror, or a local copy)::

    uniref/uniref50/uniref50.fasta.gz
    uniref/uniref50/RELEASE.metalink        # XML: <version>2025_03</version>, per-file size and MD5
    uniref/uniref50/uniref50.release_note   # text naming the release ("UniRef50 Release 2025_03")

    info = release_info("https://ftp.uniprot.org/pub/databases/uniprot", "uniref50")  # small files only
    if release_changed(previous, info):
        result, info = download_uniref(UnirefSource(), "work/downloads")  # -> <dir>/2025_03/uniref50.fasta.gz

The metalink parser accepts Metalink 3 (``http://www.metalinker.org/``, which UniProt publishes),
Metalink 4 (RFC 5854) and un-namespaced files. Tests: ``.venv/bin/pytest -q tests/test_uniref.py``.
"""
from __future__ import annotations

import hashlib
import logging
import os
import re
import xml.etree.ElementTree as ET
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from pipeline_lib.config import UnirefSource
from pipeline_lib.errors import DataValidationError, PipelineError
from pipeline_lib.io import write_json_atomic
from pipeline_lib.sources.download import DownloadResult, download, fetch_bytes, redact_url

__all__ = [
    "FileEntry", "Metalink", "ReleaseInfo", "ReleaseFile",
    "database_url", "parse_metalink", "parse_release_note",
    "fetch_metalink", "release_info", "release_files", "release_changed", "download_uniref", "download_release_files",
]

log = logging.getLogger(__name__)

_RELEASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")  # becomes a directory name
_RELEASE_IN_TEXT = re.compile(r"\bRelease\s+(\d{4}_\d{2})\b", re.IGNORECASE)
_RELEASE_ANY = re.compile(r"\b(\d{4}_\d{2})\b")


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int | None
    md5: str | None
    urls: tuple[str, ...] = ()
    hashes: dict[str, str] = field(default_factory=dict)  # every whole-file hash, by lower-case type


@dataclass(frozen=True)
class Metalink:
    version: str | None          # the release, e.g. "2025_03", when the metalink states it
    files: dict[str, FileEntry]  # by file name
    sha256: str                  # of the metalink document itself


@dataclass(frozen=True)
class ReleaseInfo:
    database: str
    release: str
    fasta_name: str
    size: int | None
    md5: str | None
    metalink_sha256: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ReleaseInfo:
        return cls(**{k: d.get(k) for k in cls.__dataclass_fields__})  # type: ignore[arg-type]  # JSON values


def database_url(base_url: str, database: str) -> str:
    """The folder URL of one UniRef database, with a trailing slash."""
    return f"{base_url.rstrip('/')}/uniref/{database}/"


# --- parsing ---------------------------------------------------------------------------------------

def _local(tag: str) -> str:
    return tag.rpartition("}")[2]


def _children(el: ET.Element, name: str) -> list[ET.Element]:
    return [c for c in el if _local(c.tag) == name]


def _text(el: ET.Element | None) -> str | None:
    return el.text.strip() if el is not None and el.text and el.text.strip() else None


def _file_entry(el: ET.Element, origin: str) -> FileEntry:
    name = el.get("name", "").strip()
    size_el = next(iter(_children(el, "size")), None)
    size_text = _text(size_el)
    if size_text is not None and not size_text.isdigit():
        raise DataValidationError(f"file {name!r}: size {size_text!r} is not a byte count", path=origin)
    # Whole-file hashes sit in <verification> (Metalink 3) or directly in <file> (Metalink 4);
    # <pieces> hashes cover chunks and are left out.
    hash_els = _children(el, "hash") + [h for v in _children(el, "verification") for h in _children(v, "hash")]
    hashes = {h.get("type", "").strip().lower(): t.lower() for h in hash_els if (t := _text(h))}
    urls = tuple(t for u in el.iter() if _local(u.tag) == "url" and (t := _text(u)))
    return FileEntry(name, int(size_text) if size_text else None, hashes.get("md5"), urls, hashes)


def parse_metalink(data: bytes | str, *, origin: str = "<metalink>") -> Metalink:
    """Parse a metalink document (namespaced or not). Raises DataValidationError naming ``origin``."""
    raw = data.encode() if isinstance(data, str) else data
    try:
        root = ET.fromstring(raw)
    except ET.ParseError as exc:
        raise DataValidationError(f"not valid metalink XML: {exc}", path=origin) from None
    if _local(root.tag) != "metalink":
        raise DataValidationError(f"root element is <{_local(root.tag)}>, expected <metalink>", path=origin)
    files: dict[str, FileEntry] = {}
    for el in root.iter():
        if _local(el.tag) == "file" and el.get("name"):
            entry = _file_entry(el, origin)
            files[entry.name] = entry
    version = _text(next(iter(_children(root, "version")), None))
    return Metalink(version, files, hashlib.sha256(raw).hexdigest())


def parse_release_note(text: str) -> str | None:
    """The release (``YYYY_NN``) named in a release note, e.g. "UniRef50 Release 2025_03", or None."""
    m = _RELEASE_IN_TEXT.search(text) or _RELEASE_ANY.search(text)
    return m.group(1) if m else None


# --- network ---------------------------------------------------------------------------------------

def fetch_metalink(base_url: str, database: str, **download_kwargs: Any) -> Metalink:
    """Fetch and parse ``<base>/uniref/<database>/RELEASE.metalink`` (keywords go to ``fetch_bytes``)."""
    url = database_url(base_url, database) + "RELEASE.metalink"
    return parse_metalink(fetch_bytes(url, **download_kwargs), origin=redact_url(url))


def _release_from_note(base_url: str, database: str, **download_kwargs: Any) -> str:
    url = database_url(base_url, database) + f"{database}.release_note"
    text = fetch_bytes(url, **download_kwargs).decode("utf-8", errors="replace")
    release = parse_release_note(text)
    if release is None:
        raise DataValidationError("no 'Release YYYY_NN' in the release note", path=redact_url(url))
    return release


def release_info(base_url: str, database: str, **download_kwargs: Any) -> ReleaseInfo:
    """The current release of ``database``: a cheap check that reads only the metalink (and, when the
    metalink has no ``<version>``, the release note). Keywords go to ``fetch_bytes`` (retries, ...)."""
    ml = fetch_metalink(base_url, database, **download_kwargs)
    origin = redact_url(database_url(base_url, database) + "RELEASE.metalink")
    fasta_name = f"{database}.fasta.gz"
    entry = ml.files.get(fasta_name)
    if entry is None:
        raise DataValidationError(f"no <file name={fasta_name!r}>; files listed: {sorted(ml.files)}", path=origin)
    release = ml.version or _release_from_note(base_url, database, **download_kwargs)
    if not _RELEASE_NAME.match(release):
        raise DataValidationError(f"release {release!r} is not a usable name (expected e.g. 2025_03)", path=origin)
    if entry.md5 is None:
        log.warning("%s: no MD5 for %s; only the size can be verified", origin, fasta_name)
    return ReleaseInfo(database, release, fasta_name, entry.size, entry.md5, ml.sha256)


@dataclass(frozen=True)
class ReleaseFile:
    """One more file of a release (``<database>/<name>``), with what its folder's metalink says of it."""

    spec: str
    release: str
    size: int | None
    md5: str | None


def release_files(base_url: str, release: str, files: list[str], **download_kwargs: Any) -> list[ReleaseFile]:
    """Each of ``files`` (``<database>/<name>``) from its folder's metalink; refuses a file the metalink does not
    list, one with neither size nor MD5, and one whose folder is at another release than ``release``."""
    out = []
    for spec in files:
        database, name = spec.split("/", 1)
        ml = fetch_metalink(base_url, database, **download_kwargs)
        origin = redact_url(database_url(base_url, database) + "RELEASE.metalink")
        entry = ml.files.get(name)
        if entry is None:
            raise DataValidationError(f"no <file name={name!r}>; files listed: {sorted(ml.files)}", path=origin)
        theirs = ml.version or _release_from_note(base_url, database, **download_kwargs)
        if theirs != release:
            raise DataValidationError(f"{spec} is from release {theirs}, the source's FASTA from release {release}: "
                                      "refusing to mix releases (a mirror mid-update? try again later)", path=origin)
        if entry.size is None and entry.md5 is None:
            raise DataValidationError(f"neither size nor MD5 for {name}: refusing an unverifiable download",
                                      path=origin)
        out.append(ReleaseFile(spec, theirs, entry.size, entry.md5))
    return out


def download_release_files(source_cfg: UnirefSource, release: str, dest_dir: str | os.PathLike[str], *,
                           backoff_s: float = 1.0, progress: bool = True) -> dict[str, DownloadResult]:
    """``source_cfg.files`` of ``release`` to ``dest_dir/<release>/<database>/<name>``, each verified against its
    folder's metalink (size, MD5); a valid existing copy is kept."""
    kw: dict[str, Any] = {"retries": source_cfg.retries, "timeout_s": source_cfg.timeout_s, "backoff_s": backoff_s,
                          "allowed_hosts": source_cfg.allowed_hosts}
    out = {}
    for f in release_files(source_cfg.base_url, release, source_cfg.files, **kw):
        database, name = f.spec.split("/", 1)
        url = database_url(source_cfg.base_url, database) + name
        out[f.spec] = download(url, Path(dest_dir) / release / database / name, expected_size=f.size,
                               expected_md5=f.md5, progress=progress, **kw, min_bytes=source_cfg.min_bytes,
                               deadline_s=source_cfg.deadline_s)
    return out


def release_changed(previous: ReleaseInfo | dict[str, Any] | None, current: ReleaseInfo) -> bool:
    """True when ``current`` names different data than ``previous`` (None: nothing fetched before).

    Compares database, release, size and MD5; the metalink's own hash is left out because mirror
    lists can change without the data changing."""
    if previous is None:
        return True
    prev = ReleaseInfo.from_dict(previous) if isinstance(previous, dict) else previous
    key = ("database", "release", "fasta_name", "size", "md5")
    return any(getattr(prev, k) != getattr(current, k) for k in key)


def download_uniref(source_cfg: UnirefSource, dest_dir: str | os.PathLike[str], *, backoff_s: float = 1.0,
                    progress: bool = True) -> tuple[DownloadResult, ReleaseInfo]:
    """Download the current release's FASTA to ``dest_dir/<release>/<database>.fasta.gz``, verified against
    the metalink's size and MD5; writes ``<database>.release.json`` beside it. Skips a valid existing file."""
    kw: dict[str, Any] = {"retries": source_cfg.retries, "timeout_s": source_cfg.timeout_s, "backoff_s": backoff_s,
                          "allowed_hosts": source_cfg.allowed_hosts}
    info = release_info(source_cfg.base_url, source_cfg.database, **kw)
    if info.size is None and info.md5 is None:
        raise PipelineError(f"{redact_url(database_url(source_cfg.base_url, source_cfg.database))}: the metalink "
                            f"gives neither size nor MD5 for {info.fasta_name}; refusing an unverifiable download")
    out_dir = Path(dest_dir) / info.release
    url = database_url(source_cfg.base_url, source_cfg.database) + info.fasta_name
    log.info("%s release %s: %s -> %s", info.database, info.release, redact_url(url), out_dir)
    result = download(url, out_dir / info.fasta_name, expected_size=info.size, expected_md5=info.md5,
                      progress=progress, **kw, min_bytes=source_cfg.min_bytes, deadline_s=source_cfg.deadline_s)
    write_json_atomic(out_dir / f"{info.database}.release.json", info.to_dict())
    return result, info
