"""MSA building with the real mmseqs binary: ColabFold's chain, batches, reuse, expansion, real sequences."""
from __future__ import annotations

import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from pipeline_lib.config import load_config
from pipeline_lib.errors import ConfigError, DataValidationError
from pipeline_lib.msa.build import (
    MARKER,
    build_msa_batch,
    build_msas,
    iter_query_batches,
    prepare_target,
    read_queries,
    write_target_fasta,
)
from pipeline_lib.msa.commands import TargetDb, msa_commands
from pipeline_lib.msa.config import MsaConfig
from pipeline_lib.msa.store import read_msa_parquet, write_msa_parquet
from pipeline_lib.msa.tokens import write_msa_shards
from tests.helpers import AA, point_mutant, random_protein  # noqa: F401

ROOT = Path(__file__).resolve().parents[1]
TREMBL = Path(__file__).parents[1].parent / "shared" / "fixtures" / "sequences" / "uniprot_trembl_500.fasta"
MUTANTS = 6
FAST = {"search": {"num_iterations": 2, "prefilter_mode": 1}}   # no k-mer index: ~0.5 s per batch


def _family_target(path: Path, seed: int = 0) -> dict[str, list[str]]:
    """A random 200-residue parent per family, MUTANTS point mutants of it (4 substitutions), unrelated proteins."""
    rng = random.Random(seed)
    groups: dict[str, list[str]] = {}
    with open(path, "w") as fh:
        for f in range(2):
            parent = random_protein(rng, 200)
            fh.write(f">fam{f}_parent\n{parent}\n")
            groups[f"fam{f}_parent"] = [parent]
            for m in range(MUTANTS):
                mutant = point_mutant(rng, parent, 4)
                fh.write(f">fam{f}_mut{m}\n{mutant}\n")
                groups[f"fam{f}_parent"].append(mutant)
        for u in range(6):
            fh.write(f">unrelated{u}\n{random_protein(rng, 200)}\n")
    groups["orphan"] = [random_protein(rng, 150)]   # a query with no relative in the target
    return groups


@pytest.fixture(scope="module")
def family_build(tmp_path_factory):
    """Two batches with the fast prefilter; the k-mer prefilter has its own test below."""
    d = tmp_path_factory.mktemp("msa_build")
    groups = _family_target(d / "target.fa")
    cfg = MsaConfig(batch_size=2, **FAST)
    queries = [(name, seqs[0]) for name, seqs in groups.items()]
    target = prepare_target(d / "target.fa", d / "target", cfg)
    results = build_msas(queries, target, d / "batches", cfg, threads=2)
    return d, groups, queries, cfg, results


def test_family_msas_query_first_all_mutants_found(family_build):
    _, groups, queries, _, results = family_build
    assert [len(r.query_ids) for r in results] == [2, 1]   # batch_size 2
    msas = {m.query_id: m for r in results for m in r.read_msas()}
    assert list(msas) == [q for q, _ in queries]
    for qid, seq in queries:
        msa = msas[qid]
        assert msa.rows[0] == seq and msa.headers[0] == qid
        assert 1.0 <= msa.neff <= msa.depth
    for fam in ("fam0_parent", "fam1_parent"):
        msa = msas[fam]
        hits = {s.target: s for s in msa.header_stats()[1:] if s is not None}
        found = [t for t in hits if t.startswith(fam[:4] + "_mut")]
        assert len(found) == MUTANTS and msa.depth >= 1 + MUTANTS
        assert all(hits[t].identity >= 0.95 and hits[t].coverage == 1.0 for t in found)
        assert not any(t.startswith("unrelated") for t in hits)
    assert msas["orphan"].depth == 1 and msas["orphan"].rows[0] == groups["orphan"][0]


def test_colabfold_kmer_prefilter_finds_every_mutant(family_build, tmp_path):
    """ColabFold's search (k-mer prefilter, -s 8, e 0.1) with one iteration: the k-mer index costs seconds."""
    d, groups, _, _, _ = family_build
    res = build_msa_batch([("fam1_parent", groups["fam1_parent"][0])], d / "target" / "db", tmp_path / "b",
                          MsaConfig(search={"num_iterations": 1}))
    msa, = res.read_msas()
    hits = {s.target for s in msa.header_stats()[1:] if s is not None}
    assert hits >= {f"fam1_mut{m}" for m in range(MUTANTS)} and msa.rows[0] == groups["fam1_parent"][0]
    assert not any(h.startswith(("fam0", "unrelated")) for h in hits)


