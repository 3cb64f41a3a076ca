"""Hugging Face interop: export -> transformers.EsmForMaskedLM gives our logits; import round trip; an
imported HF model trains.

    .venv/bin/python -m pytest -q tests/test_hf_export.py
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from pipeline_lib.errors import DataValidationError
from pipeline_lib.models import ESM2, model_config
from pipeline_lib.models.hf import export_hf, import_hf
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET

transformers = pytest.importorskip("transformers")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_model(vocab: str) -> ESM2:
    torch.manual_seed(1)
    m = ESM2(model_config("tiny", vocab=vocab))
    with torch.no_grad():  # non-trivial LayerNorms and biases, so a wrong mapping shows
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return m.eval()


def _batch(vocab_size: int, mask_id: int, low: int, high: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    tok = torch.randint(low, high, (3, 24), generator=g)
    tok[:, 0], tok[:, -1] = 0, 2
    tok[1, 15:], tok[1, 14] = 1, 2                    # a padded row
    tok[0, 3] = mask_id
    tok[2, [4, 5, 6, 9]] = mask_id                    # token dropout with different ratios
    return tok, (tok != 1).long()


@pytest.mark.parametrize("vocab", ["esm2", "saprot"])
def test_export_matches_transformers_logits(tmp_path: Path, vocab: str):
    m = _random_model(vocab)
    out = export_hf(m, tmp_path / "hf", vocab=vocab)
    assert {p.name for p in out.iterdir()} >= {"config.json", "model.safetensors", "vocab.txt"}
    conf = json.loads((out / "config.json").read_text())
    ab = ESM_ALPHABET if vocab == "esm2" else SAPROT_ALPHABET
    assert conf["token_dropout"] is True and conf["emb_layer_norm_before"] is False
    assert conf["position_embedding_type"] == "rotary"
    assert (conf["mask_token_id"], conf["pad_token_id"], conf["vocab_size"]) == (ab.mask_idx, 1, len(ab))
    assert (out / "vocab.txt").read_text().split() == list(ab.tokens)

    hf = transformers.EsmForMaskedLM.from_pretrained(out).eval()
    tok, att = _batch(len(ab), ab.mask_idx, 5, 24 if vocab == "esm2" else len(ab))
    with torch.no_grad():
        ours = m(tok)
        theirs = hf(input_ids=tok, attention_mask=att).logits
    real = att.bool()
    assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours - theirs)[real].abs().max()


def test_exported_tokenizer_encodes_like_ours(tmp_path: Path):
    out = export_hf(_random_model("esm2"), tmp_path / "hf", vocab="esm2")
    tok = transformers.EsmTokenizer.from_pretrained(out)
    assert tok("MKVLA<mask>W")["input_ids"] == ESM_ALPHABET.encode("MKVLA")[:-1] + [32, ESM_ALPHABET.index["W"], 2]


def test_import_round_trip_and_errors(tmp_path: Path):
    m = _random_model("saprot")
    out = export_hf(m, tmp_path / "hf", vocab="saprot")
    back, vocab = import_hf(out)
    assert vocab == "saprot" and back.cfg == m.cfg
    for (n1, p1), (n2, p2) in zip(m.state_dict().items(), back.state_dict().items(), strict=False):
        assert n1 == n2 and torch.equal(p1, p2)
    # an HF model saved by transformers itself (pytorch layout names, its own config) imports too
    hf = transformers.EsmForMaskedLM.from_pretrained(out)
    hf.save_pretrained(tmp_path / "resaved")
    again, _ = import_hf(tmp_path / "resaved")
    tok, _ = _batch(446, 4, 5, 446)
    with torch.no_grad():
        assert torch.allclose(again(tok), m(tok), atol=1e-6)
    conf = json.loads((out / "config.json").read_text())
    conf["position_embedding_type"] = "absolute"  # ESM-1b's layout, without its learned table
    (out / "config.json").write_text(json.dumps(conf))
    with pytest.raises(DataValidationError, match=r"missing \['esm.embeddings.position_embeddings.weight'\]"):
        import_hf(out)
    conf["position_embedding_type"] = "relative_key"
    (out / "config.json").write_text(json.dumps(conf))
    with pytest.raises(DataValidationError, match="ESM-2 uses rotary, ESM-1b absolute"):
        import_hf(out)


def test_imported_hf_model_trains_a_step(tmp_path: Path):
    """A directory as transformers writes it (random init from an EsmConfig) fine-tunes with our loop."""
    from pipeline_lib.train.config import TrainConfig
    from pipeline_lib.train.loop import Trainer
    from pipeline_lib.train.parallel import DistEnv
    from pipeline_lib.train.synthetic import write_synthetic_shards

    config = transformers.EsmConfig(vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                                    intermediate_size=64, position_embedding_type="rotary", token_dropout=True,
                                    mask_token_id=32, pad_token_id=1, emb_layer_norm_before=False,
                                    hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.EsmForMaskedLM(config).save_pretrained(tmp_path / "pub")
    (tmp_path / "pub" / "vocab.txt").write_text("\n".join(ESM_ALPHABET.tokens) + "\n")
    shards = write_synthetic_shards(tmp_path / "shards", rows=64, row_group_rows=8)
    cfg = TrainConfig(init_from=str(tmp_path / "pub"), max_len=64, batch_tokens=256, num_workers=0,
                      warmup_steps=1, total_steps=2, lr=1e-3, checkpoint_every=10, export_hf=True)
    result = Trainer(cfg, shards_dir=shards, output_dir=tmp_path / "run", env=DistEnv()).train()
    assert result.step == 2 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.metrics)
    tuned = transformers.EsmForMaskedLM.from_pretrained(result.hf_dir)
    assert tuned.config.hidden_size == 32 and tuned.config.num_hidden_layers == 2


def test_esm1b_exports_to_transformers_with_equal_logits_and_packs_like_padding(tmp_path: Path):
    """ESM-1b's layout (learned absolute positions offset past <pad>, embedding LayerNorm, token dropout):
    transformers' EsmForMaskedLM with position_embedding_type absolute gives our logits, padded rows included;
    packed sequences give the logits each has alone (positions restart per sequence); import reads it back."""
    torch.manual_seed(1)
    m = ESM2(model_config("tiny", architecture="esm1b", max_len=64))
    with torch.no_grad():
        for p in m.parameters():
            p.add_(0.05 * torch.randn_like(p))
    m.eval()
    assert m.cfg.position_embedding == "absolute" and m.cfg.max_positions == 66
    out = export_hf(m, tmp_path / "hf", vocab="esm2")
    conf = json.loads((out / "config.json").read_text())
    assert (conf["position_embedding_type"], conf["emb_layer_norm_before"], conf["max_position_embeddings"]) == \
        ("absolute", True, 66)
    hf = transformers.EsmForMaskedLM.from_pretrained(out).eval()
    tok, att = _batch(33, 32, 4, 24)
    with torch.no_grad():
        ours, theirs = m(tok), hf(input_ids=tok, attention_mask=att).logits
        real = att.bool()
        assert torch.allclose(ours[real], theirs[real], atol=1e-5), (ours - theirs)[real].abs().max()
        # two sequences packed in one row equal each alone
        a, b = tok[0], tok[1][:15]
        packed = torch.cat([a, b])[None]
        doc = torch.cat([torch.zeros(len(a)), torch.ones(len(b))]).long()[None]
        pos = torch.cat([torch.arange(len(a)), torch.arange(len(b))])[None]
        both = m(packed, doc_ids=doc, position_ids=pos)[0]
        assert torch.allclose(both[: len(a)], m(a[None])[0], atol=1e-5)
        assert torch.allclose(both[len(a):], m(b[None])[0], atol=1e-5)
        back, vocab = import_hf(out)
        assert vocab == "esm2" and back.cfg == m.cfg and torch.allclose(back(tok)[real], ours[real], atol=1e-6)
        with pytest.raises(ValueError, match="longer than the 64 learned positions"):
            m(torch.randint(4, 24, (1, 70)))


def test_esm1b_trains_and_exports(tmp_path: Path):
    """train.architecture esm1b: the loop trains ESM-1b's network and exports it as an EsmForMaskedLM with absolute
    positions, whose logits equal the checkpoint's."""
    from pipeline_lib.train.config import TrainConfig
    from pipeline_lib.train.loop import Trainer
    from pipeline_lib.train.parallel import DistEnv
    from pipeline_lib.train.synthetic import write_synthetic_shards

    shards = write_synthetic_shards(tmp_path / "shards", rows=64, row_group_rows=8)
    cfg = TrainConfig(architecture="esm1b", model="tiny", max_len=64, batch_tokens=256, num_workers=0,
                      warmup_steps=1, total_steps=3, lr=1e-3, checkpoint_every=10, export_hf=True)
    result = Trainer(cfg, shards_dir=shards, output_dir=tmp_path / "run", env=DistEnv()).train()
    assert result.step == 3 and all(torch.isfinite(torch.tensor(r["loss"])) for r in result.metrics)
    hf = transformers.EsmForMaskedLM.from_pretrained(result.hf_dir).eval()
    assert hf.config.position_embedding_type == "absolute" and hf.config.emb_layer_norm_before
    ours, _ = import_hf(result.hf_dir)
    tok, att = _batch(33, 32, 4, 24)
    with torch.no_grad():
        assert torch.allclose(ours(tok)[att.bool()], hf(input_ids=tok, attention_mask=att).logits[att.bool()],
                              atol=1e-5)
