"""Named model sizes ("flavors", as in torchtitan) and the vocabularies they are built with.

    cfg = model_config("8M", vocab="saprot")        # ESM2Config with 6 layers, 320 wide, 446 tokens
    cfg = model_config(shape=(12, 480, 20))         # an explicit (layers, width, heads) shape

Sizes are the ESM-2 paper's (layers / width / heads), in :mod:`pipeline_lib.model_sizes`; "tiny" is for tests on CPU.
"""
from __future__ import annotations

from pipeline_lib.model_sizes import FLAVORS
from pipeline_lib.models.esm2 import ESM2Config
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET, Alphabet

__all__ = ["FLAVORS", "VOCABS", "alphabet_for", "model_config"]

VOCABS: dict[str, Alphabet] = {"esm2": ESM_ALPHABET, "saprot": SAPROT_ALPHABET}


def alphabet_for(vocab: str) -> Alphabet:
    try:
        return VOCABS[vocab]
    except KeyError:
        raise ValueError(f"unknown vocabulary {vocab!r}; expected one of {sorted(VOCABS)}") from None


def model_config(flavor: str | None = "8M", *, vocab: str = "esm2",
                 shape: tuple[int, int, int] | None = None, intermediate_size: int | None = None,
                 token_dropout: bool = True, architecture: str = "esm2", max_len: int = 1024) -> ESM2Config:
    """ESM2Config for a flavor (or an explicit ``shape`` = (layers, width, heads)) and a vocabulary.
    ``architecture="esm1b"``: ESM-1b's layout (learned positions for ``max_len`` tokens, embedding LayerNorm)."""
    if shape is None:
        if flavor not in FLAVORS:
            raise ValueError(f"unknown model flavor {flavor!r}; expected one of {list(FLAVORS)} or an explicit shape")
        shape = FLAVORS[flavor]
    layers, hidden, heads = shape
    ab = alphabet_for(vocab)
    esm1b = architecture == "esm1b"
    return ESM2Config(num_layers=layers, hidden_size=hidden, num_heads=heads, intermediate_size=intermediate_size,
                      vocab_size=len(ab), pad_token_id=ab.pad_idx, mask_token_id=ab.mask_idx,
                      cls_token_id=ab.cls_idx, eos_token_id=ab.eos_idx, token_dropout=token_dropout,
                      position_embedding="absolute" if esm1b else "rotary", emb_layer_norm_before=esm1b,
                      max_positions=max_len + ab.pad_idx + 1 if esm1b else 1026)
