"""Tokenized MSA shards: schema, ids, manifest, subsampling on write."""
from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq

from pipeline_lib.io import sha256_file
from pipeline_lib.msa.a3m import Msa, parse_a3m
from pipeline_lib.msa.config import SubsampleConfig
from pipeline_lib.msa.tokens import MSA_SHARD_SCHEMA, read_msa_tokens, tokenize_msa, write_msa_shards
from pipeline_lib.tokenizer import ESM_ALPHABET


def _msa(qid: str, depth: int, length: int, seed: int = 0) -> Msa:
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(b"ACDEFGHIKLMNPQRSTVWY-", np.uint8)
    codes = rng.choice(letters, size=(depth, length))
    codes[0] = rng.choice(letters[:-1], size=length)
    return Msa(qid, tuple(r.tobytes().decode() for r in codes), tuple(f"{qid}_{i}" for i in range(depth)))


def test_tokens_are_esm_ids_with_gap_and_no_specials():
    msa = parse_a3m(">q\nMKV\n>h\nM-V\n")
    ids = tokenize_msa(msa)
    assert ids.dtype == np.uint8 and ids.shape == (2, 3)
    assert ids.tolist() == [ESM_ALPHABET.encode("MKV", add_special=False),
                            [ESM_ALPHABET.index["M"], ESM_ALPHABET.index["-"], ESM_ALPHABET.index["V"]]]
    assert ESM_ALPHABET.cls_idx not in ids and ESM_ALPHABET.eos_idx not in ids


def test_write_shards_manifest_and_read_back(tmp_path):
    train = [_msa(f"t{i}", depth=5 + i, length=10 + i, seed=i) for i in range(7)]
    valid = [_msa("v0", depth=3, length=4)]
    man = write_msa_shards({"train": train, "valid": valid, "test": []}, tmp_path,
                           rows_per_shard=3, row_group_rows=2)
    assert json.loads((tmp_path / "manifest.json").read_text()) == man
    assert man["schema_version"] >= 1 and man["kind"] == "msa" and man["tokens_include_special"] is False
    assert man["vocabulary"]["tokens"] == list(ESM_ALPHABET.tokens)
    files = man["splits"]["train"]["files"]
    assert [f["path"] for f in files] == ["train/part-00000.parquet", "train/part-00001.parquet",
                                          "train/part-00002.parquet"]
    assert [f["rows"] for f in files] == [3, 3, 1] and man["splits"]["test"] == {"files": [], "rows": 0, "tokens": 0}
    for f in files + man["splits"]["valid"]["files"]:
        assert sha256_file(tmp_path / f["path"]) == f["sha256"]
        assert pq.read_schema(tmp_path / f["path"]).equals(MSA_SHARD_SCHEMA)
    assert man["splits"]["train"]["tokens"] == sum(m.depth * m.query_length for m in train)
    back = [x for f in files for x in read_msa_tokens(tmp_path / f["path"])]
    assert [q for q, _ in back] == [m.query_id for m in train]
    for (_, arr), m in zip(back, train, strict=False):
        assert arr.shape == (m.depth, m.query_length)
        assert np.array_equal(arr, tokenize_msa(m))
        assert ESM_ALPHABET.decode(arr[0]) == m.query   # query first
    table = pq.read_table(tmp_path / files[0]["path"])
    assert table.column("neff").to_pylist() == [np.float32(m.neff) for m in train[:3]]


def test_subsample_applied_on_write(tmp_path):
    big = _msa("big", depth=400, length=100)
    man = write_msa_shards({"train": [big]}, tmp_path, subsample=SubsampleConfig(max_rows=64))
    (_, arr), = read_msa_tokens(tmp_path / man["splits"]["train"]["files"][0]["path"])
    assert arr.shape == (64, 100) and ESM_ALPHABET.decode(arr[0]) == big.query
    assert man["subsample"]["max_rows"] == 64
