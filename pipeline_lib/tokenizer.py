"""Exact ESM-2 and SaProt vocabularies, and encode/decode between strings and token ids.

    >>> ESM_ALPHABET.encode("MKV")            # <cls> M K V <eos>
    [0, 20, 15, 7, 2]

ESM-2 (facebookresearch/esm ``esm/data.py``): 33 tokens, a sequence is ``<cls>`` + residues + ``<eos>``.
SaProt (westlake-repl/SaProt ``utils/esm_loader.py``): 5 specials, then every (amino acid, 3Di) pair,
amino acid first, outer loop over ``ACDEFGHIKLMNPQRSTVWY#``, inner over ``pynwrqhgdlvtmfsaeikc#``.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from pipeline_lib.errors import DataValidationError

__all__ = [
    "ESM_TOKENS",
    "SAPROT_TOKENS",
    "SAPROT_AA",
    "SAPROT_3DI",
    "Alphabet",
    "ESM_ALPHABET",
    "SAPROT_ALPHABET",
]

ESM_TOKENS: tuple[str, ...] = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H", "W", "C",
    "X", "B", "U", "Z", "O", ".", "-", "<null_1>", "<mask>",
)
SAPROT_AA = "ACDEFGHIKLMNPQRSTVWY#"
SAPROT_3DI = "pynwrqhgdlvtmfsaeikc#"
SAPROT_TOKENS: tuple[str, ...] = ("<cls>", "<pad>", "<eos>", "<unk>", "<mask>") + tuple(
    aa + di for aa in SAPROT_AA for di in SAPROT_3DI
)


class Alphabet:
    """A fixed vocabulary with its special tokens. Residue tokens are single symbols or (aa, 3Di) pairs."""

    def __init__(self, tokens: Sequence[str], *, name: str) -> None:
        self.name = name
        self.tokens: tuple[str, ...] = tuple(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}
        if len(self.index) != len(self.tokens):
            raise ValueError(f"duplicate tokens in vocabulary {name}")
        self.cls_idx = self.index["<cls>"]
        self.pad_idx = self.index["<pad>"]
        self.eos_idx = self.index["<eos>"]
        self.unk_idx = self.index["<unk>"]
        self.mask_idx = self.index["<mask>"]
        self.special_ids = frozenset(i for i, t in enumerate(self.tokens) if t.startswith("<"))
        # byte -> id lookup for the fast path of single-letter vocabularies
        self._lut = np.full(256, self.unk_idx, dtype=np.int16)
        for t, i in self.index.items():
            if len(t) == 1:
                self._lut[ord(t)] = i
        self.dtype = np.uint8 if len(self.tokens) <= 256 else np.int16

    def __len__(self) -> int:
        return len(self.tokens)

    def encode(self, seq: str, *, add_special: bool = True) -> list[int]:
        return self.encode_array(seq, add_special=add_special).tolist()

    def encode_array(self, seq: str, *, add_special: bool = True) -> np.ndarray:
        """Encode a one-letter-per-residue string (ESM). Unknown letters become ``<unk>``."""
        ids = self._lut[np.frombuffer(seq.encode("ascii", "replace"), dtype=np.uint8)]
        if add_special:
            ids = np.concatenate(([self.cls_idx], ids, [self.eos_idx]))
        return ids.astype(self.dtype, copy=False)

    def encode_pairs(self, aa_seq: str, threedi_seq: str, *, add_special: bool = True) -> list[int]:
        """Encode structure-aware tokens (SaProt): residue i is ``aa_seq[i] + threedi_seq[i].lower()``."""
        if len(aa_seq) != len(threedi_seq):
            raise DataValidationError(
                f"amino-acid and 3Di strings differ in length ({len(aa_seq)} vs {len(threedi_seq)})")
        ids = [self.index.get(a + d.lower(), self.unk_idx) for a, d in zip(aa_seq, threedi_seq, strict=False)]
        return [self.cls_idx, *ids, self.eos_idx] if add_special else ids

    def decode(self, ids: Sequence[int] | np.ndarray, *, strip_special: bool = True) -> str:
        ids = [int(i) for i in ids]
        bad = [i for i in ids if not 0 <= i < len(self.tokens)]
        if bad:  # a negative id would silently index from the end
            raise DataValidationError(f"token ids outside the {self.name} vocabulary (0..{len(self.tokens) - 1}): "
                                      f"{bad[:5]}")
        return "".join(self.tokens[i] for i in ids if not (strip_special and i in self.special_ids))


ESM_ALPHABET = Alphabet(ESM_TOKENS, name="esm2")
SAPROT_ALPHABET = Alphabet(SAPROT_TOKENS, name="saprot")
assert len(ESM_ALPHABET) == 33 and len(SAPROT_ALPHABET) == 446
