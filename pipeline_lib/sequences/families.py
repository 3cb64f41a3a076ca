"""Synthetic protein families with known membership, for clustering and search benchmarks and tests.

    spec = FamilySpec(n=100_000, seed=0)
    stats = write_families(spec, load_seeds(), Path("fam.fasta.gz"), Path("fam_truth.parquet"))
    for fam in generate_families(spec, load_seeds()): fam.members[3].identity_to_root

Random sequences have no homologs, so clustering and search benchmarks on them measure nothing real. Here each
family grows from a real protein (a *seed*; by default the embedded demo corpus):

1. the family's **root** is the seed with a share ``1 - root_identity`` of its sites substituted (plus indels),
   so two families grown from one seed are about ``root_identity ** 2`` identical: different families;
2. the other members grow along a **random recursive tree** (each new member picks a parent among the earlier
   ones): a branch substitutes a share of sites drawn from an exponential distribution (mean ``mean_branch``)
   with BLOSUM62 target frequencies (``P(b | a) ~ p_b 2^(S_ab / 2)``, a changed residue never stays the same),
   and carries indels (``indel_rate`` events per substituted site, geometric lengths, inserts drawn from the
   BLOSUM62 background); a branch that would take a member below ``min_identity`` to the root is halved until
   it does not, so **every member is at least ``min_identity`` identical to its root**;
3. a share ``fragment_rate`` of members is written as a fragment (a contiguous half or more), as UniProt has;
4. family sizes follow a zeta law (``size_exponent``, capped at ``max_family``): many singletons, few large.

Identities are *true-alignment* identities: every residue carries the id of the seed site (or of the insertion
event) it descends from, so two sequences' homologous residues are those with the same id, and identity is the
identical homologous residues over the shorter length. Deterministic for a ``FamilySpec`` and seed list: the
same bytes every time (gzip without a timestamp). The truth table (``id``, ``family``, ``seed_id``, ``parent``,
``identity_to_root``, ``length``, ``fragment``) is what :mod:`pipeline_lib.sequences.cluster_quality` scores
clusterings against.
"""
from __future__ import annotations

import gzip
import os
from collections.abc import Iterator, Sequence
from contextlib import ExitStack
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline_lib.io import atomic_path

__all__ = ["FamilySpec", "Member", "Family", "generate_families", "write_families", "load_seeds",
           "true_identity", "TRUTH_SCHEMA", "AMINO_ACIDS"]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# BLOSUM62 background frequencies (Henikoff & Henikoff 1992, as NCBI BLAST uses them), in AMINO_ACIDS order
_BACKGROUND = np.array([0.074, 0.025, 0.054, 0.054, 0.047, 0.074, 0.026, 0.068, 0.058, 0.099, 0.025, 0.045,
                        0.039, 0.034, 0.052, 0.057, 0.051, 0.073, 0.013, 0.032])
_BACKGROUND = _BACKGROUND / _BACKGROUND.sum()
_LOOKUP = np.full(256, 255, dtype=np.uint8)
_LOOKUP[np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)] = np.arange(20, dtype=np.uint8)
_LETTERS = np.frombuffer(AMINO_ACIDS.encode(), dtype=np.uint8)
_INSERTION_BASE = 1 << 40   # residue origin ids at or above this are insertion events, below are seed sites

TRUTH_SCHEMA = pa.schema([("id", pa.string()), ("family", pa.int64()), ("seed_id", pa.string()),
                          ("parent", pa.string()), ("identity_to_root", pa.float64()), ("length", pa.int32()),
                          ("fragment", pa.bool_())])


def _substitution_cdf() -> np.ndarray:
    """Row a: cumulative P(b | a changed) over AMINO_ACIDS, from BLOSUM62 target frequencies, P(a | a) = 0."""
    from Bio.Align import substitution_matrices  # noqa: PLC0415  (Biopython: only needed here)

    m = substitution_matrices.load("BLOSUM62")
    scores = np.array([[m[a, b] for b in AMINO_ACIDS] for a in AMINO_ACIDS], dtype=np.float64)
    joint = _BACKGROUND[None, :] * np.power(2.0, scores / 2.0)
    np.fill_diagonal(joint, 0.0)
    cond = joint / joint.sum(axis=1, keepdims=True)
    cdf = np.cumsum(cond, axis=1)
    cdf[:, -1] = 1.0
    return cdf


