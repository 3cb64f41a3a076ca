"""The stage-cache protocol (pipeline_lib/stage_cache.py): markers that survive a move, leftovers of killed runs,
and a workdir that is copied elsewhere and found fully cached by the real data flow.

    .venv/bin/python -m pytest -q tests/test_stage_cache.py
"""
from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline_lib.io import atomic_dir
from pipeline_lib.lineage import LineageStore, artifact_for
from pipeline_lib.stage_cache import MARKER, claim, read_marker, write_marker
from tests.conftest import ROOT
from tests.helpers import family_fasta


def _build(final: Path, outside: Path) -> dict:
    with claim(final, note="test"):
        with atomic_dir(final) as tmp:
            (tmp / "sub").mkdir()
            (tmp / "sub" / "a.txt").write_text("alpha")
            data = {"stage": "t", "outputs": {
                "a": vars(artifact_for(tmp / "sub" / "a.txt", "text")),
                "ext": vars(artifact_for(outside, "text"))}}
            return write_marker(tmp, final, data)


def test_markers_name_their_own_outputs_relatively_and_read_back_absolute(tmp_path):
    outside = tmp_path / "source.txt"
    outside.write_text("from elsewhere")
    final = tmp_path / "work" / "stages" / "t" / "k1"
    data = _build(final, outside)
    assert data["outputs"]["a"]["path"] == str(final / "sub" / "a.txt")        # the final name, not the temporary
    stored = json.loads((final / MARKER).read_text())["outputs"]
    assert stored["a"]["path"] == "sub/a.txt" and stored["ext"]["path"] == str(outside.resolve())
    assert read_marker(final)["outputs"]["a"]["path"] == str(final / "sub" / "a.txt")

    moved = tmp_path / "elsewhere" / "k1"
    shutil.copytree(final, moved)
    got = read_marker(moved)
    assert got is not None and got["outputs"]["a"]["path"] == str(moved / "sub" / "a.txt")
    (moved / "sub" / "a.txt").write_text("changed size")
    assert read_marker(moved) is None                                          # an output changed: not finished
    (final / "sub" / "a.txt").unlink()
    assert read_marker(final) is None                                          # an output gone: not finished


def test_claim_removes_what_killed_runs_left_and_nothing_else(tmp_path):
    final = tmp_path / "stages" / "t" / "k1"
    final.parent.mkdir(parents=True)
    left = [final.with_name("k1.tmp-123-abc"), final.with_name("k1.tmp-9-x.json")]
    left[0].mkdir()
    left[1].write_text("{}")
    other = final.with_name("k2.tmp-1-y")   # another key's build: not this claim's business
    other.mkdir()
    with claim(final):
        assert not any(p.exists() for p in left) and other.exists()


def test_a_copied_workdir_is_fully_cached(prefect_harness, tmp_path):
    from flows.data_refresh import data_refresh

    fasta = tmp_path / "tiny.fa"
    family_fasta(fasta, families=3, mutants=2, unrelated=6)
    common = [f"source={{kind: fasta, paths: [{fasta}]}}"]
    first = data_refresh(str(ROOT / "configs" / "demo.yaml"), [f"workdir={tmp_path / 'a'}", *common])
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    shutil.rmtree(tmp_path / "a")                                             # nothing may still point there
    # the lineage that moved with it names the files at their new place: the first run's records too
    moved = LineageStore(tmp_path / "b" / "lineage.duckdb")
    arts = moved.query("SELECT path FROM artifacts WHERE path NOT LIKE ?", [str(fasta)])
    assert arts and all(Path(a["path"]).exists() and a["path"].startswith(str(tmp_path / "b")) for a in arts)
    assert moved.resolve_run(first.run_id)["workdir"] == str(tmp_path / "b")
    manifest = tmp_path / "b" / Path(first.stages["shards"].outputs["manifest.json"].path).relative_to(tmp_path / "a")
    assert moved.find_artifacts(str(manifest))[0]["path"] == str(manifest)
    assert moved.trace(str(manifest))[0]["stage"] == "shards"
    again = data_refresh(str(ROOT / "configs" / "demo.yaml"), [f"workdir={tmp_path / 'b'}", *common])
    assert {k: v.cached for k, v in again.stages.items() if k != "source"} == \
        {k: True for k in first.stages if k != "source"}
    assert {k: v.cache_key for k, v in again.stages.items()} == {k: v.cache_key for k, v in first.stages.items()}
    for out in again.stages.values():
        for art in out.outputs.values():
            assert not art.path.startswith(str(tmp_path / "a")), art.path
    assert str(again.shards_dir).startswith(str(tmp_path / "b"))