def test_commands_recorded_for_lineage_and_marker_written(family_build):
    _, _, _, _, results = family_build
    r = results[0]
    steps = [c[1] for c in r.commands]
    assert steps == ["createdb", "search", "filterresult", "result2msa", "unpackdb"]
    search = r.commands[1]
    assert search[search.index("--num-iterations") + 1] == "2" and search[search.index("-s") + 1] == "8.0"
    assert "--msa-format-mode" in r.commands[3] and r.mmseqs_version
    marker = json.loads((r.batch_dir / MARKER).read_text())
    assert marker == json.loads(json.dumps(r.record())) and marker["depths"] == r.depths
    assert sorted(p.name for p in r.batch_dir.iterdir()) == ["_SUCCESS.json", "a3m", "mmseqs.log", "queries.fasta"]


def test_batch_outputs_feed_store_and_shards(family_build, tmp_path):
    _, _, _, cfg, results = family_build
    msas = [m for r in results for m in r.read_msas()]
    write_msa_parquet(msas, tmp_path / "msas.parquet")
    back = list(read_msa_parquet(tmp_path / "msas.parquet"))
    man = write_msa_shards({"train": back}, tmp_path / "shards", subsample=cfg.subsample)
    assert man["splits"]["train"]["rows"] == len(msas)


def test_finished_batch_is_reused_and_parameter_change_recomputes(tmp_path):
    groups = _family_target(tmp_path / "t.fa", seed=1)
    queries = [("fam0_parent", groups["fam0_parent"][0])]
    cfg = MsaConfig(**FAST)
    first = build_msa_batch(queries, tmp_path / "t.fa", tmp_path / "b", cfg)   # FASTA target built in the batch
    assert not first.reused and first.commands[1][1] == "createdb" and first.depths["fam0_parent"] >= 1 + MUTANTS
    mtime = (tmp_path / "b" / MARKER).stat().st_mtime_ns
    again = build_msa_batch(queries, tmp_path / "t.fa", tmp_path / "b", cfg)
    assert again.reused and again == first and (tmp_path / "b" / MARKER).stat().st_mtime_ns == mtime
    changed = build_msa_batch(queries, tmp_path / "t.fa", tmp_path / "b", cfg.model_copy(
        update={"search": cfg.search.model_copy(update={"evalue": 0.01})}))
    assert not changed.reused and changed.key != first.key
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]   # no temporaries left


def test_an_edit_of_the_batch_code_rebuilds_a_finished_batch(tmp_path, monkeypatch):
    """Batches live at fixed paths (stages/msa_batches/batch-N) across code edits: their key holds the code."""
    import pipeline_lib.msa.build as build

    groups = _family_target(tmp_path / "t.fa", seed=1)
    queries = [("fam0_parent", groups["fam0_parent"][0])]
    cfg = MsaConfig(**FAST)
    first = build_msa_batch(queries, tmp_path / "t.fa", tmp_path / "b", cfg)
    assert "pipeline_lib/msa/build.py" in build.module_closure({build.__name__})
    real = build.module_closure
    monkeypatch.setattr(build, "module_closure", lambda m: {**real(m), "pipeline_lib/msa/build.py": "edited"})
    again = build_msa_batch(queries, tmp_path / "t.fa", tmp_path / "b", cfg)
    assert not again.reused and again.key != first.key


def test_expandaln_chain_against_a_clustered_target(tmp_path):
    groups = _family_target(tmp_path / "t.fa", seed=2)
    cfg = MsaConfig(expand={"enabled": True}, **FAST)
    target = prepare_target(tmp_path / "t.fa", tmp_path / "target", cfg)
    assert target.expandable and target.search_db.name == "db_rep"
    res = build_msa_batch([("fam1_parent", groups["fam1_parent"][0])], target, tmp_path / "b", cfg)
    steps = [c[1] for c in res.commands]
    assert steps == ["createdb", "search", "mvdb", "lndb", "expandaln", "align", "filterresult", "result2msa",
                     "unpackdb"]
    msa, = res.read_msas()
    assert msa.rows[0] == groups["fam1_parent"][0] and msa.depth >= 2
    assert prepare_target(tmp_path / "t.fa", tmp_path / "target", cfg) == target   # reused, not rebuilt
    with pytest.raises(DataValidationError, match="_aln"):
        TargetDb.from_db(target.seq_db, expand=True)


