"""What evaluation needs from a model, and adapters for the models we meet.

    from transformers import EsmForMaskedLM
    lm = HFMaskedLM(EsmForMaskedLM.from_pretrained("out/hf"))          # ESM alphabet by default
    lm = TorchMaskedLM(my_module, SAPROT_ALPHABET, attention_kwargs={"need_head_weights": True})
    logits = lm.logits(tokens)            # tokens: LongTensor[B, L] -> FloatTensor[B, L, V]
    attn = lm.attentions(tokens)          # -> FloatTensor[B, layers, heads, L, L]

Evaluation code depends only on :class:`MaskedLM`; any object with ``alphabet``, ``logits`` and
``attentions`` works. Padding uses ``alphabet.pad_idx``; adapters run the module in eval mode without
gradients and return float32 tensors on the CPU-or-model device of the input.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from pipeline_lib.tokenizer import ESM_ALPHABET, Alphabet

__all__ = ["MaskedLM", "HFMaskedLM", "TorchMaskedLM", "pad_batch", "aa_token_groups", "AMINO_ACIDS"]

AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"


@runtime_checkable
class MaskedLM(Protocol):
    """A masked language model over ``alphabet`` (token ids include ``<cls>``/``<eos>``)."""

    alphabet: Alphabet

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        """LongTensor[B, L] (padded with ``alphabet.pad_idx``) -> FloatTensor[B, L, V]."""
        ...

    def attentions(self, tokens: torch.Tensor) -> torch.Tensor:
        """LongTensor[B, L] -> FloatTensor[B, layers, heads, L, L] (softmax weights of every layer and head)."""
        ...


def _device(module: nn.Module) -> torch.device:
    p = next(module.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


class HFMaskedLM:
    """Adapter for a Hugging Face ``EsmForMaskedLM`` (or any model taking ``input_ids``/``attention_mask``
    and returning ``.logits`` and, with ``output_attentions=True``, ``.attentions`` per layer)."""

    def __init__(self, model: nn.Module, alphabet: Alphabet = ESM_ALPHABET) -> None:
        vocab = getattr(getattr(model, "config", None), "vocab_size", None)
        if vocab is not None and vocab != len(alphabet):
            raise ValueError(f"model vocabulary has {vocab} tokens, alphabet {alphabet.name} has {len(alphabet)}")
        self.model = model.eval()
        self.alphabet = alphabet

    @property
    def device(self) -> torch.device:
        return _device(self.model)

    def _run(self, tokens: torch.Tensor, **kwargs: Any) -> Any:
        tokens = tokens.to(self.device)
        mask = tokens.ne(self.alphabet.pad_idx).long()
        # without padding, no mask: identical numbers, and SDPA may pick its fused kernels
        with torch.inference_mode():
            return self.model(input_ids=tokens, attention_mask=None if bool(mask.all()) else mask, **kwargs)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        return self._run(tokens).logits.float()

    def attentions(self, tokens: torch.Tensor) -> torch.Tensor:
        # sdpa / flash kernels do not return attention weights: switch to eager for this call only
        config = getattr(self.model, "config", None)
        before = getattr(config, "_attn_implementation", "eager")
        switch = before != "eager" and hasattr(self.model, "set_attn_implementation")
        if switch:
            getattr(self.model, "set_attn_implementation")("eager")  # noqa: B009 (an HF model's method)
        try:
            out = self._run(tokens, output_attentions=True)
        finally:
            if switch:
                getattr(self.model, "set_attn_implementation")(before)  # noqa: B009
        if not out.attentions:
            raise RuntimeError(f"model returned no attention weights (attention implementation {before!r})")
        return torch.stack([a.float() for a in out.attentions], dim=1)


def _get(out: Any, key: str) -> Any:
    if isinstance(out, Mapping):
        return out.get(key)
    return getattr(out, key, None)


class TorchMaskedLM:
    """Adapter for a plain ``nn.Module`` called as ``module(tokens, **kwargs)``.

    The output is the logits tensor itself, a mapping with ``"logits"`` (fair-esm style) or an object with
    ``.logits``. Attention weights are requested with ``attention_kwargs`` (fair-esm:
    ``{"need_head_weights": True}``) and read from ``"attentions"``: one tensor [B, layers, heads, L, L]
    or one [B, heads, L, L] tensor per layer. The module handles padding itself (``alphabet.pad_idx``).
    """

    def __init__(self, module: nn.Module, alphabet: Alphabet = ESM_ALPHABET, *,
                 attention_kwargs: Mapping[str, Any] | None = None) -> None:
        self.module = module.eval()
        self.alphabet = alphabet
        self.attention_kwargs = dict(attention_kwargs) if attention_kwargs is not None else None

    @property
    def device(self) -> torch.device:
        return _device(self.module)

    def logits(self, tokens: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.module(tokens.to(self.device))
        logits = out if isinstance(out, torch.Tensor) else _get(out, "logits")
        if not isinstance(logits, torch.Tensor):
            raise TypeError(f"module returned {type(out).__name__} without logits")
        return logits.float()

    def attentions(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.attention_kwargs is None:
            raise NotImplementedError("TorchMaskedLM was built without attention_kwargs: no attention maps")
        with torch.inference_mode():
            out = self.module(tokens.to(self.device), **self.attention_kwargs)
        att = _get(out, "attentions")
        if isinstance(att, (list, tuple)):
            att = torch.stack(list(att), dim=1)
        if not isinstance(att, torch.Tensor) or att.dim() != 5:
            raise TypeError("module output has no 'attentions' of shape [B, layers, heads, L, L]")
        return att.float()


def pad_batch(seqs: list[torch.Tensor], pad_idx: int) -> torch.Tensor:
    """Right-pad 1-D token tensors into LongTensor[B, max L]."""
    out = torch.full((len(seqs), max(len(s) for s in seqs)), pad_idx, dtype=torch.long)
    for i, s in enumerate(seqs):
        out[i, : len(s)] = s
    return out


def aa_token_groups(alphabet: Alphabet) -> torch.Tensor:
    """LongTensor[20, k]: the token ids that spell each amino acid of :data:`AMINO_ACIDS`.

    ESM: k = 1 (the residue token). SaProt: k = 21, the amino acid paired with every 3Di letter and ``#``,
    so that ``logsumexp`` over a row is log P(amino acid) whatever the structure token.
    """
    if "A" in alphabet.index:
        return torch.tensor([[alphabet.index[a]] for a in AMINO_ACIDS], dtype=torch.long)
    groups = [[i for t, i in alphabet.index.items() if len(t) == 2 and t[0] == a] for a in AMINO_ACIDS]
    if not all(groups) or len({len(g) for g in groups}) != 1:
        raise ValueError(f"alphabet {alphabet.name} spells amino acids neither as letters nor as (aa, 3Di) pairs")
    return torch.tensor(groups, dtype=torch.long)
