"""Test-only plugins, found through their entry points on the live servers' path.

``failing-router-mass`` budgets exactly as ``router-mass`` until the file named
by its ``trip`` option exists; from then on every call raises, as a buggy
third-party policy would in the middle of serving. ``cpu_stand_ins`` (an SGLang
plugin) replaces the Triton kernels a CPU server would otherwise launch.
"""

from __future__ import annotations

from pathlib import Path

from moe_spec.policies.builtin import RouterMass
from moe_spec.policies.hookspecs import hookimpl

FAILURE = "failing-router-mass: tripped on purpose"


class FailingRouterMass(RouterMass):
    name = "failing-router-mass"
    description = "router-mass that raises once its trip file exists (tests only)"

    def __init__(self, trip: str = "") -> None:
        super().__init__()
        self.trip = Path(trip) if trip else None

    def apply(self, record, budget, **kwargs):
        if self.trip is not None and self.trip.exists():
            raise RuntimeError(FAILURE)
        return super().apply(record, budget, **kwargs)


@hookimpl
def register_policies(register) -> None:
    register(FailingRouterMass)


def gate_sigmoid_mul(hidden_TD, gate_D, shared_TD, out_TD=None):
    """``sigmoid(hidden . gate) * shared`` (+ ``out_TD``, in place, when given), in fp32 as
    SGLang's Triton ``_fused_gate_sigmoid_mul_add_kernel`` computes it."""
    import torch

    gate_T1 = torch.sigmoid(hidden_TD.float() @ gate_D.float())[:, None]
    if out_TD is None:
        return (gate_T1 * shared_TD.float()).to(shared_TD.dtype)
    out_TD.copy_(gate_T1 * shared_TD.float() + out_TD.float())
    return None


def cpu_stand_ins() -> None:
    """SGLang plugin (test servers only): torch for the Triton kernels a CPU cannot launch.

    SGLang 0.5.23's Qwen2-MoE gates its shared expert with the Triton kernels
    ``fused_gate_sigmoid_mul(_add)`` whenever the gate is not an AMX layer; the stand-in
    ``sgl_kernel`` has no AMX ops, so on the test servers they would be launched on CPU
    tensors. (A GPU runs the kernels; a CPU with sgl-kernel's CPU build takes the AMX op.)
    """
    from sglang.srt.models import qwen2_moe

    qwen2_moe.fused_gate_sigmoid_mul = gate_sigmoid_mul
    qwen2_moe.fused_gate_sigmoid_mul_add = gate_sigmoid_mul
