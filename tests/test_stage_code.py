"""Stage-scoped code versions (pipeline_lib/stage_code.py): which edits re-key which stages, and why a stage ran.

    .venv/bin/python -m pytest -q tests/test_stage_code.py

The edits are made to a copy of the sources in a temporary directory; the last test runs the real data flow twice
and reads the reason for a re-run back from lineage.
"""
from __future__ import annotations

import ast
import functools
import shutil
from pathlib import Path

import pytest

from pipeline_lib import stage_code as sc
from pipeline_lib.lineage import LineageStore
from tests.conftest import ROOT
from tests.helpers import family_fasta

AUDIT = ("audit_target", "audit_chunk", "audit")
DECONTAM = ("decontam_target", "decontam_chunk")
# every stage run_stage is called with, by the task function that defines its compute closure
TASKS = {"source": "tasks.data:source", "ingest": "tasks.data:ingest", "cluster_level": "tasks.data:cluster_level",
         "cluster": "tasks.data:cluster",
         "split": "tasks.data:split", "decontam_target": "tasks.data:decontam_target",
         "decontam_chunk": "tasks.data:decontam_chunk", "audit_target": "tasks.data:audit_target",
         "audit_chunk": "tasks.data:audit_chunk", "audit": "tasks.data:audit",
         "shards_partition": "tasks.data:shards_partition",
         "shards": "tasks.data:shards",
         "msa_target": "tasks.msa:msa_target", "msa": "tasks.msa:msa",
         "structures_batch": "tasks.structures:structures_batch", "structures": "tasks.structures:structures",
         "train": "tasks.train:train", "evaluate": "tasks.evaluate:evaluate"}


def _compute_of(task: str):
    """A ``compute`` closure as the task function ``module:name`` defines it (what run_stage receives)."""
    module, name = task.split(":")
    ns: dict = {}
    exec(f"def {name}():\n    def compute(tmp):\n        pass\n    return compute\n", {"__name__": module}, ns)
    return ns[name]()


def _codes(root: Path) -> dict[str, str]:
    return {stage: sc.stage_code(_compute_of(task), stage, root).digest for stage, task in TASKS.items()}


@pytest.fixture
def sources(tmp_path):
    """A copy of the code a stage can run (pipeline_lib and tasks) to edit."""
    for pkg in ("pipeline_lib", "tasks"):
        shutil.copytree(ROOT / pkg, tmp_path / pkg, ignore=shutil.ignore_patterns("__pycache__"))
    return tmp_path


def test_every_stage_is_covered_and_the_table_is_complete():
    called = set()
    for f in (ROOT / "tasks").glob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run_stage":
                called.add(node.args[1].value)
    assert called == set(TASKS)
    for stage, task in TASKS.items():
        code = sc.stage_code(_compute_of(task), stage)
        assert f"tasks/{task.split(':')[0].split('.')[1]}.py:{task.split(':')[1]}" in code.modules
        assert not {m for m in code.modules if "config" in m or "lineage" in m or "dashboard" in m}, stage


def test_the_closure_follows_imports_inside_functions_and_leaves_out_what_cannot_change_outputs():
    cluster = sc.stage_code(_compute_of(TASKS["cluster_level"]), "cluster_level").modules
    assert {"pipeline_lib/sequences/cluster.py", "pipeline_lib/tools/mmseqs.py", "pipeline_lib/io.py"} <= set(cluster)
    assert not any(m.startswith(("pipeline_lib/train/", "pipeline_lib/structures/")) for m in cluster)
    fetch = sc.stage_code(_compute_of(TASKS["source"]), "source").modules   # imported inside _resolve_sources
    assert {"pipeline_lib/sources/uniref.py", "pipeline_lib/sources/embedded.py"} <= set(fetch)
    assert "tasks/data.py:_resolve_sources" in fetch                         # a module-level helper the task calls
    assert "pipeline_lib/__init__.py" not in fetch                         # the version string re-keys nothing


def _edit_docstrings_and_comments(path: Path) -> None:
    """Append to every docstring and add comment lines: a change that must re-key nothing."""
    lines = path.read_text().splitlines(keepends=True)
    tree = ast.parse("".join(lines))
    ends = []
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and body
                and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            ends.append((body[0].end_lineno, body[0].end_col_offset))
    for lineno, col in sorted(ends, reverse=True):
        line = lines[lineno - 1]
        quote = 3 if line[col - 3:col] in ('"""', "'''") else 1
        lines[lineno - 1] = line[:col - quote] + " Edited." + line[col - quote:]
    path.write_text("# a comment added on top\n" + "".join(lines) + "\n# and one at the end\n")


