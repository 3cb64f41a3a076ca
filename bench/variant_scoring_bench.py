"""Variant-scoring benchmark: masked-marginal variants scored per second, by model size and batch size.

    .venv/bin/python bench/variant_scoring_bench.py [--length 300] [--positions 64] [--models tiny,8M]
                                                    [--batch-sizes 1,8,32] [--threads 2]

A random wild type of ``--length`` residues and every single substitution (19 each) at ``--positions``
positions, scored with :func:`pipeline_lib.evaluate.variants.score_variants` (one masked forward pass per
position, batched) through the Hugging Face ``EsmForMaskedLM`` adapter, random weights. Model shapes
(layers / width / heads): tiny 2/32/4, 8M 6/320/20 (ESM-2 8M), 35M 12/480/20 (ESM-2 35M). Runs on the
CPU, and on the GPU too when ``torch.cuda.is_available()`` (fp32, and bf16 weights). Prints a markdown table.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch
from transformers import EsmConfig, EsmForMaskedLM

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.evaluate.dms import Mutation  # noqa: E402
from pipeline_lib.evaluate.model import AMINO_ACIDS, HFMaskedLM  # noqa: E402
from pipeline_lib.evaluate.variants import score_variants  # noqa: E402

SHAPES = {"tiny": (2, 32, 4), "8M": (6, 320, 20), "35M": (12, 480, 20), "150M": (30, 640, 20)}


def build(shape: str) -> EsmForMaskedLM:
    layers, width, heads = SHAPES[shape]
    torch.manual_seed(0)
    return EsmForMaskedLM(EsmConfig(
        vocab_size=33, hidden_size=width, num_hidden_layers=layers, num_attention_heads=heads,
        intermediate_size=4 * width, max_position_embeddings=1026, position_embedding_type="rotary",
        token_dropout=True, mask_token_id=32, pad_token_id=1, emb_layer_norm_before=False)).eval()


def assay(length: int, positions: int, seed: int = 0) -> tuple[str, list[tuple[Mutation, ...]]]:
    rng = np.random.default_rng(seed)
    wt = "".join(rng.choice(list(AMINO_ACIDS), size=length))
    chosen = sorted(rng.choice(length, size=min(positions, length), replace=False).tolist())
    return wt, [(Mutation(wt[p], p, a),) for p in chosen for a in AMINO_ACIDS if a != wt[p]]


def time_one(lm: HFMaskedLM, wt: str, variants: list, batch: int, device: str) -> float:
    score_variants(lm, wt, variants[:19 * 2], batch_size=batch)            # warm-up (kernels, allocator)
    if device == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    score_variants(lm, wt, variants, batch_size=batch)
    if device == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--length", type=int, default=300)
    ap.add_argument("--positions", type=int, default=64)
    ap.add_argument("--models", default="tiny,8M")
    ap.add_argument("--gpu-models", default="8M,35M,150M")
    ap.add_argument("--batch-sizes", default="1,8,32")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    wt, variants = assay(args.length, args.positions)
    n_pos = len({m[0].index for m in variants})
    runs = [("cpu", m, torch.float32) for m in args.models.split(",")]
    if torch.cuda.is_available():
        runs += [("cuda", m, dt) for m in args.gpu_models.split(",") for dt in (torch.float32, torch.bfloat16)]
    print(f"wild type {args.length} residues, {n_pos} positions, {len(variants)} single mutants; "
          f"torch {torch.__version__}, CPU threads {torch.get_num_threads()}"
          + (f", GPU {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""))
    print("\n| device | model | dtype | batch | seconds | variants/s | masked passes/s |")
    print("|---|---|---|---|---|---|---|")
    for device, shape, dtype in runs:
        lm = HFMaskedLM(build(shape).to(device=device, dtype=dtype))
        for batch in (int(b) for b in args.batch_sizes.split(",")):
            sec = time_one(lm, wt, variants, batch, device)
            print(f"| {device} | {shape} | {str(dtype).removeprefix('torch.')} | {batch} | {sec:.2f} | "
                  f"{len(variants) / sec:,.0f} | {n_pos / sec:,.1f} |", flush=True)
        del lm
        if device == "cuda":
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
