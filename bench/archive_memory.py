"""Peak RSS of a structures batch over a small .tar.gz holding one huge member of zeros beside a real model:
the member is refused from its tar header (over max_file_bytes) instead of being read whole.

    .venv/bin/python bench/archive_memory.py --member-mb 300

Needs ../shared/fixtures (one AlphaFold DB model). Prints the archive size, this process's peak RSS before and
after the batch (``getrusage``), what was refused and how many chains were encoded.
"""
from __future__ import annotations

import argparse
import io
import resource
import sys
import tarfile
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from pipeline_lib.structures.batches import plan_batches, run_batch  # noqa: E402
from pipeline_lib.structures.config import StructuresConfig  # noqa: E402

MODEL = Path(__file__).resolve().parents[2] / "shared/fixtures/structures/afdb/AF-Q96HM7-F1-model_v4.pdb"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--member-mb", type=int, default=300)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tar = Path(tmp) / "models.tar.gz"
        with tarfile.open(tar, "w:gz", compresslevel=1) as tf:
            info = tarfile.TarInfo("models/zeros.pdb")
            info.size = args.member_mb * 10**6
            tf.addfile(info, io.BytesIO(bytes(info.size)))
            tf.add(MODEL, arcname=f"models/{MODEL.name}")
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        cfg = StructuresConfig(sources=[{"kind": "archive", "paths": [str(tar)]}])
        (batch,) = plan_batches(cfg, accessions=[])
        res = run_batch(batch, cfg, backend="mini3di", download_dir=Path(tmp))
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        print(f"archive {tar.stat().st_size / 1e6:.1f} MB with a {args.member_mb} MB member; peak RSS "
              f"{before / 1024:.0f} -> {after / 1024:.0f} MiB (+{(after - before) / 1024:.0f}); refused "
              f"{dict(res.source.refused)}; chains {len(res.records)}")


if __name__ == "__main__":
    main()
