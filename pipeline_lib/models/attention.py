"""Attention for padded and packed batches: SDPA with a boolean mask, or flash varlen on CUDA.

    attn = build_attn_inputs(tokens, pad_id, doc_ids=doc_ids, cu_seqlens=cu, max_seqlen=m)
    out = attention(q, k, v, attn)              # q, k, v: (B, T, H, D) -> (B, T, H, D)

- padded rows (``doc_ids`` None): key-padding mask (B, 1, 1, T), as ESM's ``key_padding_mask``.
- packed rows (``doc_ids`` (B, T), -1 on padding): block-diagonal mask (B, 1, T, T) from document ids;
  padding queries attend to the padding of their row only, so no row of the mask is empty.
- packed rows on CUDA with ``cu_seqlens``: ``torch.nn.attention.varlen.varlen_attn`` (flash) over the
  flattened (B*T, H, D) tokens; ``cu_seqlens`` must cover every token of every row, the padding tail of a
  row being a segment of its own (the collator in :mod:`pipeline_lib.train.batching` builds it so).
The softmax scale is 1: ESM scales q by head_dim^-0.5 before the rotary embedding.
"""
from __future__ import annotations

import functools
import inspect
from typing import Any, NamedTuple, cast

import torch
import torch.nn.functional as F

__all__ = ["AttnInputs", "build_attn_inputs", "attention", "varlen_available"]

BACKENDS = ("auto", "sdpa", "varlen")


class AttnInputs(NamedTuple):
    mask: torch.Tensor | None          # bool, True = may attend; None with varlen
    doc_ids: torch.Tensor | None       # (B, T) packed document ids, -1 on padding
    cu_seqlens: torch.Tensor | None    # int32 (S + 1,), set only when the varlen kernel runs
    max_seqlen: int


@functools.cache
def varlen_available() -> bool:
    """Flash varlen attention: CUDA with compute capability >= 8.0 and torch >= 2.9."""
    if not torch.cuda.is_available():
        return False
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401
    except ImportError:
        return False
    return torch.cuda.get_device_capability()[0] >= 8


@functools.cache
def _varlen_takes_scale() -> bool:
    """torch's first ``varlen_attn`` releases had no ``scale`` and always scaled by head_dim^-0.5."""
    from torch.nn.attention.varlen import varlen_attn

    return "scale" in inspect.signature(varlen_attn).parameters


def _half_precision(device: torch.device, weight_dtype: torch.dtype) -> bool:
    if weight_dtype in (torch.float16, torch.bfloat16):
        return True
    half = (torch.float16, torch.bfloat16)
    return torch.is_autocast_enabled(device.type) and torch.get_autocast_dtype(device.type) in half


def _varlen_usable(tokens: torch.Tensor, weight_dtype: torch.dtype) -> bool:
    """The flash kernel runs on CUDA sm80+ in half precision (bf16/fp16 weights or autocast)."""
    return tokens.is_cuda and varlen_available() and _half_precision(tokens.device, weight_dtype)


def build_attn_inputs(tokens: torch.Tensor, pad_id: int, *, doc_ids: torch.Tensor | None = None,
                      cu_seqlens: torch.Tensor | None = None, max_seqlen: int | None = None,
                      backend: str = "auto", weight_dtype: torch.dtype = torch.float32) -> AttnInputs:
    """Choose the kernel once per forward and build what it needs (mask or cu_seqlens)."""
    if backend not in BACKENDS:
        raise ValueError(f"attention backend {backend!r}: expected one of {BACKENDS}")
    use_varlen = backend != "sdpa" and cu_seqlens is not None and _varlen_usable(tokens, weight_dtype)
    if backend == "varlen" and not use_varlen:
        raise ValueError("varlen attention needs packed batches (cu_seqlens), CUDA (sm80+) and bf16/fp16")
    if use_varlen:
        return AttnInputs(None, doc_ids, cu_seqlens, int(max_seqlen or tokens.shape[1]))
    if doc_ids is not None:
        mask = (doc_ids[:, :, None] == doc_ids[:, None, :]).unsqueeze(1)
    else:
        mask = (tokens != pad_id)[:, None, None, :]
    return AttnInputs(mask, doc_ids, None, 0)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, attn: AttnInputs) -> torch.Tensor:
    """Scaled-dot-product attention (scale 1) over (B, T, H, D) tensors."""
    if attn.cu_seqlens is not None:
        from torch.nn.attention.varlen import varlen_attn

        b, t, h, d = q.shape
        kw: dict[str, Any]
        if _varlen_takes_scale():
            kw = {"scale": 1.0}
        else:  # the kernel multiplies by d^-0.5 again: undo the scaling q already has
            q, kw = q * d ** 0.5, {}
        out = varlen_attn(q.reshape(b * t, h, d), k.reshape(b * t, h, d), v.reshape(b * t, h, d),
                          attn.cu_seqlens, attn.cu_seqlens, attn.max_seqlen, attn.max_seqlen, **kw)
        return cast(torch.Tensor, out).view(b, t, h, d)  # one tensor: no auxiliary outputs were asked for
    out = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2),
                                         attn_mask=attn.mask, scale=1.0)
    return out.transpose(1, 2)
