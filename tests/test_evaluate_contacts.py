"""Unsupervised contacts: hand-checked APC/symmetrize, contact maps from real structures, precision metrics."""
from __future__ import annotations

import copy
import math
from pathlib import Path

import gemmi
import numpy as np
import pytest
import torch
from transformers import EsmConfig, EsmForMaskedLM

from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import ContactsConfig
from pipeline_lib.evaluate.contacts import (
    FRACTIONS,
    RANGES,
    ContactRegression,
    ContactTarget,
    StructureSpec,
    apc,
    attention_features,
    contact_map,
    contact_precisions,
    evaluate_contacts,
    evaluate_contacts_config,
    expand_specs,
    fit_logistic_l1,
    load_target,
    parse_spec,
    symmetrize,
)
from pipeline_lib.evaluate.model import HFMaskedLM, TorchMaskedLM
from pipeline_lib.structures.parse import parse_structure
from pipeline_lib.tokenizer import SAPROT_ALPHABET

FIXTURES = Path(__file__).parents[1].parent / "shared" / "fixtures"
STRUCTURES = FIXTURES / "structures"
needs_fixtures = pytest.mark.skipif(not STRUCTURES.is_dir(),
                                    reason=f"shared structure fixtures not available at {STRUCTURES}")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def lm() -> HFMaskedLM:
    torch.manual_seed(0)
    return HFMaskedLM(EsmForMaskedLM(EsmConfig(
        vocab_size=33, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True, mask_token_id=32,
        pad_token_id=1, emb_layer_norm_before=False)))


def test_symmetrize_and_apc_on_a_hand_made_matrix():
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert torch.equal(symmetrize(x), torch.tensor([[2.0, 5.0], [5.0, 8.0]]))
    # rowsums (3, 7), colsums (4, 6), total 10: x_ij - r_i c_j / 10
    expected = torch.tensor([[1 - 3 * 4 / 10, 2 - 3 * 6 / 10], [3 - 7 * 4 / 10, 4 - 7 * 6 / 10]])
    torch.testing.assert_close(apc(x), expected)
    # an outer-product (pure background) matrix is removed entirely; batch dimensions are kept
    r = torch.tensor([1.0, 2.0, 3.0])
    torch.testing.assert_close(apc(torch.outer(r, r)[None, None]), torch.zeros(1, 1, 3, 3))


def test_contact_map_uses_cbeta_and_calpha_for_glycine():
    ca = np.array([[0.0, 0, 0], [5.0, 0, 0], [20.0, 0, 0]])
    cb = np.array([[0.0, 1, 0], [np.nan, np.nan, np.nan], [13.0, 1, 0]])   # residue 1 is a glycine
    m = contact_map(cb, ca, cutoff=8.0)
    assert m[0, 1] and not m[0, 2]          # |(0,1,0) - (5,0,0)| = 5.1 (CA used for Gly)
    assert not m[1, 2]                       # |(5,0,0) - (13,1,0)| = 8.06
    cb[2] = [12.0, 1, 0]
    assert contact_map(cb, ca, cutoff=8.0)[1, 2] and not contact_map(cb, ca, cutoff=7.0)[1, 2]


def test_precision_of_the_true_map_is_one_and_ranges_are_respected():
    rng = np.random.default_rng(0)
    n = 60
    true = rng.random((n, n)) < 0.3
    true = true | true.T
    prec = contact_precisions(true.astype(float), true)
    assert set(prec) == set(RANGES) and all(set(v) == set(FRACTIONS) for v in prec.values())
    for name, (lo, hi) in RANGES.items():
        i, j = np.triu_indices(n, k=lo)
        n_true = int(true[i, j][(j - i) <= (hi or n)].sum())
        for label, frac in FRACTIONS.items():
            k = n // frac
            assert prec[name][label] == pytest.approx(min(1.0, n_true / k))
    # ranking every non-contact first scores 0; a range without pairs gives NaN
    inverse = contact_precisions(np.where(true, 0.0, 1.0), true)
    assert inverse["long"]["L"] == 0.0
    assert math.isnan(contact_precisions(np.zeros((10, 10)), np.zeros((10, 10), dtype=bool))["long"]["L"])


def test_logistic_regression_recovers_a_linear_rule():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(5000, 4))
    w_true = np.array([2.0, -1.0, 0.0, 0.5])
    y = (x @ w_true + 0.3 + rng.logistic(size=5000) > 0).astype(float)
    w, b = fit_logistic_l1(x, y, c=10.0)
    np.testing.assert_allclose(w, w_true, atol=0.25)
    assert b == pytest.approx(0.3, abs=0.2)
    w_strong, _ = fit_logistic_l1(x, y, c=1e-4)              # heavy L1: every weight goes to zero
    assert np.abs(w_strong).max() < 1e-6


