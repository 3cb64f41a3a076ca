"""3Di structure strings (Foldseek's structural alphabet) for every chain of a set of structure files.

    from pipeline_lib.structures.threedi import encode_structures
    for chain in encode_structures(paths, backend="mini3di", workers=4):
        print(chain.name, chain.aa, chain.threedi)          # also chain.plddt, chain.source

Backends behind one interface:

- ``mini3di``: the NumPy port of Foldseek's encoder, fed the residues Foldseek itself would use
  (:mod:`pipeline_lib.structures.parse`). Matches ``foldseek createdb`` character for character on the
  shared fixtures (``tests/test_threedi.py``).
- ``foldseek``: the real binary (:class:`pipeline_lib.tools.foldseek.Foldseek`), one ``createdb`` per batch.
- ``auto``: ``foldseek`` when its binary is found, else ``mini3di``.

Chains Foldseek leaves out are left out here too, counted by reason in :class:`EncodeStats`: ``too_short``
(3 residues or fewer), ``not_protein`` (every residue ``X``); the mini3di backend also skips ``ca_only``
chains (Foldseek rebuilds their backbone with PULCHRA, which mini3di cannot). Files that cannot be read are
counted as ``unreadable`` (or raise, with ``on_error="raise"``).

Batches of ``batch_size`` files run in ``workers`` processes (``ProcessPoolExecutor``) with at most
``2 * workers`` batches in flight, so memory stays bounded whatever the number of inputs; results come
back in input order.
"""
from __future__ import annotations

import functools
import logging
import multiprocessing
import os
import tempfile
from collections import Counter, deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, NamedTuple, TypeVar

import numpy as np

from pipeline_lib.errors import DataValidationError, ToolError
from pipeline_lib.progress import Progress
from pipeline_lib.structures.parse import AltlocMode, Chain, StructureBlob, parse_structure

__all__ = ["Backend", "EncodedChain", "EncodeStats", "StructureInput", "MIN_CHAIN_LENGTH",
           "encode_structures", "encode_chain", "skip_reason", "resolve_backend"]

log = logging.getLogger(__name__)

Backend = Literal["auto", "foldseek", "mini3di"]
StructureInput = str | os.PathLike[str] | StructureBlob
MIN_CHAIN_LENGTH = 4  # Foldseek's createdb drops chains with chainLen <= 3
T = TypeVar("T")
R = TypeVar("R")


class EncodedChain(NamedTuple):
    """One chain: name ``<stem>_<chain id>``, amino acids, 3Di (upper case, same length), per-residue pLDDT."""

    name: str
    aa: str
    threedi: str
    plddt: np.ndarray | None
    source: str
    predicted: bool = False  # the file's content marks it as a predicted model (parse.Chain.predicted)


@dataclass
class EncodeStats:
    """What an encoding run saw: files, chains and residues encoded, skips and failures by reason."""

    files: int = 0
    chains: int = 0
    residues: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    failures: list[tuple[str, str]] = field(default_factory=list)  # (file, reason)

    def merge(self, other: EncodeStats) -> None:
        self.files += other.files
        self.chains += other.chains
        self.residues += other.residues
        self.skipped.update(other.skipped)
        self.failures.extend(other.failures)


# --- mini3di ---------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=1)
def _mini3di_encoder():  # one per process: loading the network weights is the slow part
    import mini3di  # noqa: PLC0415

    return mini3di.Encoder()


def skip_reason(chain: Chain, *, backend: Literal["foldseek", "mini3di"] = "mini3di") -> str | None:
    """Why Foldseek (or mini3di) would leave ``chain`` out, or None."""
    if len(chain) < MIN_CHAIN_LENGTH:
        return "too_short"
    if set(chain.sequence) == {"X"}:
        return "not_protein"
    # Foldseek's own test for CA-only models: no N and no C in the first four residues
    if backend == "mini3di" and np.isnan(chain.n[:4, 0]).all() and np.isnan(chain.c[:4, 0]).all():
        return "ca_only"
    return None


def encode_chain(chain: Chain) -> str:
    """3Di string (upper case) of one chain with mini3di; residues mini3di cannot encode come out as ``D``."""
    enc = _mini3di_encoder()
    states = enc.encode_atoms(chain.ca, chain.cb, chain.n, chain.c)
    return enc.build_sequence(states)


def _input_name(item: StructureInput) -> str:
    return item.name if isinstance(item, StructureBlob) else str(item)


def _encode_batch_mini3di(items: list[StructureInput], altloc: AltlocMode,
                          raise_errors: bool) -> tuple[list[EncodedChain], EncodeStats]:
    """Worker: parse and encode one batch of files."""
    out: list[EncodedChain] = []
    stats = EncodeStats()
    for item in items:
        stats.files += 1
        try:
            chains = parse_structure(item, altloc=altloc)
        except DataValidationError as exc:
            if raise_errors:
                raise
            stats.skipped["unreadable"] += 1
            stats.failures.append((_input_name(item), exc.reason))
            continue
        for chain in chains:
            reason = skip_reason(chain)
            if reason:
                stats.skipped[reason] += 1
                continue
            out.append(EncodedChain(chain.name, chain.sequence, encode_chain(chain), chain.plddt, chain.source,
                                    chain.predicted))
            stats.chains += 1
            stats.residues += len(chain)
    return out, stats


# --- foldseek --------------------------------------------------------------------------------------

def _materialize(items: list[StructureInput], workdir: Path) -> list[Path]:
    """Paths Foldseek can read: files as they are, in-memory blobs written under their own base name."""
    paths = []
    for i, item in enumerate(items):
        if isinstance(item, StructureBlob):
            d = workdir / f"in{i:05d}"  # one folder per blob keeps equal base names apart
            d.mkdir()
            p = d / item.name.replace("\\", "/").rsplit("/", 1)[-1]
            p.write_bytes(item.data)
            paths.append(p)
        else:
            paths.append(Path(item))
    return paths


