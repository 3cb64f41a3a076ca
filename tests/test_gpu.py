"""GPU correctness: flash varlen attention, bf16 autocast, torch.compile and the MSA Transformer on CUDA.

    python -m pytest -q tests/test_gpu.py            # on a machine with a CUDA GPU (skips elsewhere)

Every test here skips without CUDA; `bench/gpu_check.sh` runs them on a lent GPU machine together with the
throughput benchmark. They need only torch, numpy, pyarrow and safetensors (what a CUDA image has).
"""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pipeline_lib.models import ESM2, MSAConfig, MSATransformer, model_config
from pipeline_lib.models.attention import varlen_available
from pipeline_lib.tokenizer import ESM_ALPHABET
from pipeline_lib.train.batching import IGNORE, Batch, Batcher, Masker

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
CUDA = torch.device("cuda")


def _pairs(n: int, *, batch_tokens: int = 4096, max_len: int = 512, seed: int = 0) -> list[tuple[Batch, Batch]]:
    """(packed, padded) batches of the same masked random proteins (lengths 30-600), on the GPU."""
    rng = np.random.default_rng(seed)
    masker = Masker(ESM_ALPHABET, max_len=max_len, seed=seed)
    aa = np.array([ESM_ALPHABET.index[a] for a in "ACDEFGHIKLMNPQRSTVWY"])

    def samples():
        for row in range(10**9):
            body = aa[rng.integers(0, 20, int(rng.integers(30, 600)))]
            yield {"row": row}, masker(np.concatenate(([0], body, [2])), row=row, epoch=0, id=str(row))

    pad = ESM_ALPHABET.pad_idx
    packer = Batcher(max_len=max_len, batch_tokens=batch_tokens, packing=True, pad_id=pad)
    padder = Batcher(max_len=max_len, batch_tokens=10**12, packing=False, pad_id=pad)
    out, kept = [], {}
    for packed, _ in packer.batches((pos, kept.setdefault(s.row, s)) for pos, s in samples()):
        padded = padder._pad([[kept[r]] for r in packed.rows])
        out.append((packed.to(CUDA), padded.to(CUDA)))
        if len(out) == n:
            return out
    return out


def _loss(model, b: Batch, *, backend: str = "auto") -> torch.Tensor:
    targets = b.labels != IGNORE
    logits = model(b.tokens, output_mask=targets, backend=backend, **b.model_inputs())
    return F.cross_entropy(logits.float(), b.labels[targets])


@pytest.mark.skipif(torch.cuda.is_available() and not varlen_available(),
                    reason="flash varlen attention needs sm80+ and torch >= 2.9")
def test_varlen_equals_block_diagonal_sdpa_forward_and_backward():
    torch.manual_seed(0)
    model = ESM2(model_config("8M")).to(CUDA).train()
    b = _pairs(1)[0][0]
    assert b.cu_seqlens is not None
    grads = {}
    for backend in ("varlen", "sdpa"):
        model.zero_grad(set_to_none=True)
        torch.manual_seed(1)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = _loss(model, b, backend=backend)
        loss.backward()
        grads[backend] = (loss.item(), torch.cat([p.grad.flatten() for p in model.parameters()]))
    (l_var, g_var), (l_sdpa, g_sdpa) = grads["varlen"], grads["sdpa"]
    assert abs(l_var - l_sdpa) < 2e-2 * abs(l_sdpa)
    cos = F.cosine_similarity(g_var.float(), g_sdpa.float(), dim=0).item()
    assert cos > 0.99, f"varlen and SDPA gradients disagree (cosine {cos:.4f})"


def test_bf16_training_learns_and_stays_finite():
    torch.manual_seed(0)
    model = ESM2(model_config("8M")).to(CUDA).train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, fused=True)
    batches = [p for p, _ in _pairs(4)]
    losses = []
    for step in range(30):
        with torch.autocast("cuda", dtype=torch.bfloat16):
            loss = _loss(model, batches[step % len(batches)])
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    # uniform random residues: the floor is ln 20 = 3.0; a fresh model starts above 3.2
    assert np.mean(losses[-4:]) < min(np.mean(losses[:4]) - 0.15, 3.1), losses


def test_compiled_blocks_equal_eager():
    torch.manual_seed(0)
    model = ESM2(model_config("8M")).to(CUDA).eval()
    b = _pairs(1)[0][1]
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        eager = model(b.tokens).float()
        for block in model.layers:
            block.compile()
        compiled = model(b.tokens).float()
    real = b.tokens != ESM_ALPHABET.pad_idx
    assert torch.allclose(compiled[real], eager[real], atol=5e-2, rtol=5e-2)


def test_packed_and_padded_batches_give_the_same_loss_on_gpu():
    torch.manual_seed(0)
    model = ESM2(model_config("8M")).to(CUDA).eval()
    for packed, padded in _pairs(2, seed=3):
        assert packed.rows == padded.rows and packed.n_targets == padded.n_targets
        with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
            lp, lq = _loss(model, packed).item(), _loss(model, padded).item()
        assert abs(lp - lq) < 1e-2 * lq, (lp, lq)


def test_msa_transformer_bf16_step_on_gpu():
    torch.manual_seed(0)
    model = MSATransformer(MSAConfig(num_layers=2, hidden_size=64, num_heads=4, ffn_size=128)).to(CUDA).train()
    msa = torch.randint(4, 24, (2, 16, 128), device=CUDA)
    msa[..., 0] = ESM_ALPHABET.cls_idx
    msa[1, 12:] = ESM_ALPHABET.pad_idx
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits = model(msa)
    loss = F.cross_entropy(logits.float().flatten(0, 2), msa.flatten())
    loss.backward()
    assert torch.isfinite(loss)
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