def test_the_regression_is_esms_own():
    """ESM's contact regression is scikit-learn's LogisticRegression(penalty='l1', C=0.15, solver='liblinear'),
    penalty='l1' written l1_ratio=1 since scikit-learn 1.8, with a fixed random_state (liblinear's feature order)
    on the raw APC features: ours gives its coefficients exactly, on features of the scale attention maps have
    (unstandardised: liblinear penalises the intercept, so standardising would change the answer)."""
    from sklearn.linear_model import LogisticRegression

    rng = np.random.default_rng(1)
    x = rng.gamma(0.5, 0.02, size=(4000, 24))               # APC'd attention: small, skewed, non-negative mostly
    y = (x[:, 3] * 80 - x[:, 7] * 40 + rng.logistic(size=4000) > 1.5).astype(float)
    ref = LogisticRegression(l1_ratio=1.0, C=0.15, solver="liblinear", random_state=0).fit(x, y)
    w, b = fit_logistic_l1(x, y, c=0.15)
    np.testing.assert_array_equal(w, ref.coef_[0])
    assert b == ref.intercept_[0]


def test_spec_parsing(tmp_path):
    assert parse_spec("a/b.pdb:B") == StructureSpec("a/b.pdb", "B")
    assert parse_spec("a/b.pdb") == StructureSpec("a/b.pdb")
    (tmp_path / "x.pdb").write_text("")
    (tmp_path / "y.pdb").write_text("")
    assert expand_specs([f"{tmp_path}/*.pdb:A"]) == [StructureSpec(f"{tmp_path}/x.pdb", "A"),
                                                     StructureSpec(f"{tmp_path}/y.pdb", "A")]


@needs_fixtures
def test_structure_contacts_and_attention_features(lm):
    t = load_target(STRUCTURES / "pdb" / "8crb.pdb")                 # first chain
    assert t.name == "8crb_A" and t.contacts.shape == (len(t.sequence),) * 2
    assert (t.contacts == t.contacts.T).all() and t.contacts.diagonal().all()
    assert t.contacts[np.arange(len(t.sequence) - 1), np.arange(1, len(t.sequence))].mean() > 0.95  # neighbours
    c = load_target(StructureSpec(str(STRUCTURES / "pdb" / "8crb.pdb"), "C"))  # SEQRES: 692, 139 modelled
    assert c.name == "8crb_C" and len(c.sequence) == 692 and c.resolved.sum() == 139
    with pytest.raises(DataValidationError, match="no chain 'Z'"):
        load_target(f"{STRUCTURES / 'pdb' / '8crb.pdb'}:Z")
    feats = attention_features(lm, c.sequence)
    assert feats.shape == (692, 692, 2 * 4) and feats.dtype == np.float32
    np.testing.assert_allclose(feats, feats.transpose(1, 0, 2), atol=1e-6)      # symmetric after APC
    with pytest.raises(ValueError, match="longer than the window"):
        attention_features(lm, c.sequence, window=100)


@needs_fixtures
def test_contact_pipeline_reports_precision_by_range(lm):
    result = evaluate_contacts(lm, train=[f"{STRUCTURES / 'pdb' / '1xso.pdb'}:A"],
                               test=[f"{STRUCTURES / 'pdb' / '8crb.pdb'}:C",
                                     str(STRUCTURES / "afdb" / "AF-A0A1W2PQ64-F1-model_v4.pdb")])
    assert (result.n_train, result.n_test) == (1, 2)
    assert [p.name for p in result.per_structure] == ["8crb_C", "AF-A0A1W2PQ64-F1-model_v4_A"]
    assert set(result.mean) == set(RANGES)
    for by_frac in result.mean.values():
        assert set(by_frac) == set(FRACTIONS) and all(0.0 <= v <= 1.0 for v in by_frac.values())
    # the true map used as the prediction is perfect wherever a range has enough contacts
    t = load_target(str(STRUCTURES / "afdb" / "AF-A0A1W2PQ64-F1-model_v4.pdb"))
    prec = contact_precisions(t.contacts.astype(float), t.contacts)
    assert prec["long"]["L/5"] == 1.0 and prec["short"]["L/5"] == 1.0


@needs_fixtures
def test_contacts_from_config_split_by_count(lm):
    cfg = ContactsConfig(test_structures=[str(STRUCTURES / "pdb" / "1xso.pdb"), str(STRUCTURES / "pdb" / "8crb.pdb:C")],
                         train_structures=1, max_train_pairs=5000)
    result = evaluate_contacts_config(lm, cfg)
    assert (result.n_train, result.n_test) == (1, 1) and result.per_structure[0].name == "8crb_C"


