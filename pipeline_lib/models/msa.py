"""MSA Transformer (ESM-MSA-1b): axial attention over an alignment, a plain ``nn.Module``.

    from pipeline_lib.models.msa import MSATransformer, MSAConfig
    model = MSATransformer(MSAConfig(num_layers=2, hidden_size=64, num_heads=4, ffn_size=128))
    logits = model(tokens)                        # (B, R rows, C columns) -> (B, R, C, vocab)

Follows facebookresearch/esm ``esm/model/msa_transformer.py`` and ``esm/axial_attention.py``: learned
positions along columns (fairseq offsets: position = running count of non-pad + pad index), an optional
learned row embedding for at most 1024 rows, LayerNorm before the stack, then per layer tied row
attention -> column attention -> FFN, each in a pre-LN residual block with dropout; final LayerNorm and
an LM head tied to the embedding. Tied row attention sums the logits of all rows, with q scaled by
head_dim^-0.5 / sqrt(rows), rows counted per MSA without the all-padding rows a batch adds (ESM counts the
padded tensor's rows, so an MSA's temperature depended on its batch neighbours); padded positions are masked
with -10000 as in ESM. Both attentions run
through ``scaled_dot_product_attention``. The layout here is
(B, R, C, D) instead of ESM's (R, C, B, D); the arithmetic is the same.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib.model_sizes import MSA_FLAVORS
from pipeline_lib.models.esm2 import LMHead, zero_row_

__all__ = ["MSAConfig", "MSATransformer", "RowSelfAttention", "ColumnSelfAttention", "MSA_FLAVORS", "msa_config",
           "msa_flops_per_token"]

_MASKED = -10000.0  # ESM's fill value for padded logits


@dataclass(frozen=True)
class MSAConfig:
    """Defaults: ESM-MSA-1b (12 layers, 768 wide, 12 heads, FFN 3072, ESM alphabet)."""

    num_layers: int = 12
    hidden_size: int = 768
    num_heads: int = 12
    ffn_size: int = 3072
    vocab_size: int = 33
    pad_token_id: int = 1
    max_positions: int = 1024
    max_rows: int = 1024
    embed_positions_msa: bool = True
    dropout: float = 0.1
    attention_dropout: float = 0.1
    activation_dropout: float = 0.1
    layer_norm_eps: float = 1e-5

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> MSAConfig:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def msa_config(flavor: str | None = "100M", *, shape: tuple[int, int, int] | None = None,
               ffn_size: int | None = None, max_positions: int = 1024, max_rows: int = 1024) -> MSAConfig:
    """MSAConfig for a flavor (or an explicit (layers, width, heads) ``shape``); FFN 4x width by default."""
    if shape is None:
        if flavor not in MSA_FLAVORS:
            raise ValueError(f"unknown MSA Transformer flavor {flavor!r}; expected one of {list(MSA_FLAVORS)} "
                             f"or an explicit shape")
        shape = MSA_FLAVORS[flavor]
    layers, hidden, heads = shape
    if hidden % heads:
        raise ValueError(f"hidden_size {hidden} is not a multiple of num_heads {heads}")
    return MSAConfig(num_layers=layers, hidden_size=hidden, num_heads=heads, ffn_size=ffn_size or 4 * hidden,
                     max_positions=max_positions, max_rows=max_rows)


def msa_flops_per_token(cfg: MSAConfig) -> float:
    """Training FLOPs per token, 6 N over the dense weights (row + column attention, FFN, LM head)."""
    d = cfg.hidden_size
    n = cfg.num_layers * (8 * d * d + 2 * d * cfg.ffn_size) + d * d + d * cfg.vocab_size
    return 6.0 * n


class _AxialBase(nn.Module):
    def __init__(self, dim: int, heads: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.head_dim = heads, dim // heads
        self.q_proj, self.k_proj, self.v_proj, self.out_proj = (nn.Linear(dim, dim) for _ in range(4))
        self.dropout = nn.Dropout(dropout)

    def _split(self, proj: nn.Linear, x: torch.Tensor) -> torch.Tensor:
        return proj(x).view(*x.shape[:-1], self.heads, self.head_dim)  # (B, R, C, H, Dh)

    def _dropout_p(self) -> float:
        return self.dropout.p if self.training else 0.0


class RowSelfAttention(_AxialBase):
    """Attention along columns of each row, with logits tied (summed) over all rows.

    Summing q_r k_r^T over rows is one dot product of the rows laid side by side, so the whole tied
    attention is one ``scaled_dot_product_attention`` call over (B, H, C, R * Dh) queries, keys and values.
    """

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        b, r, c, d = x.shape
        # 1/sqrt(rows) with each MSA's own rows: rows that are padding only (an MSA padded to the deepest of its
        # batch) must not lower its temperature, so that an MSA gives the same logits alone and in a batch
        rows = (~pad).any(dim=-1).sum(dim=1).clamp(min=1).to(x.dtype) if pad is not None \
            else torch.full((b,), float(r), dtype=x.dtype, device=x.device)
        q = self._split(self.q_proj, x) * (self.head_dim ** -0.5 / rows.sqrt())[:, None, None, None, None]
        k, v = self._split(self.k_proj, x), self._split(self.v_proj, x)
        if pad is not None:  # padded positions must not contribute to the sum over rows
            q = q * (1 - pad[..., None, None].to(q))

        def side_by_side(t: torch.Tensor) -> torch.Tensor:  # (B, R, C, H, Dh) -> (B, H, C, R * Dh)
            return t.permute(0, 3, 2, 1, 4).reshape(b, self.heads, c, r * self.head_dim)

        mask = _additive_mask(pad[:, 0][:, None, None, :], q.dtype) if pad is not None else None
        ctx = F.scaled_dot_product_attention(side_by_side(q), side_by_side(k), side_by_side(v), attn_mask=mask,
                                             dropout_p=self._dropout_p(), scale=1.0)
        ctx = ctx.view(b, self.heads, c, r, self.head_dim).permute(0, 3, 2, 1, 4)  # (B, R, C, H, Dh)
        return self.out_proj(ctx.reshape(b, r, c, d))


class ColumnSelfAttention(_AxialBase):
    """Attention along rows within each column (untied): SDPA with the columns as a batch dimension."""

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        b, r, c, d = x.shape
        if r == 1:  # a single row attends only to itself
            return self.out_proj(self.v_proj(x))

        def by_column(proj: nn.Linear) -> torch.Tensor:  # (B, R, C, H, Dh) -> (B, C, H, R, Dh)
            return self._split(proj, x).permute(0, 2, 3, 1, 4)

        q, k, v = by_column(self.q_proj), by_column(self.k_proj), by_column(self.v_proj)
        mask = _additive_mask(pad.transpose(1, 2)[:, :, None, None, :], q.dtype) if pad is not None else None
        ctx = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=self._dropout_p(),
                                             scale=self.head_dim ** -0.5)
        return self.out_proj(ctx.permute(0, 3, 1, 2, 4).reshape(b, r, c, d))


def _additive_mask(padded: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """ESM's -10000 on padded keys as an additive mask (a fully padded column stays finite, unlike -inf)."""
    return torch.zeros(padded.shape, dtype=dtype, device=padded.device).masked_fill(padded, _MASKED)


