from pathlib import Path

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib.config import ClusterConfig, IngestConfig, ShardsConfig, SplitConfig
from pipeline_lib.schemas import token_buffers
from pipeline_lib.sequences.cluster import cluster_sequences
from pipeline_lib.sequences.ingest import ingest_fasta
from pipeline_lib.sequences.shards import (
    _tokenize_numpy,
    partition_ranges,
    read_manifest,
    tokenize_array,
    tokenize_binary,
    verify_manifest,
    write_sequence_shards,
    write_shard_partition,
)
from pipeline_lib.sequences.split import assign_splits
from pipeline_lib.tokenizer import ESM_ALPHABET, SAPROT_ALPHABET
from tests.helpers import family_fasta


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    d = tmp_path_factory.mktemp("shards")
    family_fasta(d / "in.fa", families=20, mutants=3, unrelated=20, length=90)
    ingest_fasta([d / "in.fa"], d, IngestConfig())
    cluster_sequences(d / "sequences.parquet", d, ClusterConfig(), d / "tmp")
    assign_splits(d / "clusters.parquet", d, SplitConfig(valid_fraction=0.2, test_fraction=0.2), level="c50", seed=0)
    manifest = write_sequence_shards(d / "sequences.parquet", d / "clusters.parquet", d / "splits.parquet", d / "out",
                                     levels=["c90", "c50"], cfg=ShardsConfig(rows_per_shard=25, row_group_rows=10))
    return d, manifest


def test_manifest_describes_files_exactly(shards):
    d, manifest = shards
    assert manifest["vocabulary"]["tokens"] == list(ESM_ALPHABET.tokens)
    total = sum(v["rows"] for v in manifest["splits"].values())
    assert total == pq.ParquetFile(d / "sequences.parquet").metadata.num_rows
    train = manifest["splits"]["train"]["files"]
    assert len(train) > 1 and all(f["rows"] <= 25 for f in train)
    assert pq.ParquetFile(d / "out" / train[0]["path"]).metadata.num_row_groups >= 2
    assert verify_manifest(d / "out") == []
    assert read_manifest(d / "out") == manifest


def test_verify_detects_tampering(shards, tmp_path):
    import shutil

    d, manifest = shards
    copy = tmp_path / "copy"
    shutil.copytree(d / "out", copy)
    victim = copy / manifest["splits"]["train"]["files"][0]["path"]
    victim.write_bytes(victim.read_bytes()[:-10] + b"0123456789")
    assert any("sha256 mismatch" in p for p in verify_manifest(copy))


def test_tokens_decode_to_sequences_and_readers_agree(shards):
    d, manifest = shards
    seqs = {r["id"]: r["sequence"] for r in pq.read_table(d / "sequences.parquet").to_pylist()}
    path = d / "out" / manifest["splits"]["train"]["files"][0]["path"]
    table = pq.read_table(path)
    assert table.schema.field("tokens").type == pa.binary()  # one byte per token on disk and in memory
    for row in table.to_pylist():
        assert ESM_ALPHABET.decode(row["tokens"]) == seqs[row["id"]]
        assert len(row["tokens"]) == row["length"] + 2
    n_duck = duckdb.connect().execute(f"SELECT count(*) FROM read_parquet('{d / 'out'}/*/*.parquet')").fetchall()[0][0]
    assert n_duck == len(seqs)
    polars = pytest.importorskip("polars")
    assert polars.read_parquet(path).height == manifest["splits"]["train"]["files"][0]["rows"]
    datasets = pytest.importorskip("datasets")
    ds = datasets.load_dataset("parquet", data_files=str(path), split="train", cache_dir=str(d / "hf"))
    assert ds[0]["tokens"][0] == ESM_ALPHABET.cls_idx


def _hand_made(d, n=120):
    """sequences.parquet from ingest, clusters / splits written by hand (some ids left out, an unknown split)."""
    aa = "ACDEFGHIKLMNPQRSTVWY"
    fa = d / "in.fa"  # unique sequences: residues spell i in base 20
    fa.write_text("".join(f">s{i}\n{aa[i % 20] * (11 + i % 13)}{aa[i // 20 % 20]}{aa[i // 400 % 20]}\n"
                          for i in range(n)))
    ingest_fasta([fa], d, IngestConfig())
    ids = pq.read_table(d / "sequences.parquet").column("id").to_pylist()
    assert len(ids) == n
    keep = [i for i in ids if i != "s7"]  # s7 has no cluster: inner join drops it
    pq.write_table(pa.table({"id": keep, "cluster_c50": [f"c{int(i[1:]) % 9}" for i in keep]}), d / "clusters.parquet")
    split = {i: ("valid" if int(i[1:]) % 5 == 0 else "test" if int(i[1:]) % 5 == 1 else "train") for i in ids}
    split["s9"] = "holdout"  # not a shard split: left out
    shuffled = sorted(split, key=lambda i: (int(i[1:]) * 37) % n)  # join inputs in another order than sequences
    pq.write_table(pa.table({"id": shuffled, "split": [split[i] for i in shuffled]}), d / "splits.parquet")
    return ids, split


