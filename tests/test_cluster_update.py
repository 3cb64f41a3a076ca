"""Incremental refresh of the clustering with the real ``mmseqs clusterupdate``: release A of real UniProt
sequences, then release B = A minus some entries plus new ones, including point mutants of A's members."""
import random

import pyarrow.parquet as pq
import pytest

from pipeline_lib.config import ClusterLevel, IngestConfig, SplitConfig
from pipeline_lib.sequences.cluster import assemble_clusters, cluster_level
from pipeline_lib.sequences.cluster_update import agreement, cluster_level_incremental, find_previous_level
from pipeline_lib.sequences.ingest import ingest_fasta
from pipeline_lib.sequences.split import assign_splits
from pipeline_lib.tools.mmseqs import MMseqs
from tests.conftest import fixture_path as fixture

LEVELS = [ClusterLevel(name="c90", min_seq_id=0.9), ClusterLevel(name="c50", min_seq_id=0.5)]
AA = "ACDEFGHIKLMNPQRSTVWY"


def _read_fasta(path):
    recs, name = [], None
    for line in path.read_text().splitlines():
        if line.startswith(">"):
            name = line[1:].split()[0]
            recs.append([name, ""])
        elif name:
            recs[-1][1] += line.strip()
    return [(n, s) for n, s in recs]


def _mutant(seq, rnd, n=2):
    s = list(seq)
    for p in rnd.sample(range(len(s)), n):
        s[p] = rnd.choice([a for a in AA if a != s[p]])
    return "".join(s)


def _write(path, recs):
    path.write_text("".join(f">{n}\n{s}\n" for n, s in recs))


@pytest.fixture(scope="module")
def releases(tmp_path_factory):
    """A: 380 real TrEMBL entries plus 2 point mutants of 40 of them (clusters with members); B: A minus 25
    entries (members and representatives alike), plus the 100 entries A held back and a point mutant of 20 of
    A's entries that B keeps."""
    d = tmp_path_factory.mktemp("releases")
    seen, real = set(), []
    for name, seq in _read_fasta(fixture("sequences", "uniprot_trembl_500.fasta")):
        if seq not in seen and len(seq) >= 30:
            seen.add(seq)
            real.append((name, seq))
    rnd = random.Random(7)
    base, held = real[:380], real[380:480]
    a = list(base) + [(f"{n}_m{k}", _mutant(s, rnd)) for n, s in rnd.sample(base, 40) for k in (1, 2)]
    removed = {n for n, _ in rnd.sample(a, 25)}
    kept = [r for r in a if r[0] not in removed]
    mutants = [(f"{n}_new", _mutant(s, rnd, 1)) for n, s in rnd.sample(kept, 20)]
    b = kept + held + mutants
    out = {}
    for name, recs in (("a", a), ("b", b)):
        _write(d / f"{name}.fa", recs)
        ingest_fasta([d / f"{name}.fa"], d / name, IngestConfig())
        out[name] = d / name / "sequences.parquet"
    return d, out, removed, {n: n.rsplit("_", 1)[0] for n, _ in mutants}


def _levels(seqs, root, mm, old_root=None, incremental=True):
    """Every level, each in its own directory under ``root`` (as the stage engine lays them out)."""
    members, prev, results = {}, None, {}
    for lv in LEVELS:
        out = root / lv.name
        out.mkdir(parents=True)
        if incremental:
            res = cluster_level_incremental(seqs, lv, out, out / "_mm", mm, previous=prev,
                                            old_level=old_root / lv.name if old_root else None)
        else:
            res = cluster_level(seqs, lv, out, out / "_mm", mm, previous=prev)
        prev = members[lv.name] = out / "members.parquet"
        results[lv.name] = res
    assemble_clusters(seqs, members, root, root / "_duckdb")
    rows = {r["id"]: r for r in pq.read_table(root / "clusters.parquet").to_pylist()}
    return rows, results


@pytest.fixture(scope="module")
def refreshed(releases):
    d, seqs, removed, mutants = releases
    mm = MMseqs(threads=2)
    a, _ = _levels(seqs["a"], d / "A", mm)
    b, res = _levels(seqs["b"], d / "B", mm, old_root=d / "A")
    scratch, _ = _levels(seqs["b"], d / "B_scratch", mm, incremental=False)
    return d, a, b, res, scratch, removed, mutants


