"""Telling DNA/RNA from protein: A, C, G, T, U and N are amino-acid letters too, so only their share can.

    nucleotide_residues("ACGTACGT" * 5)      # 40: reads as a nucleotide sequence
    nucleotide_residues("A" * 40)            # None: poly-alanine is a protein (three different bases needed)
"""
from __future__ import annotations

__all__ = ["NUCLEOTIDES", "nucleotide_residues"]

NUCLEOTIDES = "ACGTUN"


def nucleotide_residues(residues: str, *, fraction: float = 0.9, min_length: int = 30) -> int | None:
    """The number of A/C/G/T/U/N in upper-case ``residues`` when they read as DNA/RNA: at least ``min_length``
    residues, ``fraction`` or more of them nucleotide letters, and three different bases among them (a
    poly-alanine or glycine-alanine stretch is a protein). None otherwise."""
    if len(residues) < min_length:
        return None
    nt = sum(residues.count(c) for c in NUCLEOTIDES)
    if nt >= fraction * len(residues) and sum(c in residues for c in "ACGTU") >= 3:
        return nt
    return None
