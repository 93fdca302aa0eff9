"""Kernels for the budgeted verify pass, each beside a plain-torch reference.

``fused_moe`` (budgeted fused MoE) and the dispatch rule: Triton on CUDA,
torch on CPU, ``MOE_SPEC_KERNELS=triton|torch`` to force one. Importing this
package never imports Triton; the Triton paths load on first use.
"""

from moe_spec.kernels.dispatch import KERNELS_ENV, KernelBackendError, choose_backend
from moe_spec.kernels.fused_moe import fused_moe
from moe_spec.kernels.fused_moe_reference import fused_moe_reference
from moe_spec.kernels.fused_moe_torch import fused_moe_torch

__all__ = [
    "KERNELS_ENV",
    "KernelBackendError",
    "choose_backend",
    "fused_moe",
    "fused_moe_reference",
    "fused_moe_torch",
]
