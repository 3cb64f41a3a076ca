"""Training throughput: our ESM-2 (packed rows, and padded) vs transformers' EsmForMaskedLM (padded).

    .venv/bin/python bench/train_throughput.py --sizes tiny 8M [--batch-tokens 8192] [--steps 5]
    .venv/bin/python bench/train_throughput.py --sizes 8M 35M 150M 650M --batch-tokens 16384 --json out.jsonl   # GPU

Every implementation trains on the same sequences per step: UniRef50-like lengths (log-normal, median
~270 residues, cropped to ``max_len``), masked 15% 80/10/10, grouped by our token-budget batcher. Ours
runs them packed (block-diagonal attention: SDPA mask on CPU, flash varlen on CUDA) and padded; the
Hugging Face baseline runs them padded to the longest sequence of the step, full logits + labels, its
default attention. Every implementation uses the same AdamW (fused on GPU); a size that runs out of
memory prints a row saying so and the benchmark goes on. One step = forward, backward, AdamW. Reported:
non-padding tokens/s, step time, padding share, peak GPU memory and MFU = 6 N tokens/s / peak, where peak is
the vendor bf16 figure on GPUs and, on CPU, the measured
fp32 matmul rate of this machine (so CPU MFU reads "share of what a large matmul reaches here").
Prints a markdown table, then a line per size: our packed tokens/s over the baseline's, and on a GPU whether the
targets of #5 are met (>= 2.5x the baseline; >= 50 % MFU at 650M).
"""
from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.models import ESM2, model_config  # noqa: E402
from pipeline_lib.models.esm2 import flops_per_token  # noqa: E402
from pipeline_lib.models.hf import export_hf  # noqa: E402
from pipeline_lib.tokenizer import ESM_ALPHABET  # noqa: E402
from pipeline_lib.train.batching import IGNORE, Batch, Batcher, Masker, Sample  # noqa: E402
from pipeline_lib.train.metrics import device_peak_tflops  # noqa: E402
from pipeline_lib.train.synthetic import uniref_like_lengths  # noqa: E402

IMPLS = {"ours-packed": ("ours", "packed"), "ours-padded": ("ours", "padded"),
         "hf": ("transformers EsmForMaskedLM", "padded")}


def make_steps(n_steps: int, *, max_len: int, batch_tokens: int, seed: int = 0) -> list[tuple[Batch, Batch]]:
    """(packed, padded) batches holding the same sequences, ``n_steps`` of them."""
    rng = np.random.default_rng(seed)
    masker = Masker(ESM_ALPHABET, max_len=max_len, seed=seed)
    aa = np.array([ESM_ALPHABET.index[a] for a in "ACDEFGHIKLMNPQRSTVWY"])
    by_row: dict[int, Sample] = {}

    def samples():
        for row in range(10**9):
            n = int(uniref_like_lengths(rng, 1)[0])
            by_row[row] = masker(np.concatenate(([0], aa[rng.integers(0, 20, n)], [2])), row=row, epoch=0, id=str(row))
            yield {"row": row}, by_row[row]

    packer = Batcher(max_len=max_len, batch_tokens=batch_tokens, packing=True, pad_id=1)
    padder = Batcher(max_len=max_len, batch_tokens=10**12, packing=False, pad_id=1)
    out = []
    for packed, _ in packer.batches(samples()):
        out.append((packed, padder._pad([[by_row[r]] for r in packed.rows])))
        if len(out) == n_steps:
            break
    return out


def cpu_peak_tflops(n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n ** 3 * reps / (time.perf_counter() - t) / 1e12


def _step_ours(model, opt, b: Batch, device, amp, packed: bool) -> None:
    b = b.to(device)
    targets = b.labels != IGNORE
    with amp():
        kw = b.model_inputs() if packed else {}
        logits = model(b.tokens, output_mask=targets, **kw)
    F.cross_entropy(logits.float(), b.labels[targets]).backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def _step_hf(model, opt, b: Batch, device, amp, packed: bool) -> None:
    b = b.to(device)
    with amp():
        out = model(input_ids=b.tokens, attention_mask=(b.tokens != 1).long(), labels=b.labels)
    out.loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)


def measure(step_fn, model, batches: list[Batch], device, amp, packed: bool, warmup: int) -> float:
    fused = device.type == "cuda"  # the same optimizer for every implementation: fused AdamW on GPU
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=fused)
    for b in batches[:warmup]:
        step_fn(model, opt, b, device, amp, packed)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    for b in batches[warmup:]:
        step_fn(model, opt, b, device, amp, packed)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t


