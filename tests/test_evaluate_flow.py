"""`plm evaluate` of a Hugging Face directory on DMS files alone (no data stages; the config's FASTA need not
exist), the per-variant scores it writes as an artifact, and a SaProt model refused before any stage when the
config builds no structure-aware tokens."""
from __future__ import annotations

import pyarrow.parquet as pq
import pytest
import torch
import transformers

from flows.end_to_end import evaluate_flow
from pipeline_lib.errors import ConfigError
from pipeline_lib.evaluate.config import DmsFileConfig
from pipeline_lib.evaluate.dms import read_dms
from pipeline_lib.evaluate.model import HFMaskedLM
from pipeline_lib.evaluate.variants import score_variants
from pipeline_lib.lineage import LineageStore
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET
from tests.conftest import ROOT
from tests.test_evaluate_dms import good_rows, proteingym_file

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _hf_dir(path, vocab_size: int):
    config = transformers.EsmConfig(vocab_size=vocab_size, hidden_size=32, num_hidden_layers=2,
                                    num_attention_heads=4, intermediate_size=64, position_embedding_type="rotary",
                                    token_dropout=True, mask_token_id=32 if vocab_size == 33 else 3, pad_token_id=1,
                                    emb_layer_norm_before=False, layer_norm_eps=1e-5)
    torch.manual_seed(0)
    transformers.EsmForMaskedLM(config).eval().save_pretrained(path)
    return path


def test_dms_alone_needs_no_data_and_writes_per_variant_scores(prefect_harness, tmp_path):
    hf = _hf_dir(tmp_path / "hf", len(ESM_ALPHABET))
    assay = tmp_path / "assay.csv"
    proteingym_file(assay, good_rows())
    args = [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{tmp_path / 'elsewhere.fa'}]}}",
            "evaluate.perplexity.enabled=false", "evaluate.contacts.enabled=false",
            f"evaluate.dms.files=[{{path: {assay}, offset: 100}}]"]
    res = evaluate_flow(str(ROOT / "configs" / "demo.yaml"), args, [str(hf)])
    assert set(res.stages) == {"evaluate_0"}  # no source, ingest, cluster, split or shards
    out = res.stages["evaluate_0"]
    table = pq.read_table(out.path("dms_scores.parquet")).to_pylist()
    data = read_dms(DmsFileConfig(path=str(assay), offset=100))
    model = HFMaskedLM(transformers.EsmForMaskedLM.from_pretrained(hf).eval(), ESM_ALPHABET)
    with torch.inference_mode():
        direct = score_variants(model, data.wild_type, data.mutations)
    assert [r["mutant"] for r in table] == data.mutants and [r["row"] for r in table] == data.rows.tolist()
    assert [r["score"] for r in table] == pytest.approx(direct.tolist(), abs=1e-6)
    assert [r["measured"] for r in table] == data.scores.tolist() and {r["assay"] for r in table} == {"assay"}
    kinds = {r["kind"] for r in LineageStore(res.lineage).query(
        "SELECT a.kind FROM artifacts a JOIN edges e USING (artifact_id) JOIN steps s USING (step_id) "
        "WHERE s.run_id = ? AND e.direction = 'output'", [res.run_id])}
    assert "dms_scores" in kinds


def test_a_saprot_model_without_structure_tokens_is_refused_before_any_stage(prefect_harness, tmp_path):
    hf = _hf_dir(tmp_path / "saprot", len(SAPROT_ALPHABET))
    fasta = tmp_path / "in.fa"
    fasta.write_text(">a\nMKVLAAGIVLLA\n")
    args = [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{fasta}]}}"]
    with pytest.raises(ConfigError, match=r"a SaProt \(structure-aware\) model, whose perplexity needs"):
        evaluate_flow(str(ROOT / "configs" / "demo.yaml"), args, [str(hf)])
    assert not (tmp_path / "work" / "stages").exists()  # nothing ran
    ok = [*args, "evaluate.perplexity.enabled=false", "evaluate.contacts.enabled=false"]
    with pytest.raises(ConfigError, match="no such directory"):
        evaluate_flow(str(ROOT / "configs" / "demo.yaml"), ok, [str(tmp_path / "missing")])
