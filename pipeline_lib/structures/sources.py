"""Where structure files come from: a directory, tar archives, the AlphaFold DB API, Foldcomp databases.

    paths = iter_directory("data/pdb")                                  # Path per PDB/mmCIF(.gz) file
    blobs = iter_archive("swissprot_pdb_v4.tar", stats=stats)           # StructureBlob per member, streamed
    models = afdb_models(["P69905"], "work/afdb", AfdbSource(), stats=stats)   # downloads, AfdbModel each
    blobs = iter_foldcomp("afdb_swissprot_v4", ids=["AF-P69905-F1-model_v4"])  # needs `pip install foldcomp`

Everything yielded here feeds :func:`pipeline_lib.structures.threedi.encode_structures` directly
(``AfdbModel.path``). Archives are read member by member (``tarfile`` stream mode) and never extracted;
members with absolute paths, ``..`` components, links or special types are refused and counted in
:class:`SourceStats`. AlphaFold DB files are resolved through ``<base_url>/api/prediction/<accession>``
(``pdbUrl`` / ``cifUrl`` / ``latestVersion``: no model version is hard-coded); a 404 counts as ``no_model``.
"""
from __future__ import annotations

import fnmatch
import json
import logging
import os
import re
import tarfile
from collections import Counter, deque
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import Any
from urllib.parse import quote, urlsplit

from pipeline_lib.errors import DataValidationError, PipelineError
from pipeline_lib.structures.config import STRUCTURE_PATTERNS, AfdbSource
from pipeline_lib.structures.parse import StructureBlob

__all__ = ["SourceStats", "AfdbModel", "iter_directory", "describe_skipped", "UNSUPPORTED_FORMATS", "iter_archive",
           "afdb_prediction", "fetch_afdb_model",
           "afdb_models", "iter_foldcomp", "UNIPROT_ACCESSION"]

log = logging.getLogger(__name__)

# UniProt's accession format (https://www.uniprot.org/help/accession_numbers), optional isoform suffix
UNIPROT_ACCESSION = re.compile(
    r"^(?:[OPQ][0-9][A-Z0-9]{3}[0-9]|[A-NR-Z][0-9](?:[A-Z][A-Z0-9]{2}[0-9]){1,2})(?:-\d+)?$")
API_MAX_BYTES = 1 << 20


@dataclass
class SourceStats:
    """Counts by outcome: ``refused`` (unsafe archive members), ``skipped`` (not structures), ``afdb``."""

    refused: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    afdb: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (accession or file, reason)
    yielded: int = 0

    def merge(self, other: SourceStats) -> None:
        self.refused.update(other.refused)
        self.skipped.update(other.skipped)
        self.afdb.update(other.afdb)
        self.failures.extend(other.failures)
        self.yielded += other.yielded


def _matches(name: str, patterns: Iterable[str]) -> bool:
    base = name.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(base.lower(), p.lower()) for p in patterns)


# --- directory -------------------------------------------------------------------------------------

# formats people keep structures in that this reader does not take: named in the warning when a folder holds them
UNSUPPORTED_FORMATS = {".mmtf": "MMTF", ".bcif": "BinaryCIF", ".xml": "PDBML/XML", ".pdbml": "PDBML/XML"}


def iter_directory(path: str | os.PathLike[str], *, recursive: bool = True,
                   patterns: Iterable[str] = STRUCTURE_PATTERNS,
                   skipped: Counter[str] | None = None) -> Iterator[Path]:
    """Structure files under ``path`` whose names match ``patterns``, sorted (deterministic order). The other
    files are counted in ``skipped`` by suffix (``.mmtf`` ...), symbolic links to directories (never followed,
    so a link loop cannot recurse) as ``symlinked_directory``."""
    root = Path(path)
    if not root.is_dir():
        raise DataValidationError("structure directory does not exist", path=str(root))
    pats = tuple(patterns)
    walker = root.rglob("*") if recursive else root.glob("*")
    found = []
    for p in walker:
        if p.is_file() and _matches(p.name, pats):
            found.append(p)
        elif skipped is not None and p.is_symlink() and p.is_dir():
            skipped["symlinked_directory"] += 1
        elif skipped is not None and p.is_file():
            skipped[Path(p.name.removesuffix(".gz")).suffix.lower() or "(no suffix)"] += 1
    yield from sorted(found)


