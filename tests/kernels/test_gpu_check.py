"""bench/gpu_check.sh: a clear failure without a GPU, and a CPU smoke run of its code paths."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from moe_spec.costmodel.measured import POINT_FIELDS

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


def run_interpreted(script: str, out: Path, timeout: int) -> subprocess.CompletedProcess:
    """``bench/<script> --interpret --json out``; its exit status checked."""
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / script), "--interpret", "--json", str(out)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done


@pytest.mark.slow
def test_interpreter_smoke_run_passes_its_checks_and_prints_tables(tmp_path):
    out = tmp_path / "points.json"
    done = run_interpreted("gpu_check.py", out, timeout=600)
    assert "[FAIL]" not in done.stdout
    assert "budget selection T=64 E=128 K=8: ids and kept sets equal" in done.stdout
    assert "tiny T=8 B=4 graph replay: logits equal eager" in done.stdout
    assert "| step | T | B | experts read / layer | eager ms | CUDA graph ms |" in done.stdout
    assert "budget selection inside a captured verify" in done.stdout
    assert "`auto` ms (L calls, as SGLang's plugin)" in done.stdout
    assert "| `auto` at rest ms | at rest / `auto` |" in done.stdout
    assert "resting with scores, ranked after T=64 E=128 K=8: rows copied" in done.stdout
    assert "| `auto` at rest, scored, ranked after ms | scored / `auto` |" in done.stdout
    assert "(SGLang's masked rows too) | plugin at rest / selection |" in done.stdout
    assert "`auto` not timed" not in done.stdout and "| n/a |" not in done.stdout
    assert "| U | Triton ms | GB/s of weights |" in done.stdout
    assert "checks failed: 0 (none)" in done.stdout
    report = json.loads(out.read_text())
    # decode + (none, B=4, B=8) at T=8, eager and "graph" (eager under the interpreter)
    assert len(report["points"]) == 8
    assert all(set(POINT_FIELDS) <= set(p) for p in report["points"])
    budgeted = [p for p in report["points"] if p["budget"] == 4]
    assert budgeted and all(p["distinct"] <= 4 for p in budgeted)


@pytest.mark.slow
def test_tuning_sweep_smoke_run_prints_both_tables(tmp_path):
    out = tmp_path / "tune.json"
    done = run_interpreted("gpu_tune.py", out, timeout=300)
    assert "| tiny | 8 | none |" in done.stdout
    report = json.loads(out.read_text())
    assert [c["T"] for c in report["cases"]] == [1, 8]
    (selection,) = report["selection"]
    assert selection["all_same"] and len(selection["all"]) == 2
