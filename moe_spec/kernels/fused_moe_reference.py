"""Loop-over-experts fused-MoE reference: slow, obvious, all in fp32.

Shape legend: T tokens, E experts, K top-k, D model dim, F expert dim.

The yardstick the torch and Triton paths are tested against. Weights use
SGLang's FusedMoE layout: ``w13_EFD`` is ``[E, 2F, D]`` (rows ``0..F-1`` the
gate projection, rows ``F..2F-1`` the up projection), ``w2_EDF`` is ``[E, D, F]``.
"""

from __future__ import annotations

import torch


def fused_moe_reference(
    x_TD: torch.Tensor,
    w13_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
) -> torch.Tensor:
    """``out[t] = sum_k w[t,k] * w2[e] @ (silu(gate[e] @ x[t]) * (up[e] @ x[t]))``.

    ``e = topk_ids_TK[t, k]``; gate = ``w13[e, :F]``, up = ``w13[e, F:]``.

    Every product and sum runs in fp32; the result is cast to ``x_TD``'s dtype.
    Returns ``out_TD`` ``[T, D]``.
    """
    E, F = w13_EFD.shape[0], w13_EFD.shape[1] // 2
    out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    for e in range(E):
        rows_N, slots_N = (topk_ids_TK == e).nonzero(as_tuple=True)
        if rows_N.numel() == 0:
            continue
        x_ND = x_TD[rows_N].float()
        gate_NF = x_ND @ w13_EFD[e, :F].float().T
        up_NF = x_ND @ w13_EFD[e, F:].float().T
        y_ND = (torch.nn.functional.silu(gate_NF) * up_NF) @ w2_EDF[e].float().T
        weight_N = topk_weights_TK[rows_N, slots_N].float()
        out_TD.index_add_(0, rows_N, y_ND * weight_N[:, None])
    return out_TD.to(x_TD.dtype)
