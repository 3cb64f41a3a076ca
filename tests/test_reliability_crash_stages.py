"""Crash and resume past the data stages: SIGKILL ``plm train`` at two points of each of the structures,
MSA and training stages, re-run it, and compare with an uninterrupted run.

    .venv/bin/pytest -q tests/test_reliability_crash_stages.py

One small config enables every stage (structures from the embedded demo corpus, 4 MSA queries in 2
batches, a tiny model trained 6 steps with a checkpoint every 3). The same workdir is killed six times,
each run getting further, then a seventh run finishes. The harness is ``reliability_harness.py``'s:
the structures and MSA kills use its fault runner; training runs in torchrun workers (other processes,
other sessions), so there a ``sitecustomize`` module on ``PYTHONPATH`` pauses the worker before step 5,
or inside the Hugging Face export after the last step.
"""
from __future__ import annotations

import json
import os
import signal
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from pipeline_lib.io import sha256_file
from pipeline_lib.lineage import LineageStore
from pipeline_lib.sources.embedded import write_structure_chains_fasta
from tests.helpers import family_fasta
from tests.reliability_harness import (
    FAULT_RUNNER,
    MARKER,
    artifact_hashes,
    assert_nothing_partial,
    finish,
    kill_when_paused,
    lineage_runs,
    plm_env,
    prefect_api,
    start_plm,
    tail,
    temporaries,
)

__all__ = ["prefect_api"]  # the fixture, re-exported so pytest finds it here

BATCH_MARKER = "_SUCCESS.json"  # pipeline_lib.stage_cache.MARKER, as for every cached unit
TRAIN_PAUSE_STEP = 5  # checkpoints at 3 and 6: killed in step 5, resumed from 3
STAGES = ("structures", "msa")

TRAIN_PAUSE = r'''
"""sitecustomize for test_reliability_crash_stages.py: a training worker started with $PLM_TRAIN_PAUSE_AT
writes $PLM_FAULT_FILE (its pid) and sleeps until killed: before step N (a number), or ('export') inside
the Hugging Face export, its weights written to the export's temporary directory, config.json not yet."""
import importlib.abc, importlib.machinery, os, sys, time
from pathlib import Path


def pause(*_a, **_k):
    Path(os.environ["PLM_FAULT_FILE"]).write_text(str(os.getpid()))
    time.sleep(600)


def install(module):
    at = os.environ["PLM_TRAIN_PAUSE_AT"]
    if at == "export":
        import pipeline_lib.models.hf as hf  # export_hf: model.safetensors, then hf_config() for config.json

        hf.hf_config = pause
        return
    original = module.Trainer.train_step

    def train_step(self, *args, **kwargs):
        if self.step + 1 == int(at):
            pause()
        return original(self, *args, **kwargs)

    module.Trainer.train_step = train_step


class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != "pipeline_lib.train.loop":
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path)
        run = spec.loader.exec_module

        def exec_module(module):
            run(module)
            install(module)

        spec.loader.exec_module = exec_module
        return spec


if os.environ.get("PLM_TRAIN_PAUSE_AT"):
    sys.meta_path.insert(0, Hook())
'''

CONFIG = """name: reliability-stages
source: {{kind: fasta, paths: ["{families}", "{chains}"]}}
ingest: {{min_length: 30, batch_rows: 8}}
cluster: {{threads: 1, levels: [{{name: c90, min_seq_id: 0.9}}]}}
split: {{valid_fraction: 0.2, test_fraction: 0.2}}
shards: {{rows_per_shard: 5, row_group_rows: 2}}
structures:
  enabled: true
  backend: mini3di
  batch_size: 2
  sources: [{{kind: embedded, corpus: demo}}]
msa:
  enabled: true
  max_queries: 4
  batch_size: 2
  threads: 1
  search: {{num_iterations: 1, sensitivity: 4.0, max_seqs: 100}}
  subsample: {{max_rows: 16, token_budget: 4096}}
train:
  model: tiny
  batch_tokens: 2048
  max_len: 256
  num_workers: 0
  total_steps: 6
  warmup_steps: 1
  checkpoint_every: 3
  log_every: 1
"""


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> tuple[Path, Path, Path]:
    """The config (random families + the demo structures' own chain sequences, so structures join), the
    fault runner and the training-pause hook directory."""
    base = tmp_path_factory.mktemp("stages-inputs")
    family_fasta(base / "families.fa", seed=7, families=6, mutants=4, unrelated=10)
    write_structure_chains_fasta(base / "chains.fa")
    cfg = base / "stages.yaml"
    cfg.write_text(CONFIG.format(families=base / "families.fa", chains=base / "chains.fa"))
    (base / "plm_with_faults.py").write_text(FAULT_RUNNER)
    (base / "hook").mkdir()
    (base / "hook" / "sitecustomize.py").write_text(TRAIN_PAUSE)
    return cfg, base / "plm_with_faults.py", base / "hook"


