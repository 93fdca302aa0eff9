"""Fused MoE in plain torch, grouped by expert: the CPU path.

Shape legend: T tokens, E experts, K top-k, D model dim, F expert dim,
N = T*K (token, slot) pairs.

Pairs are sorted by expert id; each expert that has pairs runs one gate/up
matmul and one down matmul over all of its pairs, so the weights read (and
the time, when memory-bound) grow with the number of distinct experts, not
with T or E. Element-wise work (SiLU-and-multiply, routing weight, combine)
runs once over all pairs, outside the loop over experts.

Precision: the matmuls run in the input dtype (on CPU, oneDNN's bf16 and fp16
GEMMs accumulate in fp32 and round their output once; AMX makes bf16 fast).
SiLU-and-multiply and the routing weight are applied in fp32 before the down
projection (``w * (W2 @ a) = W2 @ (w * a)``), and the combine over top-k sums
in fp32; the result is cast to ``x_TD``'s dtype. Reading the per-expert
counts is a host synchronisation: this path is not CUDA-graph safe (the
Triton path is).
"""

from __future__ import annotations

import torch

from moe_spec.kernels.checks import check_expert_counts, check_ids_in_range, check_moe_shapes


def fused_moe_torch(
    x_TD: torch.Tensor,
    w13_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
) -> torch.Tensor:
    """Budget-aware fused MoE: one pair of matmuls per expert that has tokens.

    Returns ``out_TD`` ``[T, D]`` in ``x_TD``'s dtype.
    """
    check_moe_shapes(x_TD, w13_EFD, w2_EDF, topk_ids_TK, topk_weights_TK)
    E, F = w13_EFD.shape[0], w13_EFD.shape[1] // 2
    K = topk_ids_TK.shape[1]
    ids_N = topk_ids_TK.reshape(-1).long()
    order_N = torch.argsort(ids_N, stable=True)
    rows_N = order_N // K
    try:
        counts_E = torch.bincount(ids_N, minlength=E)
    except RuntimeError:  # a negative id (SGLang marks masked rows -1): say which
        check_ids_in_range(topk_ids_TK, E)
        raise
    check_expert_counts(counts_E, E, topk_ids_TK)
    groups = expert_groups(counts_E.tolist())
    # training (moe-spec train): autograd takes no out= matmuls nor in-place ops on what it saves
    grad = needs_grad(x_TD, w13_EFD, w2_EDF, topk_weights_TK)
    x_ND = x_TD[rows_N]
    h_NF2 = grouped_matmul(x_ND, w13_EFD, groups, grad)
    weight_N = topk_weights_TK.reshape(-1)[order_N].float()
    act_NF = silu_and_mul(h_NF2, F, grad)
    act_NF = (act_NF * weight_N[:, None] if grad else act_NF.mul_(weight_N[:, None])).to(x_TD.dtype)
    y_ND = grouped_matmul(act_NF, w2_EDF, groups, grad)
    out_TD = torch.zeros(x_TD.shape, dtype=torch.float32, device=x_TD.device)
    out_TD.index_add_(0, rows_N, y_ND.float())  # autograd allows it: out_TD saves nothing
    return out_TD.to(x_TD.dtype)


def needs_grad(*tensors: torch.Tensor) -> bool:
    """Whether autograd will differentiate through an op on ``tensors`` (training)."""
    return torch.is_grad_enabled() and any(t.requires_grad for t in tensors)


def grouped_matmul(
    a_NX: torch.Tensor, w_EYX: torch.Tensor, groups: list[tuple[int, int, int]], grad: bool
) -> torch.Tensor:
    """``[N, Y]``: each expert's rows of ``a_NX`` times its ``w_EYX[e].T``, written in place
    (``grad``: concatenated, as autograd needs)."""
    if grad:
        parts = [a_NX[start:stop] @ w_EYX[e].T for e, start, stop in groups]
        return torch.cat(parts) if parts else a_NX.new_empty(0, w_EYX.shape[1])
    out_NY = a_NX.new_empty(a_NX.shape[0], w_EYX.shape[1])
    for e, start, stop in groups:
        torch.matmul(a_NX[start:stop], w_EYX[e].T, out=out_NY[start:stop])
    return out_NY


def expert_groups(counts: list[int]) -> list[tuple[int, int, int]]:
    """``(expert, start, stop)`` row ranges of the sorted pairs, experts with pairs only."""
    groups, start = [], 0
    for e, count in enumerate(counts):
        if count:
            groups.append((e, start, start + count))
            start += count
    return groups


def silu_and_mul(h_NF2: torch.Tensor, F: int, grad: bool = False) -> torch.Tensor:
    """fp32 ``silu(gate) * up`` of ``[N, 2F]`` gate-then-up projections: ``[N, F]`` (new tensor;
    ``grad``: without in-place ops, for autograd)."""
    if grad:
        return torch.nn.functional.silu(h_NF2[:, :F].float()) * h_NF2[:, F:]
    act_NF = h_NF2[:, :F].float()
    torch.nn.functional.silu(act_NF, inplace=True)
    return act_NF.mul_(h_NF2[:, F:])
