"""Per-step training metrics to TensorBoard, a JSONL file and an optional callback (rank 0 only).
TensorBoard tags: ``train/<key>``, or the key itself when it has a section (``valid/loss``).

    sink = MetricsSink(out_dir, enabled=env.is_main, on_metrics=callback)
    sink.write({"step": 1, "loss": 2.9, ...}); sink.close()

Also the MFU helpers: ``6 N T`` training FLOPs (N = dense parameters incl. the tied output projection,
plus the attention-score term) over the peak of the device (``peak_tflops`` or a table of known GPUs).
"""
from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

__all__ = ["MetricsSink", "device_peak_tflops"]

# dense bf16 peak TFLOP/s per device (vendor figures, no sparsity)
_PEAKS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "A10G": 125.0, "L40S": 362.0, "L4": 121.0, "V100": 125.0}


def device_peak_tflops(device: torch.device, override: float | None = None) -> float | None:
    if override is not None:
        return override
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    if "H100" in name and "PCIe" in name:
        return 756.0
    return next((v for k, v in _PEAKS.items() if k in name), None)


class MetricsSink:
    def __init__(self, out_dir: str | Path, *, enabled: bool,
                 on_metrics: Callable[[dict[str, Any]], None] | None = None, tensorboard: bool = True) -> None:
        self.enabled, self.on_metrics = enabled, on_metrics
        self._fh = None
        self._tb = None
        if not enabled:
            return
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        self._fh = open(out / "metrics.jsonl", "a", buffering=1)
        if tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(out / "tensorboard"))

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        assert self._fh is not None
        self._fh.write(json.dumps(record) + "\n")
        if self._tb is not None:
            for k, v in record.items():
                if k != "step" and isinstance(v, (int, float)) and v is not None:
                    self._tb.add_scalar(k if "/" in k else f"train/{k}", v, record["step"])  # valid/loss as is
        if self.on_metrics is not None:
            self.on_metrics(dict(record))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
        if self._tb is not None:
            self._tb.close()