def describe_skipped(skipped: Counter[str]) -> str:
    """``3 .mmtf (MMTF, not supported), 1 symlinked_directory`` for a warning."""
    return ", ".join(f"{n} {k}" + (f" ({UNSUPPORTED_FORMATS[k]}, not supported)" if k in UNSUPPORTED_FORMATS else "")
                     for k, n in skipped.most_common())


# --- tar archives ----------------------------------------------------------------------------------

def _refusal(member: tarfile.TarInfo, max_bytes: int) -> str | None:
    """Why ``member`` must not be read, or None. Checked on the name as stored, before any read."""
    name = member.name
    if name.startswith(("/", "\\")) or re.match(r"^[A-Za-z]:", name):
        return "absolute_path"
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        return "parent_reference"
    if member.issym() or member.islnk():
        return "link"
    if not member.isfile():
        return "special_file"
    if member.size > max_bytes:
        return "too_large"
    return None


def iter_archive(path: str | os.PathLike[str], *, stats: SourceStats | None = None,
                 patterns: Iterable[str] = STRUCTURE_PATTERNS,
                 max_member_bytes: int = 1 << 30) -> Iterator[StructureBlob]:
    """Structure members of a tar archive (any compression) as :class:`StructureBlob`, one at a time."""
    stats = stats if stats is not None else SourceStats()
    pats = tuple(patterns)
    try:
        with tarfile.open(path, mode="r|*") as tf:
            for member in tf:
                if member.isdir():
                    continue
                reason = _refusal(member, max_member_bytes)
                if reason:
                    stats.refused[reason] += 1
                    log.warning("%s: refusing archive member %r (%s)", path, member.name, reason)
                    continue
                if not _matches(member.name, pats):
                    stats.skipped["not_structure"] += 1
                    continue
                fh = tf.extractfile(member)
                assert fh is not None  # regular file
                stats.yielded += 1
                yield StructureBlob(member.name, fh.read())
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise DataValidationError(f"unreadable tar archive ({exc})", path=str(path)) from None


# --- AlphaFold DB ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class AfdbModel:
    accession: str
    entry_id: str
    version: str   # "v4", "v6": from the API's latestVersion
    url: str
    path: Path


def afdb_prediction(accession: str, *, base_url: str, retries: int = 5,
                    timeout_s: float = 60.0) -> list[dict[str, Any]] | None:
    """The API's JSON list for ``accession``; None when AlphaFold DB has no model (HTTP 404)."""
    from pipeline_lib.sources.download import PermanentDownloadError, fetch_bytes  # noqa: PLC0415

    url = f"{base_url.rstrip('/')}/api/prediction/{quote(accession)}"
    try:
        body = fetch_bytes(url, max_bytes=API_MAX_BYTES, retries=retries, timeout_s=timeout_s)
    except PermanentDownloadError as exc:
        if exc.status == 404:
            return None
        raise
    try:
        entries = json.loads(body)
    except json.JSONDecodeError as exc:
        raise DataValidationError(f"AlphaFold DB API answer is not JSON ({exc})", path=url) from None
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise DataValidationError("AlphaFold DB API answer is not a JSON list of entries", path=url)
    return entries


def _pick_entry(entries: list[dict[str, Any]], accession: str) -> dict[str, Any] | None:
    """The F1 entry of ``accession`` (the API may list isoforms or fragments too)."""
    own = [e for e in entries if e.get("uniprotAccession", accession) == accession] or entries
    f1 = [e for e in own if str(e.get("entryId", "")).endswith("-F1")]
    return (f1 or own)[0] if (f1 or own) else None


def _version(entry: dict[str, Any], filename: str) -> str:
    if entry.get("latestVersion") is not None:
        return f"v{entry['latestVersion']}"
    m = re.search(r"model_(v\d+)", filename)
    return m.group(1) if m else "unknown"


