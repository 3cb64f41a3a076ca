"""The flash varlen path's plumbing, on the CPU: the packed batches' ``cu_seqlens`` and the call into
``torch.nn.attention.varlen.varlen_attn``, with a reference kernel in place of the CUDA one.

    .venv/bin/python -m pytest -q tests/test_attention_varlen.py

The flash kernel itself runs only on CUDA (``tests/test_gpu.py``, on a lent GPU). What can go wrong before it
is ours: segments that miss tokens or cross documents, the wrong dtype for ``cu_seqlens``, a reshape that mixes
rows, the softmax scale (ESM scales q itself; torch 2.9-2.11's kernel has no ``scale`` and always applies
head_dim^-0.5). The reference kernel checks the kernel's documented contract and computes attention per segment;
the model through it must give the block-diagonal SDPA path's logits and gradients.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

import pipeline_lib.models.attention as attention
from pipeline_lib.models import ESM2, model_config
from pipeline_lib.tokenizer import ESM_ALPHABET
from pipeline_lib.train.batching import IGNORE, Batch, Batcher, Masker

CALLS: list[dict] = []


def reference_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k, *, scale=None):
    """varlen_attn's contract, checked, and its result: attention within each [cu[i], cu[i+1]) segment."""
    assert q.dim() == 3 and q.shape == k.shape == v.shape, "(total tokens, heads, head_dim) each"
    assert all(t.stride(-1) == 1 for t in (q, k, v)), "head_dim must be contiguous"
    assert cu_seq_q.dtype == torch.int32 and torch.equal(cu_seq_q, cu_seq_k)
    bounds = cu_seq_q.tolist()
    assert bounds[0] == 0 and bounds[-1] == q.shape[0], "segments must cover every token"
    assert all(b > a for a, b in zip(bounds, bounds[1:], strict=False)), "segments must be non-empty and increasing"
    assert max(b - a for a, b in zip(bounds, bounds[1:], strict=False)) <= max_q == max_k
    CALLS.append({"segments": len(bounds) - 1, "scale": scale})
    s = q.shape[-1] ** -0.5 if scale is None else scale
    out = torch.empty_like(q)
    for a, b in zip(bounds, bounds[1:], strict=False):
        seg = [t[a:b].transpose(0, 1) for t in (q, k, v)]  # (H, L, D)
        out[a:b] = F.scaled_dot_product_attention(*seg, scale=s).transpose(0, 1)
    return out


def reference_without_scale(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k):
    """torch 2.9-2.11: no ``scale`` argument, head_dim^-0.5 always."""
    return reference_varlen_attn(q, k, v, cu_seq_q, cu_seq_k, max_q, max_k)


def _packed_batch(seed: int = 0) -> Batch:
    rng = np.random.default_rng(seed)
    masker = Masker(ESM_ALPHABET, max_len=128, seed=seed)
    aa = np.array([ESM_ALPHABET.index[a] for a in "ACDEFGHIKLMNPQRSTVWY"])

    def samples():
        for row in range(10**6):
            body = aa[rng.integers(0, 20, int(rng.integers(10, 120)))]
            yield {"row": row}, masker(np.concatenate(([0], body, [2])), row=row, epoch=0, id=str(row))

    batch, _ = next(iter(Batcher(max_len=128, batch_tokens=1024, packing=True,
                                 pad_id=ESM_ALPHABET.pad_idx).batches(samples())))
    assert batch.cu_seqlens is not None and (batch.doc_ids.max(dim=1).values > 0).any()  # several docs a row
    assert (batch.doc_ids == -1).any()  # and a padding tail, which is a segment of its own
    return batch


def _loss_and_grads(model: ESM2, b: Batch, backend: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    targets = b.labels != IGNORE
    logits = model(b.tokens, output_mask=targets, backend=backend, **b.model_inputs())
    loss = F.cross_entropy(logits, b.labels[targets])
    loss.backward()
    return logits.detach(), loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters()])


@pytest.mark.parametrize("kernel", [reference_varlen_attn, reference_without_scale], ids=["scale", "no-scale"])
def test_packed_rows_through_the_varlen_call_equal_block_diagonal_sdpa(kernel, monkeypatch):
    from torch.nn.attention import varlen

    monkeypatch.setattr(varlen, "varlen_attn", kernel)
    monkeypatch.setattr(attention, "_varlen_usable", lambda tokens, dtype: True)
    monkeypatch.setattr(attention, "_varlen_takes_scale", lambda: kernel is reference_varlen_attn)
    CALLS.clear()
    torch.manual_seed(0)
    model = ESM2(model_config("tiny")).train()
    b = _packed_batch()
    via_varlen = _loss_and_grads(model, b, "varlen")
    assert len(CALLS) == model.cfg.num_layers and CALLS[0]["segments"] == b.cu_seqlens.numel() - 1
    assert {c["scale"] for c in CALLS} == ({1.0} if kernel is reference_varlen_attn else {None})
    via_sdpa = _loss_and_grads(model, b, "sdpa")
    assert len(CALLS) == model.cfg.num_layers  # the SDPA path never calls the varlen kernel
    for got, want in zip(via_varlen, via_sdpa, strict=False):
        torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)


def test_a_segment_that_crosses_documents_would_be_caught(monkeypatch):
    """The comparison above can fail: cu_seqlens that merge two documents of a row change the logits."""
    from torch.nn.attention import varlen

    monkeypatch.setattr(varlen, "varlen_attn", reference_varlen_attn)
    monkeypatch.setattr(attention, "_varlen_usable", lambda tokens, dtype: True)
    torch.manual_seed(0)
    model = ESM2(model_config("tiny")).eval()
    b = _packed_batch()
    merged = torch.cat([b.cu_seqlens[:1], b.cu_seqlens[2:]])  # the first two segments as one
    inputs = b.model_inputs() | {"cu_seqlens": merged, "max_seqlen": b.tokens.shape[1]}
    with torch.no_grad():
        wrong = model(b.tokens, backend="varlen", **inputs)
        right = model(b.tokens, backend="sdpa", **b.model_inputs())
    assert not torch.allclose(wrong, right, atol=1e-3)
