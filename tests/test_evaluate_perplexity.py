"""Masked-token perplexity and pseudo-perplexity over Parquet shards (ESM tokens and SaProt tokens)."""
from __future__ import annotations

import json
import math
import random

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import EsmConfig, EsmForMaskedLM

from pipeline_lib import schemas
from pipeline_lib.errors import DataValidationError
from pipeline_lib.evaluate.config import PerplexityConfig
from pipeline_lib.evaluate.model import HFMaskedLM
from pipeline_lib.evaluate.perplexity import evaluate_perplexity, mask_lookup, masked_nll, pseudo_nll
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET
from tests.helpers import random_protein

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def tiny(vocab_size: int = 33, mask_token_id: int = 32, seed: int = 0) -> EsmForMaskedLM:
    torch.manual_seed(seed)
    return EsmForMaskedLM(EsmConfig(
        vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=1026, position_embedding_type="rotary", token_dropout=True,
        mask_token_id=mask_token_id, pad_token_id=1, emb_layer_norm_before=False, initializer_range=0.5)).eval()


@pytest.fixture(scope="module")
def esm() -> HFMaskedLM:
    return HFMaskedLM(tiny())


def write_split(root, split: str, seqs: list[str], threedi: list[str] | None = None, row_group: int = 4) -> None:
    schema = schemas.structure_shard_schema(["c50"]) if threedi else schemas.sequence_shard_schema(["c50"])
    cols = {"id": [f"s{i}" for i in range(len(seqs))], "seq_hash": [f"h{i}" for i in range(len(seqs))],
            "cluster_c50": ["c"] * len(seqs), "length": [len(s) for s in seqs],
            "tokens": [ESM_ALPHABET.encode_array(s).tobytes() for s in seqs]}
    if threedi:
        cols |= {"aa_seq": seqs, "threedi_seq": threedi,
                 "sa_tokens": [SAPROT_ALPHABET.encode_pairs(s, d) for s, d in zip(seqs, threedi, strict=False)],
                 "mean_plddt": [90.0] * len(seqs), "structure_source": ["afdb"] * len(seqs),
                 "structure_version": ["v4"] * len(seqs)}
    (root / split).mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pydict(cols, schema=schema), root / split / "part-00000.parquet",
                   row_group_size=row_group)