def test_rows_keep_ingest_order_and_files_are_deterministic(tmp_path):
    ids, split = _hand_made(tmp_path)
    cfg = ShardsConfig(rows_per_shard=30, row_group_rows=8)
    inputs = [tmp_path / "sequences.parquet", tmp_path / "clusters.parquet", tmp_path / "splits.parquet"]
    a = write_sequence_shards(*inputs, tmp_path / "a", levels=["c50"], cfg=cfg)
    b = write_sequence_shards(*inputs, tmp_path / "b", levels=["c50"], cfg=cfg)
    assert a == b  # same files, same sha256
    for name in ("train", "valid", "test"):
        expect = [i for i in ids if split[i] == name and i != "s7"]
        files = a["splits"][name]["files"]
        got = [r for f in files for r in pq.read_table(tmp_path / "a" / f["path"]).column("id").to_pylist()]
        assert got == expect
        assert [f["rows"] for f in files] == [min(30, len(expect) - 30 * k) for k in range(len(files))]
        for f in files:
            meta = pq.ParquetFile(tmp_path / "a" / f["path"]).metadata
            groups = [meta.row_group(k).num_rows for k in range(meta.num_row_groups)]
            assert groups[:-1] == [8] * (len(groups) - 1) and 0 < groups[-1] <= 8
    assert verify_manifest(tmp_path / "a") == []
    assert not [p for p in (tmp_path / "a").iterdir() if p.name.startswith(".")]  # no spill directory left


def test_tokenize_array_fast_path_equals_numpy_path():
    seqs = pa.array(["MKV", "", "J*x", "LAGVSERTIDPKQNFYMHWCXBUZO" * 3, "\x00\xff"], pa.string())
    fast = tokenize_array(seqs)
    raw = seqs.cast(pa.binary())
    offsets = np.frombuffer(raw.buffers()[1], dtype=np.int32)[: len(raw) + 1]
    data = np.frombuffer(raw.buffers()[2], dtype=np.uint8)[: offsets[-1]]
    assert fast.to_pylist() == _tokenize_numpy(data, offsets, ESM_ALPHABET).to_pylist()
    assert fast.to_pylist()[:4] == [ESM_ALPHABET.encode(s) for s in seqs.to_pylist()[:4]]  # (ASCII ones)
    assert tokenize_array(pa.chunked_array([seqs[:2], seqs[2:]])).to_pylist() == fast.to_pylist()
    assert tokenize_array(seqs.cast(pa.large_string())).to_pylist() == fast.to_pylist()
    assert fast.type == pa.list_(pa.uint8())
    packed = tokenize_binary(seqs)
    assert packed.type == pa.binary() and [list(b) for b in packed.to_pylist()] == fast.to_pylist()
    with pytest.raises(ValueError, match="more than one byte"):
        tokenize_binary(seqs, SAPROT_ALPHABET)


@pytest.mark.parametrize("kind", ["binary", "large_binary", "list", "large_list", "int16_list"])
def test_token_buffers_reads_every_token_column_layout_and_slices(kind):
    rows = [[0, 5, 6, 2], [], [0, 2], [0, 20, 21, 22, 23, 2]]
    if kind.endswith("binary"):
        arr = pa.array([bytes(r) for r in rows], getattr(pa, kind)())
    else:
        value = pa.int16() if kind == "int16_list" else pa.uint8()
        arr = pa.array(rows, pa.large_list(value) if kind == "large_list" else pa.list_(value))
    for lo, hi in [(0, 4), (1, 4), (2, 3), (3, 4), (2, 2)]:
        offsets, ids = token_buffers(arr.slice(lo, hi - lo))
        assert ids.dtype == np.int64 and offsets[0] == 0 and len(offsets) == hi - lo + 1
        assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(hi - lo)] == rows[lo:hi]
    offsets, ids = token_buffers(pa.chunked_array([arr[:1], arr[1:]]))
    assert [ids[offsets[i]:offsets[i + 1]].tolist() for i in range(4)] == rows
    with pytest.raises(TypeError, match="not a token column"):
        token_buffers(pa.array([1, 2]))


