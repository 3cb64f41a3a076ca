"""Hostile and broken inputs: every one ends in a quarantined record or a clear error naming the file (and
record), counts reconcile, and a failing stage leaves nothing under a final name.

    .venv/bin/pytest -q tests/test_hostile_inputs.py

Covers malformed FASTA, broken gzip, bad configs, a missing / crashing / lying mmseqs (shell scripts as
fake binaries) and paths with odd characters; a full disk is in ``test_hostile_disk.py``.
A test that shows a bug whose fix is pending is marked ``xfail(strict=True, reason="needs patch: ...")``, the fix in
``docs/reliability.md``; they pass once it is applied (then drop the marker).
"""
from __future__ import annotations

import gzip
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline_lib.config import ClusterConfig, IngestConfig, load_config
from pipeline_lib.errors import ConfigError, DataValidationError, ToolError
from pipeline_lib.sequences.fasta import read_fasta
from pipeline_lib.sequences.ingest import ingest_fasta
from tests.helpers import family_fasta
from tests.hostile_helpers import failed_steps, final_stage_dirs, ingest_on, stage_context, stage_output

# --- helpers -----------------------------------------------------------------------------------------

def ingest_bytes(tmp_path: Path, data: bytes, name: str = "in.fa", **cfg):
    """Ingest one file holding ``data``; returns (stats, quarantine rows, kept ids)."""
    src = tmp_path / name
    src.parent.mkdir(parents=True, exist_ok=True)
    src.write_bytes(data)
    out = tmp_path / f"out-{name.replace('/', '_')}"
    stats = ingest_fasta([src], out, IngestConfig(**({"min_length": 1} | cfg)))
    q = pq.read_table(out / "quarantine.parquet").to_pylist()
    kept = pq.read_table(out / "sequences.parquet").column("id").to_pylist()
    dups = pq.read_table(out / "duplicates.parquet").num_rows
    assert stats.records_in == stats.kept + stats.duplicates + stats.quarantined
    assert (len(kept), dups, len(q)) == (stats.kept, stats.duplicates, stats.quarantined)
    assert all(r["source_file"] == src.name and r["source_record"] is not None for r in q)
    return stats, q, kept


# --- malformed FASTA ---------------------------------------------------------------------------------