class _FFN(nn.Module):
    def __init__(self, dim: int, ffn: int, activation_dropout: float) -> None:
        super().__init__()
        self.fc1, self.fc2 = nn.Linear(dim, ffn), nn.Linear(ffn, dim)
        self.dropout = nn.Dropout(activation_dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None = None) -> torch.Tensor:
        return self.fc2(self.dropout(F.gelu(self.fc1(x))))


class _Residual(nn.Module):
    """x + dropout(layer(LayerNorm(x)))."""

    def __init__(self, layer: nn.Module, dim: int, dropout: float, eps: float) -> None:
        super().__init__()
        self.layer, self.norm, self.dropout = layer, nn.LayerNorm(dim, eps=eps), nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        return x + self.dropout(self.layer(self.norm(x), pad))


class AxialLayer(nn.Module):
    def __init__(self, cfg: MSAConfig) -> None:
        super().__init__()
        d, eps = cfg.hidden_size, cfg.layer_norm_eps
        self.row = _Residual(RowSelfAttention(d, cfg.num_heads, cfg.attention_dropout), d, cfg.dropout, eps)
        self.column = _Residual(ColumnSelfAttention(d, cfg.num_heads, cfg.attention_dropout), d, cfg.dropout, eps)
        self.ffn = _Residual(_FFN(d, cfg.ffn_size, cfg.activation_dropout), d, cfg.dropout, eps)

    def forward(self, x: torch.Tensor, pad: torch.Tensor | None) -> torch.Tensor:
        return self.ffn(self.column(self.row(x, pad), pad), pad)