def _parse_batch(items: list[StructureInput], altloc: AltlocMode, stats: EncodeStats,
                 raise_errors: bool) -> dict[str, deque[Chain]]:
    """Our own parse of the batch, for per-residue pLDDT (Foldseek's FASTA output has none).

    Chains by name, in file order (two files may share a stem, e.g. ``x.pdb`` and ``x.cif``).
    """
    chains: dict[str, deque[Chain]] = {}
    for item in items:
        stats.files += 1
        try:
            for chain in parse_structure(item, altloc=altloc):
                chains.setdefault(chain.name, deque()).append(chain)
        except DataValidationError as exc:
            if raise_errors:
                raise
            stats.skipped["unreadable"] += 1
            stats.failures.append((_input_name(item), exc.reason))
    return chains


def _encode_batch_foldseek(items: list[StructureInput], binary: str | None, threads: int, altloc: AltlocMode,
                           raise_errors: bool, tmp_root: str | None) -> tuple[list[EncodedChain], EncodeStats]:
    """Worker: one ``foldseek createdb`` over the batch; pLDDT attached from our own parse."""
    from pipeline_lib.tools.foldseek import Foldseek  # noqa: PLC0415

    stats = EncodeStats()
    parsed = _parse_batch(items, altloc, stats, raise_errors)
    readable = [it for it in items if _input_name(it) not in {f for f, _ in stats.failures}]
    out: list[EncodedChain] = []
    if not readable:
        return out, stats
    with tempfile.TemporaryDirectory(prefix="foldseek-", dir=tmp_root) as tmp:
        paths = _materialize(readable, Path(tmp))
        for name, aa, di in Foldseek(binary=binary, threads=threads).structures_to_3di(paths, Path(tmp) / "db"):
            chain = parsed[name].popleft() if parsed.get(name) else None
            same = chain is not None and chain.sequence == aa
            out.append(EncodedChain(name, aa, di, chain.plddt if chain is not None and same else None,
                                    chain.source if chain is not None else "",
                                    chain.predicted if chain is not None else False))
            stats.chains += 1
            stats.residues += len(aa)
    for left in parsed.values():  # chains Foldseek did not write out
        for chain in left:
            stats.skipped[skip_reason(chain, backend="foldseek") or "dropped_by_foldseek"] += 1
    return out, stats


def resolve_backend(backend: Backend, foldseek_binary: str | None = None) -> Literal["foldseek", "mini3di"]:
    """``auto`` -> ``foldseek`` when the binary is found (configured path, $PLM_FOLDSEEK, PATH), else ``mini3di``."""
    if backend != "auto":
        return backend
    from pipeline_lib.tools.foldseek import find_foldseek  # noqa: PLC0415

    try:
        find_foldseek(foldseek_binary)
        return "foldseek"
    except ToolError:
        return "mini3di"


# --- batching --------------------------------------------------------------------------------------

def _chunks(items: Iterable[T], size: int) -> Iterator[list[T]]:
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def _map_bounded(fn: Callable[[list[T]], R], batches: Iterator[list[T]], workers: int) -> Iterator[R]:
    """``map(fn, batches)`` over ``workers`` processes, in order, with at most ``2 * workers`` in flight."""
    if workers <= 1:
        yield from map(fn, batches)
        return
    # forkserver: no fork of a parent that may hold threads (HTTP pools, Prefect) or locks
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver"))
    pending: deque[Future[R]] = deque()
    try:
        for batch in batches:
            pending.append(pool.submit(fn, batch))
            if len(pending) >= 2 * workers:
                yield pending.popleft().result()
        while pending:
            yield pending.popleft().result()
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def encode_structures(inputs: Iterable[StructureInput], backend: Backend = "auto", *, threads: int = 1,
                      workers: int = 1, batch_size: int = 64, foldseek_binary: str | None = None,
                      altloc: AltlocMode = "last", on_error: Literal["skip", "raise"] = "skip",
                      stats: EncodeStats | None = None, tmp_dir: str | None = None,
                      progress: Progress | None = None) -> Iterator[EncodedChain]:
    """Yield an :class:`EncodedChain` per usable chain of ``inputs`` (paths or :class:`StructureBlob`).

    ``threads`` is Foldseek's ``--threads``; ``workers`` the number of processes; ``stats`` (optional)
    is filled with counts and failures as batches complete; ``progress`` (optional) counts the files of
    each completed batch.
    """
    if batch_size < 1 or workers < 1 or threads < 1:
        raise ValueError("batch_size, workers and threads must be >= 1")
    chosen = resolve_backend(backend, foldseek_binary)
    raise_errors = on_error == "raise"
    if chosen == "mini3di":
        fn = functools.partial(_encode_batch_mini3di, altloc=altloc, raise_errors=raise_errors)
    else:
        from pipeline_lib.tools.foldseek import find_foldseek  # noqa: PLC0415

        binary = find_foldseek(foldseek_binary)
        fn = functools.partial(_encode_batch_foldseek, binary=binary, threads=threads, altloc=altloc,
                               raise_errors=raise_errors, tmp_root=tmp_dir)
    log.info("encoding 3Di with %s (%d worker(s), batches of %d)", chosen, workers, batch_size)
    for chains, batch_stats in _map_bounded(fn, _chunks(inputs, batch_size), workers):
        if stats is not None:
            stats.merge(batch_stats)
        if progress is not None:
            progress.update(batch_stats.files)
        yield from chains
