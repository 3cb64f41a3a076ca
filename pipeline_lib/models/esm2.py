"""ESM-2 masked language model, a plain ``nn.Module`` (SaProt is the same network with 446 tokens; ESM-1b /
ESM-1v the same with learned absolute positions and an embedding LayerNorm instead of rotary embeddings).

    from pipeline_lib.models import ESM2, ESM2Config
    model = ESM2(ESM2Config(num_layers=6, hidden_size=320, num_heads=20))
    logits = model(tokens)                                  # (B, T) int64 -> (B, T, vocab)

Exactly the network of facebookresearch/esm ``esm/model/esm2.py`` (and Hugging Face ``EsmForMaskedLM``):
pre-LN blocks, final LayerNorm, FFN 4x, exact (erf) GELU, q/k/v/out projections with bias, rotary
embeddings (``rotate_half`` layout, non-interleaved) on q *after* its head_dim^-0.5 scaling and on k,
token dropout with rescaling, LM head dense -> GELU -> LayerNorm -> tied projection + bias. There is no
dropout. q/k/v are one fused projection whose rows are [q; k; v], so Hugging Face weights map by
concatenation (see :mod:`pipeline_lib.models.hf`).

Two input layouts share one code path (:mod:`pipeline_lib.models.attention`):
- padded: ``tokens`` (B, T) with ``<pad>``; positions 0..T-1; token dropout per row (as ESM);
- packed: several sequences per row, ``doc_ids`` (B, T) (0, 1, ... per row, -1 on padding) and
  ``position_ids`` restarting at 0 per sequence; attention is block diagonal and the token-dropout
  ratio is per sequence. ``cu_seqlens`` enables flash varlen attention on CUDA.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from pipeline_lib.models.attention import AttnInputs, attention, build_attn_inputs

__all__ = ["ESM2Config", "ESM2", "Block", "rotary_cos_sin", "apply_rotary", "flops_per_token", "MASK_RATIO_TRAIN",
           "LMHead", "zero_row_"]

MASK_RATIO_TRAIN = 0.15 * 0.8  # hard-coded in ESM-2 and HF: the <mask> share the model saw in training


@dataclass(frozen=True)
class ESM2Config:
    """Shape and vocabulary of an ESM-2 network (defaults: the ESM-2 alphabet)."""

    num_layers: int
    hidden_size: int
    num_heads: int
    intermediate_size: int | None = None  # None -> 4 x hidden_size
    vocab_size: int = 33
    pad_token_id: int = 1
    mask_token_id: int = 32
    cls_token_id: int = 0
    eos_token_id: int = 2
    token_dropout: bool = True
    layer_norm_eps: float = 1e-5
    rope_theta: float = 10000.0
    # ESM-1b / ESM-1v: learned absolute positions (ids offset past <pad>, as fairseq's) and a LayerNorm on the
    # embeddings, instead of rotary embeddings
    position_embedding: str = "rotary"   # "rotary" | "absolute"
    max_positions: int = 1026            # absolute: 1024 tokens + the <pad> offset
    emb_layer_norm_before: bool = False

    def __post_init__(self) -> None:
        if self.intermediate_size is None:
            object.__setattr__(self, "intermediate_size", 4 * self.hidden_size)
        if self.hidden_size % self.num_heads:
            raise ValueError(f"hidden_size {self.hidden_size} is not a multiple of num_heads {self.num_heads}")
        if self.position_embedding not in ("rotary", "absolute"):
            raise ValueError(f"position_embedding {self.position_embedding!r}: rotary or absolute")
        if self.position_embedding == "rotary" and self.head_dim % 2:
            raise ValueError(f"head_dim {self.head_dim} must be even for rotary embeddings")

    @property
    def ffn_size(self) -> int:
        return int(self.intermediate_size or 4 * self.hidden_size)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_heads

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ESM2Config:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def rotary_cos_sin(position_ids: torch.Tensor, head_dim: int,
                   theta: float = 10000.0) -> tuple[torch.Tensor, torch.Tensor]:
    """cos, sin of shape (B, T, 1, head_dim) in fp32 for integer positions (B, T), ESM's frequency layout."""
    exponents = torch.arange(0, head_dim, 2, device=position_ids.device, dtype=torch.float32) / head_dim
    inv_freq = 1.0 / (theta ** exponents)
    freqs = position_ids.to(torch.float32)[..., None] * inv_freq
    emb = torch.cat((freqs, freqs), dim=-1)[:, :, None, :]
    return emb.cos(), emb.sin()


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rotary(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate x (B, T, H, D) in fp32 and return it in its own dtype (as HF does under bf16)."""
    xf = x.float()
    return (xf * cos + _rotate_half(xf) * sin).to(x.dtype)


class Attention(nn.Module):
    def __init__(self, cfg: ESM2Config) -> None:
        super().__init__()
        self.num_heads, self.head_dim = cfg.num_heads, cfg.head_dim
        self.qkv = nn.Linear(cfg.hidden_size, 3 * cfg.hidden_size)
        self.out = nn.Linear(cfg.hidden_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                attn: AttnInputs) -> torch.Tensor:
        b, t, _ = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.num_heads, self.head_dim).unbind(2)  # (B, T, H, D) each
        q = q * self.head_dim ** -0.5  # ESM scales q before the rotation, and attention uses scale 1
        if cos is not None and sin is not None:  # rotary (ESM-2); ESM-1b adds absolute positions to the input
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        return self.out(attention(q, k, v, attn).reshape(b, t, -1))


class Block(nn.Module):
    """Pre-LN transformer layer: x + attn(LN(x)), then x + fc2(gelu(fc1(LN(x))))."""

    def __init__(self, cfg: ESM2Config) -> None:
        super().__init__()
        self.attn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.attn = Attention(cfg)
        self.ffn_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.fc1 = nn.Linear(cfg.hidden_size, cfg.ffn_size)
        self.fc2 = nn.Linear(cfg.ffn_size, cfg.hidden_size)

    def forward(self, x: torch.Tensor, cos: torch.Tensor | None, sin: torch.Tensor | None,
                attn: AttnInputs) -> torch.Tensor:
        x = x + self.attn(self.attn_norm(x), cos, sin, attn)
        return x + self.fc2(F.gelu(self.fc1(self.ffn_norm(x))))


class LMHead(nn.Module):
    """dense -> GELU -> LayerNorm -> projection with the (tied) embedding matrix + bias."""

    def __init__(self, hidden_size: int, vocab_size: int, eps: float) -> None:
        super().__init__()
        self.dense = nn.Linear(hidden_size, hidden_size)
        self.norm = nn.LayerNorm(hidden_size, eps=eps)
        self.bias = nn.Parameter(torch.zeros(vocab_size))

    def forward(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(self.norm(F.gelu(self.dense(x))), weight) + self.bias


class ESM2(nn.Module):
    """ESM-2 / SaProt masked LM. ``forward`` returns logits; ``encode`` the final hidden states."""

    def __init__(self, cfg: ESM2Config) -> None:
        super().__init__()
        self.cfg = cfg
        self.embed_tokens = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.embed_positions = (nn.Embedding(cfg.max_positions, cfg.hidden_size, padding_idx=cfg.pad_token_id)
                                if cfg.position_embedding == "absolute" else None)
        self.emb_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps) if cfg.emb_layer_norm_before else None
        self.layers = nn.ModuleList(Block(cfg) for _ in range(cfg.num_layers))
        self.final_norm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.lm_head = LMHead(cfg.hidden_size, cfg.vocab_size, cfg.layer_norm_eps)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self, std: float = 0.02) -> None:
        """BERT initialisation (normal(0, 0.02), zero biases, unit LayerNorms, zero <pad> embedding)."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, std=std)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.normal_(self.embed_tokens.weight, std=std)
        zero_row_(self.embed_tokens.weight, self.cfg.pad_token_id)
        if self.embed_positions is not None:
            nn.init.normal_(self.embed_positions.weight, std=std)
            zero_row_(self.embed_positions.weight, self.cfg.pad_token_id)
        self.lm_head.bias.zero_()

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def _embed(self, tokens: torch.Tensor, attn: AttnInputs,
               position_ids: torch.Tensor | None = None) -> torch.Tensor:
        cfg = self.cfg
        if position_ids is None:
            position_ids = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
        x = self.embed_tokens(tokens)
        if cfg.token_dropout:
            is_mask = tokens == cfg.mask_token_id
            x = x.masked_fill(is_mask.unsqueeze(-1), 0.0)
            ratio = _observed_mask_ratio(tokens, is_mask, cfg.pad_token_id, attn.doc_ids, x.dtype)
            x = x * (1 - MASK_RATIO_TRAIN) / (1 - ratio)[..., None]
        is_pad = tokens == cfg.pad_token_id
        if self.embed_positions is not None:  # fairseq's learned positions: <pad> + 1 + index, <pad> on padding
            pos = torch.where(is_pad, cfg.pad_token_id, position_ids + cfg.pad_token_id + 1)
            if int(pos.max()) >= cfg.max_positions:
                raise ValueError(f"a sequence of {int(pos.max()) - cfg.pad_token_id} tokens is longer than the "
                                 f"{cfg.max_positions - cfg.pad_token_id - 1} learned positions")
            x = x + self.embed_positions(pos)
        if self.emb_norm is not None:
            x = self.emb_norm(x)
        return x * (1 - is_pad.unsqueeze(-1).type_as(x))

    def encode(self, tokens: torch.Tensor, *, position_ids: torch.Tensor | None = None,
               doc_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
               max_seqlen: int | None = None, backend: str = "auto") -> torch.Tensor:
        """Final hidden states (B, T, hidden), after the last LayerNorm."""
        b, t = tokens.shape
        if position_ids is None:
            position_ids = torch.arange(t, device=tokens.device).expand(b, t)
        attn = build_attn_inputs(tokens, self.cfg.pad_token_id, doc_ids=doc_ids, cu_seqlens=cu_seqlens,
                                 max_seqlen=max_seqlen, backend=backend,
                                 weight_dtype=self.embed_tokens.weight.dtype)
        x = self._embed(tokens, attn, position_ids)
        cos, sin = (rotary_cos_sin(position_ids, self.cfg.head_dim, self.cfg.rope_theta)
                    if self.embed_positions is None else (None, None))
        for layer in self.layers:
            x = layer(x, cos, sin, attn)
        return self.final_norm(x)

    def forward(self, tokens: torch.Tensor, *, position_ids: torch.Tensor | None = None,
                doc_ids: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None, output_mask: torch.Tensor | None = None,
                backend: str = "auto") -> torch.Tensor:
        """Logits (B, T, vocab), or (N, vocab) for the N positions where ``output_mask`` (B, T) is true."""
        h = self.encode(tokens, position_ids=position_ids, doc_ids=doc_ids, cu_seqlens=cu_seqlens,
                        max_seqlen=max_seqlen, backend=backend)
        if output_mask is not None:
            h = h[output_mask]
        return self.lm_head(h, self.embed_tokens.weight)


@torch.no_grad()
def zero_row_(weight: torch.Tensor, row: int) -> None:
    """weight[row] = 0 in place, also for an FSDP2-sharded (DTensor) weight, where indexing writes to a copy."""
    if hasattr(weight, "device_mesh"):
        from torch.distributed.tensor import DTensor, Replicate

        keep = torch.ones(weight.shape[0], 1, dtype=weight.dtype, device=cast(DTensor, weight).to_local().device)
        keep[row] = 0
        weight.mul_(DTensor.from_local(keep, weight.device_mesh, [Replicate()] * weight.device_mesh.ndim,
                                       run_check=False))
    else:
        weight[row].zero_()


def _observed_mask_ratio(tokens: torch.Tensor, is_mask: torch.Tensor, pad_id: int, doc_ids: torch.Tensor | None,
                         dtype: torch.dtype) -> torch.Tensor:
    """Share of <mask> among the non-pad tokens of each sequence: (B, 1) per row, or (B, T) per packed token."""
    if doc_ids is None:
        lengths = (tokens != pad_id).sum(-1)
        return (is_mask.sum(-1).to(dtype) / lengths)[:, None]
    b, t = tokens.shape
    # one bucket per (row, document); padding goes to a spare bucket at the end
    row_base = t * torch.arange(b, device=tokens.device)[:, None]
    seg = torch.where(doc_ids >= 0, doc_ids.long() + row_base, b * t).flatten()
    counts = torch.zeros(b * t + 1, device=tokens.device, dtype=torch.float32)
    n = counts.index_add(0, seg, torch.ones_like(seg, dtype=torch.float32))
    m = counts.index_add(0, seg, is_mask.flatten().to(torch.float32))
    return (m / n.clamp_min(1))[seg].view(b, t).to(dtype)


def flops_per_token(cfg: ESM2Config, seq_len: int = 0) -> float:
    """Training FLOPs per token: 6 N (dense) + 12 L T d (attention scores) when ``seq_len`` is given."""
    d, L = cfg.hidden_size, cfg.num_layers
    n = L * (4 * d * d + 2 * d * cfg.ffn_size) + d * d + d * cfg.vocab_size
    return 6.0 * n + 12.0 * L * seq_len * d