@dataclass(frozen=True)
class FamilySpec:
    """What :func:`generate_families` grows (see the module docstring)."""

    n: int                              # sequences in all
    seed: int = 0
    min_identity: float = 0.5           # every member's identity to its family root is at least this
    root_identity: float = 0.35         # a root's identity to its seed protein
    mean_branch: float = 0.05           # mean share of sites a tree branch substitutes
    indel_rate: float = 0.05            # indel events per substituted site
    size_exponent: float = 1.8          # family sizes ~ zeta(size_exponent)
    max_family: int = 2000
    fragment_rate: float = 0.02
    min_seed_length: int = 50
    max_seed_length: int = 1500

    def __post_init__(self) -> None:
        if self.n < 1 or not 0 < self.min_identity < 1 or not 0 < self.root_identity <= 1:
            raise ValueError(f"bad family spec {self}")
        if self.size_exponent <= 1 or self.max_family < 1 or self.mean_branch <= 0:
            raise ValueError(f"bad family spec {self}")


@dataclass
class Member:
    id: str
    residues: np.ndarray            # uint8 indices into AMINO_ACIDS
    origin: np.ndarray              # int64 per residue: seed site or insertion event it descends from
    parent: str | None
    identity_to_root: float
    fragment: bool = False

    @property
    def sequence(self) -> str:
        return _LETTERS[self.residues].tobytes().decode()


@dataclass
class Family:
    index: int
    seed_id: str
    members: list[Member] = field(default_factory=list)


def true_identity(a: Member, b: Member) -> float:
    """Identical homologous residues (same origin id) over the shorter sequence's length."""
    if not len(a.origin) or not len(b.origin):
        return 0.0
    common, ia, ib = np.intersect1d(a.origin, b.origin, assume_unique=True, return_indices=True)
    same = int(np.count_nonzero(a.residues[ia] == b.residues[ib])) if len(common) else 0
    return same / min(len(a.origin), len(b.origin))


def load_seeds(paths: Sequence[str | os.PathLike[str]] | None = None, *, min_length: int = 50,
               max_length: int = 1500) -> list[tuple[str, str]]:
    """Real proteins to grow families from: (id, sequence) of the FASTA files (default: the embedded demo
    corpus's Swiss-Prot entries and proteome, not its two curated families, whose members are homologs), the 20
    standard amino acids only (other letters are dropped), lengths within bounds, exact duplicates once."""
    from pipeline_lib.sequences.fasta import read_fasta  # noqa: PLC0415
    from pipeline_lib.sources.embedded import embedded_corpus  # noqa: PLC0415

    if paths is None:
        paths = [f.path for f in embedded_corpus() if f.path.name.startswith(("uniprot_sprot", "938293"))]
    seeds: list[tuple[str, str]] = []
    seen: set[str] = set()
    for path in paths:
        for rec in read_fasta(path):
            seq = "".join(c for c in rec.sequence.upper() if c in AMINO_ACIDS)
            if min_length <= len(seq) <= max_length and seq not in seen:
                seen.add(seq)
                seeds.append(((rec.header or str(rec.index)).split()[0], seq))
    if not seeds:
        raise ValueError(f"no seed proteins of {min_length}-{max_length} residues in {list(map(str, paths))}")
    return seeds


