"""Three-letter residue names to one-letter codes, exactly as Foldseek's ``createdb`` maps them.

The table is Foldseek's ``threeToOneAA`` (``src/strucclustutils/GemmiWrapper.cpp``, itself adapted from
gemmi's ``find_tabulated_residue``): the 20 standard amino acids plus modified residues mapped to their
parent (``MSE`` -> ``M``, ``SEP`` -> ``S``, ...). Anything else is ``X``. Using the same table keeps our
amino-acid strings identical to Foldseek's (e.g. ``SEC`` -> ``C`` as in Foldseek, not gemmi's ``U``).

    >>> one_letter("MSE")
    'M'
"""
from __future__ import annotations

__all__ = ["THREE_TO_ONE", "one_letter"]

_TABLE = """
ALA A ARG R ASN N ABA A ASP D ASX B CYS C CSH S GLN Q GLU E GLX Z GLY G HIS H ILE I LEU L LYS K MET M
MSE M ORN A PHE F PRO P SER S THR T TRY W TRP W TYR Y UNK X VAL V SEC C PYL O SEP S TPO T PCA E CSO C
PTR Y KCX K CSD C LLP K CME C MLY K DAL A TYS Y OCS C M3L K FME M ALY K HYP P CAS C CRO T CSX C DPR P
DGL E DVA V CSS C DPN F DSN S DLE L HIC H NLE L MVA V MLZ K CR2 G SAR G DAR R DLY K YCM C NRQ M CGU E
0TD D MLE L DAS D DTR W CXM M TPQ Y DCY C DSG N DTY Y DHI H MEN N DTH T SAC S DGN Q AIB A SMC C IAS D
CIR R BMT T DIL I FGA E PHI F CRQ Q SME M GHP G MHO M NEP H TRQ W TOX W ALC A SCH C MDO A MAA A GYS S
MK8 L CR8 H KPI K SCY C DHA S OMY Y CAF C 0AF W SNN N MHS H SNC C PHD D B3E E MEA F MED M OAS S GL3 G
FVA V PHL F CRF T BFD D MEQ Q DAB A AGM R 4BF Y B3A A B3D D B3K K B3Y Y BAL A DBZ A GPL K HSK H HY3 P
HZP P KYN W MGN Q
"""
_WORDS = _TABLE.split()
THREE_TO_ONE: dict[str, str] = dict(zip(_WORDS[0::2], _WORDS[1::2], strict=False))


def one_letter(name: str) -> str:
    """One-letter code of residue ``name`` (``X`` when unknown)."""
    return THREE_TO_ONE.get(name, "X")
