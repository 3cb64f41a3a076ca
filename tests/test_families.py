"""The synthetic family generator (pipeline_lib/sequences/families.py) and the clustering-quality scores
(pipeline_lib/sequences/cluster_quality.py): deterministic output, the identities it promises (checked against an
independent aligner and the real mmseqs), and pair counting checked against brute force."""
from __future__ import annotations

import hashlib
import itertools
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib.sequences.cluster_quality import clusters_against_truth, partition_agreement
from pipeline_lib.sequences.families import FamilySpec, generate_families, load_seeds, true_identity, write_families

SPEC = FamilySpec(n=1500, seed=3)


@pytest.fixture(scope="module")
def seeds():
    return load_seeds()


@pytest.fixture(scope="module")
def families(seeds):
    return list(generate_families(SPEC, seeds))


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_same_spec_writes_the_same_bytes(seeds, tmp_path):
    a = write_families(SPEC, seeds, tmp_path / "a.fasta.gz", tmp_path / "a.parquet")
    write_families(SPEC, seeds, tmp_path / "b.fasta.gz", tmp_path / "b.parquet")
    write_families(FamilySpec(n=1500, seed=4), seeds, tmp_path / "c.fasta.gz", tmp_path / "c.parquet")
    assert _sha(tmp_path / "a.fasta.gz") == _sha(tmp_path / "b.fasta.gz") != _sha(tmp_path / "c.fasta.gz")
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))
    truth = pq.read_table(tmp_path / "a.parquet").to_pylist()
    assert a.sequences == len(truth) == 1500 and a.families == len({t["family"] for t in truth})
    # the FASTA holds the truth table's ids, lengths and nothing else; headers are UniRef-style
    from pipeline_lib.sequences.fasta import read_fasta
    records = list(read_fasta(tmp_path / "a.fasta.gz"))
    assert [r.header.split()[0] for r in records] == [t["id"] for t in truth]
    assert [len(r.sequence) for r in records] == [t["length"] for t in truth]
    assert all(" n=1 Tax=" in r.header and "RepID=" in r.header for r in records)


def test_every_member_keeps_the_promised_identity_to_its_root(families):
    ids = np.array([m.identity_to_root for f in families for m in f.members])
    assert ids.min() >= SPEC.min_identity
    # the promise is a range, not a point: deep and shallow members both occur, and redundancy (>= 90 %) too
    assert (ids < 0.7).mean() > 0.05 and (ids >= 0.9).mean() > 0.2
    sizes = np.array([len(f.members) for f in families])
    assert sizes.max() <= SPEC.max_family and (sizes == 1).mean() > 0.3 and sizes.max() >= 20
    for fam in families[:50]:
        root = fam.members[0]
        for m in fam.members:
            assert abs(true_identity(m, root) - m.identity_to_root) < 1e-9


def _aligned_identity(a: str, b: str) -> float:
    """Identical aligned columns over the shorter length, by Biopython's global aligner (BLOSUM62, 11/1)."""
    from Bio import Align
    from Bio.Align import substitution_matrices

    aligner = Align.PairwiseAligner(mode="global", substitution_matrix=substitution_matrices.load("BLOSUM62"),
                                    open_gap_score=-11, extend_gap_score=-1, end_gap_score=0)
    aln = aligner.align(a, b)[0]
    same = sum(1 for (s1, e1), (s2, e2) in zip(*aln.aligned, strict=True)
               for i, j in zip(range(s1, e1), range(s2, e2), strict=True) if a[i] == b[j])
    return same / min(len(a), len(b))


def test_true_identity_is_what_an_aligner_finds(families):
    """The origin bookkeeping is the true alignment: an independent aligner agrees on member-root pairs."""
    rng = random.Random(0)
    pairs = [(f.members[0], m) for f in families if len(f.members) > 3 for m in f.members[1:]]
    checked = 0
    for root, m in rng.sample(pairs, 25):
        if m.identity_to_root < 0.6:  # alignment is ambiguous in the twilight zone; the truth is not
            continue
        assert abs(_aligned_identity(root.sequence, m.sequence) - m.identity_to_root) < 0.06, m.id
        checked += 1
    assert checked >= 15