class _Grower:
    def __init__(self, spec: FamilySpec) -> None:
        self.spec = spec
        self.rng = np.random.default_rng([spec.seed, 0xFA111E5])
        self.cdf = _substitution_cdf()
        self.next_insertion = _INSERTION_BASE

    def evolve(self, residues: np.ndarray, origin: np.ndarray, share: float) -> tuple[np.ndarray, np.ndarray]:
        """Substitute ``share`` of the sites (BLOSUM62 targets), then apply indels."""
        rng = self.rng
        res = residues.copy()
        hit = np.flatnonzero(rng.random(len(res)) < share)
        if len(hit):
            u = rng.random(len(hit))
            res[hit] = (u[:, None] > self.cdf[res[hit]]).sum(axis=1).astype(np.uint8)
        events = rng.poisson(self.spec.indel_rate * share * len(res))
        org = origin
        for _ in range(int(events)):
            length = int(min(rng.geometric(1 / 3), 20))
            at = int(rng.integers(0, len(res) + 1))
            if rng.random() < 0.5 and len(res) - length >= self.spec.min_seed_length // 2:
                res, org = np.delete(res, np.s_[at:at + length]), np.delete(org, np.s_[at:at + length])
            else:
                new = rng.choice(20, size=length, p=_BACKGROUND).astype(np.uint8)
                ids = np.arange(self.next_insertion, self.next_insertion + length, dtype=np.int64)
                self.next_insertion += length
                res, org = np.insert(res, at, new), np.insert(org, at, ids)
        return res, org

    def family_size(self) -> int:
        while True:
            size = int(self.rng.zipf(self.spec.size_exponent))
            if size <= self.spec.max_family:
                return size

    def grow(self, index: int, size: int, seed_id: str, seed: np.ndarray) -> Family:
        spec, rng = self.spec, self.rng
        fam = Family(index, seed_id)
        res, org = self.evolve(seed, np.arange(len(seed), dtype=np.int64), 1.0 - spec.root_identity)
        root = Member(f"UniRef100_S{index:08d}M{0:05d}", res, org, None, 1.0)
        fam.members.append(root)
        for m in range(1, size):
            parent = fam.members[int(rng.integers(0, m))]
            share = min(float(rng.exponential(spec.mean_branch)), 0.75)
            for _ in range(12):
                res, org = self.evolve(parent.residues, parent.origin, share)
                child = Member(f"UniRef100_S{index:08d}M{m:05d}", res, org, parent.id, 0.0)
                child.identity_to_root = true_identity(child, root)
                if child.identity_to_root >= spec.min_identity:
                    break
                share /= 2
            else:  # twelve halvings did not bring it above the floor: an exact copy of the parent
                child = Member(child.id, parent.residues.copy(), parent.origin.copy(), parent.id,
                               parent.identity_to_root)
            fam.members.append(child)
        whole_root = Member(root.id, root.residues, root.origin, None, 1.0)  # fragments are cut from copies
        for member in fam.members:
            if rng.random() < spec.fragment_rate and len(member.residues) >= 2 * spec.min_seed_length:
                keep = int(rng.integers(len(member.residues) // 2, len(member.residues)))
                start = int(rng.integers(0, len(member.residues) - keep + 1))
                piece = Member(member.id, member.residues[start:start + keep], member.origin[start:start + keep],
                               member.parent, 0.0, fragment=True)
                piece.identity_to_root = true_identity(piece, whole_root)
                if piece.identity_to_root >= spec.min_identity:  # the floor holds for fragments too
                    member.residues, member.origin = piece.residues, piece.origin
                    member.identity_to_root, member.fragment = piece.identity_to_root, True
        return fam


def generate_families(spec: FamilySpec, seeds: Sequence[tuple[str, str]]) -> Iterator[Family]:
    """Families in order until ``spec.n`` sequences (the last family is cut to fit)."""
    grower = _Grower(spec)
    encoded = [(sid, _LOOKUP[np.frombuffer(s.encode(), dtype=np.uint8)]) for sid, s in seeds]
    if any((e == 255).any() for _, e in encoded):
        raise ValueError("seed sequences must hold only the 20 standard amino acids (load_seeds filters them)")
    made = index = 0
    while made < spec.n:
        size = min(grower.family_size(), spec.n - made)
        sid, seed = encoded[int(grower.rng.integers(0, len(encoded)))]
        yield grower.grow(index, size, sid, seed)
        made += size
        index += 1


@dataclass
class FamilyStats:
    sequences: int = 0
    residues: int = 0
    families: int = 0
    singletons: int = 0
    largest: int = 0
    fragments: int = 0


def write_families(spec: FamilySpec, seeds: Sequence[tuple[str, str]], fasta: Path, truth: Path) -> FamilyStats:
    """UniRef-style FASTA (``.gz`` when the name ends so, without a gzip timestamp) and the truth Parquet."""
    stats = FamilyStats()
    with atomic_path(fasta) as tmp_fa, atomic_path(truth) as tmp_truth, ExitStack() as stack:
        fh: BinaryIO | gzip.GzipFile = stack.enter_context(open(tmp_fa, "wb"))
        if fasta.name.endswith(".gz"):  # no name, no timestamp: the same bytes on every run
            fh = stack.enter_context(gzip.GzipFile(filename="", fileobj=fh, mode="wb", compresslevel=3, mtime=0))
        writer = stack.enter_context(pq.ParquetWriter(tmp_truth, TRUTH_SCHEMA, compression="zstd"))
        rows: dict[str, list] = {name: [] for name in TRUTH_SCHEMA.names}
        for fam in generate_families(spec, seeds):
            out = []
            for m in fam.members:
                seq = _LETTERS[m.residues].tobytes()
                out.append(b">%s Synthetic family %d member n=1 Tax=synthetic construct TaxID=32630 "
                           b"RepID=%s\n%s\n" % (m.id.encode(), fam.index, m.id.encode(), seq))
                for name, value in (("id", m.id), ("family", fam.index), ("seed_id", fam.seed_id),
                                    ("parent", m.parent), ("identity_to_root", round(m.identity_to_root, 6)),
                                    ("length", len(seq)), ("fragment", m.fragment)):
                    rows[name].append(value)
                stats.residues += len(seq)
                stats.fragments += m.fragment
            fh.write(b"".join(out))
            if len(rows["id"]) >= 65536:  # row groups of ~64 K rows, not one per family
                writer.write_table(pa.table(rows, schema=TRUTH_SCHEMA))
                rows = {name: [] for name in TRUTH_SCHEMA.names}
            stats.sequences += len(fam.members)
            stats.families += 1
            stats.singletons += len(fam.members) == 1
            stats.largest = max(stats.largest, len(fam.members))
        if rows["id"] or not stats.sequences:
            writer.write_table(pa.table(rows, schema=TRUTH_SCHEMA))
    return stats

