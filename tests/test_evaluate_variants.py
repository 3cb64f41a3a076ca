"""Zero-shot variant scores against a plain, independent computation with transformers' EsmForMaskedLM."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from transformers import EsmConfig, EsmForMaskedLM, EsmTokenizer

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import DmsConfig, DmsFileConfig
from pipeline_lib.evaluate.dms import Mutation, read_dms
from pipeline_lib.evaluate.model import HFMaskedLM, TorchMaskedLM, aa_token_groups
from pipeline_lib.evaluate.variants import (
    evaluate_dms,
    rankdata,
    roc_auc,
    score_assay,
    score_variants,
    spearman,
    window_bounds,
)
from pipeline_lib.tokenizer import SAPROT_ALPHABET

ESM_VOCAB = ("<cls> <pad> <eos> <unk> L A G V S E R T I D P K Q N F Y M H W C X B U Z O . - "
             "<null_1> <mask>").split()
WT = "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQ"   # 33 residues


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny_config(vocab_size: int = 33, mask_token_id: int = 32) -> EsmConfig:
    # initializer_range 0.5 (default 0.02) makes the random model's predictions far from uniform, so that
    # a wrong position, token or normalisation shows up in the comparison.
    return EsmConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                     intermediate_size=64, max_position_embeddings=1026, position_embedding_type="rotary",
                     token_dropout=True, mask_token_id=mask_token_id, pad_token_id=1,
                     emb_layer_norm_before=False, initializer_range=0.5)


@pytest.fixture(scope="module")
def hf_model() -> EsmForMaskedLM:
    torch.manual_seed(0)
    return EsmForMaskedLM(tiny_config()).eval()


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory: pytest.TempPathFactory) -> EsmTokenizer:
    vocab = tmp_path_factory.mktemp("vocab") / "vocab.txt"
    vocab.write_text("\n".join(ESM_VOCAB) + "\n")
    return EsmTokenizer(str(vocab))


def direct_masked_marginal(model: EsmForMaskedLM, tok: EsmTokenizer, seq: str, mutant: str,
                           window: tuple[int, int] | None = None) -> float:
    """ESM-1v masked marginal, written out: mask, forward, log_softmax, index; summed over mutations."""
    total = 0.0
    for m in mutant.split(":"):
        wt, pos, mt = m[0], int(m[1:-1]), m[-1]           # pos: 1-based residue number
        start = 0
        shown = seq
        if window is not None:
            start = window[0]
            shown = seq[window[0]: window[1]]
        ids = tok(shown, return_tensors="pt")["input_ids"]
        i = pos - start                                    # <cls> sits at 0, residue k at k
        assert tok.convert_ids_to_tokens(int(ids[0, i])) == wt
        ids[0, i] = tok.mask_token_id
        with torch.no_grad():
            logits = model(input_ids=ids).logits
        logp = torch.log_softmax(logits[0, i], dim=-1)
        total += float(logp[tok.convert_tokens_to_ids(mt)] - logp[tok.convert_tokens_to_ids(wt)])
    return total


def write_assay(path, wt: str, mutants: list[str], offset: int = 0) -> None:
    rng = np.random.default_rng(1)
    lines = ["mutant,mutated_sequence,DMS_score,DMS_score_bin"]
    for k, m in enumerate(mutants):
        s = list(wt)
        for part in m.split(":"):
            s[int(part[1:-1]) - offset - 1] = part[-1]
        lines.append(f"{m},{''.join(s)},{rng.normal():.4f},{k % 2}")
    path.write_text("\n".join(lines) + "\n")


MUTANTS = ["M1A", "K2R", "A4G:I6V", "K2E:Q9P:V32W", "S13C", "V15L", "K2R:S13A", "E25D", "Q33K", "T3S:Y5F"]


def test_masked_marginal_equals_direct_transformers(hf_model, tokenizer, tmp_path):
    csv = tmp_path / "assay.csv"
    write_assay(csv, WT, MUTANTS)
    assay = read_dms(csv)
    assert assay.wild_type == WT
    result = score_assay(HFMaskedLM(hf_model), assay, batch_size=3)
    expected = [direct_masked_marginal(hf_model, tokenizer, WT, m) for m in MUTANTS]
    np.testing.assert_allclose(result.scores, expected, rtol=1e-4, atol=1e-5)
    assert np.abs(expected).max() > 0.1          # the comparison is not between near-zero numbers
    assert result.n == len(MUTANTS) and -1 <= result.spearman <= 1 and 0 <= result.auc <= 1


def test_wt_marginal_equals_direct(hf_model, tokenizer):
    ids = tokenizer(WT, return_tensors="pt")["input_ids"]
    with torch.no_grad():
        logp = torch.log_softmax(hf_model(input_ids=ids).logits[0], dim=-1)
    variants = [(Mutation("K", 1, "R"),), (Mutation("A", 3, "G"), Mutation("Q", 32, "K"))]
    c = tokenizer.convert_tokens_to_ids
    expected = [float(logp[2, c("R")] - logp[2, c("K")]),
                float(logp[4, c("G")] - logp[4, c("A")] + logp[33, c("K")] - logp[33, c("Q")])]
    got = score_variants(HFMaskedLM(hf_model), WT, variants, method="wt_marginal")
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_long_sequence_uses_window_around_the_mutation(hf_model, tokenizer):
    seq = (WT * 2)[:40]
    assert window_bounds(2, 40, 16) == (0, 16)
    assert window_bounds(19, 40, 16) == (11, 27)
    assert window_bounds(35, 40, 16) == (24, 40)
    assert window_bounds(5, 12, 16) == (0, 12)
    assert all(e - s == 15 for s, e in (window_bounds(i, 40, 15) for i in range(40)))   # odd windows too
    cases = {f"{seq[2]}3A": (0, 16), f"{seq[19]}20A": (11, 27), f"{seq[35]}36A": (24, 40)}
    variants = [(Mutation(m[0], int(m[1:-1]) - 1, "A"),) for m in cases]
    got = score_variants(HFMaskedLM(hf_model), seq, variants, window=16)
    expected = [direct_masked_marginal(hf_model, tokenizer, seq, m, window=w) for m, w in cases.items()]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_each_position_is_computed_once_per_assay(hf_model):
    rows: list[int] = []

    class Counting(HFMaskedLM):
        def logits(self, tokens):
            rows.append(tokens.shape[0])
            return super().logits(tokens)

    variants = [(Mutation("K", 1, "R"),), (Mutation("K", 1, "E"), Mutation("A", 3, "G")),
                (Mutation("A", 3, "C"),), (Mutation("K", 1, "R"), Mutation("S", 12, "T"))]
    score_variants(Counting(hf_model), WT, variants, batch_size=2)
    assert rows == [2, 1]          # positions 1, 3, 12: three masked inputs in batches of two


def test_torch_module_adapter_matches_hf_adapter(hf_model):
    class Plain(torch.nn.Module):              # a module that returns logits only, fair-esm style dict
        def __init__(self) -> None:
            super().__init__()
            self.inner = hf_model

        def forward(self, tokens):
            return {"logits": self.inner(input_ids=tokens).logits}

    variants = [(Mutation("K", 1, "R"),), (Mutation("A", 3, "G"), Mutation("Q", 32, "K"))]
    a = score_variants(HFMaskedLM(hf_model), WT, variants)
    b = score_variants(TorchMaskedLM(Plain()), WT, variants)
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_saprot_scoring_sums_over_3di_variants():
    torch.manual_seed(1)
    model = EsmForMaskedLM(tiny_config(vocab_size=446, mask_token_id=4)).eval()
    aa, di = "ACDEFGHIKLMNPQRSTVWY#", "pynwrqhgdlvtmfsaeikc#"
    rng = np.random.default_rng(0)
    threedi = "".join(rng.choice(list(di[:-1]), size=len(WT)))
    ids = [0] + [5 + aa.index(a) * 21 + di.index(d) for a, d in zip(WT, threedi, strict=False)] + [2]

    def direct(pos0: int, wt: str, mt: str) -> float:       # SaProt's own recipe, written out
        x = torch.tensor([ids])
        x[0, pos0 + 1] = 5 + aa.index("#") * 21 + di.index(threedi[pos0])
        with torch.no_grad():
            probs = model(input_ids=x).logits[0, pos0 + 1].softmax(-1)
        p_wt = probs[5 + aa.index(wt) * 21: 5 + aa.index(wt) * 21 + 21].sum()
        p_mt = probs[5 + aa.index(mt) * 21: 5 + aa.index(mt) * 21 + 21].sum()
        return float(torch.log(p_mt / p_wt))

    lm = HFMaskedLM(model, SAPROT_ALPHABET)
    assert aa_token_groups(SAPROT_ALPHABET).shape == (20, 21)
    variants = [(Mutation("K", 1, "R"),), (Mutation("A", 3, "G"), Mutation("Q", 32, "K"))]
    got = score_variants(lm, WT, variants, threedi=threedi)
    expected = [direct(1, "K", "R"), direct(3, "A", "G") + direct(32, "Q", "K")]
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)
    # without a structure every 3Di letter is '#'; the scores change but stay finite
    assert np.isfinite(score_variants(lm, WT, variants)).all()


def test_evaluate_dms_over_configured_files(hf_model, tmp_path):
    write_assay(tmp_path / "a.csv", WT, MUTANTS)
    write_assay(tmp_path / "b.csv", WT, ["M101C", "K102R", "T103S:Y105F"], offset=100)
    cfg = DmsConfig(files=[DmsFileConfig(path=str(tmp_path / "a.csv")),
                           DmsFileConfig(path=str(tmp_path / "b.csv"), name="offset_assay", offset=100)])
    results = evaluate_dms(HFMaskedLM(hf_model), cfg, batch_size=4)
    assert [r.name for r in results] == ["a", "offset_assay"]
    assert [r.n for r in results] == [10, 3]
    wt_scores = evaluate_dms(HFMaskedLM(hf_model), cfg.model_copy(update={"method": "wt_marginal"}))
    assert wt_scores[0].method == "wt_marginal" and not np.allclose(wt_scores[0].scores, results[0].scores)


def test_score_variants_rejects_wrong_wild_type(hf_model):
    with pytest.raises(DataValidationError, match="does not match the wild type"):
        score_variants(HFMaskedLM(hf_model), WT, [(Mutation("W", 1, "R"),)])


def test_rank_statistics():
    assert rankdata([10, 20, 20, 5]).tolist() == [2.0, 3.5, 3.5, 1.0]
    assert spearman([1, 2, 3, 4, 5], [2, 1, 4, 3, 5]) == pytest.approx(0.8)        # 1 - 6*4/(5*24)
    assert spearman([1, 2, 3, 4, 5], [5, 6, 7, 8, 7]) == pytest.approx(0.8207826816681233)  # SciPy's docs
    assert math.isnan(spearman([1, 2, 3], [4, 4, 4]))
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)     # scikit-learn's docs
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert math.isnan(roc_auc([1, 1], [0.2, 0.3]))