def _free(device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--sizes", nargs="+", default=["tiny", "8M"])
    ap.add_argument("--batch-tokens", type=int, default=8192)
    ap.add_argument("--max-len", type=int, default=1024)
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--peak-tflops", type=float, default=None)
    ap.add_argument("--compile", action="store_true", help="torch.compile our blocks (as train.compile does)")
    ap.add_argument("--activation-checkpointing", action="store_true", help="checkpoint our blocks")
    ap.add_argument("--json", type=Path, default=None, help="also write the rows as JSON lines here")
    ap.add_argument("--impls", nargs="+", choices=list(IMPLS), default=list(IMPLS),
                    help="which rows to run (e.g. only ours-packed for a --compile run after the full table)")
    args = ap.parse_args()
    import transformers

    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    amp_dtype = torch.bfloat16 if device.type == "cuda" else None
    def amp() -> torch.autocast:
        return torch.autocast(device.type, dtype=amp_dtype, enabled=amp_dtype is not None)
    peak = device_peak_tflops(device, args.peak_tflops) or cpu_peak_tflops()
    steps = make_steps(args.warmup + args.steps, max_len=args.max_len, batch_tokens=args.batch_tokens)
    timed = steps[args.warmup:]
    real = sum(p.n_tokens for p, _ in timed)
    pad_share = {"packed": 1 - real / sum(p.tokens.numel() for p, _ in timed),
                 "padded": 1 - real / sum(q.tokens.numel() for _, q in timed)}
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"device: {name}; torch {torch.__version__}, transformers {transformers.__version__}; peak used for "
          f"MFU: {peak:.3g} TFLOP/s; {args.steps} timed steps of <= {args.batch_tokens} tokens, max_len "
          f"{args.max_len}; compile={args.compile}, activation checkpointing={args.activation_checkpointing}\n")
    print("| size | implementation | layout | tokens/s | step ms | padding | MFU | peak GPU GiB |")
    print("|---|---|---|---:|---:|---:|---:|---:|", flush=True)
    out = args.json.open("a") if args.json else None
    verdicts = []
    for size in args.sizes:
        done: dict[str, dict] = {}
        for key in args.impls:
            impl, layout = IMPLS[key]
            row = {"size": size, "implementation": impl, "layout": layout, "device": name,
                   "batch_tokens": args.batch_tokens, "compile": args.compile and impl == "ours"}
            try:
                row.update(_run_one(size, impl, layout, steps, device, amp, args, real, peak))
            except torch.OutOfMemoryError:
                row["error"] = "out of memory"
            _free(device)
            _print_row(row, pad_share[layout])
            done[key] = row
            if out:
                out.write(json.dumps(row) + "\n")
                out.flush()
        verdicts.append(_verdict(size, done, on_gpu=device.type == "cuda"))
    print("\n" + "\n".join(v for v in verdicts if v))


def _verdict(size: str, rows: dict[str, dict], *, on_gpu: bool) -> str:
    """One line per size: our packed rows against the baseline, and the #5 targets on a GPU."""
    ours, hf = rows.get("ours-packed", {}), rows.get("hf", {})
    if "tokens_per_s" not in ours:
        return ""
    parts = [f"{size}: ours packed {ours['tokens_per_s']:,.0f} tokens/s, MFU {100 * ours['mfu']:.1f}%"]
    if "tokens_per_s" in hf:
        ratio = ours["tokens_per_s"] / hf["tokens_per_s"]
        parts.append(f"{ratio:.2f}x transformers" + (f" (target >= 2.5x: {'met' if ratio >= 2.5 else 'NOT met'})"
                                                       if on_gpu else ""))
    if on_gpu and size == "650M":
        parts.append(f"MFU target >= 50%: {'met' if ours['mfu'] >= 0.5 else 'NOT met'}")
    return "; ".join(parts)


def _build(size: str, impl: str, device, args) -> torch.nn.Module:
    import tempfile

    import transformers

    from pipeline_lib.train.parallel import _apply_ac, _apply_compile

    torch.manual_seed(0)
    ours = ESM2(model_config(size))
    if impl == "ours":
        ours.to(device)
        if args.activation_checkpointing:
            _apply_ac(ours)
        if args.compile:
            _apply_compile(ours)
        return ours
    with tempfile.TemporaryDirectory() as d:  # the same weights, in transformers' own class and attention
        export_hf(ours, Path(d) / "hf", vocab="esm2")
        return transformers.EsmForMaskedLM.from_pretrained(Path(d) / "hf").to(device)


def _run_one(size, impl, layout, steps, device, amp, args, real, peak) -> dict:
    model = _build(size, impl, device, args)
    fn, which = (_step_ours, 0 if layout == "packed" else 1) if impl == "ours" else (_step_hf, 1)
    batches = [pair[which] for pair in steps]
    dt = measure(fn, model.train(), batches, device, amp, layout == "packed", args.warmup)
    tps = real / dt
    fpt = flops_per_token(model_config(size))
    mem = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    del model
    return {"tokens_per_s": tps, "step_ms": 1000 * dt / args.steps, "mfu": fpt * tps / (peak * 1e12),
            "peak_gib": mem}


def _print_row(row: dict, pad: float) -> None:
    if "error" in row:
        print(f"| {row['size']} | {row['implementation']} | {row['layout']} | {row['error']} | | | | |", flush=True)
        return
    mem = f"{row['peak_gib']:.1f}" if row["peak_gib"] is not None else "-"
    print(f"| {row['size']} | {row['implementation']} | {row['layout']} | {row['tokens_per_s']:,.0f} | "
          f"{row['step_ms']:.0f} | {100 * pad:.0f}% | {100 * row['mfu']:.1f}% | {mem} |", flush=True)


if __name__ == "__main__":
    main()