def seqs(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [random_protein(rng, rng.randint(12, 40)) for _ in range(n)]


def test_perplexity_per_split_is_deterministic_and_batch_independent(esm, tmp_path):
    write_split(tmp_path, "valid", seqs(10, 1))
    write_split(tmp_path, "test", seqs(7, 2))
    cfg = PerplexityConfig(splits=["valid", "test"], mask_seed=3, pseudo_max_sequences=1)
    a = evaluate_perplexity(esm, tmp_path, cfg, batch_size=6)
    b = evaluate_perplexity(esm, tmp_path, cfg, batch_size=64)     # padded batches give the same numbers
    assert [(r.split, r.metric) for r in a] == [("valid", "perplexity"), ("valid", "pseudo_perplexity"),
                                                ("test", "perplexity"), ("test", "pseudo_perplexity")]
    for x, y in zip(a, b, strict=False):
        assert x.n_tokens == y.n_tokens and x.value == pytest.approx(y.value, rel=1e-4)
    assert a[0].n_sequences == 10 and a[1].n_sequences == 1
    assert all(1 < r.value < math.inf and r.value == pytest.approx(math.exp(r.nll_sum / r.n_tokens)) for r in a)
    other_seed = evaluate_perplexity(esm, tmp_path, cfg.model_copy(update={"mask_seed": 4,
                                                                          "pseudo_max_sequences": 0}), batch_size=64)
    assert other_seed[0].value != pytest.approx(a[0].value, rel=1e-6)
    capped = evaluate_perplexity(esm, tmp_path, cfg.model_copy(update={"max_sequences": 3,
                                                                       "pseudo_max_sequences": 0}), batch_size=64)
    assert len(capped) == 2 and capped[0].n_sequences == 3


def test_fully_masked_sequence_equals_direct_computation(esm):
    seq = "MKTAYIAKQRQISFVKSHFSRQ"
    ids = torch.tensor([ESM_ALPHABET.encode(seq)])
    masked = ids.clone()
    masked[0, 1:-1] = 32
    with torch.no_grad():
        logp = torch.log_softmax(esm.model(input_ids=masked).logits[0], dim=-1)
    direct = -float(sum(logp[i, ids[0, i]] for i in range(1, len(seq) + 1)))
    nll, n, _ = masked_nll(esm, iter([ids[0].numpy()]), mask_fraction=1.0)
    assert n == len(seq) and nll == pytest.approx(direct, rel=1e-5)


def test_pseudo_perplexity_equals_direct_computation(esm):
    seq = "MKTAYIAKQRQISF"
    ids = torch.tensor([ESM_ALPHABET.encode(seq)])
    direct = 0.0
    for i in range(1, len(seq) + 1):
        x = ids.clone()
        x[0, i] = 32
        with torch.no_grad():
            direct -= float(torch.log_softmax(esm.model(input_ids=x).logits[0, i], -1)[ids[0, i]])
    nll, n, seqs_ = pseudo_nll(esm, iter([ids[0].numpy()]), batch_size=4)
    assert (n, seqs_) == (len(seq), 1) and nll == pytest.approx(direct, rel=1e-5)


def test_long_sequences_are_chunked(esm):
    tokens = np.asarray(ESM_ALPHABET.encode(seqs(1, 5)[0] * 3), dtype=np.int64)
    n_res = len(tokens) - 2
    nll, n, _ = masked_nll(esm, iter([tokens]), mask_fraction=0.5, window=16)
    assert n == round(0.5 * n_res) and math.isfinite(nll)
    nll, n, _ = pseudo_nll(esm, iter([tokens]), window=16, batch_size=32)
    assert n == n_res and math.isfinite(nll)


def test_saprot_shards_use_sa_tokens_and_hash_mask(tmp_path):
    rng = random.Random(0)
    ss = seqs(6, 3)
    di = ["".join(rng.choice("pynwrqhgdlvtmfsaeikc#") for _ in s) for s in ss]
    write_split(tmp_path, "valid", ss, threedi=di)
    lut = mask_lookup(SAPROT_ALPHABET)
    assert lut[SAPROT_ALPHABET.index["Md"]] == SAPROT_ALPHABET.index["#d"]
    assert lut[SAPROT_ALPHABET.index["A#"]] == SAPROT_ALPHABET.index["##"]
    assert (mask_lookup(ESM_ALPHABET) == 32).all()
    sa = HFMaskedLM(tiny(446, 4), SAPROT_ALPHABET)
    seen: list[torch.Tensor] = []

    class Spy(HFMaskedLM):
        def logits(self, tokens):
            seen.append(tokens)
            return super().logits(tokens)

    res = evaluate_perplexity(Spy(sa.model, SAPROT_ALPHABET), tmp_path, PerplexityConfig(splits=["valid"]))
    assert res[0].n_sequences == 6 and 1 < res[0].value < math.inf
    used = torch.cat([t.flatten() for t in seen])
    hash_side = [SAPROT_ALPHABET.index["#" + d] for d in "pynwrqhgdlvtmfsaeikc#"]
    assert torch.isin(used, torch.tensor(hash_side)).any() and not (used == SAPROT_ALPHABET.mask_idx).any()


def test_manifest_order_and_errors(esm, tmp_path):
    write_split(tmp_path, "valid", seqs(3))
    (tmp_path / "manifest.json").write_text(json.dumps(
        {"splits": {"valid": {"files": [{"path": "valid/part-00000.parquet"}]}}}))
    assert evaluate_perplexity(esm, tmp_path, PerplexityConfig(splits=["valid"]))[0].n_sequences == 3
    with pytest.raises(DataValidationError, match="split 'test' is not in the shard manifest"):
        evaluate_perplexity(esm, tmp_path, PerplexityConfig(splits=["test"]))
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(DataValidationError, match="no shard folder for split 'test'"):
        evaluate_perplexity(esm, tmp_path, PerplexityConfig(splits=["test"]))
    sa = HFMaskedLM(tiny(446, 4), SAPROT_ALPHABET)
    with pytest.raises(DataValidationError, match="no 'sa_tokens' column"):
        evaluate_perplexity(sa, tmp_path, PerplexityConfig(splits=["valid"]))
    bad = tmp_path / "bad"
    (bad / "valid").mkdir(parents=True)
    pq.write_table(pa.table({"tokens": pa.array([[5, 6, 7]], type=pa.list_(pa.uint8()))}),
                   bad / "valid" / "part-00000.parquet")
    with pytest.raises(DataValidationError, match="<cls>"):
        evaluate_perplexity(esm, bad, PerplexityConfig(splits=["valid"]))
