"""Budgeted fused MoE in Triton: two launches over per-expert blocks, then the top-k sum.

Shape legend: T tokens, E experts, K top-k, D model dim, F expert dim;
N = T*K (token, slot) pairs, P padded pair rows (see ``moe_align``).

1. ``gate_up_silu_kernel``: for each block of one expert's pairs and each tile
   of F, ``silu(x @ gate.T) * (x @ up.T)`` with fp32 accumulators, stored per
   pair in the input dtype (``act_NF``).
2. ``down_weighted_kernel``: ``act @ w2[e].T`` times the pair's routing weight,
   fp32, stored per pair (``y_ND``).
3. ``y_ND.view(T, K, D).sum(1)``: the combine over top-k (fp32, deterministic).

Only experts that have pairs own blocks, so only their weights are read.
Static shapes and no host synchronisation: CUDA-graph capturable. Under
Triton's interpreter (CPU), bf16 tiles are upcast to fp32 right after loading
(the interpreter's bf16 arithmetic is wrong); on GPU ``tl.dot`` takes fp16/bf16
tiles and accumulates in fp32, and fp32 inputs use IEEE (not TF32) products.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from moe_spec.kernels.checks import check_ids_in_range, check_moe_shapes
from moe_spec.kernels.configs import MoeBlockConfig, moe_block_config
from moe_spec.kernels.dispatch import interpreter_enabled
from moe_spec.kernels.moe_align import align_block_size


@triton.jit
def gate_up_silu_kernel(
    x_ptr,
    w13_ptr,
    act_ptr,
    sorted_pairs_ptr,
    block_experts_ptr,
    num_padded_ptr,
    num_pairs,
    F,
    D,
    stride_xt,
    stride_we,
    stride_wf,
    stride_an,
    TOP_K: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``act[pair, f] = silu(x[t] . gate[e, f]) * (x[t] . up[e, f])`` for one block x F-tile."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    pair_M = tl.load(sorted_pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok_M = pair_M < num_pairs
    token_M = pair_M // TOP_K
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    offs_f = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    f_ok = offs_f < F
    offs_d = tl.arange(0, BLOCK_K)
    x_rows = x_ptr + token_M.to(tl.int64)[:, None] * stride_xt
    gate_cols = w13_ptr + expert * stride_we + offs_f[None, :].to(tl.int64) * stride_wf
    up_cols = gate_cols + F * stride_wf
    gate_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    up_acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for d0 in range(0, D, BLOCK_K):
        d = d0 + offs_d
        d_ok = d < D
        x_tile = tl.load(x_rows + d[None, :], mask=row_ok_M[:, None] & d_ok[None, :], other=0.0)
        w_mask = d_ok[:, None] & f_ok[None, :]
        gate_tile = tl.load(gate_cols + d[:, None], mask=w_mask, other=0.0)
        up_tile = tl.load(up_cols + d[:, None], mask=w_mask, other=0.0)
        if UPCAST:
            x_tile = x_tile.to(tl.float32)
            gate_tile = gate_tile.to(tl.float32)
            up_tile = up_tile.to(tl.float32)
        gate_acc = tl.dot(x_tile, gate_tile, gate_acc, input_precision=PRECISION)
        up_acc = tl.dot(x_tile, up_tile, up_acc, input_precision=PRECISION)
    act = gate_acc * tl.sigmoid(gate_acc) * up_acc
    act_ptrs = act_ptr + pair_M.to(tl.int64)[:, None] * stride_an + offs_f[None, :]
    tl.store(act_ptrs, act.to(act_ptr.dtype.element_ty), mask=row_ok_M[:, None] & f_ok[None, :])


@triton.jit
def down_weighted_kernel(
    act_ptr,
    w2_ptr,
    y_ptr,
    weights_ptr,
    sorted_pairs_ptr,
    block_experts_ptr,
    num_padded_ptr,
    num_pairs,
    D,
    F,
    stride_an,
    stride_we,
    stride_wd,
    stride_yn,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    UPCAST: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """``y[pair, d] = weight[pair] * (act[pair] . w2[e, d])`` for one block x D-tile, in fp32."""
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    if pid_m * BLOCK_M >= tl.load(num_padded_ptr):
        return
    pair_M = tl.load(sorted_pairs_ptr + pid_m * BLOCK_M + tl.arange(0, BLOCK_M))
    row_ok_M = pair_M < num_pairs
    expert = tl.load(block_experts_ptr + pid_m).to(tl.int64)
    offs_d = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    d_ok = offs_d < D
    offs_f = tl.arange(0, BLOCK_K)
    act_rows = act_ptr + pair_M.to(tl.int64)[:, None] * stride_an
    w_cols = w2_ptr + expert * stride_we + offs_d[None, :].to(tl.int64) * stride_wd
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    for f0 in range(0, F, BLOCK_K):
        f = f0 + offs_f
        f_ok = f < F
        a_tile = tl.load(act_rows + f[None, :], mask=row_ok_M[:, None] & f_ok[None, :], other=0.0)
        w_tile = tl.load(w_cols + f[:, None], mask=f_ok[:, None] & d_ok[None, :], other=0.0)
        if UPCAST:
            a_tile = a_tile.to(tl.float32)
            w_tile = w_tile.to(tl.float32)
        acc = tl.dot(a_tile, w_tile, acc, input_precision=PRECISION)
    weight_M = tl.load(weights_ptr + pair_M, mask=row_ok_M, other=0.0).to(tl.float32)
    acc = acc * weight_M[:, None]
    y_ptrs = y_ptr + pair_M.to(tl.int64)[:, None] * stride_yn + offs_d[None, :]
    tl.store(y_ptrs, acc, mask=row_ok_M[:, None] & d_ok[None, :])


def fused_moe_triton(
    x_TD: torch.Tensor,
    w13_EFD: torch.Tensor,
    w2_EDF: torch.Tensor,
    topk_ids_TK: torch.Tensor,
    topk_weights_TK: torch.Tensor,
    config: MoeBlockConfig | None = None,
) -> torch.Tensor:
    """The fused MoE of :func:`moe_spec.kernels.fused_moe` on Triton; ``[T, D]`` in x's dtype.

    ``config``: block sizes to use instead of the device table's (``bench/gpu_tune.py``).

    Ids outside ``[0, E)`` are checked only for CPU (interpreted) tensors: on
    CUDA the check would be a host synchronisation.
    """
    check_moe_shapes(x_TD, w13_EFD, w2_EDF, topk_ids_TK, topk_weights_TK)
    if not x_TD.is_cuda:
        check_ids_in_range(topk_ids_TK, w13_EFD.shape[0])
    T, D = x_TD.shape
    E, F = w13_EFD.shape[0], w13_EFD.shape[1] // 2
    K = topk_ids_TK.shape[1]
    N = T * K
    config = config or moe_block_config(N, E, x_TD.dtype, x_TD.device)
    aligned = align_block_size(topk_ids_TK, E, config.block_m)
    x_TD, w13_EFD, w2_EDF = x_TD.contiguous(), w13_EFD.contiguous(), w2_EDF.contiguous()
    weights_N = topk_weights_TK.reshape(-1).contiguous()
    act_NF = torch.empty(N, F, dtype=x_TD.dtype, device=x_TD.device)
    y_ND = torch.empty(N, D, dtype=torch.float32, device=x_TD.device)
    num_blocks = aligned.block_experts_M.numel()
    upcast = interpreter_enabled() and x_TD.dtype == torch.bfloat16
    precision = "ieee" if x_TD.dtype == torch.float32 else "tf32"
    launch = {"num_warps": config.num_warps, "num_stages": config.num_stages}
    gate_up_silu_kernel[(num_blocks, triton.cdiv(F, config.block_n))](
        x_TD, w13_EFD, act_NF, *aligned, N, F, D,
        x_TD.stride(0), w13_EFD.stride(0), w13_EFD.stride(1), act_NF.stride(0),
        TOP_K=K, BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        UPCAST=upcast, PRECISION=precision, **launch,
    )  # fmt: skip
    down_weighted_kernel[(num_blocks, triton.cdiv(D, config.block_n))](
        act_NF, w2_EDF, y_ND, weights_N, *aligned, N, D, F,
        act_NF.stride(0), w2_EDF.stride(0), w2_EDF.stride(1), y_ND.stride(0),
        BLOCK_M=config.block_m, BLOCK_N=config.block_n, BLOCK_K=config.block_k,
        UPCAST=upcast, PRECISION=precision, **launch,
    )  # fmt: skip
    return y_ND.view(T, K, D).sum(dim=1).to(x_TD.dtype)
