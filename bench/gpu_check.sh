#!/usr/bin/env bash
# Every GPU check on a lent GPU machine (about 7-10 minutes on one H100/H200, in two parts; see below):
#   1. tests/test_gpu.py: flash varlen == SDPA, bf16 learns, compile == eager, packed == padded, MSA step;
#   2. bench/gpu_train_check.py: the real Trainer in bf16 (8M, then 150M with compile), resume gap;
#   3. bench/train_throughput.py: tokens/s and MFU of ours vs transformers for 8M/35M/150M/650M, then ours
#      compiled at 150M/650M.
# Results land in $OUT (the device tool's folder; bench/out/gpu elsewhere) as logs and JSON lines.
# The Trainer needs pydantic and duckdb, which a bare CUDA image lacks: `bash bench/gpu_wheels.sh` here
# first puts them in .whl/, and the call carries it (carry: [".whl"]). Run from the repository root:
#   bash bench/gpu_check.sh [checks|throughput|all]     (default all)
# Each part fits one device call of at most 10 minutes (checks: 1 and 2, ~3-4 min; throughput: 3, ~4-6 min);
# "all" may pass 10 minutes when compiling is slow, so with a 10-minute limit run the parts as two calls.
set -uo pipefail
PART=${1:-all}
case $PART in checks|throughput|all) ;; *) echo "usage: $0 [checks|throughput|all]" >&2; exit 2;; esac
OUT=${OUT:-bench/out/gpu}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false
PY=${PYTHON:-python3}
if compgen -G ".whl/*.whl" >/dev/null; then
  $PY -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    && export PYTHONPATH=/tmp/site
fi
{ nvidia-smi -L; $PY -c "import torch, transformers; from pipeline_lib.models.attention import varlen_available
print('torch', torch.__version__, 'transformers', transformers.__version__, torch.cuda.get_device_name(),
      'varlen', varlen_available())"; } 2>&1 | tee "$OUT/device.txt"
if [ "$PART" != throughput ]; then
timeout 180 $PY -m pytest -q -p no:cacheprovider --noconftest tests/test_gpu.py 2>&1 | tee "$OUT/test_gpu.log"
timeout 120 $PY bench/gpu_train_check.py --model 8M --steps 40 --json "$OUT/train_check.jsonl" 2>&1 | tail -25
timeout 150 $PY bench/gpu_train_check.py --model 150M --steps 30 --compile --json "$OUT/train_check.jsonl" \
  2>&1 | tail -25
fi
[ "$PART" = checks ] && exit 0
timeout 240 $PY bench/train_throughput.py --sizes 8M 35M 150M 650M --batch-tokens 16384 --steps 8 --warmup 3 \
  --json "$OUT/train_throughput.jsonl" 2>&1 | grep -v "Loading weights" | tee "$OUT/train_throughput.md"
# the same batches, our packed rows with torch.compile (train.compile) at the sizes where MFU is the target
timeout 180 $PY bench/train_throughput.py --sizes 150M 650M --batch-tokens 16384 --steps 8 --warmup 3 --compile \
  --impls ours-packed --json "$OUT/train_throughput.jsonl" 2>&1 | tee -a "$OUT/train_throughput.md"