def _edit_function(path: Path) -> None:
    """Insert a statement into the first function or method of the module (after its docstring)."""
    lines = path.read_text().splitlines(keepends=True)
    fn = next(n for n in ast.walk(ast.parse("".join(lines))) if isinstance(n, ast.FunctionDef))
    first = fn.body[1] if isinstance(fn.body[0], ast.Expr) and len(fn.body) > 1 else fn.body[0]
    lines.insert(first.lineno - 1, " " * first.col_offset + "_edited = 1\n")
    path.write_text("".join(lines))


def test_docstring_and_comment_edits_of_every_module_change_no_key(sources):
    before = _codes(sources)
    for f in [*(sources / "pipeline_lib").rglob("*.py"), *(sources / "tasks").rglob("*.py")]:
        _edit_docstrings_and_comments(f)
    assert _codes(sources) == before


@pytest.mark.parametrize("edited, rekeyed", [
    ("pipeline_lib/sequences/cluster.py", {"cluster_level", "cluster", "split", *DECONTAM, *AUDIT}),  # (helpers)
    ("pipeline_lib/sequences/ingest.py", {"ingest", "cluster_level", "cluster", "split", *DECONTAM, *AUDIT}),
    ("pipeline_lib/sequences/search.py", {"split", *DECONTAM, *AUDIT}),          # the query-chunked searches
    ("pipeline_lib/train/loop.py", {"train"}),    # evaluate re-keys through its input, the new checkpoint
    ("pipeline_lib/train/model.py", {"train", "evaluate"}),            # evaluate builds the model too
    ("pipeline_lib/sequences/shard_writer.py", {"shards_partition", "shards"}),
    ("pipeline_lib/config.py", set()),                                  # reaches keys as parameters only
    ("pipeline_lib/dashboard/app.py", set()),
])
def test_a_code_edit_rekeys_the_stages_that_run_it_and_no_other(sources, edited, rekeyed):
    before = _codes(sources)
    _edit_function(sources / edited)
    after = _codes(sources)
    assert {s for s in TASKS if before[s] != after[s]} == rekeyed


def test_the_task_function_counts_and_so_does_the_declared_version(sources, monkeypatch):
    before = _codes(sources)
    text = (sources / "tasks" / "data.py").read_text()
    (sources / "tasks" / "data.py").write_text(text.replace(
        '    """Stage 3b: the levels composed into each sequence\'s representative at every level."""\n',
        '    """Stage 3b: the levels composed into each sequence\'s representative at every level."""\n'
        '    _edited = 1\n'))
    assert {s for s, v in _codes(sources).items() if v != before[s]} == {"cluster"}
    monkeypatch.setitem(sc.STAGE_VERSIONS, "shards", 2)
    assert {s for s, v in _codes(ROOT).items() if v != _codes_at_version_1()[s]} == {"shards"}


def _codes_at_version_1() -> dict[str, str]:
    saved = dict(sc.STAGE_VERSIONS)
    sc.STAGE_VERSIONS.clear()
    try:
        return _codes(ROOT)
    finally:
        sc.STAGE_VERSIONS.update(saved)


def _fake_tasks(root: Path, text: str) -> None:
    (root / "tasks").mkdir(exist_ok=True)
    (root / "tasks" / "__init__.py").write_text("")
    (root / "tasks" / "fake.py").write_text(text)


FAKE_TASKS = """
import functools
from tasks.common import run_stage
from tasks.helpers import scale_of
from pipeline_lib.sequences.cluster import cluster_level

FACTOR = 2


def _helper(x):
    return x * FACTOR


def mystage(ctx):
    def compute(tmp):
        return _helper(scale_of(cluster_level))
    return run_stage(ctx, "mystage", {}, [], compute)
"""


def test_constants_helpers_of_other_task_modules_and_partials_count(tmp_path):
    shutil.copytree(ROOT / "pipeline_lib", tmp_path / "pipeline_lib", ignore=shutil.ignore_patterns("__pycache__"))
    _fake_tasks(tmp_path, FAKE_TASKS)
    (tmp_path / "tasks" / "helpers.py").write_text("def scale_of(x):\n    return 1\n")
    (tmp_path / "tasks" / "common.py").write_text("def run_stage(*a):\n    return None\n")
    compute = _compute_of("tasks.fake:mystage")

    def digest(fn=compute):
        return sc.stage_code(fn, "mystage", tmp_path)

    first = digest()
    assert {"tasks/fake.py:mystage", "tasks/fake.py:_helper", "tasks/fake.py:FACTOR", "tasks/helpers.py:scale_of",
            "pipeline_lib/sequences/cluster.py"} <= set(first.modules)
    assert not any(m.startswith("tasks/common.py") for m in first.modules)    # the plumbing is not the stage's
    assert digest(functools.partial(compute, tmp_path)).digest == first.digest   # a partial is its function
    for path, old, new in [("tasks/fake.py", "FACTOR = 2", "FACTOR = 3"),
                           ("tasks/helpers.py", "return 1", "return 2")]:
        text = (tmp_path / path).read_text()
        (tmp_path / path).write_text(text.replace(old, new))
        changed = digest()
        assert changed.digest != first.digest, path
        first = changed