def test_unchanged_clusters_keep_their_representative(refreshed):
    _, a, b, res, _, removed, _ = refreshed
    assert res["c90"].refresh["removed"] == 25 and res["c90"].refresh["added"] == 120
    assert res["c90"].command[1] == "clusterupdate"
    kept_clusters = {r["cluster_c90"] for i, r in a.items() if i not in removed} - removed
    assert len(kept_clusters) > 300
    moved = [i for i, r in a.items() if i in b and r["cluster_c90"] in kept_clusters
             and b[i]["cluster_c90"] != r["cluster_c90"]]
    assert moved == []
    # at c50 too, where both the c90 and the c50 representative of a sequence survived
    for i, r in a.items():
        if i in b and {r["cluster_c90"], r["cluster_c50"]}.isdisjoint(removed):
            assert b[i]["cluster_c50"] == r["cluster_c50"], i
    # clusters that had members in A still do
    multi = {c for c in kept_clusters if sum(1 for r in a.values() if r["cluster_c90"] == c) > 1}
    assert len(multi) >= 30


def test_new_sequences_are_assigned_and_deleted_ones_leave(refreshed, releases):
    _, a, b, _, _, removed, mutants = refreshed
    ids_b = set(pq.read_table(releases[1]["b"], columns=["id"]).column(0).to_pylist())
    assert set(b) == ids_b and not removed & set(b)
    reps = {r[f"cluster_{lv.name}"] for r in b.values() for lv in LEVELS}
    assert not reps & removed and reps <= ids_b
    # a point mutant of a kept sequence joins that sequence's cluster (the search against representatives)
    joined = [m for m, parent in mutants.items() if b[m]["cluster_c90"] == b[parent]["cluster_c90"]]
    assert len(joined) == len(mutants)


def test_no_cluster_spans_two_splits_and_old_clusters_keep_their_split(refreshed):
    d, a, b, _, _, _, _ = refreshed
    splits = {}
    for name in ("A", "B"):
        assign_splits(d / name / "clusters.parquet", d / name, SplitConfig(valid_fraction=0.2, test_fraction=0.2),
                      level="c50", seed=3)
        splits[name] = {r["id"]: r["split"] for r in pq.read_table(d / name / "splits.parquet").to_pylist()}
    per_cluster = {}
    for i, r in b.items():
        per_cluster.setdefault(r["cluster_c50"], set()).add(splits["B"][i])
    assert all(len(s) == 1 for s in per_cluster.values())
    same = [i for i in a if i in b and a[i]["cluster_c50"] == b[i]["cluster_c50"]]
    assert len(same) > 300 and all(splits["A"][i] == splits["B"][i] for i in same)


def test_agreement_with_clustering_from_scratch_is_reported(refreshed):
    d, _, b, _, scratch, _, _ = refreshed
    assert set(scratch) == set(b)
    for lv in LEVELS:
        agree = agreement(d / "B_scratch" / "clusters.parquet", d / "B" / "clusters.parquet", f"cluster_{lv.name}")
        print(f"incremental vs scratch {lv.name}: {agree}")
        assert agree["ids"] == len(b)
        assert 0.8 <= agree["adjusted_rand"] <= 1 and agree["pair_recall"] > 0.8 and agree["pair_precision"] > 0.8
    # and the measure can tell clusterings apart: against itself 1, against A's ids (shared ones) lower
    assert agreement(d / "B" / "clusters.parquet", d / "B" / "clusters.parquet", "cluster_c90")["adjusted_rand"] == 1


def test_agreement_of_disagreeing_clusterings(tmp_path):
    import pyarrow as pa

    pq.write_table(pa.table({"id": list("abcd"), "c": ["a", "a", "c", "c"]}), tmp_path / "x.parquet")
    pq.write_table(pa.table({"id": list("abcd"), "c": ["a", "b", "a", "b"]}), tmp_path / "y.parquet")
    agree = agreement(tmp_path / "x.parquet", tmp_path / "y.parquet", "c")
    assert agree["pair_precision"] == 0 and agree["pair_recall"] == 0 and agree["adjusted_rand"] < 0


def test_a_release_with_nothing_in_common_is_clustered_from_scratch(releases, tmp_path):
    d, seqs, _, _ = releases
    mm = MMseqs(threads=2)
    (tmp_path / "old" / "c90").mkdir(parents=True)
    # an "old" level built from other sequences entirely
    ingest_fasta([fixture("sequences", "some_proteins.fasta")], tmp_path / "other", IngestConfig())
    cluster_level_incremental(tmp_path / "other" / "sequences.parquet", LEVELS[0], tmp_path / "old" / "c90",
                              tmp_path / "mm0", mm)
    out = tmp_path / "new"
    out.mkdir()
    res = cluster_level_incremental(seqs["a"], LEVELS[0], out, tmp_path / "mm1", mm, old_level=tmp_path / "old" / "c90")
    assert res.refresh is None and res.command[1] == "linclust" and res.members == pq.read_metadata(seqs["a"]).num_rows


