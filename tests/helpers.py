"""Test data generators (random proteins and point mutants) shared by tests and benchmarks."""
from __future__ import annotations

import random
from pathlib import Path

AA = "ACDEFGHIKLMNPQRSTVWY"


def random_protein(rng: random.Random, length: int) -> str:
    return "".join(rng.choice(AA) for _ in range(length))


def point_mutant(rng: random.Random, seq: str, n_mutations: int) -> str:
    s = list(seq)
    for pos in rng.sample(range(len(s)), n_mutations):
        s[pos] = rng.choice([a for a in AA if a != s[pos]])
    return "".join(s)


def family_fasta(path: Path, *, seed: int = 0, families: int = 3, mutants: int = 3, length: int = 200,
                 unrelated: int = 4) -> dict[str, list[str]]:
    """Write families (a parent + point mutants at ~98% identity) and unrelated proteins; return the groups."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    with open(path, "w") as fh:
        for f in range(families):
            parent = random_protein(rng, length)
            ids = [f"fam{f}_parent"] + [f"fam{f}_mut{m}" for m in range(mutants)]
            seqs = [parent] + [point_mutant(rng, parent, 4) for _ in range(mutants)]
            for i, s in zip(ids, seqs, strict=False):
                fh.write(f">{i}\n{s}\n")
            groups[f"fam{f}"] = ids
        for u in range(unrelated):
            fh.write(f">unrelated{u}\n{random_protein(rng, length)}\n")
            groups[f"unrelated{u}"] = [f"unrelated{u}"]
    return groups
