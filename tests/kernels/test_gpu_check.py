"""bench/gpu_check.sh: a clear failure without a GPU, and a CPU smoke run of its code paths."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the check would run")
def test_without_gpu_exits_2_with_a_clear_message():
    env = os.environ | {"PYTHON": sys.executable, "CUDA_VISIBLE_DEVICES": ""}
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh")], env=env, capture_output=True, text=True
    )
    assert done.returncode == 2
    assert "no CUDA GPU is visible to PyTorch" in done.stderr
    assert "run it on a machine with one" in done.stderr


@pytest.mark.slow
def test_interpreter_smoke_run_passes_its_checks_and_prints_tables():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "gpu_check.py"), "--interpret"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert "[FAIL]" not in done.stdout
    assert "budget selection T=64 E=128 K=8: ids and kept sets equal" in done.stdout
    assert "| U | Triton ms | GB/s of weights |" in done.stdout
    assert "checks failed: 0 (none)" in done.stdout