MALFORMED = {
    # name: (bytes, expected reasons of the quarantined records, kept ids)
    "no header at all": (b"MKVLAAGIVLLA\nMKV\n", ["missing_header"], []),
    "text before the first header": (b"junk\n>a\nMKVL\n", ["missing_header"], ["a"]),
    "header without residues": (b">a\n>b\nMKVL\n>c\n", ["empty_sequence", "empty_sequence"], ["b"]),
    "bare '>'": (b">\nMKVL\n>b\nMKVA\n", ["malformed_header"], ["b"]),
    "NUL and binary bytes in residues": (b">a\nMK\x00\xff\x89PNG\n>b\nMKVL\n", ["invalid_characters"], ["b"]),
    "binary bytes in the header": (b">a\xff\xfe\x00b\nMKVL\n>c\nMKVA\n", ["malformed_header"], ["c"]),
    "digits and punctuation": (b">a\nMK12VL;\n>b\nMKVL\n", ["invalid_characters"], ["b"]),
    "CRLF line ends": (b">a desc\r\nMKV\r\nLLA*\r\n>b\r\nMKVA\r\n", [], ["a", "b"]),
    "blank lines and tabs": (b"\n\n>a\n\tMK V\n\n  LA\n\n>b\nMKVA\n\n", [], ["a", "b"]),
    "duplicate ids": (b">a\nMKVL\n>a\nMKVA\n", ["duplicate_id"], ["a"]),
    "UTF-16 file": (">a\nMKVL\n".encode("utf-16"), ["missing_header"], []),
    "a PNG image": (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR\x00\x00\x00\x10", ["missing_header"], []),
}


@pytest.mark.parametrize("case", list(MALFORMED), ids=list(MALFORMED))
def test_malformed_fasta_is_quarantined_record_by_record(tmp_path, case):
    data, reasons, kept_ids = MALFORMED[case]
    stats, q, kept = ingest_bytes(tmp_path, data)
    assert sorted(r["reason"] for r in q) == sorted(reasons)
    assert kept == kept_ids
    assert all(r["detail"] for r in q)


def test_100_kb_lines_and_headers(tmp_path):
    seq = b"MKVLA" * 20_000
    data = b">long " + b"d" * 100_000 + b"\n" + seq + b"\n>wrapped\n" + b"\n".join([seq[i:i + 60] for i in
                                                                                     range(0, len(seq), 60)]) + b"\n"
    stats, q, kept = ingest_bytes(tmp_path, data)
    assert kept == ["long"] and stats.duplicates == 1 and q == []  # the same 100 kB sequence twice
    assert stats.residues_kept == 100_000


def test_long_header_is_kept_whole_and_quarantine_raw_is_capped(tmp_path):
    stats, q, _ = ingest_bytes(tmp_path, b">sp|broken " + b"x" * 100_000 + b"\nMKVL\n")
    assert [r["reason"] for r in q] == ["malformed_header"] and len(q[0]["raw"]) == 200


def test_cr_only_line_ends_become_one_quarantined_record(tmp_path):
    """Classic-Mac line ends: no '\\n', so the whole file is one header line. Nothing is lost or invented."""
    stats, q, kept = ingest_bytes(tmp_path, b">a\rMKVL\r>b\rMKVA\r")
    assert stats.records_in == 1 and [r["reason"] for r in q] == ["malformed_header"] and kept == []


def test_header_without_newline_at_end_of_file(tmp_path):
    stats, q, kept = ingest_bytes(tmp_path, b">a\nMKVL\n>b")
    assert kept == ["a"] and [r["reason"] for r in q] == ["empty_sequence"]


def test_an_empty_file_among_others_is_accepted(tmp_path):
    good, empty = tmp_path / "good.fa", tmp_path / "empty.fa"
    good.write_bytes(b">a\nMKVL\n")
    empty.write_bytes(b"")
    stats = ingest_fasta([good, empty], tmp_path / "out", IngestConfig(min_length=1))
    assert (stats.records_in, stats.kept) == (1, 1)


@pytest.mark.parametrize("data", [b"", b"\n \r\n\t\n"], ids=["empty", "blank"])
def test_empty_input_is_an_error_naming_it(tmp_path, data):
    src = tmp_path / "empty.fa"
    src.write_bytes(data)
    with pytest.raises(DataValidationError, match="empty.fa"):
        ingest_on(tmp_path / "work", src)
    assert final_stage_dirs(tmp_path / "work", "ingest") == []


@pytest.mark.parametrize("header", [
    b"UniRef50_A1 desc n=99999999999 Tax=x TaxID=1 RepID=B",       # n_members is int32
    b"sp|P12345|A_B desc OS=x OX=99999999999999999999999 PE=1 SV=1",  # taxid is int64
    b"sp|P12345|A_B desc OS=x OX=1 PE=300 SV=1",                     # pe is int8
    b"sp|P12345|A_B desc OS=x OX=1 PE=1 SV=70000",                   # sv is int16
])
def test_header_numbers_too_big_for_their_column_are_quarantined(tmp_path, header):
    """Today one such header aborts the whole ingest with a bare ArrowInvalid / OverflowError."""
    stats, q, kept = ingest_bytes(tmp_path, b">" + header + b"\nMKVL\n>ok\nMKVA\n")
    assert [r["reason"] for r in q] == ["malformed_header"] and kept == ["ok"]


# --- broken gzip -------------------------------------------------------------------------------------

def _gz_records(n: int = 3000) -> bytes:
    return gzip.compress(b"".join(b">s%d\n%s\n" % (i, b"MKVLA" * 40) for i in range(n)))


def _corrupt_middle(gz: bytes) -> bytes:
    mid = len(gz) // 2
    return gz[:mid] + bytes(b ^ 0x5A for b in gz[mid:mid + 64]) + gz[mid + 64:]


BROKEN_GZIP = {
    "truncated": lambda gz: gz[: len(gz) // 2],
    "truncated trailer": lambda gz: gz[:-4],
    "bytes flipped in the middle": _corrupt_middle,
    "magic bytes only": lambda gz: gz[:2],
    "garbage after the stream": lambda gz: gz + b"this is not gzip",
}


@pytest.mark.parametrize("case", list(BROKEN_GZIP), ids=list(BROKEN_GZIP))
def test_broken_gzip_raises_naming_the_file(tmp_path, case):
    path = tmp_path / "broken.fa.gz"
    path.write_bytes(BROKEN_GZIP[case](_gz_records()))
    with pytest.raises(DataValidationError) as err:
        for _ in read_fasta(path):
            pass
    assert str(path) in str(err.value) and "gzip" in str(err.value)
    with pytest.raises(DataValidationError, match="broken.fa.gz"):
        ingest_fasta([path], tmp_path / "out", IngestConfig())


def test_concatenated_gzip_members_are_read_whole(tmp_path):
    path = tmp_path / "two.fa.gz"
    path.write_bytes(gzip.compress(b">a\nMKVL\n") + gzip.compress(b">b\nMKVA\n"))
    assert [r.header for r in read_fasta(path)] == ["a", "b"]


def test_truncated_gzip_error_names_the_record(tmp_path):
    path = tmp_path / "cut.fa.gz"
    path.write_bytes(_gz_records(20_000)[:30_000])
    with pytest.raises(DataValidationError) as err:
        for _ in read_fasta(path):
            pass
    assert err.value.record is not None and f"record {err.value.record}" in str(err.value)


def test_input_without_line_breaks_fails_fast(tmp_path):
    """80 MB with no newline (a binary file, CR-only line ends): today it is read whole into one record."""
    path = tmp_path / "oneline.fa.gz"
    path.write_bytes(gzip.compress(b">a " + b"A" * (80 << 20), compresslevel=1))
    with pytest.raises(DataValidationError, match="oneline.fa.gz"):
        for _ in read_fasta(path):
            pass


def test_failed_ingest_stage_leaves_no_final_directory(tmp_path):
    from tasks import data

    src = tmp_path / "cut.fa.gz"
    src.write_bytes(_gz_records()[:5000])
    workdir = tmp_path / "work"
    ctx = stage_context(workdir)
    cfg = load_config(None, [f"workdir={workdir}"])
    with pytest.raises(DataValidationError, match="cut.fa.gz"):
        data.ingest.fn(ctx, cfg, stage_output("source", {"source_0": src}, {"source_0": "source_fasta"}))
    assert final_stage_dirs(workdir, "ingest") == []
    assert [p for p in (workdir / "stages" / "ingest").iterdir() if p.is_dir()] == []  # temporary removed too
    step = failed_steps(workdir / "lineage.duckdb", "ingest")
    assert step[0]["status"] == "failed" and "cut.fa.gz" in step[0]["error"]


# --- configs -----------------------------------------------------------------------------------------

BAD_CONFIGS = {
    "unknown top-level key": ("nmae: x\n", ["nmae: unknown key"]),
    "unknown nested key": ("cluster:\n  thread: 4\n", ["cluster.thread: unknown key"]),
    "unknown key in a level": ("cluster:\n  levels:\n    - {name: c90, min_seq_id: 0.9, idenity: 1}\n",
                               ["cluster.levels.0.idenity: unknown key"]),
    "wrong type": ("cluster:\n  threads: lots\n", ["cluster.threads", "'lots'"]),
    "out of range": ("split:\n  valid_fraction: 1.5\n", ["split.valid_fraction"]),
    "list where a section goes": ("ingest: [1, 2]\n", ["ingest"]),
    "unknown source kind": ("source: {kind: ftp}\n", ["source"]),
    "levels not decreasing": ("cluster:\n  levels: [{name: a, min_seq_id: 0.5}, {name: b, min_seq_id: 0.9}]\n",
                              ["strictly decreasing"]),
    "top level is a list": ("- a\n- b\n", ["top level must be a mapping"]),
    "not YAML": ("cluster: {threads: [\n", ["not valid YAML"]),
    "python object tag": ("name: !!python/object/apply:os.system ['touch {canary}']\n", ["not valid YAML"]),
}


@pytest.mark.parametrize("case", list(BAD_CONFIGS), ids=list(BAD_CONFIGS))
def test_bad_config_names_file_and_key(tmp_path, case, capsys):
    from flows.cli import main as plm

    text, expected = BAD_CONFIGS[case]
    canary = tmp_path / "canary"
    path = tmp_path / "bad.yaml"
    path.write_text(text.replace("{canary}", str(canary)))
    with pytest.raises(ConfigError) as err:
        load_config(path)
    msg = str(err.value)
    assert str(path) in msg and all(e in msg for e in expected), msg
    assert plm(["config", str(path)]) == 2  # the CLI: one line of error, no traceback
    assert capsys.readouterr().err.startswith("plm: error: ")
    assert not canary.exists()  # the YAML tag never ran


@pytest.mark.parametrize("override,expected", [
    ("cluster.thread=4", "cluster.thread: unknown key"),
    ("cluster.threads=[1", "not valid YAML"),
    ("cluster.threads", "expected KEY.PATH=VALUE"),
    ("name.sub=1", "name: Input should be a valid string"),
    ("seed=!!python/name:os.system", "not valid YAML"),
])
def test_bad_override_is_a_config_error(override, expected):
    with pytest.raises(ConfigError, match=expected.replace(".", r"\.").replace("[", r"\[")):
        load_config(None, [override])


def test_yaml_alias_bomb_gives_a_short_error(tmp_path):
    """Six levels of 9 aliases expand to 531,441 items (nine levels: 387 million): refused by their expanded
    size with a short message (tests/test_config.py has the bomb under the bound, and in an override)."""
    lines = ["l0: &l0 [x, x, x, x, x, x, x, x, x]"]
    lines += [f"l{i}: &l{i} [{', '.join([f'*l{i - 1}'] * 9)}]" for i in range(1, 6)]
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\nname: *l5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert len(str(err.value)) < 2000 and "alias bomb" in str(err.value)


# --- mmseqs: missing, crashing, lying ----------------------------------------------------------------

@pytest.fixture(scope="module")
def ingested(tmp_path_factory):
    d = tmp_path_factory.mktemp("clusterable")
    family_fasta(d / "in.fa", families=2, mutants=2, unrelated=2)
    ingest_fasta([d / "in.fa"], d / "ingest", IngestConfig())
    return d / "ingest" / "sequences.parquet"


def fake_mmseqs(directory: Path, name: str, body: str) -> str:
    """A shell script standing in for mmseqs: answers ``version``, then does ``body`` for any other command."""
    p = directory / name
    p.write_text(f'#!/bin/sh\nif [ "$1" = version ]; then echo 15-fake; exit 0; fi\n{body}\n')
    p.chmod(0o755)
    return str(p)


def run_cluster(sequences: Path, tmp_path: Path, binary: str):
    from pipeline_lib.sequences.cluster import cluster_sequences

    return cluster_sequences(sequences, tmp_path / "out", ClusterConfig(binary=binary), tmp_path / "mm")


def test_missing_mmseqs_names_the_path(ingested, tmp_path, monkeypatch):
    with pytest.raises(ToolError, match=f"not found or not executable: {tmp_path}/nope/mmseqs"):
        run_cluster(ingested, tmp_path, str(tmp_path / "nope" / "mmseqs"))
    monkeypatch.setenv("PLM_MMSEQS", str(tmp_path / "also-missing"))
    with pytest.raises(ToolError, match="also-missing"):
        run_cluster(ingested, tmp_path, None)
    not_exec = tmp_path / "mmseqs-noexec"
    not_exec.write_text("#!/bin/sh\n")
    with pytest.raises(ToolError, match="not executable"):
        run_cluster(ingested, tmp_path, str(not_exec))


def test_crashing_mmseqs_reports_command_exit_code_and_stderr(ingested, tmp_path):
    binary = fake_mmseqs(tmp_path, "mmseqs", 'echo "Segmentation fault in prefilter step" >&2\nexit 139')
    with pytest.raises(ToolError) as err:
        run_cluster(ingested, tmp_path, binary)
    msg = str(err.value)
    assert "command: " + binary + " easy-linclust" in msg and "exit code: 139" in msg
    assert "Segmentation fault in prefilter step" in msg and err.value.returncode == 139


def test_mmseqs_that_cannot_report_its_version(ingested, tmp_path):
    p = tmp_path / "mmseqs"
    p.write_text("#!/bin/sh\necho 'cannot load libgomp' >&2\nexit 127\n")
    p.chmod(0o755)
    with pytest.raises(ToolError, match="(?s)version.*exit code: 127.*libgomp"):
        run_cluster(ingested, tmp_path, str(p))


def test_mmseqs_killed_by_a_signal_names_it(ingested, tmp_path):
    binary = fake_mmseqs(tmp_path, "mmseqs", "kill -SEGV $$")
    with pytest.raises(ToolError, match="SIGSEGV"):
        run_cluster(ingested, tmp_path, binary)


@pytest.mark.parametrize("body,error,match", [
    ("exit 0", ToolError, "c90_cluster.tsv"),                                            # wrote nothing
    ('printf "x\\ty\\n" > "$3_cluster.tsv"; printf ">0\\nMKV\\n" > "$3_rep_seq.fasta"',  # not integers
     DataValidationError, "c90_cluster.tsv"),
], ids=["silent", "garbage"])
def test_mmseqs_exiting_0_with_bad_output_is_a_clear_error(ingested, tmp_path, body, error, match):
    with pytest.raises(error, match=match):
        run_cluster(ingested, tmp_path, fake_mmseqs(tmp_path, "mmseqs", body))


def test_mmseqs_output_missing_sequences_is_caught(ingested, tmp_path):
    body = 'printf "0\\t0\\n" > "$3_cluster.tsv"; printf ">0\\nMKV\\n" > "$3_rep_seq.fasta"'
    with pytest.raises(DataValidationError, match="(?s)sequences.parquet.*lacks sequences"):
        run_cluster(ingested, tmp_path, fake_mmseqs(tmp_path, "mmseqs", body))


def test_crashing_mmseqs_fails_the_cluster_stage_cleanly(ingested, tmp_path):
    from tasks import data

    binary = fake_mmseqs(tmp_path, "mmseqs", "echo boom >&2; exit 3")
    workdir = tmp_path / "work"
    cfg = load_config(None, [f"workdir={workdir}", f"cluster.binary={binary}"])
    with pytest.raises(ToolError, match="exit code: 3"):
        data.cluster_level.fn(stage_context(workdir), cfg, stage_output("ingest", {"sequences.parquet": ingested},
                                                                        {"sequences.parquet": "sequences"}), 0)
    assert final_stage_dirs(workdir, "cluster_level") == []
    step = failed_steps(workdir / "lineage.duckdb", "cluster_level")
    assert step[0]["status"] == "failed" and "exit code: 3" in step[0]["error"] and "boom" in step[0]["error"]


# --- paths -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("dirname", ["with space", "ünïcödé-δ", "semi;colon$dollar"])
def test_odd_characters_in_paths(tmp_path, dirname):
    stats, _, kept = ingest_bytes(tmp_path / dirname, b">a\nMKVL\n>b\nMKVL\n", name="x.fa")
    assert kept == ["a"] and stats.duplicates == 1


def test_apostrophe_in_path_ingest(tmp_path):
    stats, _, kept = ingest_bytes(tmp_path / "o'brien", b">a\nMKVL\n", name="x.fa")
    assert kept == ["a"]


def test_apostrophe_in_path_cluster(ingested, tmp_path):
    from pipeline_lib.sequences.cluster import cluster_sequences

    d = tmp_path / "o'brien"
    (d / "out").mkdir(parents=True)
    result = cluster_sequences(ingested, d / "out", ClusterConfig(), d / "mm")
    assert result.sequences == pq.read_metadata(ingested).num_rows


def test_apostrophe_in_path_split_and_msa_queries(ingested, tmp_path):
    """The split stage and the MSA stage's query selection read Parquet through DuckDB by path too."""
    import shutil

    from pipeline_lib.config import SplitConfig
    from pipeline_lib.msa.stage import select_queries
    from pipeline_lib.sequences.cluster import cluster_sequences
    from pipeline_lib.sequences.split import assign_splits

    d = tmp_path / "o'brien"
    (d / "out").mkdir(parents=True)
    shutil.copy(ingested, d / "sequences.parquet")
    cluster_sequences(d / "sequences.parquet", d / "out", ClusterConfig(), d / "mm")
    res = assign_splits(d / "out" / "clusters.parquet", d / "out", SplitConfig(), level="c50", seed=0)
    queries = select_queries(d / "sequences.parquet", d / "out" / "clusters.parquet", d / "out" / "splits.parquet",
                             level="c50", splits_wanted=["train", "valid", "test"], limit=None)
    reps = pq.read_table(d / "out" / "clusters.parquet").column("cluster_c50").unique()
    assert sum(res.sizes.values()) == pq.read_metadata(ingested).num_rows and len(queries) == len(reps)