def fetch_afdb_model(accession: str, dest_dir: str | os.PathLike[str], cfg: AfdbSource,
                     stats: SourceStats | None = None) -> AfdbModel | None:
    """Resolve ``accession`` through the API and download its model file (skipped when already there)."""
    from pipeline_lib.sources.download import download  # noqa: PLC0415

    stats = stats if stats is not None else SourceStats()
    if not UNIPROT_ACCESSION.match(accession):
        stats.afdb["invalid_accession"] += 1
        return None
    entries = afdb_prediction(accession, base_url=cfg.base_url, retries=cfg.retries, timeout_s=cfg.timeout_s)
    entry = _pick_entry(entries, accession) if entries else None
    url = entry.get("pdbUrl" if cfg.file_format == "pdb" else "cifUrl") if entry else None
    if not url or entry is None:
        stats.afdb["no_model"] += 1
        return None
    filename = PurePosixPath(urlsplit(url).path).name
    if not filename or filename.startswith("."):
        raise DataValidationError(f"AlphaFold DB API gave a model URL without a usable file name: {url}",
                                  record=accession)
    result = download(url, Path(dest_dir) / filename, retries=cfg.retries, timeout_s=cfg.timeout_s,
                      allowed_hosts=cfg.allowed_hosts, progress=False)
    stats.afdb["already_present" if result.skipped else "downloaded"] += 1
    return AfdbModel(accession, str(entry.get("entryId", "")), _version(entry, filename), url, result.path)


def _fetch_counted(accession: str, dest_dir: str | os.PathLike[str],
                   cfg: AfdbSource) -> tuple[AfdbModel | None, SourceStats]:
    """Worker thread: one accession with its own counts (merged by the caller, no shared state)."""
    local = SourceStats()
    try:
        return fetch_afdb_model(accession, dest_dir, cfg, local), local
    except PipelineError as exc:  # after the download's own retries: record it, keep the others going
        log.warning("AlphaFold DB %s: %s", accession, exc)
        local.afdb["failed"] += 1
        local.failures.append((accession, str(exc)))
        return None, local


def afdb_models(accessions: Iterable[str], dest_dir: str | os.PathLike[str], cfg: AfdbSource, *,
                stats: SourceStats | None = None) -> Iterator[AfdbModel]:
    """Models of ``accessions``, fetched ``cfg.concurrency`` at a time (bounded in flight), in input order.

    Accessions that fail after retries are counted (``stats.afdb["failed"]``, ``stats.failures``), not raised.
    """
    stats = stats if stats is not None else SourceStats()
    Path(dest_dir).mkdir(parents=True, exist_ok=True)
    with ThreadPoolExecutor(cfg.concurrency, thread_name_prefix="afdb") as pool:
        pending: deque[Future[tuple[AfdbModel | None, SourceStats]]] = deque()

        def drain(limit: int) -> Iterator[AfdbModel]:
            while len(pending) > limit:
                model, local = pending.popleft().result()
                stats.merge(local)
                if model is not None:
                    stats.yielded += 1
                    yield model

        for acc in dict.fromkeys(accessions):  # unique, order kept
            pending.append(pool.submit(_fetch_counted, acc, dest_dir, cfg))
            yield from drain(2 * cfg.concurrency)
        yield from drain(0)


# --- Foldcomp --------------------------------------------------------------------------------------

def iter_foldcomp(path: str | os.PathLike[str], ids: list[str] | None = None) -> Iterator[StructureBlob]:
    """Entries of a Foldcomp database as PDB text (``foldcomp.open(path, ids=...)``)."""
    try:
        import foldcomp  # noqa: PLC0415  (optional dependency)
    except ImportError:
        raise PipelineError("the foldcomp source needs the foldcomp package: pip install foldcomp") from None
    if not Path(f"{path}.index").is_file():
        raise DataValidationError("not a Foldcomp database (no .index file beside it)", path=str(path))
    kwargs = {"ids": ids} if ids is not None else {}
    with foldcomp.open(str(path), **kwargs) as db:
        for name, pdb in db:
            yield StructureBlob(name, pdb.encode() if isinstance(pdb, str) else pdb)