def test_a_failure_stops_every_shard_thread_and_keeps_no_partial_file(tmp_path):
    import threading

    from pipeline_lib.errors import DataValidationError

    n = 20_000
    ids = [f"s{i}" for i in range(n)]
    seqs = ["MKVLA"] * (n - 1) + [None]  # the tokenizer refuses the last batch, after shards are under way
    pq.write_table(pa.table({"id": ids, "seq_hash": [f"{i:032x}" for i in range(n)], "length": [5] * n,
                             "sequence": seqs}), tmp_path / "sequences.parquet")
    pq.write_table(pa.table({"id": ids, "cluster_c90": ids}), tmp_path / "clusters.parquet")
    pq.write_table(pa.table({"id": ids, "split": ["train", "valid"] * (n // 2)}), tmp_path / "splits.parquet")
    inputs = [tmp_path / "sequences.parquet", tmp_path / "clusters.parquet", tmp_path / "splits.parquet"]
    cfg = ShardsConfig(rows_per_shard=300, row_group_rows=100)
    before = set(threading.enumerate())
    with pytest.raises(DataValidationError, match="null"):
        write_shard_partition(*inputs, tmp_path / "part", levels=["c90"], cfg=cfg, rows=(0, n))
    assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []
    written = sorted(p.relative_to(tmp_path / "part") for p in (tmp_path / "part").rglob("*") if p.is_file())
    assert written and all(pq.ParquetFile(tmp_path / "part" / p).metadata.num_rows == 300 for p in written)
    assert not [p for p in (tmp_path / "part").rglob("*") if ".tmp-" in p.name]
    with pytest.raises(DataValidationError, match="null"):  # the whole stage: nothing left at all
        write_sequence_shards(*inputs, tmp_path / "out", levels=["c90"], cfg=cfg)
    assert [t for t in set(threading.enumerate()) - before if t.is_alive()] == []
    assert list((tmp_path / "out").iterdir()) == []


def _rows_per_file(out, manifest):
    """``{id: (split, cluster_c50)}`` over every file of the manifest, failing on an id seen twice."""
    seen = {}
    for split, info in manifest["splits"].items():
        for f in info["files"]:
            assert f["path"].startswith(f"{split}/part-")
            for row in pq.read_table(out / f["path"], columns=["id", "cluster_c50"]).to_pylist():
                assert row["id"] not in seen, f"{row['id']} in two files"
                seen[row["id"]] = (split, row["cluster_c50"])
    return seen


def test_partitions_write_every_row_once_like_one_pass(shards, tmp_path):
    d, single = shards
    n = pq.ParquetFile(d / "sequences.parquet").metadata.num_rows
    assert n > 2 * 30
    cfg = ShardsConfig(rows_per_shard=25, row_group_rows=10, partition_rows=30)
    assert len(partition_ranges(n, cfg.partition_rows)) >= 3
    inputs = [d / "sequences.parquet", d / "clusters.parquet", d / "splits.parquet"]
    many = write_sequence_shards(*inputs, tmp_path / "many", levels=["c90", "c50"], cfg=cfg)
    for split in ("train", "valid", "test"):
        assert {k: many["splits"][split][k] for k in ("rows", "tokens")} == \
            {k: single["splits"][split][k] for k in ("rows", "tokens")}
    assert len(many["splits"]["train"]["files"]) > len(single["splits"]["train"]["files"])
    rows = _rows_per_file(tmp_path / "many", many)
    assert rows == _rows_per_file(d / "out", single)  # same rows, same split, each exactly once
    split_of = {}
    for split, cluster in rows.values():
        assert split_of.setdefault(cluster, split) == split, f"cluster {cluster} in two splits"
    assert verify_manifest(tmp_path / "many") == []
    assert set(many) == set(single) and many["columns"] == single["columns"]
    assert not [p for p in (tmp_path / "many").rglob("*") if ".tmp-" in p.name or p.name.startswith(".")]


def test_one_partition_per_range_reads_only_its_rows(tmp_path):
    ids, split = _hand_made(tmp_path)  # 120 rows; row groups of 8 rows: ranges start and end inside groups
    pq.write_table(pq.read_table(tmp_path / "sequences.parquet"), tmp_path / "sequences.parquet", row_group_size=8)
    inputs = [tmp_path / "sequences.parquet", tmp_path / "clusters.parquet", tmp_path / "splits.parquet"]
    cfg = ShardsConfig(rows_per_shard=7, row_group_rows=4, partition_rows=37)
    assert partition_ranges(120, 37) == [(0, 37), (37, 74), (74, 111), (111, 120)]
    assert partition_ranges(0, 37) == [(0, 0)]
    got = {name: [] for name in ("train", "valid", "test")}
    for i, rows in enumerate(partition_ranges(120, 37)):
        written = write_shard_partition(*inputs, tmp_path / f"p{i}", levels=["c50"], cfg=cfg, rows=rows)
        for name, info in written.items():
            part = [r for f in info["files"]
                    for r in pq.read_table(tmp_path / f"p{i}" / f["path"]).column("id").to_pylist()]
            assert all(rows[0] <= ids.index(r) < rows[1] for r in part)
            got[name] += part
    for name in got:  # in ingest order, the unjoined row (s7) and the unknown split (s9) left out
        assert got[name] == [i for i in ids if split[i] == name and i != "s7"]


def test_partition_rows_must_hold_a_shard():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="partition_rows"):
        ShardsConfig(rows_per_shard=100, partition_rows=50)


def test_a_failed_partition_reruns_alone_and_the_stage_assembles_them(shards, tmp_path, monkeypatch):
    """The stage tasks (``.fn``, no Prefect run): partition 1 of 3 fails; the rerun finds 0 and 2 cached and
    computes only 1; the manifest stage links their files into the single pass's layout and counts."""
    import tasks.data as data
    from pipeline_lib.config import load_config
    from pipeline_lib.lineage import LineageStore, artifact_for
    from tasks.common import RunContext, StageOutput
    from tests.conftest import ROOT

    d, single = shards
    n = pq.ParquetFile(d / "sequences.parquet").metadata.num_rows
    cfg = load_config(str(ROOT / "configs" / "demo.yaml"), [
        f"workdir={tmp_path}", "cluster.levels=[{name: c90, min_seq_id: 0.9}, {name: c50, min_seq_id: 0.5}]",
        "shards.rows_per_shard=25", "shards.row_group_rows=10", f"shards.partition_rows={-(-n // 3)}"])
    ctx = RunContext("run-1", str(tmp_path), str(tmp_path / "lineage.duckdb"))

    def stage(name, file, kind, rows=None):
        return StageOutput(name, name * 4, str(d), False, {file: artifact_for(d / file, kind, rows=rows)}, {}, {})

    ins = (stage("ingest", "sequences.parquet", "sequences", n), stage("cluster", "clusters.parquet", "clusters"),
           stage("split", "splits.parquet", "splits"))
    ranges = data.shard_partitions(cfg, ins[0])
    assert len(ranges) == 3 and ranges[0] == (0, -(-n // 3)) and ranges[-1][1] == n
    real = data.write_shard_partition
    calls, failed = [], []

    def flaky(*args, rows, **kwargs):
        calls.append(rows)
        if rows == ranges[1] and not failed:
            failed.append(rows)
            raise OSError("disk full")  # the first attempt at partition 1 only
        return real(*args, rows=rows, **kwargs)

    monkeypatch.setattr(data, "write_shard_partition", flaky)
    first = {}
    for i, rows in enumerate(ranges):
        try:
            first[i] = data.shards_partition.fn(ctx, cfg, *ins, i, rows)
        except OSError:
            pass
    assert sorted(first) == [0, 2]
    calls.clear()
    parts = [data.shards_partition.fn(ctx, cfg, *ins, i, rows) for i, rows in enumerate(ranges)]
    assert calls == [ranges[1]] and [p.cached for p in parts] == [True, False, True]
    out = data.shards.fn(ctx, cfg, *ins, parts)
    manifest = read_manifest(Path(out.directory))
    for split in ("train", "valid", "test"):
        assert manifest["splits"][split]["rows"] == single["splits"][split]["rows"]
        assert manifest["splits"][split]["tokens"] == single["splits"][split]["tokens"]
    assert _rows_per_file(Path(out.directory), manifest) == _rows_per_file(d / "out", single)
    assert verify_manifest(Path(out.directory)) == []
    first_part = Path(parts[0].directory) / parts[0].stats["splits"]["train"]["files"][0]["path"]
    assert (Path(out.directory) / "train" / "part-00000.parquet").stat().st_ino == first_part.stat().st_ino
    statuses = [(r["stage"], r["status"]) for r in
                LineageStore(ctx.lineage_path).query("SELECT stage, status FROM steps ORDER BY started_at")]
    assert statuses.count(("shards_partition", "failed")) == 1 and statuses[-1] == ("shards", "completed")
    assert statuses.count(("shards_partition", "cached")) == 2
