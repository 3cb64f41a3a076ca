"""Helpers of the hostile-input tests (test_hostile_inputs.py, test_hostile_disk.py): generated FASTA, a stage
context and stage outputs to call a task's function directly, and lineage / stage-directory checks."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from pipeline_lib.config import load_config
from pipeline_lib.lineage import LineageStore, artifact_for

ACGT = b"ACDEFGHIKLMNPQRSTVWY"


def random_fasta(path: Path, n: int, length: int, seed: int = 0) -> Path:
    """``n`` random proteins of ``length`` residues (NumPy: megabytes in milliseconds)."""
    rng = np.random.default_rng(seed)
    letters = np.frombuffer(ACGT, dtype=np.uint8)[rng.integers(0, 20, size=(n, length))]
    with open(path, "wb") as fh:
        for i, row in enumerate(letters):
            fh.write(b">s%d\n%s\n" % (i, row.tobytes()))
    return path


def stage_context(workdir: Path, lineage: Path | None = None):
    from tasks.common import RunContext

    return RunContext("hostile-run", str(workdir), str(lineage or workdir / "lineage.duckdb"))


def stage_output(stage: str, outputs: dict[str, Path], kinds: dict[str, str] | None = None):
    from tasks.common import StageOutput

    arts = {name: artifact_for(p, (kinds or {}).get(name, name.split(".")[0])) for name, p in outputs.items()}
    return StageOutput(stage, "0" * 64, str(next(iter(outputs.values())).parent), False, arts, {}, {})


def final_stage_dirs(workdir: Path, stage: str) -> list[Path]:
    d = workdir / "stages" / stage
    return [p for p in d.iterdir() if ".tmp-" not in p.name and p.is_dir()] if d.exists() else []


def failed_steps(lineage: Path, stage: str) -> list[dict]:
    return LineageStore(lineage).query("SELECT status, error FROM steps WHERE stage=?", [stage])


def ingest_on(workdir: Path, src: Path, lineage: Path | None = None):
    from tasks import data

    cfg = load_config(None, [f"workdir={workdir}"])
    return data.ingest.fn(stage_context(workdir, lineage), cfg,
                          stage_output("source", {"source_0": src}, {"source_0": "source_fasta"}))
