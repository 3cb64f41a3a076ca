"""Hugging Face interop: write an ``EsmForMaskedLM`` directory, and read one back into :class:`ESM2`.

    export_hf(model, "out/hf", vocab="esm2")        # config.json, model.safetensors, vocab.txt, tokenizer files
    model, vocab = import_hf("out/hf")              # or a downloaded facebook/esm2_* / SaProt directory

    # then, with no custom code:
    transformers.EsmForMaskedLM.from_pretrained("out/hf")

The exported config is ESM-2's (rotary positions, ``token_dropout`` true, ``emb_layer_norm_before`` false,
no dropout, GELU, LayerNorm eps 1e-5), or ESM-1b's for a model with absolute positions
(``position_embedding_type`` absolute, ``emb_layer_norm_before`` true, the learned table's size), with the
vocabulary's ``mask_token_id`` / ``pad_token_id`` (ESM-2: 32 / 1; SaProt: 4 / 1). The fused q/k/v projection
is split into ``query`` / ``key`` / ``value``. The contact-prediction head is not trained here: it is written
as zeros (``predict_contacts`` gives 0.5 everywhere) so that loading reports no missing weights; fit it
downstream if contacts are needed.
Importing reads ``model.safetensors`` or ``pytorch_model.bin`` (with ``weights_only=True``); the
transformers package is needed only to load the exported directory, not to write or read it here.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from pipeline_lib.errors import DataValidationError
from pipeline_lib.io import atomic_dir
from pipeline_lib.models.esm2 import ESM2, ESM2Config
from pipeline_lib.models.flavors import VOCABS, alphabet_for

__all__ = ["export_hf", "import_hf", "hf_config", "to_hf_state_dict", "from_hf_state_dict", "read_hf_config"]

_L = "esm.encoder.layer.{i}."
# our name (per layer) -> HF name; qkv is handled separately
_LAYER_MAP = {
    "attn_norm": "attention.LayerNorm",
    "attn.out": "attention.output.dense",
    "ffn_norm": "LayerNorm",
    "fc1": "intermediate.dense",
    "fc2": "output.dense",
}
_TOP_MAP = {
    "embed_tokens.weight": "esm.embeddings.word_embeddings.weight",
    "final_norm.weight": "esm.encoder.emb_layer_norm_after.weight",
    "final_norm.bias": "esm.encoder.emb_layer_norm_after.bias",
    "lm_head.dense.weight": "lm_head.dense.weight",
    "lm_head.dense.bias": "lm_head.dense.bias",
    "lm_head.norm.weight": "lm_head.layer_norm.weight",
    "lm_head.norm.bias": "lm_head.layer_norm.bias",
    "lm_head.bias": "lm_head.bias",
}
# HF keys that carry nothing we train (recomputed buffers, untrained contact head, tied copy, pooler)
_IGNORED_SUFFIXES = ("rotary_embeddings.inv_freq", "position_ids", "lm_head.decoder.weight")
_IGNORED_PREFIXES = ("esm.contact_head.", "esm.pooler.", "contact_head.", "pooler.")


def _extra_keys(cfg: ESM2Config) -> dict[str, str]:
    """ESM-1b's parameters beyond ESM-2's: learned positions and the embedding LayerNorm (ours -> HF)."""
    out = {}
    if cfg.position_embedding == "absolute":
        out["embed_positions.weight"] = "esm.embeddings.position_embeddings.weight"
    if cfg.emb_layer_norm_before:
        out |= {"emb_norm.weight": "esm.embeddings.layer_norm.weight",
                "emb_norm.bias": "esm.embeddings.layer_norm.bias"}
    return out


def hf_config(cfg: ESM2Config, *, max_position_embeddings: int = 1026) -> dict[str, Any]:
    """``config.json`` content of an ``EsmForMaskedLM`` with this shape and vocabulary."""
    return {
        "architectures": ["EsmForMaskedLM"], "model_type": "esm",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.hidden_size, "num_hidden_layers": cfg.num_layers,
        "num_attention_heads": cfg.num_heads, "intermediate_size": cfg.ffn_size, "hidden_act": "gelu",
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0,
        "max_position_embeddings": max_position_embeddings, "initializer_range": 0.02,
        "layer_norm_eps": cfg.layer_norm_eps, "position_embedding_type": cfg.position_embedding,
        "rope_theta": cfg.rope_theta, "token_dropout": cfg.token_dropout,
        "emb_layer_norm_before": cfg.emb_layer_norm_before, "is_folding_model": False,
        "mask_token_id": cfg.mask_token_id, "pad_token_id": cfg.pad_token_id, "eos_token_id": cfg.eos_token_id,
        "tie_word_embeddings": True, "use_cache": True, "torch_dtype": "float32",
    }


def to_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ESM2Config) -> dict[str, torch.Tensor]:
    """Our parameter names -> ``EsmForMaskedLM`` names (fp32, contiguous, no shared storage)."""
    out: dict[str, torch.Tensor] = {}
    h = cfg.hidden_size
    for ours, theirs in (_TOP_MAP | _extra_keys(cfg)).items():
        out[theirs] = sd[ours]
    out["lm_head.decoder.weight"] = sd["embed_tokens.weight"]
    rotary = cfg.position_embedding == "rotary"
    inv_freq = 1.0 / (cfg.rope_theta ** (torch.arange(0, cfg.head_dim, 2, dtype=torch.float32) / cfg.head_dim))
    for i in range(cfg.num_layers):
        pre, hpre = f"layers.{i}.", _L.format(i=i)
        for ours, theirs in _LAYER_MAP.items():
            for p in ("weight", "bias"):
                out[f"{hpre}{theirs}.{p}"] = sd[f"{pre}{ours}.{p}"]
        for p in ("weight", "bias"):
            q, k, v = sd[f"{pre}attn.qkv.{p}"].split(h, dim=0)
            out[f"{hpre}attention.self.query.{p}"] = q
            out[f"{hpre}attention.self.key.{p}"] = k
            out[f"{hpre}attention.self.value.{p}"] = v
        if rotary:
            out[f"{hpre}attention.self.rotary_embeddings.inv_freq"] = inv_freq
    out["esm.contact_head.regression.weight"] = torch.zeros(1, cfg.num_layers * cfg.num_heads)
    out["esm.contact_head.regression.bias"] = torch.zeros(1)
    return {k: v.detach().to("cpu", torch.float32).contiguous().clone() for k, v in out.items()}


def from_hf_state_dict(sd: dict[str, torch.Tensor], cfg: ESM2Config) -> dict[str, torch.Tensor]:
    """``EsmForMaskedLM`` names -> ours. Raises naming missing or unexpected keys."""
    # LayerNorm weights may be stored under the legacy TF names gamma / beta
    sd = {k[:-6] + ".weight" if k.endswith(".gamma") else k[:-5] + ".bias" if k.endswith(".beta") else k: v
          for k, v in sd.items()}
    out: dict[str, torch.Tensor] = {}
    missing: list[str] = []

    def take(key: str) -> torch.Tensor:
        if key not in sd:
            missing.append(key)
            return torch.empty(0)
        return sd.pop(key)

    for ours, theirs in (_TOP_MAP | _extra_keys(cfg)).items():
        out[ours] = take(theirs)
    for i in range(cfg.num_layers):
        pre, hpre = f"layers.{i}.", _L.format(i=i)
        for ours, theirs in _LAYER_MAP.items():
            for p in ("weight", "bias"):
                out[f"{pre}{ours}.{p}"] = take(f"{hpre}{theirs}.{p}")
        for p in ("weight", "bias"):
            parts = [take(f"{hpre}attention.self.{n}.{p}") for n in ("query", "key", "value")]
            out[f"{pre}attn.qkv.{p}"] = torch.cat(parts, 0)
    unexpected = [k for k in sd if not (k.endswith(_IGNORED_SUFFIXES) or k.startswith(_IGNORED_PREFIXES))]
    if missing or unexpected:
        raise DataValidationError(f"Hugging Face weights do not match an ESM-2 of this shape: "
                                  f"missing {missing[:5]} ({len(missing)}), "
                                  f"unexpected {unexpected[:5]} ({len(unexpected)})")
    return out


def export_hf(model: ESM2 | dict[str, torch.Tensor], out_dir: str | os.PathLike[str], *, vocab: str,
              cfg: ESM2Config | None = None, max_position_embeddings: int = 1026) -> Path:
    """Write an ``EsmForMaskedLM`` directory (atomically). ``model`` is an ESM2 or its state dict + ``cfg``."""
    if isinstance(model, ESM2):
        cfg, sd = model.cfg, model.state_dict()
    elif cfg is None:
        raise ValueError("export_hf with a state dict needs cfg")
    else:
        sd = model
    ab = alphabet_for(vocab)
    if len(ab) != cfg.vocab_size or ab.mask_idx != cfg.mask_token_id or ab.pad_idx != cfg.pad_token_id:
        raise ValueError(f"vocabulary {vocab!r} ({len(ab)} tokens) does not match the model ({cfg.vocab_size})")
    out = Path(out_dir)
    with atomic_dir(out) as tmp:
        save_file(to_hf_state_dict(sd, cfg), str(tmp / "model.safetensors"), metadata={"format": "pt"})
        if cfg.position_embedding == "absolute":  # the learned table decides how long a sequence may be
            max_position_embeddings = cfg.max_positions
        (tmp / "config.json").write_text(json.dumps(hf_config(cfg, max_position_embeddings=max_position_embeddings),
                                                    indent=2) + "\n")
        (tmp / "vocab.txt").write_text("\n".join(ab.tokens) + "\n")
        specials = {"cls_token": "<cls>", "pad_token": "<pad>", "eos_token": "<eos>", "unk_token": "<unk>",
                    "mask_token": "<mask>"}
        (tmp / "special_tokens_map.json").write_text(json.dumps(specials, indent=2) + "\n")
        tok_cfg = {"tokenizer_class": "EsmTokenizer", "model_max_length": max_position_embeddings, **specials}
        (tmp / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    return out


def read_hf_config(path: str | os.PathLike[str]) -> tuple[ESM2Config, str | None]:
    """ESM2Config from an HF directory's config.json (+ vocab.txt for the vocabulary name, if known)."""
    d = Path(path)
    conf_path = d / "config.json"
    if not conf_path.is_file():
        raise DataValidationError("no config.json in Hugging Face model directory", path=str(d))
    c = json.loads(conf_path.read_text())
    problems = []
    if c.get("model_type") != "esm":
        problems.append(f"model_type {c.get('model_type')!r} != 'esm'")
    position = c.get("position_embedding_type", "absolute")
    if position not in ("rotary", "absolute"):
        problems.append(f"position_embedding_type {position!r} (ESM-2 uses rotary, ESM-1b absolute)")
    if c.get("is_folding_model"):
        problems.append("is_folding_model is true (ESMFold)")
    if problems:
        raise DataValidationError("not an ESM-2 masked LM: " + "; ".join(problems), path=str(conf_path))
    vocab, tokens = None, None
    if (d / "vocab.txt").is_file():
        tokens = tuple(t for t in (d / "vocab.txt").read_text().split("\n") if t)
        vocab = next((name for name, ab in VOCABS.items() if ab.tokens == tokens), None)
    index = {t: i for i, t in enumerate(tokens)} if tokens else {}
    cfg = ESM2Config(num_layers=c["num_hidden_layers"], hidden_size=c["hidden_size"],
                     num_heads=c["num_attention_heads"], intermediate_size=c["intermediate_size"],
                     vocab_size=c["vocab_size"],
                     pad_token_id=c.get("pad_token_id", 1), mask_token_id=c["mask_token_id"],
                     cls_token_id=index.get("<cls>", 0), eos_token_id=index.get("<eos>", 2),
                     token_dropout=bool(c.get("token_dropout", False)), layer_norm_eps=c.get("layer_norm_eps", 1e-5),
                     rope_theta=c.get("rope_theta", 10000.0), position_embedding=position,
                     max_positions=c.get("max_position_embeddings", 1026),
                     emb_layer_norm_before=bool(c.get("emb_layer_norm_before", False)))
    return cfg, vocab


def _read_weights(d: Path) -> dict[str, torch.Tensor]:
    if (d / "model.safetensors").is_file():
        return load_file(str(d / "model.safetensors"))
    if (d / "pytorch_model.bin").is_file():
        return torch.load(d / "pytorch_model.bin", map_location="cpu", weights_only=True)
    raise DataValidationError("no model.safetensors or pytorch_model.bin", path=str(d))


def import_hf(path: str | os.PathLike[str]) -> tuple[ESM2, str | None]:
    """Load an ``EsmForMaskedLM`` directory into our ESM2 (fp32). Returns (model, vocabulary name or None)."""
    d = Path(path)
    cfg, vocab = read_hf_config(d)
    model = ESM2(cfg)
    model.load_state_dict(from_hf_state_dict(_read_weights(d), cfg), strict=True)
    return model, vocab
