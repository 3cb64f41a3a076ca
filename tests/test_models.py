"""ESM-2 / SaProt / MSA Transformer modules: shapes, token dropout, packed == padded, flavors.

    .venv/bin/python -m pytest -q tests/test_models.py
"""
from __future__ import annotations

import math

import pytest
import torch

from pipeline_lib.models import ESM2, FLAVORS, MSAConfig, MSATransformer, model_config
from pipeline_lib.models.attention import build_attn_inputs
from pipeline_lib.models.esm2 import MASK_RATIO_TRAIN, flops_per_token
from pipeline_lib.tokenizer import ESM_ALPHABET


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny models: threads only contend
    yield
    torch.set_num_threads(n)


def _tiny(vocab: str = "esm2", **kw) -> ESM2:
    torch.manual_seed(0)
    return ESM2(model_config("tiny", vocab=vocab, **kw)).eval()


def _seq(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.cat([torch.tensor([0]), torch.randint(4, 24, (n,), generator=g), torch.tensor([2])])


def test_shapes_and_param_counts():
    m = _tiny()
    tokens = torch.stack([_seq(10, 0), _seq(10, 1)])
    assert m(tokens).shape == (2, 12, 33)
    assert m.encode(tokens).shape == (2, 12, 64)
    sel = torch.zeros(2, 12, dtype=torch.bool)
    sel[0, 3] = sel[1, 5] = True
    assert m(tokens, output_mask=sel).shape == (2, 33)
    assert _tiny("saprot")(torch.stack([_seq(5, 0)])).shape == (1, 7, 446)
    # ESM-2 8M: 7.5M parameters without the contact head (HF reports 7,840,794 with it and position_ids)
    n8 = ESM2(model_config("8M")).num_params()
    assert 7.4e6 < n8 < 7.9e6
    assert set(FLAVORS) >= {"tiny", "8M", "35M", "150M", "650M", "3B"}
    # 6 N with N = every matrix (the embedding counts once, as the tied output projection)
    matrices = sum(p.numel() for p in ESM2(model_config("8M")).parameters() if p.ndim == 2)
    assert flops_per_token(model_config("8M")) == 6 * matrices


def test_padding_does_not_change_outputs():
    m = _tiny()
    a, b = _seq(10, 0), _seq(6, 1)
    padded = torch.full((2, 12), ESM_ALPHABET.pad_idx)
    padded[0], padded[1, :8] = a, b
    with torch.no_grad():
        out = m(padded)
        alone = m(b[None])
    assert torch.allclose(out[1, :8], alone[0], atol=1e-5)


def test_token_dropout_zeroes_masks_and_rescales():
    m = _tiny()
    tokens = _seq(18, 3)[None]  # 20 tokens
    tokens[0, [2, 5, 9]] = ESM_ALPHABET.mask_idx
    attn = build_attn_inputs(tokens, ESM_ALPHABET.pad_idx)
    x = m._embed(tokens, attn)
    raw = m.embed_tokens(tokens)
    scale = (1 - MASK_RATIO_TRAIN) / (1 - 3 / 20)
    assert torch.all(x[0, [2, 5, 9]] == 0)
    assert torch.allclose(x[0, 0], raw[0, 0] * scale, atol=1e-6)
    m2 = _tiny(token_dropout=False)
    assert torch.allclose(m2._embed(tokens, attn), m2.embed_tokens(tokens))


def test_packed_rows_equal_separate_sequences():
    m = _tiny()
    seqs = [_seq(7, 0), _seq(12, 1), _seq(4, 2)]
    seqs[1][3] = ESM_ALPHABET.mask_idx  # token dropout must use the ratio of its own sequence
    t = 32
    tokens = torch.full((1, t), ESM_ALPHABET.pad_idx)
    pos = torch.zeros(1, t, dtype=torch.long)
    doc = torch.full((1, t), -1, dtype=torch.int32)
    at = 0
    for d, s in enumerate(seqs):
        tokens[0, at:at + len(s)], pos[0, at:at + len(s)], doc[0, at:at + len(s)] = s, torch.arange(len(s)), d
        at += len(s)
    with torch.no_grad():
        packed = m(tokens, position_ids=pos, doc_ids=doc)
        at = 0
        for s in seqs:
            alone = m(s[None])[0]
            assert torch.allclose(packed[0, at:at + len(s)], alone, atol=1e-5)
            at += len(s)
    assert torch.isfinite(packed).all()  # padding queries have keys (their own tail): no NaN rows


def test_gradients_flow_and_embedding_is_tied():
    m = _tiny().train()
    tokens = torch.stack([_seq(10, 0), _seq(10, 1)])
    m(tokens).sum().backward()
    assert m.embed_tokens.weight.grad is not None and m.embed_tokens.weight.grad.abs().sum() > 0
    assert not any(n.startswith("lm_head.weight") for n, _ in m.named_parameters())


def test_msa_transformer_shapes_rows_and_padding():
    torch.manual_seed(0)
    cfg = MSAConfig(num_layers=2, hidden_size=32, num_heads=4, ffn_size=64, embed_positions_msa=False)
    m = MSATransformer(cfg).eval()
    g = torch.Generator().manual_seed(0)
    msa = torch.randint(4, 30, (2, 5, 9), generator=g)
    msa[..., 0] = 0
    with torch.no_grad():
        out = m(msa)
        assert out.shape == (2, 5, 9, 33)
        # without row embeddings the model is equivariant to the order of the rows
        perm = torch.tensor([3, 0, 4, 1, 2])
        assert torch.allclose(m(msa[:, perm]), out[:, perm], atol=1e-4)
        # extra padded columns do not change the real ones
        padded = torch.cat([msa, torch.full((2, 5, 3), cfg.pad_token_id)], dim=-1)
        assert torch.allclose(m(padded)[..., :9, :], out, atol=1e-4)
    with_rows = MSATransformer(MSAConfig(num_layers=1, hidden_size=32, num_heads=4, ffn_size=64, max_rows=4))
    with pytest.raises(ValueError, match="rows"):
        with_rows(msa)


def test_msa_row_attention_is_tied_and_scaled():
    from pipeline_lib.models.msa import RowSelfAttention

    torch.manual_seed(0)
    att = RowSelfAttention(16, 2, dropout=0.0)
    x = torch.randn(1, 3, 5, 16)
    q = att.q_proj(x).view(1, 3, 5, 2, 8) * (8 ** -0.5 / math.sqrt(3))
    k = att.k_proj(x).view(1, 3, 5, 2, 8)
    logits = sum(q[:, r].transpose(1, 2) @ k[:, r].permute(0, 2, 3, 1) for r in range(3))  # (1, H, C, C)
    v = att.v_proj(x).view(1, 3, 5, 2, 8)
    ctx = torch.einsum("bhij,brjhd->brihd", logits.softmax(-1), v).reshape(1, 3, 5, 16)
    assert torch.allclose(att(x, None), att.out_proj(ctx), atol=1e-5)


def _esm_axial_reference(att, x, pad, tied):
    """ESM's axial attention written out with einsum (esm/axial_attention.py), padding as -10000 logits, with one
    change: tied attention divides by the square root of each MSA's rows, not of the padded tensor's."""
    b, r, c, d = x.shape
    h, dh = att.heads, att.head_dim
    rows = (~pad).any(dim=-1).sum(dim=1).to(x.dtype)
    scale = dh ** -0.5 / (rows.sqrt() if tied else torch.ones(b))
    q = att.q_proj(x).view(b, r, c, h, dh) * scale[:, None, None, None, None]
    k, v = att.k_proj(x).view(b, r, c, h, dh), att.v_proj(x).view(b, r, c, h, dh)
    if tied:
        q = q * (1 - pad[..., None, None].to(q))
        logits = torch.einsum("brihd,brjhd->bhij", q, k).masked_fill(pad[:, 0][:, None, None, :], -10000.0)
        ctx = torch.einsum("bhij,brjhd->brihd", logits.softmax(-1), v)
    else:
        logits = torch.einsum("bichd,bjchd->bhcij", q, k)
        logits = logits.masked_fill(pad.transpose(1, 2)[:, None, :, None, :], -10000.0)
        ctx = torch.einsum("bhcij,bjchd->bichd", logits.softmax(-1), v)
    return att.out_proj(ctx.reshape(b, r, c, d))


@pytest.mark.parametrize("tied", [True, False])
def test_msa_sdpa_attention_equals_esm_arithmetic_with_padding(tied):
    from pipeline_lib.models.msa import ColumnSelfAttention, RowSelfAttention

    torch.manual_seed(0)
    att = (RowSelfAttention if tied else ColumnSelfAttention)(32, 4, dropout=0.0).eval()
    x = torch.randn(2, 4, 7, 32)
    pad = torch.zeros(2, 4, 7, dtype=torch.bool)
    pad[1, :, 5:] = True      # padded columns (a shorter alignment in the batch)
    pad[1, 3, :] = True       # a padded row (fewer sequences)
    pad[0, 2, 6] = True       # one padded cell
    out = att(x, pad)
    assert torch.isfinite(out).all()
    # equal wherever a token is; a fully padded column's outputs differ (ESM's fill makes them uniform)
    # and are never read: nothing downstream takes them as keys
    ref = _esm_axial_reference(att, x, pad, tied)
    assert torch.allclose(out[~pad], ref[~pad], atol=1e-5)


def test_an_msa_gives_the_same_logits_alone_and_padded_in_a_batch():
    """Tied row attention scales by 1/sqrt(rows) with each MSA's real rows: a 2-row MSA batched beside a 4-row one
    (so padded to 4 rows and to the longer one's columns) gives the logits it gives alone. Counting the padded
    tensor's rows (as ESM does) changed them by up to 5.4 in the measurement of the issue."""
    torch.manual_seed(0)
    cfg = MSAConfig(num_layers=2, hidden_size=32, num_heads=4, ffn_size=64)
    m = MSATransformer(cfg).eval()
    with torch.no_grad():  # a trained model's attention is peaked; a fresh one's is nearly uniform at any scale
        for name, p in m.named_parameters():
            if ".row." in name and name.endswith(("q_proj.weight", "k_proj.weight")):
                p.mul_(30)
    g = torch.Generator().manual_seed(1)
    small, deep = torch.randint(4, 30, (1, 2, 7), generator=g), torch.randint(4, 30, (1, 4, 9), generator=g)
    small[..., 0] = deep[..., 0] = 0
    batch = torch.full((2, 4, 9), cfg.pad_token_id)
    batch[0, :2, :7], batch[1] = small[0], deep[0]
    with torch.no_grad():
        alone, both = m(small), m(batch)
        assert torch.allclose(both[0, :2, :7], alone[0], atol=1e-4)
        assert torch.allclose(both[1], m(deep)[0], atol=1e-4)