def test_regression_needs_both_classes():
    t = ContactTarget("x", "A" * 20, np.zeros((20, 20), dtype=bool))
    with pytest.raises(DataValidationError, match="one class"):
        ContactRegression.fit([np.zeros((20, 20, 3), dtype=np.float32)], [t])


def test_torch_adapter_attentions_and_saprot_features(lm):
    class FairEsmLike(torch.nn.Module):             # fair-esm's call style: need_head_weights -> "attentions"
        def __init__(self) -> None:
            super().__init__()
            self.inner = copy.deepcopy(lm.model)
            self.inner.set_attn_implementation("eager")         # sdpa returns no attention weights

        def forward(self, tokens, need_head_weights: bool = False):
            out = self.inner(input_ids=tokens, output_attentions=need_head_weights)
            return {"logits": out.logits, "attentions": torch.stack(out.attentions, 1) if need_head_weights else None}

    tokens = torch.tensor([[0, 20, 15, 7, 5, 6, 2]])
    expected = lm.attentions(tokens)
    assert lm.model.config._attn_implementation == "sdpa"                        # switched back after the call
    assert expected.shape == (1, 2, 4, 7, 7)
    torch.testing.assert_close(expected.sum(-1), torch.ones(1, 2, 4, 7))             # softmax rows
    got = TorchMaskedLM(FairEsmLike(), attention_kwargs={"need_head_weights": True}).attentions(tokens)
    torch.testing.assert_close(got, expected)
    with pytest.raises(NotImplementedError):
        TorchMaskedLM(FairEsmLike()).attentions(tokens)
    with pytest.raises(ValueError, match="446"):
        HFMaskedLM(lm.model, SAPROT_ALPHABET)
    torch.manual_seed(0)
    sa = HFMaskedLM(EsmForMaskedLM(EsmConfig(
        vocab_size=446, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        position_embedding_type="rotary", mask_token_id=4, pad_token_id=1)), SAPROT_ALPHABET)
    assert attention_features(sa, "MKVLA", threedi="pydnw").shape == (5, 5, 2)


@needs_fixtures
def test_unresolved_residues_are_read_by_the_model_and_never_scored(tmp_path):
    """PDB 3bww: 253 of 307 SEQRES residues modelled, three unresolved stretches. The model reads the full
    sequence, separations follow the residue numbering, only resolved pairs count; the mmCIF gemmi writes from
    the same file gives the same target."""
    path = STRUCTURES / "pdb" / "3bww.pdb"
    chain = parse_structure(path)[0]
    t = load_target(path)
    assert len(t.sequence) == 307 and t.resolved.sum() == len(chain) == 253
    pos = np.flatnonzero(t.resolved)
    assert "".join(t.sequence[k] for k in pos) == chain.sequence
    assert len(set(pos - chain.resnums)) == 1  # positions follow the author numbering (no insertion codes here)
    modelled = contact_map(chain.cb, chain.ca)
    assert (t.contacts[np.ix_(pos, pos)] == modelled).all()
    assert not t.contacts[~t.resolved].any()
    # the range class of a contact by the numbering vs by the compressed index of the modelled residues
    i, j = np.nonzero(np.triu(modelled, 6))

    def range_of(sep):
        return np.select([sep >= 24, sep >= 12, sep >= 6], ["long", "medium", "short"], "none")

    changed = (range_of(pos[j] - pos[i]) != range_of(j - i)).sum()
    assert changed > 0  # what scoring on the compressed index got wrong
    # scoring: a predictor that ranks pairs with an unresolved residue first still gets every resolved contact
    pred = t.contacts.astype(float) + 2.0 * ~(t.resolved[:, None] & t.resolved[None, :])
    prec = contact_precisions(pred, t.contacts, resolved=t.resolved)
    assert prec["long"]["L/5"] == 1.0
    assert contact_precisions(pred, t.contacts)["long"]["L/5"] == 0.0  # unmasked, the unresolved pairs win
    st = gemmi.read_structure(str(path))
    st.setup_entities()
    cif = tmp_path / "3bww.cif"
    st.make_mmcif_document().write_file(str(cif))
    c = load_target(cif)
    assert c.sequence == t.sequence and (c.resolved == t.resolved).all() and (c.contacts == t.contacts).all()


@needs_fixtures
def test_a_file_without_a_declared_sequence_uses_the_modelled_residues():
    d = STRUCTURES / "foldseek_example" / "d1asha_"  # a SCOP domain: ATOM records only
    t = load_target(d)
    assert t.resolved is None and t.sequence == parse_structure(d)[0].sequence