def test_families_grown_from_one_seed_are_different_families(seeds):
    """Two roots of one seed share about root_identity ** 2 of their residues: far below any clustering cutoff."""
    one_seed = [seeds[0]]
    roots = [f.members[0] for f in generate_families(FamilySpec(n=40, seed=1, max_family=1), one_seed)]
    between = [true_identity(a, b) for a, b in itertools.combinations(roots, 2)]
    assert np.mean(between) < SPEC.root_identity ** 2 + 0.1 and max(between) < 0.3


def test_mmseqs_finds_members_and_not_other_families(families, tmp_path):
    """The real mmseqs on the generated set: members align to their root at >= the floor (minus alignment noise),
    and no two roots of different families align at 50 % identity or more."""
    from pipeline_lib.tools.mmseqs import MMseqs

    fams = [f for f in families if len(f.members) >= 2][:60]
    with open(tmp_path / "q.fa", "w") as fh:
        for f in fams:
            fh.write(f">{f.members[0].id}\n{f.members[0].sequence}\n")
    with open(tmp_path / "t.fa", "w") as fh:
        for f in fams:
            for m in f.members[:5]:
                fh.write(f">{m.id}\n{m.sequence}\n")
    MMseqs(threads=2).run("easy-search", tmp_path / "q.fa", tmp_path / "t.fa", tmp_path / "hits.m8", tmp_path / "tmp",
                          "--format-output", "query,target,fident", "-v", "1")
    family_of = {m.id: f.index for f in fams for m in f.members}
    truth = {m.id: m.identity_to_root for f in fams for m in f.members}
    found, cross = set(), []
    for line in (tmp_path / "hits.m8").read_text().splitlines():
        q, t, ident = line.split("\t")
        if family_of[q] == family_of[t]:
            found.add(t)
        elif float(ident) >= 0.5:
            cross.append((q, t, ident))
    assert not cross
    members = [m.id for f in fams for m in f.members[:5]]
    assert len(found) / len(members) > 0.95
    assert all(truth[t] >= SPEC.min_identity for t in found)


def _brute_force(c, f):
    same_c = same_f = both = 0
    for i, j in itertools.combinations(range(len(c)), 2):
        sc, sf = c[i] == c[j], f[i] == f[j]
        same_c += sc
        same_f += sf
        both += sc and sf
    n = len(c) * (len(c) - 1) // 2
    expected = same_c * same_f / n
    return both / same_c, both / same_f, (both - expected) / ((same_c + same_f) / 2 - expected)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pair_counts_equal_brute_force(seed):
    rng = random.Random(seed)
    c = [rng.randrange(6) for _ in range(60)]
    f = [rng.choice("abcd") for _ in range(60)]
    q = partition_agreement(c, f)
    p, r, ari = _brute_force(c, f)
    assert (q.precision, q.recall) == pytest.approx((p, r)) and q.ari == pytest.approx(ari)
    assert q.clusters == len(set(c)) and q.families == len(set(f))
    same = partition_agreement(f, [{"a": 1, "b": 2, "c": 3, "d": 4}[x] for x in f])  # relabelled: identical
    assert same.ari == pytest.approx(1.0) and same.precision == same.recall == 1.0


def test_clusters_file_is_scored_against_the_truth_file(tmp_path):
    pq.write_table(pa.table({"id": ["a", "b", "c", "d"], "cluster_c50": ["a", "a", "c", "c"]}), tmp_path / "c.parquet")
    pq.write_table(pa.table({"id": ["d", "c", "b", "a"], "family": [1, 1, 0, 0]}), tmp_path / "t.parquet")
    q = clusters_against_truth(tmp_path / "c.parquet", tmp_path / "t.parquet", "cluster_c50")
    assert (q.precision, q.recall, q.ari) == (1.0, 1.0, 1.0)
    pq.write_table(pa.table({"id": ["d", "c", "b", "x"], "family": [1, 1, 0, 0]}), tmp_path / "t2.parquet")
    with pytest.raises(ValueError, match="same ids"):
        clusters_against_truth(tmp_path / "c.parquet", tmp_path / "t2.parquet", "cluster_c50")