def losses(train_dir: Path) -> dict[int, float]:
    """Loss per step from ``metrics.jsonl``; a step logged twice (before a kill, again after the resume)
    keeps its last value."""
    rows = [json.loads(line) for line in (train_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    return {r["step"]: r["loss"] for r in rows}


def train_dir(workdir: Path) -> Path:
    (d,) = [p for p in (workdir / "stages" / "train").iterdir() if p.is_dir() and ".tmp-" not in p.name]
    return d


def batch_hashes(workdir: Path) -> dict[str, dict[str, str]]:
    """The A3M files (and query FASTA) of every finished MSA batch; the marker holds timings, the log too."""
    out = {}
    for d in sorted((workdir / "stages" / "msa_batches").glob("batch-?????")):
        out[d.name] = {str(f.relative_to(d)): sha256_file(f) for f in sorted(d.rglob("*"))
                       if f.is_file() and f.name not in (BATCH_MARKER, "mmseqs.log")}
    return out


def final_weights(workdir: Path) -> dict[str, torch.Tensor]:
    (ckpt,) = [a for a in json.loads((train_dir(workdir) / MARKER).read_text())["outputs"].values()
               if a["kind"] == "checkpoint"]
    return load_file(str(train_dir(workdir) / ckpt["path"] / "model.safetensors"))  # relative to the stage


def assert_no_partial_batch_or_checkpoint(workdir: Path) -> None:
    """A batch directory under its final name has its marker; a checkpoint under its final name is whole."""
    for d in (workdir / "stages" / "msa_batches").glob("batch-*"):
        if d.is_dir() and ".tmp-" not in d.name:  # (batch-NNNNN.lock: the batch's lock file)
            assert (d / BATCH_MARKER).is_file(), f"MSA batch without its marker: {d}"
    for d in (workdir / "stages" / "train").glob("*/checkpoints/step_*"):
        if ".tmp-" not in d.name:
            assert {p.name for p in d.iterdir()} >= {"model.safetensors", "train_state.pt", "meta.json"}, d
            assert load_file(str(d / "model.safetensors")), d


def pid_alive(pid: int) -> bool:
    """Running or sleeping; a zombie (killed, not yet reaped by init) is dead."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="module")
def reference_run(inputs, prefect_api, tmp_path_factory):
    """The uninterrupted run, started first and left to run beside the killed ones (they mostly wait)."""
    cfg, _, _ = inputs
    base = tmp_path_factory.mktemp("stages-reference")
    log = base / "reference.log"
    proc = start_plm(cfg, base / "work", plm_env(prefect_api), log, cmd="train")
    yield proc, log, base / "work"
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def reference(reference_run) -> Path:
    proc, log, workdir = reference_run
    rc = finish(proc, log, timeout_s=300)
    assert rc == 0, tail(log)
    return workdir


# (name, fault runner spec or "train:WHERE", stages finished by then, the stage folder holding the only
# temporary the kill leaves: earlier ones were removed by the runs that redid their stage; None: no temporary)
DATA = {"source", "ingest", "cluster_level", "cluster", "split", "audit_target", "audit_chunk", "audit",
        "shards_partition", "shards"}
STRUCTURES = DATA | {"structures_batch", "structures", "msa_target"}  # all done once the MSA batches run
KILL_POINTS = [
    ("structures: a batch task in 3Di encoding, nothing written yet",
     "pause:structures_batch:pipeline_lib.structures.threedi:encode_chain@2", DATA, "structures_batch"),
    ("structures: batch done, between two SaProt shard writes", "pause:structures:pyarrow.parquet:write_table@2",
     DATA | {"structures_batch"}, "structures"),
    # marker writes in pipeline_lib.msa.build: the target DB's, then one per batch: pause before the 2nd batch's
    # (an MSA batch is finished under the same marker as a stage: from the first one on, msa_batches counts)
    ("msa: one batch finished, the other about to be marked done", "pause:*:pipeline_lib.msa.build:write_marker@3",
     STRUCTURES | {"msa_batches"}, "msa_batches"),
    ("msa: batches done, msas.parquet written, token shards not yet",
     "pause:msa:pipeline_lib.msa.stage:write_msa_shards@1", STRUCTURES | {"msa_batches"}, "msa"),
    ("train: in step 5, last checkpoint at step 3", f"train:{TRAIN_PAUSE_STEP}", STRUCTURES | {"msa_batches", "msa"},
     None),
    ("train: last step checkpointed, Hugging Face export half written", "train:export",
     STRUCTURES | {"msa_batches", "msa"}, None),
]


def snapshot(workdir: Path) -> dict:
    """What a kill left: stages finished under their final names, temporaries, MSA batches, lineage."""
    stages = workdir / "stages"
    final = {s.name for s in stages.iterdir()
             if any(p.is_dir() and ".tmp-" not in p.name and (p / MARKER).is_file() for p in s.iterdir())}
    return {"final": final, "temporaries": temporaries(workdir), "batches": batch_hashes(workdir),
            "runs": lineage_runs(workdir)}


@pytest.fixture(scope="module")
def crashed_then_resumed(inputs, prefect_api, tmp_path_factory, reference_run):
    """Kill one workdir at each point in turn (each run resumes the last one's work), then finish it."""
    cfg, runner, hook = inputs
    env = plm_env(prefect_api)
    base = tmp_path_factory.mktemp("stages-crash")
    workdir = base / "resumed"
    seen = []
    for i, (name, fault, finished, _) in enumerate(KILL_POINTS):
        pause, log = base / f"pause-{i}", base / f"killed-{i}.log"
        run_env = {**env, "PLM_FAULT_FILE": str(pause)}
        if fault.startswith("train:"):
            run_env |= {"PLM_TRAIN_PAUSE_AT": fault.split(":")[1],
                        "PYTHONPATH": os.pathsep.join(filter(None, [str(hook), os.environ.get("PYTHONPATH")]))}
            proc = start_plm(cfg, workdir, run_env, log, cmd="train")
        else:
            proc = start_plm(cfg, workdir, run_env, log, fault=fault, runner=runner, cmd="train")
        kill_when_paused(proc, pause, log, timeout_s=240)
        paused = int(pause.read_text())
        deadline = time.monotonic() + 5  # a process killed through its parent's death needs a moment
        while (survived := pid_alive(paused)) and time.monotonic() < deadline:
            time.sleep(0.1)
        if survived:  # reported by test_killing_plm_kills_the_training_workers; not left running
            os.kill(paused, signal.SIGKILL)
        seen.append({"name": name, "pid": proc.pid, "finished": finished, "survived": survived, **snapshot(workdir)})
        if fault.startswith("train:"):
            d = train_dir(workdir)
            seen[-1] |= {"train_marker": (d / MARKER).exists(), "losses": losses(d),
                         "checkpoints": sorted(p.name for p in (d / "checkpoints").iterdir()),
                         "hf": sorted("hf.tmp-*" if ".tmp-" in p.name else p.name for p in d.glob("hf*"))}
        assert_nothing_partial(workdir, skip=("train", "msa_batches"))  # right after the kill
        assert_no_partial_batch_or_checkpoint(workdir)
    log = base / "resume.log"
    rc = finish(start_plm(cfg, workdir, env, log, cmd="train"), log, timeout_s=300)
    assert rc == 0, tail(log)
    return workdir, seen, log


def test_every_stage_past_the_data_is_killed_at_two_points_at_least():
    killed_in = [name.split(":")[0] for name, *_ in KILL_POINTS]
    assert all(killed_in.count(stage) >= 2 for stage in ("structures", "msa", "train")), killed_in


def test_each_kill_left_only_finished_work_under_final_names(crashed_then_resumed):
    _, seen, _ = crashed_then_resumed
    for point, (*_, inside) in zip(seen, KILL_POINTS, strict=True):
        assert point["final"] == point["finished"], point["name"]
        assert point["runs"][point["pid"]] == "running", point["name"]  # nobody has noticed the crash yet
        assert [p.parent.name for p in point["temporaries"]] == ([inside] if inside else []), point["name"]
    _, _, msa_batch, msa, train, export = seen
    # one MSA batch finished (marker, final name), the other only under a temporary name; then both
    assert list(msa_batch["batches"]) == ["batch-00000"] or list(msa_batch["batches"]) == ["batch-00001"]
    assert list(msa["batches"]) == ["batch-00000", "batch-00001"]
    # training: step 3 checkpointed, steps 1-4 logged, no completion marker
    assert train["checkpoints"] == ["step_00000003"] and not train["train_marker"]
    assert sorted(train["losses"]) == [1, 2, 3, 4] and train["hf"] == []
    # killed in the export: resumed from step 3 to the end, step 6 checkpointed whole, the Hugging Face
    # directory only under a temporary name
    assert export["checkpoints"] == ["step_00000003", "step_00000006"] and not export["train_marker"]
    assert sorted(export["losses"]) == [1, 2, 3, 4, 5, 6] and export["hf"] == ["hf.tmp-*"]


def test_killing_plm_kills_the_training_workers(crashed_then_resumed):
    """torchrun starts each worker in a session of its own: the kill of plm's process group must still
    end them, or an orphan keeps training into the stage directory the re-run resumes from."""
    _, seen, _ = crashed_then_resumed
    assert [p["survived"] for p in seen] == [False] * len(KILL_POINTS)


def test_resume_reproduces_an_uninterrupted_run(crashed_then_resumed, reference):
    workdir, seen, log = crashed_then_resumed
    keys = {s.name: sorted(p.name for p in s.iterdir() if p.is_dir() and ".tmp-" not in p.name)
            for s in (workdir / "stages").iterdir() if s.name != "msa_batches"}
    assert all(len(k) == 1 for k in keys.values()), \
        f"a stage finished under two cache keys: was the code edited while the test ran? {keys}"
    assert_nothing_partial(workdir, skip=("msa_batches",))
    assert artifact_hashes(workdir, STAGES) == artifact_hashes(reference, STAGES)  # msas.parquet included
    assert batch_hashes(workdir) == batch_hashes(reference)
    # training resumed from step 3: losses and final weights equal the uninterrupted run's, bit for bit
    assert losses(train_dir(workdir)) == losses(train_dir(reference))
    got, want = final_weights(workdir), final_weights(reference)
    assert got.keys() == want.keys() and all(torch.equal(got[k], want[k]) for k in want)
    steps = [json.loads(line)["step"] for line in (train_dir(workdir) / "metrics.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4, 4, 5, 6], "step 4 is logged by the killed run and again after the resume"
    # the export the last kill interrupted was redone from the step-6 checkpoint, without training again
    assert sha256_file(train_dir(workdir) / "hf" / "model.safetensors") == \
        sha256_file(train_dir(reference) / "hf" / "model.safetensors")
    assert "structures   cached" in log.read_text() and "msa          cached" in log.read_text()


def test_resumed_runs_leave_no_temporaries(crashed_then_resumed):
    """A re-run removes what the killed runs left under temporary names: ``run_stage`` for stage directories
    (and, in a resumable stage's directory, the killed export's ``hf.tmp-*``), ``build_msa_batch`` (under the
    batch's lock) for the killed batch's ``batch-NNNNN.tmp-*``."""
    workdir, _, _ = crashed_then_resumed
    assert temporaries(workdir) == []
    assert [p for p in (workdir / "stages").rglob("*") if ".tmp-" in p.name] == []


def test_lineage_marks_every_killed_run_crashed(crashed_then_resumed):
    workdir, seen, _ = crashed_then_resumed
    runs = lineage_runs(workdir)
    assert {runs[p["pid"]] for p in seen} == {"crashed"}
    assert sorted(runs.values()) == ["completed"] + ["crashed"] * len(seen)
    store = LineageStore(workdir / "lineage.duckdb")
    last = store.query("SELECT run_id FROM runs WHERE status='completed'")[0]["run_id"]
    steps = {s["stage"]: s["status"] for s in store.query("SELECT stage, status FROM steps WHERE run_id=?", [last])}
    assert steps["structures"] == steps["msa"] == "cached" and steps["train"] == "completed"
    batches = store.query("SELECT r.pid, s.status FROM steps s JOIN runs r USING (run_id) WHERE s.stage='msa_batch'")
    by_run = {pid: sorted(b["status"] for b in batches if b["pid"] == pid) for pid in {b["pid"] for b in batches}}
    # the run after the MSA batch kill reused the batch finished before it and built only the other one;
    # the next run found both finished
    assert by_run[seen[3]["pid"]] == ["cached", "completed"] and by_run[seen[4]["pid"]] == ["cached", "cached"]
