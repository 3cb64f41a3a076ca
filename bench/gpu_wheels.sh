#!/usr/bin/env bash
# Wheels that the training loop needs and a bare CUDA image (Python 3.12) lacks, into .whl/ (git-ignored),
# for the device tool's `carry: [".whl"]`; bench/gpu_check.sh installs them there. Run here, from the root.
set -euo pipefail
mkdir -p .whl
for pkg in "pydantic==$(.venv/bin/python -c 'import pydantic; print(pydantic.VERSION)')" \
           "pydantic-core==$(.venv/bin/python -c 'import pydantic_core; print(pydantic_core.__version__)')" \
           "annotated-types" "typing-inspection" \
           "duckdb==$(.venv/bin/python -c 'import duckdb; print(duckdb.__version__)')"; do
  python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "$pkg"
done
ls -la .whl
