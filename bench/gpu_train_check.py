"""The real training loop on one GPU: bf16 autocast, packed rows through flash varlen, optional compile.

    python3 bench/gpu_train_check.py --model 8M --steps 40 [--compile] [--json out.jsonl]

Writes synthetic shards (UniRef50-like lengths), trains with :class:`pipeline_lib.train.loop.Trainer` in
this process (no torchrun: one rank), then trains a second copy stopped at the half and resumed from its
checkpoint, and prints per-run tokens/s, MFU and peak memory from the trainer's own metrics, the attention
kernel that ran, and how far the resumed losses are from the uninterrupted ones (on a GPU the kernels are
not bitwise deterministic, so the gap is reported, not required to be zero). Part of ``bench/gpu_check.sh``.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.models.attention import varlen_available  # noqa: E402
from pipeline_lib.train.config import TrainConfig  # noqa: E402
from pipeline_lib.train.loop import Trainer  # noqa: E402
from pipeline_lib.train.synthetic import write_synthetic_shards  # noqa: E402


def _losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="8M")
    ap.add_argument("--steps", type=int, default=40)
    ap.add_argument("--batch-tokens", type=int, default=16384)
    ap.add_argument("--compile", action="store_true")
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        shards = write_synthetic_shards(root / "shards", rows=4096, row_group_rows=64, seed=0)
        cfg = TrainConfig(model=args.model, max_len=1024, batch_tokens=args.batch_tokens, num_workers=2,
                          warmup_steps=5, total_steps=args.steps, lr=4e-4, checkpoint_every=args.steps // 2,
                          export_hf=False, compile=args.compile)
        full = Trainer(cfg, shards_dir=shards, output_dir=root / "full").train()
        Trainer(cfg.model_copy(update={"max_steps": args.steps // 2}), shards_dir=shards,
                output_dir=root / "resumed").train()
        Trainer(cfg, shards_dir=shards, output_dir=root / "resumed").train()
        a, b = _losses(root / "full"), _losses(root / "resumed")
        steady = full.metrics[len(full.metrics) // 4:]  # past compile and warm-up
        row = {"model": args.model, "compile": args.compile, "device": torch.cuda.get_device_name(),
               "torch": torch.__version__, "varlen": varlen_available(), "steps": args.steps,
               "batch_tokens": args.batch_tokens,
               "tokens_per_s": sum(r["tokens"] for r in steady) / sum(r["step_time_s"] for r in steady),
               "mfu": sum(r["mfu"] or 0 for r in steady) / len(steady),
               "mem_gb": max(r.get("mem_gb", 0.0) for r in full.metrics),
               "first_loss": full.metrics[0]["loss"], "last_loss": full.metrics[-1]["loss"],
               "finite": all(math.isfinite(r["loss"]) for r in full.metrics),
               "resume_same_steps": sorted(a) == sorted(b),
               "resume_max_abs_loss_gap": max(abs(a[s] - b[s]) for s in a if s in b)}
    print(json.dumps(row, indent=1))
    if args.json:
        with args.json.open("a") as f:
            f.write(json.dumps(row) + "\n")
    if not row["finite"] or not row["resume_same_steps"] or row["last_loss"] >= row["first_loss"]:
        raise SystemExit("GPU training check failed (non-finite loss, no learning, or resume lost steps)")


if __name__ == "__main__":
    main()
