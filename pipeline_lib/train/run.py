"""Entry point of one training process, and the torchrun command line that starts them.

    python -m pipeline_lib.train.run --config cfg.yaml --shards work/shards --out work/train [lr=1e-3 ...]
    python -m torch.distributed.run --standalone --nproc-per-node 8 -m pipeline_lib.train.run --config ...

``--config`` is YAML or JSON: either a pipeline config (its ``train`` section is used) or a bare train
section. Trailing ``key=value`` arguments override fields (``lr=1e-3`` or ``train.lr=1e-3``). From Python
(e.g. a Prefect task), build the argv and run it as a subprocess, no shell:

    argv = build_torchrun_argv(cfg, config_path=run_dir / "train_config.json", shards_dir=..., output_dir=...)
    subprocess.run(argv, check=True)
    # or: launch, follow <out>/metrics.jsonl into a callback, raise ToolError with the log tail on failure
    result = launch_torchrun(cfg, config_path=..., shards_dir=..., output_dir=..., on_metrics=record)
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from pipeline_lib.config import apply_overrides
from pipeline_lib.errors import ConfigError, ToolError
from pipeline_lib.io import write_json_atomic
from pipeline_lib.train.config import TrainConfig

__all__ = ["load_train_config", "build_torchrun_argv", "launch_torchrun", "LaunchResult", "main"]


def load_train_config(path: str | Path | None, overrides: list[str] | None = None) -> TrainConfig:
    """A TrainConfig from a YAML/JSON file (pipeline config or bare section) plus dotted overrides."""
    raw: dict[str, Any] = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"config file not found: {p}")
        loaded = yaml.safe_load(p.read_text())  # JSON is YAML
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{p}: top level must be a mapping")
        raw = dict(loaded or {})
        if isinstance(raw.get("train"), dict):
            raw = dict(raw["train"])
    items = [o[len("train."):] if o.startswith("train.") else o for o in overrides or []]
    raw = apply_overrides(raw, items)
    try:
        return TrainConfig.model_validate(raw)
    except ValidationError as exc:
        lines = [f"invalid train configuration in {path or '<defaults>'}:"]
        for err in exc.errors():
            loc = ".".join(str(x) for x in err["loc"])
            lines.append(f"  train.{loc}: {'unknown key' if err['type'] == 'extra_forbidden' else err['msg']}")
        raise ConfigError("\n".join(lines)) from None


def build_torchrun_argv(cfg: TrainConfig, *, config_path: str | Path, shards_dir: str | Path,
                        output_dir: str | Path, python: str = sys.executable,
                        node_rank: int | None = None) -> list[str]:
    """Write ``cfg`` to ``config_path`` (JSON, atomically) and return the torchrun argv that trains with it.

    One node: ``--standalone`` (a free local port). Several: c10d rendezvous at ``cfg.rdzv_endpoint``;
    run the same argv on every node (``node_rank`` optional, c10d assigns ranks).
    """
    write_json_atomic(config_path, cfg.model_dump(mode="json"))
    argv = [python, "-m", "torch.distributed.run", "--nproc-per-node", str(cfg.nproc), "--nnodes", str(cfg.nnodes)]
    if cfg.nnodes == 1 and not cfg.rdzv_endpoint:
        argv.append("--standalone")
    else:
        argv += ["--rdzv-backend", "c10d", "--rdzv-endpoint", str(cfg.rdzv_endpoint), "--rdzv-id", cfg.rdzv_id]
        if node_rank is not None:
            argv += ["--node-rank", str(node_rank)]
    argv += ["-m", "pipeline_lib.train.run", "--config", str(config_path), "--shards", str(shards_dir),
             "--out", str(output_dir)]
    return argv


@dataclass(frozen=True)
class LaunchResult:
    step: int | None          # newest checkpoint step
    checkpoint: Path | None
    hf_dir: Path | None
    log: Path
    argv: list[str]


def _follow(path: Path, offset: int, on_metrics: Callable[[dict[str, Any]], None] | None) -> int:
    """Hand every complete new JSONL line after ``offset`` to ``on_metrics``; returns the new offset."""
    if not path.is_file():
        return offset
    with open(path, "rb") as fh:
        fh.seek(offset)
        data = fh.read()
    end = data.rfind(b"\n") + 1  # a partly written last line waits for the next poll
    for line in data[:end].splitlines():
        if line.strip() and on_metrics is not None:
            on_metrics(json.loads(line))
    return offset + end


def launch_torchrun(cfg: TrainConfig, *, config_path: str | Path, shards_dir: str | Path, output_dir: str | Path,
                    on_metrics: Callable[[dict[str, Any]], None] | None = None, poll_s: float = 2.0,
                    env: dict[str, str] | None = None) -> LaunchResult:
    """Run the torchrun job to completion, passing each new metrics record to ``on_metrics`` as it appears.

    Output of all ranks goes to ``<out>/torchrun.log``; a non-zero exit raises :class:`ToolError` with the
    command, exit code and the log's tail.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    argv = build_torchrun_argv(cfg, config_path=config_path, shards_dir=shards_dir, output_dir=out)
    metrics, log = out / "metrics.jsonl", out / "torchrun.log"
    offset = metrics.stat().st_size if metrics.is_file() else 0  # a resumed run appends
    with open(log, "ab") as fh:
        proc = subprocess.Popen(argv, stdout=fh, stderr=subprocess.STDOUT, env=env)
        try:
            while (rc := proc.poll()) is None:
                offset = _follow(metrics, offset, on_metrics)
                time.sleep(poll_s)
            _follow(metrics, offset, on_metrics)
        except BaseException:  # a failing callback or an interrupt must not leave the job running
            proc.terminate()
            proc.wait(timeout=60)
            raise
    if rc != 0:
        tail = "\n".join(log.read_text(errors="replace").splitlines()[-40:])
        raise ToolError("training job failed", argv=argv, returncode=rc, stderr_tail=tail)
    steps = sorted((out / "checkpoints").glob("step_*"))
    hf = out / "hf"
    return LaunchResult(int(steps[-1].name[5:]) if steps else None, steps[-1] if steps else None,
                        hf if (hf / "config.json").is_file() else None, log, argv)


