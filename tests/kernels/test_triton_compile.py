"""bench/triton_compile.py: every kernel compiles for an H100/H200 without one, and a kernel
that only the interpreter runs is reported.

The rest of the suite runs the kernels under Triton's interpreter (set in ``conftest.py``
before Triton is imported); these compiles run in subprocesses without it.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
KERNELS = (
    "score_keep_kernel",
    "rewrite_topk_kernel",
    "rank_layers_kernel",
    "rank_scored_kernel",
    "gate_up_silu_kernel",
    "down_weighted_kernel",
)

pytest.importorskip("triton.backends.nvidia.driver", reason="Triton without its CUDA backend")


def ptxas_runs() -> bool:
    """Whether Triton's bundled ptxas (what turns a kernel into a cubin) runs here."""
    sys.path.insert(0, str(REPO / "bench"))
    from triton_compile import nvidia_tool

    try:
        ptxas = str(nvidia_tool("ptxas"))
        return subprocess.run([ptxas, "--version"], capture_output=True).returncode == 0
    except OSError:
        return False


pytestmark = pytest.mark.skipif(not ptxas_runs(), reason="Triton's ptxas does not run here")


def compiling_env() -> dict[str, str]:
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    env.pop("MOE_SPEC_KERNELS", None)
    return env


@pytest.mark.slow
def test_every_launch_compiles_for_sm90_within_its_resources(tmp_path):
    out = tmp_path / "compiles.json"
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "triton_compile.py"), "--json", str(out)],
        env=compiling_env(),
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    records = json.loads(out.read_text())
    assert {r["kernel"] for r in records} == set(KERNELS)
    assert all(r["arch"] == 90 and r["error"] == "" for r in records)
    # real cubins: registers read back from them, shared memory within an H100's
    assert all(r["regs"] and 0 < r["regs"] <= 255 for r in records)
    assert all(0 < r["shared"] <= 232448 for r in records)
    launches = {r["launch"] for r in records}
    assert "selection T=32 E=128 K=8 softmax (SGLang)" in launches  # bf16, int32, device flags
    assert any(name.startswith("fused MoE bfloat16") and "H200" in name for name in launches)
    assert "failed: 0" in done.stdout


BROKEN = """
import sys
import torch
import triton
import triton.language as tl

sys.path.insert(0, {bench!r})
from triton_compile import compile_only


def double(x):  # no @triton.jit: the interpreter calls it, a GPU compile cannot
    return x * 2


@triton.jit
def helper_kernel(a_ptr, out_ptr, BLOCK: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    tl.store(out_ptr + offs, double(tl.load(a_ptr + offs)))


@triton.jit
def big_tile_kernel(a_ptr, out_ptr, BLOCK: tl.constexpr, STEPS: tl.constexpr):
    offs = tl.arange(0, BLOCK)
    acc = tl.zeros((BLOCK, BLOCK), dtype=tl.float32)
    for k in range(STEPS):
        a = tl.load(a_ptr + k * BLOCK * BLOCK + offs[:, None] * BLOCK + offs[None, :])
        acc = tl.dot(a, a, acc)
    tl.store(out_ptr + offs[:, None] * BLOCK + offs[None, :], acc)


def launch(block):
    a = torch.randn(2 * block * block)
    big_tile_kernel[(1,)](a, torch.empty(block, block), BLOCK=block, STEPS=2, num_stages=4)


a = torch.randn(16)
if {interpret!r}:  # the interpreter runs both
    out = torch.empty_like(a)
    helper_kernel[(1,)](a, out, BLOCK=16)
    assert torch.equal(out, 2 * a)
    launch(256)
    print("interpreted")
else:
    with compile_only(90) as session:
        session.launch = "helper"
        helper_kernel[(1,)](a, torch.empty_like(a), BLOCK=16)
        session.launch = "big tiles"
        launch(256)
        session.launch = "small tiles"
        launch(32)
    for r in session.records:
        print(r.launch, "|", "; ".join(r.problems()) or "ok")
"""


@pytest.mark.slow
def test_a_kernel_only_the_interpreter_runs_is_reported(tmp_path):
    def run(interpret: bool) -> str:
        script = tmp_path / f"broken_{interpret}.py"
        script.write_text(BROKEN.format(bench=str(REPO / "bench"), interpret=interpret))
        env = compiling_env() | ({"TRITON_INTERPRET": "1"} if interpret else {})
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=600
        )
        assert done.returncode == 0, done.stdout + done.stderr
        return done.stdout

    assert run(interpret=True).strip() == "interpreted"
    lines = dict(line.split(" | ") for line in run(interpret=False).strip().splitlines())
    assert "Unsupported function referenced" in lines["helper"]
    assert "double" in lines["helper"]
    assert lines["big tiles"].startswith("needs 524288 bytes of shared memory; sm_90 has 232448")
    assert lines["small tiles"] == "ok"


def test_refuses_to_run_under_the_interpreter():
    done = subprocess.run(
        [sys.executable, str(REPO / "bench" / "triton_compile.py")],
        env=compiling_env() | {"TRITON_INTERPRET": "1"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode != 0
    assert "TRITON_INTERPRET is set" in done.stderr
