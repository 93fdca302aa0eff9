"""``fused_moe``: the budgeted fused MoE, dispatched to Triton (CUDA) or torch (CPU).

Shape legend: T tokens, E experts, K top-k, D model dim, F expert dim.
"""

from __future__ import annotations

import torch

from moe_spec.kernels.dispatch import choose_backend
from moe_spec.kernels.fused_moe_torch import fused_moe_torch, needs_grad


def fused_moe(
    x_TD: torch.Tensor,
    w13_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
) -> torch.Tensor:
    """SwiGLU experts combined over each token's top-k, reading only experts that have tokens.

    ``out[t] = sum_k w[t,k] * w2[e] @ (silu(w13[e,:F] @ x[t]) * (w13[e,F:] @ x[t]))`` with
    ``e = topk_ids_TK[t, k]``.

    Args:
        x_TD: token activations, fp32, fp16 or bf16.
        w13_EFD: ``[E, 2F, D]``, gate rows ``0..F-1`` then up rows ``F..2F-1`` (SGLang layout).
        w2_EDF: ``[E, D, F]`` down projections, same dtype as ``x_TD``.
        topk_ids_TK: integer expert ids in ``[0, E)``.
        topk_weights_TK: combine weights (any float dtype).

    Returns:
        ``out_TD`` ``[T, D]`` in ``x_TD``'s dtype. Triton on CUDA (fp32 accumulation,
        CUDA-graph safe), torch elsewhere; ``MOE_SPEC_KERNELS=triton|torch`` forces one.
        Where autograd differentiates through it (training), torch: the kernel has no
        backward.
    """
    grad = needs_grad(x_TD, w13_EFD, w2_EDF, topk_weights_TK)
    if not grad and choose_backend(x_TD.device) == "triton":
        from moe_spec.kernels.fused_moe_triton import fused_moe_triton

        return fused_moe_triton(x_TD, w13_EFD, w2_EDF, topk_ids_TK, topk_weights_TK)
    return fused_moe_torch(x_TD, w13_EFD, w2_EDF, topk_ids_TK, topk_weights_TK)