@pytest.mark.skipif(not TREMBL.is_file(), reason=f"shared fixture not available: {TREMBL}")
def test_real_trembl_queries_against_all_500(tmp_path):
    all_seqs = read_queries(TREMBL)
    assert len(all_seqs) == 500
    queries = all_seqs[:: 100]
    res = build_msa_batch(queries, TREMBL, tmp_path / "b", MsaConfig(**FAST))
    for (qid, seq), msa in zip(queries, res.read_msas(), strict=False):
        assert msa.query_id == qid and msa.rows[0] == seq.upper()
        assert msa.depth >= 2 and msa.header_stats()[1].identity == 1.0   # itself is in the target
        assert 1.0 <= msa.neff <= msa.depth


def test_colabfold_default_arguments():
    cfg = MsaConfig(expand={"enabled": True})
    target = TargetDb(Path("/db/uniref"), Path("/db/uniref_seq"), Path("/db/uniref_aln"))
    cmds = {c[1]: c for c in msa_commands(Path("qdb"), target, Path("."), cfg, threads=4)}

    def flags(step: str) -> dict[str, str]:
        argv = cmds[step]
        return {a: argv[i + 1] for i, a in enumerate(argv[:-1]) if a.startswith("-") and a != "-a"}

    assert flags("search").items() >= {"--num-iterations": "3", "-e": "0.1", "--max-seqs": "10000", "-s": "8.0",
                                       "--prefilter-mode": "0", "--threads": "4"}.items()
    assert "-a" in cmds["search"]
    assert cmds["mvdb"][2] == "tmp/latest/profile_1"
    assert flags("expandaln").items() >= {"--expansion-mode": "0", "-e": "inf", "--expand-filter-clusters": "1",
                                          "--max-seq-id": "0.95"}.items()
    assert flags("align").items() >= {"-e": "10.0", "--max-accept": "100000", "--alt-ali": "10"}.items()
    assert cmds["align"][2] == "prof_res" and cmds["align"][3] == "/db/uniref_seq"
    assert flags("filterresult").items() >= {"--qid": "0", "--qsc": "0.8", "--diff": "0", "--max-seq-id": "1.0",
                                             "--filter-min-enable": "100"}.items()
    assert flags("result2msa").items() >= {"--msa-format-mode": "6", "--filter-msa": "1", "--diff": "3000",
                                           "--filter-min-enable": "1000", "--qid": "0.0,0.2,0.4,0.6,0.8,1.0",
                                           "--qsc": "0.0", "--max-seq-id": "0.95"}.items()


def test_config_section_and_errors(tmp_path):
    cfg = load_config(overrides=["msa.search.num_iterations=1", "msa.subsample.selection=random"]).msa
    assert cfg.search.num_iterations == 1 and cfg.subsample.selection == "random"
    assert cfg.subsample.max_rows == 1024 and cfg.subsample.token_budget == 2 ** 14 and cfg.target_db is None
    with pytest.raises(ConfigError, match=r"subsample\.max_rows.*less than or equal to 1024"):
        load_config(overrides=["msa.subsample.max_rows=2048"])
    with pytest.raises(DataValidationError, match="duplicated"):
        build_msa_batch([("a", "MKV"), ("a", "MKV")], tmp_path, tmp_path / "b", MsaConfig())
    with pytest.raises(DataValidationError, match=r"neither an mmseqs DB \(<path>.dbtype\) nor a FASTA"):
        build_msa_batch([("a", "MKV")], tmp_path / "missing", tmp_path / "b", MsaConfig())
    batches = list(iter_query_batches([(str(i), "MKV") for i in range(10)], MsaConfig(batch_size=4, max_queries=9)))
    assert [len(b) for b in batches] == [4, 4, 1]


def test_ingested_sequences_become_the_target_fasta(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"id": ["a", "b"], "sequence": ["MKV", "ACDE"], "length": [3, 4]}),
                   tmp_path / "sequences.parquet")
    assert write_target_fasta(tmp_path / "sequences.parquet", tmp_path / "target.fa") == 2
    assert read_queries(tmp_path / "target.fa") == [("a", "MKV"), ("b", "ACDE")]


def test_msa_package_does_not_import_prefect():
    code = ("import sys, pipeline_lib.msa.build, pipeline_lib.msa.tokens, pipeline_lib.msa.store; "
            "assert not any(m == 'prefect' or m.startswith('prefect.') for m in sys.modules)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