def test_a_compute_whose_code_cannot_be_found_is_an_error():
    ns: dict = {}
    exec("compute = lambda tmp: None", {"__name__": "tasks.data"}, ns)
    with pytest.raises(ValueError, match="must be a function defined inside"):
        sc.stage_code(ns["compute"], "x")
    exec("def nowhere():\n    def compute(tmp):\n        pass\n    return compute\n", {"__name__": "tasks.data"}, ns)
    with pytest.raises(ValueError, match="not a module-level definition"):
        sc.stage_code(ns["nowhere"](), "x")


def test_explain_rerun_names_parameters_inputs_and_code():
    before = {"params": {"levels": [{"name": "c90", "min_seq_id": 0.9}, {"name": "c50", "min_seq_id": 0.5}]},
              "inputs": {"sequences:sequences.parquet": "aa"},
              "code": {"version": 1, "modules": {"pipeline_lib/sequences/cluster.py": "x", "pipeline_lib/io.py": "y"}}}
    after = {"params": {"levels": [{"name": "c90", "min_seq_id": 0.9}, {"name": "c50", "min_seq_id": 0.4}]},
             "inputs": {"sequences:sequences.parquet": "bb"},
             "code": {"version": 2, "modules": {"pipeline_lib/sequences/cluster.py": "z", "pipeline_lib/io.py": "y"}}}
    assert sc.explain_rerun(before, after) == [
        "parameter levels[1].min_seq_id changed (0.5 -> 0.4)", "input sequences:sequences.parquet changed",
        "stage version changed (1 -> 2)", "code of pipeline_lib/sequences/cluster.py changed"]
    assert sc.explain_rerun(before, before) == ["same key parts (the earlier result was removed or never finished)"]
    assert sc.explain_rerun(None, after) == ["no earlier run of this stage recorded its key"]


def test_a_rerun_says_why_in_lineage(prefect_harness, tmp_path, monkeypatch):
    """The real data flow. A declared version bump of cluster (which composes the levels) re-runs it alone: its
    output is the same, so split and shards stay cached by content. Changing the last level re-runs that level
    only, the first level is cached, and lineage says which parameter changed."""
    from flows.data_refresh import data_refresh

    fasta = tmp_path / "tiny.fa"
    family_fasta(fasta, families=3, mutants=2, unrelated=6)
    base = [f"workdir={tmp_path / 'work'}", f"source={{kind: fasta, paths: [{fasta}]}}"]
    levels = "cluster.levels=[{{name: c90, min_seq_id: 0.9}}, {{name: c50, min_seq_id: {}}}]"
    demo = str(ROOT / "configs" / "demo.yaml")
    data_refresh(demo, [*base, levels.format(0.5)])
    store = LineageStore(tmp_path / "work" / "lineage.duckdb")

    def steps(run_id):
        return [(s["stage"], s["status"], s.get("why")) for s in store.show(run_id)["steps"] if s["stage"] != "source"]

    monkeypatch.setitem(sc.STAGE_VERSIONS, "cluster", 2)
    second = data_refresh(demo, [*base, levels.format(0.5)])
    assert steps(second.run_id) == [
        ("ingest", "cached", None), ("cluster_level", "cached", None), ("cluster_level", "cached", None),
        ("cluster", "completed", ["stage version changed (1 -> 2)"]), ("split", "cached", None),
        ("audit_target", "cached", None), ("audit_chunk", "cached", None), ("audit", "cached", None),
        ("shards_partition", "cached", None), ("shards", "cached", None)]
    third = data_refresh(demo, [*base, levels.format(0.4)])
    assert steps(third.run_id)[:3] == [
        ("ingest", "cached", None), ("cluster_level", "cached", None),
        ("cluster_level", "completed", ["parameter level.min_seq_id changed (0.5 -> 0.4)"])]
    assert third.stages["cluster_c90"].cached and not third.stages["cluster_c50"].cached
    # the same members at 40 % as at 50 % (these families are far apart): the composed table is found by content
    same = third.stages["cluster_c50"].outputs["members.parquet"].content_hash == \
        second.stages["cluster_c50"].outputs["members.parquet"].content_hash
    assert third.stages["cluster"].cached == same