def test_find_previous_level_takes_the_newest_with_the_same_parameters(tmp_path):
    import json

    root = tmp_path / "stages" / "cluster_level"
    for name, finished, level, incremental in [("old", "2026-01-01T00:00:00+00:00", LEVELS[0], True),
                                               ("new", "2026-02-01T00:00:00+00:00", LEVELS[0], True),
                                               ("other", "2026-03-01T00:00:00+00:00", LEVELS[1], True),
                                               ("plain", "2026-04-01T00:00:00+00:00", LEVELS[0], False)]:
        d = root / name
        (d / "db").mkdir(parents=True)
        for f in ("seqs", "seqs_h", "clusters"):
            (d / "db" / f"{f}.dbtype").write_bytes(b"\0\0\0\0")
        # (as markers were written before levels had memory_limit, and as level_params writes them now)
        params = {"level": level.model_dump(mode="json", exclude={"memory_limit"}),
                  **({"incremental": True} if incremental else {})}
        (d / "_SUCCESS.json").write_text(json.dumps({"params": params, "finished_at": finished, "outputs": {},
                                                     "cache_key": name}))
    found = find_previous_level(root, LEVELS[0])
    assert found and found[0].name == "new"
    (root / "new" / "db" / "clusters.dbtype").unlink()   # databases gone (e.g. cleaned by hand): not usable
    assert find_previous_level(root, LEVELS[0])[0].name == "old"
    assert find_previous_level(tmp_path / "nowhere", LEVELS[0]) is None


def test_data_refresh_updates_the_previous_release(prefect_harness, releases, tmp_path):
    """The path a user takes: `cluster.incremental: true`, one refresh per release in one workdir. The second
    finds the first one's levels by itself, says so in lineage, and re-running it is served from cache."""
    import json

    from flows.data_refresh import data_refresh
    from pipeline_lib.lineage import LineageStore
    from tests.conftest import ROOT

    d = releases[0]
    common = [f"workdir={tmp_path / 'w'}", "cluster.incremental=true", "split.valid_fraction=0.2"]
    config = str(ROOT / "configs" / "demo.yaml")
    first = data_refresh(config, [*common, f"source={{kind: fasta, paths: [{d / 'a.fa'}]}}"])
    # the second release under a memory limit: it reaches clusterupdate's command and the steps' stats
    limited = [*common, "cluster.memory_limit=3G"]
    second = data_refresh(config, [*limited, f"source={{kind: fasta, paths: [{d / 'b.fa'}]}}"])
    assert "refresh" not in first.stages["cluster_c90"].stats
    for lv in ("c90", "c50"):
        refresh = second.stages[f"cluster_{lv}"].stats["refresh"]
        assert refresh["previous"] == f"stages/cluster_level/{first.stages[f'cluster_{lv}'].cache_key[:16]}"
        assert refresh["previous_cache_key"] == first.stages[f"cluster_{lv}"].cache_key
    hashes = [set(pq.read_table(run.stages["ingest"].outputs["sequences.parquet"].path,
                                columns=["seq_hash"]).column(0).to_pylist()) for run in (first, second)]
    assert {k: second.stages["cluster_c90"].stats["refresh"][k] for k in ("kept", "removed", "added")} == \
        {"kept": len(hashes[0] & hashes[1]), "removed": len(hashes[0] - hashes[1]), "added": len(hashes[1] - hashes[0])}
    rows = LineageStore(second.lineage).query(
        "SELECT stats FROM steps WHERE run_id=? AND stage='cluster_level' ORDER BY started_at", [second.run_id])
    assert [json.loads(r["stats"])["refresh"]["kept"] for r in rows] == \
        [second.stages[f"cluster_{lv}"].stats["refresh"]["kept"] for lv in ("c90", "c50")]
    for r in rows:
        stats = json.loads(r["stats"])
        assert stats["memory_limit"] == "3G" and "--split-memory-limit 3G" in " ".join(stats["commands"][0])
        assert stats["commands"][0][1] == "clusterupdate"
    # without the limit the same release is served from cache: the limit is not part of any key
    again = data_refresh(config, [*common, f"source={{kind: fasta, paths: [{d / 'b.fa'}]}}"])
    assert all(again.stages[k].cached for k in ("cluster_c90", "cluster_c50", "cluster", "split", "shards"))
    assert [again.stages[f"cluster_{lv}"].cache_key for lv in ("c90", "c50")] == \
        [second.stages[f"cluster_{lv}"].cache_key for lv in ("c90", "c50")]
