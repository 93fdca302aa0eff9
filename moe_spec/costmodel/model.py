"""Named cost models: a device profile plus the overhead terms of one forward.

One forward of ``T`` tokens reading ``d`` distinct experts in each of ``L_moe`` MoE
layers (of ``L`` layers) takes

    t = forward_s + L * layer_s + L_moe * d * expert_s
        + sum over parts of max(bytes / bandwidth, FLOPs / peak)

(parts: dense weights, the distinct experts, the KV cache; ``moe_spec.costmodel.roofline``).
The variants:

- ``roofline``: all overheads 0; bandwidth and peak from the data sheet.
- ``calibrated`` (default): the overheads fitted to the published points of
  ``moe_spec.costmodel.published`` (all A100 measurements of eager-PyTorch EAGLE-3
  stacks). The same terms are used on every GPU: they are host-side (launch and
  dispatch) costs, which a faster HBM does not shorten; that is an assumption, as no
  H100/H200 point is in the data. ``bench/costmodel_fit.py`` prints the fit and its
  leave-one-out errors (BENCHMARKS.md).
- ``measured``: the overheads (``select_s`` included) fitted to the forwards the GPU
  check measured on that GPU, replayed from CUDA graphs with the project's Triton
  kernels (``moe_spec.costmodel.measured``; shipped for the H200). The served-stack
  setting: launch overhead is gone, fixed per-layer kernel costs are not.
- ``cpu``: the running machine measured (``moe_spec.costmodel.cpu``); only for the
  reference engine on CPU.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from moe_spec.costmodel.gpus import GPU, get_gpu
from moe_spec.costmodel.roofline import NO_OVERHEADS, Overheads

COST_MODELS = ("calibrated", "roofline", "measured")


@dataclass(frozen=True)
class CostModel:
    """A device and the fixed terms its forwards pay (``name`` says which variant)."""

    name: str
    gpu: GPU
    overheads: Overheads = NO_OVERHEADS

    def describe(self) -> str:
        o = self.overheads
        return (
            f"{self.name} cost model on {self.gpu.name} (forward {o.forward_s * 1e6:.0f} us, "
            f"layer {o.layer_s * 1e6:.0f} us, expert {o.expert_s * 1e6:.2f} us, "
            f"selection {o.select_s * 1e6:.1f} us, tree {o.tree_s * 1e6:.0f} us + "
            f"{o.token_s * 1e6:.2f} us/token)"
        )


@lru_cache(maxsize=1)
def calibrated_overheads() -> Overheads:
    """The overheads fitted to every published point (cached: about a second to fit)."""
    from moe_spec.costmodel.fit import fit_overheads
    from moe_spec.costmodel.published import PUBLISHED

    return fit_overheads(PUBLISHED)


@lru_cache(maxsize=4)
def measured_overheads(gpu_name: str) -> Overheads:
    """The overheads fitted to the shipped CUDA-graph measurements of ``gpu_name``."""
    from moe_spec.costmodel.fit import FREE_MEASURED, fit_overheads
    from moe_spec.costmodel.measured import shipped_points

    return fit_overheads(shipped_points(gpu_name), FREE_MEASURED)


def get_cost_model(name: str, gpu_name: str) -> CostModel:
    """A named cost model on the named GPU; ``ValueError`` lists what is allowed."""
    gpu = get_gpu(gpu_name)
    if name == "roofline":
        return CostModel(name, gpu)
    if name == "calibrated":
        return CostModel(name, gpu, calibrated_overheads())
    if name == "measured":
        return CostModel(name, gpu, measured_overheads(gpu.name))
    raise ValueError(f"unknown cost model {name!r}; allowed: {', '.join(COST_MODELS)}")
