"""Shape and dtype checks shared by the MoE kernels (free: they read no tensor values).

Shape legend: T tokens, E experts, K top-k, D model dim, F expert dim.
"""

from __future__ import annotations

import torch

MOE_DTYPES: tuple[torch.dtype, ...] = (torch.float32, torch.float16, torch.bfloat16)


def check_moe_shapes(
    x_TD: torch.Tensor,
    w13_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
) -> None:
    """Raise ``ValueError`` naming the bad shape or dtype of a fused-MoE call."""
    if x_TD.dim() != 2:
        raise ValueError(f"x_TD must be 2-D [T, D], got shape {tuple(x_TD.shape)}")
    T, D = x_TD.shape
    if x_TD.dtype not in MOE_DTYPES:
        raise ValueError(f"x_TD has dtype {x_TD.dtype}; allowed: {', '.join(map(str, MOE_DTYPES))}")
    if w13_EFD.dim() != 3 or w13_EFD.shape[2] != D or w13_EFD.shape[1] % 2:
        raise ValueError(
            f"w13_EFD must be [E, 2F, D={D}] (gate rows then up rows), got {tuple(w13_EFD.shape)}"
        )
    E, F = w13_EFD.shape[0], w13_EFD.shape[1] // 2
    if tuple(w2_EDF.shape) != (E, D, F):
        raise ValueError(f"w2_EDF must be [E={E}, D={D}, F={F}], got {tuple(w2_EDF.shape)}")
    for name, w in (("w13_EFD", w13_EFD), ("w2_EDF", w2_EDF)):
        if w.dtype != x_TD.dtype:
            raise ValueError(f"{name} has dtype {w.dtype}; it must match x_TD's {x_TD.dtype}")
        if w.device != x_TD.device:
            raise ValueError(f"{name} is on {w.device}; it must be on x_TD's device {x_TD.device}")
    if topk_ids_TK.dim() != 2 or topk_ids_TK.shape[0] != T:
        raise ValueError(f"topk_ids_TK must be [T={T}, K], got shape {tuple(topk_ids_TK.shape)}")
    if topk_ids_TK.is_floating_point() or topk_ids_TK.dtype == torch.bool:
        raise ValueError(f"topk_ids_TK must be an integer tensor, got {topk_ids_TK.dtype}")
    if tuple(topk_weights_TK.shape) != tuple(topk_ids_TK.shape):
        raise ValueError(
            f"topk_weights_TK must have topk_ids_TK's shape {tuple(topk_ids_TK.shape)}, "
            f"got {tuple(topk_weights_TK.shape)}"
        )
    if not topk_weights_TK.is_floating_point():
        raise ValueError(f"topk_weights_TK must be floating point, got {topk_weights_TK.dtype}")


def check_expert_counts(
    counts_E: torch.Tensor, num_experts: int, topk_ids_TK: torch.Tensor
) -> None:
    """Raise ``ValueError`` when ``bincount`` saw ids outside ``[0, E)`` (host-side check)."""
    if counts_E.numel() > num_experts:
        bad = int(topk_ids_TK.max())
        raise ValueError(
            f"topk_ids_TK contains expert id {bad}; ids must be in [0, E={num_experts})"
        )


def check_ids_in_range(topk_ids_TK: torch.Tensor, num_experts: int) -> None:
    """Raise ``ValueError`` for an expert id outside ``[0, E)`` (reads the ids on the host)."""
    bad_TK = (topk_ids_TK < 0) | (topk_ids_TK >= num_experts)
    if bool(bad_TK.any()):
        bad = int(topk_ids_TK[bad_TK][0])
        raise ValueError(
            f"topk_ids_TK contains expert id {bad}; ids must be in [0, E={num_experts})"
        )
