#!/usr/bin/env bash
# The GPU check of the moe-spec kernels (see bench/gpu_check.py): needs an NVIDIA GPU, PyTorch
# and Triton; runs from a checkout in under 8 minutes and prints tables for BENCHMARKS.md.
#   bash bench/gpu_check.sh [--models olmoe,qwen3] [--tokens 32,64]
# Python: $PYTHON, else the repository's .venv, else python3.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -n "${PYTHON:-}" ]; then
    py="$PYTHON"
elif [ -x .venv/bin/python ]; then
    py=.venv/bin/python
else
    py=python3
fi
exec timeout 470 "$py" bench/gpu_check.py "$@"
