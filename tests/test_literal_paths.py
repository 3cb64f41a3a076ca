"""Paths are data, never patterns: a workdir or input named with DuckDB's glob characters (``*``, ``?``,
``[1]``) beside siblings that match them reads exactly its own files."""
import re

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline_lib.io import literal_path, sql_path, sql_paths
from pipeline_lib.sources.fasta_files import resolve_fasta_inputs
from tests.conftest import ROOT
from tests.helpers import family_fasta

ODD = ["w*", "w?", "w[1]", "w{a,b}", "o'brien[2]"]


def test_duckdb_reads_the_named_file_not_its_siblings(tmp_path):
    # siblings that each pattern would match: w1 (w?, w[1], w*), wa (w?, w*, w{a,b}), o'brien2
    for name, rows in [("w1", 20), ("wa", 10), ("o'brien2", 5), *[(n, 3) for n in ODD]]:
        (tmp_path / name).mkdir()
        pq.write_table(pa.table({"x": list(range(rows))}), tmp_path / name / "x.parquet")
    con = duckdb.connect()
    for name in ODD:
        path = tmp_path / name / "x.parquet"
        assert con.execute(f"SELECT count(*) FROM read_parquet({sql_path(path)})").fetchone()[0] == 3, name
        both = sql_paths([path, tmp_path / "w1" / "x.parquet"])
        assert con.execute(f"SELECT count(*) FROM read_parquet({both})").fetchone()[0] == 23, name
    plain = tmp_path / "w1" / "x.parquet"
    assert literal_path(plain) == str(plain)                  # plain names are passed through untouched
    assert literal_path("s3://bucket/w*/x.parquet") == "s3://bucket/w*/x.parquet"   # remote patterns are meant


def test_an_input_file_whose_name_looks_like_a_pattern_is_that_file(tmp_path):
    (tmp_path / "x1.fa").write_text(">a\nMKV\n")
    (tmp_path / "x[1].fa").write_text(">b\nMKL\n")
    assert resolve_fasta_inputs([str(tmp_path / "x[1].fa")], tmp_path) == [tmp_path / "x[1].fa"]
    # a pattern that names no file is still expanded, by us, once: the matched files are the stage's outputs
    assert resolve_fasta_inputs([str(tmp_path / "x?.fa")], tmp_path) == [tmp_path / "x1.fa"]


def test_no_string_built_duckdb_read_of_a_file():
    """Every DuckDB file read in the code goes through sql_path / sql_paths (pipeline_lib/io.py)."""
    bad = []
    for p in [*(ROOT / "pipeline_lib").rglob("*.py"), *(ROOT / "tasks").rglob("*.py"), *(ROOT / "flows").rglob("*.py")]:
        if p.name == "io.py" and p.parent.name == "pipeline_lib":
            continue
        for n, line in enumerate(p.read_text().splitlines(), 1):
            for m in re.finditer(r"\b(read_parquet|read_csv\w*|read_json\w*|parquet_scan)\(", line):
                rest = line[m.end():]
                if not rest.startswith(("{sql_path(", "{sql_paths(", "'s3://")):
                    bad.append(f"{p.relative_to(ROOT)}:{n}: {line.strip()}")
    assert bad == []


@pytest.fixture(scope="module")
def plain_run(prefect_harness, tmp_path_factory):
    from flows.data_refresh import data_refresh

    d = tmp_path_factory.mktemp("literal")
    family_fasta(d / "ours.fa", seed=1, families=4, mutants=2, unrelated=10)
    overrides = [f"source={{kind: fasta, paths: [{d / 'ours.fa'}]}}"]
    return d, overrides, data_refresh(str(ROOT / "configs" / "demo.yaml"), [f"workdir={d / 'plain'}", *overrides])


@pytest.mark.parametrize("name,sibling", [("w*", "wX")])  # ("w[1]" reads an identical "w1": the unit test above)
def test_a_workdir_named_like_a_pattern_gives_the_results_of_a_plain_one(plain_run, name, sibling):
    """``w*`` beside ``wX``, a workdir that ran the same config and data (so its stage directories have the same
    cache keys): a pattern read takes both workdirs' rows (the cluster stage saw every sequence twice)."""
    from flows.data_refresh import data_refresh

    d, overrides, plain = plain_run
    config = str(ROOT / "configs" / "demo.yaml")
    for workdir in ([d / sibling] if sibling else []) + [d / name]:
        odd = data_refresh(config, [f"workdir={workdir}", *overrides])
    assert not any(out.cached for stage, out in odd.stages.items() if stage != "source")
    for stage in ("ingest", "cluster_c90", "cluster_c50", "cluster", "split", "shards"):
        assert {k: v for k, v in odd.stages[stage].stats.items() if k != "commands"} == \
            {k: v for k, v in plain.stages[stage].stats.items() if k != "commands"}, stage
        assert odd.stages[stage].cache_key == plain.stages[stage].cache_key, stage
    rows = pq.read_metadata(odd.stages["cluster"].outputs["clusters.parquet"].path).num_rows
    assert rows == plain.stages["ingest"].stats["kept"]


def test_a_lineage_path_with_a_question_mark_is_refused_clearly(tmp_path):
    from pipeline_lib.config import load_config
    from pipeline_lib.errors import ConfigError

    with pytest.raises(ConfigError, match=r"'\?' in its path.*lineage.path"):
        load_config(None, [f"workdir={tmp_path / 'w?'}"])
    cfg = load_config(None, [f"workdir={tmp_path / 'w?'}", f"lineage.path={tmp_path / 'lineage.duckdb'}"])
    assert cfg.lineage_path == tmp_path / "lineage.duckdb"