def main(argv: list[str] | None = None) -> int:
    if sys.platform == "linux":  # torchrun starts workers in sessions of their own, so killing plm's process
        import ctypes  # group misses them: have the kernel SIGKILL us when our parent (torchrun) dies
        ctypes.CDLL(None).prctl(1, 9)  # PR_SET_PDEATHSIG = 1, SIGKILL = 9
    ap = argparse.ArgumentParser(prog="python -m pipeline_lib.train.run", description=__doc__.split("\n")[0])
    ap.add_argument("--config", help="YAML/JSON: pipeline config or bare train section")
    ap.add_argument("--shards", help="shard directory (default: train.shards_dir)")
    ap.add_argument("--out", help="output directory (default: train.output_dir)")
    ap.add_argument("overrides", nargs="*", help="key=value overrides of train fields")
    args = ap.parse_args(argv)
    cfg = load_train_config(args.config, args.overrides)
    shards = args.shards or cfg.shards_dir
    out = args.out or cfg.output_dir
    if not shards or not out:
        raise ConfigError("need --shards and --out (or train.shards_dir and train.output_dir)")
    from pipeline_lib.train.loop import Trainer
    from pipeline_lib.train.parallel import close_distributed

    try:
        result = Trainer(cfg, shards_dir=shards, output_dir=out).train()
        if result.hf_dir is not None:
            print(json.dumps({"step": result.step, "checkpoint": str(result.checkpoint), "hf_dir": str(result.hf_dir)}))
    finally:
        close_distributed()
    return 0


if __name__ == "__main__":
    sys.exit(main())