class MSATransformer(nn.Module):
    def __init__(self, cfg: MSAConfig) -> None:
        super().__init__()
        self.cfg = cfg
        d = cfg.hidden_size
        self.embed_tokens = nn.Embedding(cfg.vocab_size, d, padding_idx=cfg.pad_token_id)
        # fairseq LearnedPositionalEmbedding: positions start at pad + 1
        self.embed_positions = nn.Embedding(cfg.max_positions + cfg.pad_token_id + 1, d, padding_idx=cfg.pad_token_id)
        self.msa_position_embedding = (nn.Parameter(0.01 * torch.randn(1, cfg.max_rows, 1, d))
                                       if cfg.embed_positions_msa else None)
        self.emb_layer_norm_before = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.dropout)
        self.layers = nn.ModuleList(AxialLayer(cfg) for _ in range(cfg.num_layers))
        self.emb_layer_norm_after = nn.LayerNorm(d, eps=cfg.layer_norm_eps)
        self.lm_head = LMHead(d, cfg.vocab_size, cfg.layer_norm_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """BERT initialisation for pretraining from scratch (normal(0, 0.02) weights and embeddings, zero
        biases, unit LayerNorms, zero <pad> rows; PyTorch's N(0, 1) embeddings would start the tied LM head
        at a loss of ~16), row embedding normal(0, 0.01) as in ESM. Also materialises a meta-device model."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Embedding):
                nn.init.normal_(m.weight, std=std)
                zero_row_(m.weight, self.cfg.pad_token_id)
        if self.msa_position_embedding is not None:
            nn.init.normal_(self.msa_position_embedding, std=0.01)
        self.lm_head.bias.zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def encode(self, tokens: torch.Tensor) -> torch.Tensor:
        """Hidden states (B, R, C, D) after the final LayerNorm."""
        if tokens.ndim != 3:
            raise ValueError(f"MSA tokens must be (batch, rows, columns), got shape {tuple(tokens.shape)}")
        b, r, c = tokens.shape
        if self.msa_position_embedding is not None and r > self.cfg.max_rows:
            raise ValueError(f"MSA has {r} rows; the row embedding covers at most {self.cfg.max_rows}")
        pad_id = self.cfg.pad_token_id
        pad = tokens.eq(pad_id)
        nonpad = (~pad).long()
        positions = torch.cumsum(nonpad, dim=-1) * nonpad + pad_id
        x = self.embed_tokens(tokens) + self.embed_positions(positions)
        if self.msa_position_embedding is not None:
            x = x + self.msa_position_embedding[:, :r]
        x = self.dropout(self.emb_layer_norm_before(x))
        x = x * (1 - pad.unsqueeze(-1).to(x))
        pad_mask = pad if bool(pad.any()) else None
        for layer in self.layers:
            x = layer(x, pad_mask)
        return self.emb_layer_norm_after(x)

    def forward(self, tokens: torch.Tensor, *, output_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Logits (B, R, C, vocab), or (N, vocab) for the N positions where ``output_mask`` (B, R, C) is true."""
        h = self.encode(tokens)
        if output_mask is not None:
            h = h[output_mask]
        return self.lm_head(h, self.embed_tokens.weight)
