"""Sort (token, slot) pairs into per-expert blocks for the fused-MoE kernel.

Shape legend: T tokens, E experts, K top-k; N = T*K (token, slot) pairs,
P = padded pair capacity, M = P / block_m blocks.

The ``moe_align_block_size`` idea (vLLM, SGLang): pairs are grouped by expert
and each group is padded to a multiple of ``block_m``, so every block of
``block_m`` rows belongs to one expert and a kernel program reads one expert's
weights. Experts without pairs get no block, so their weights are never read.
Plain torch with static shapes and no host synchronisation (CUDA-graph safe).
"""

from __future__ import annotations

from typing import NamedTuple

import torch


class AlignedPairs(NamedTuple):
    """Pairs sorted into per-expert blocks; padding slots hold the sentinel N."""

    sorted_pairs_P: torch.Tensor  # int32: pair index t*K + k, or N for padding
    block_experts_M: torch.Tensor  # int32: expert of each block, -1 past the last one
    num_padded_1: torch.Tensor  # int32 [1]: rows in use (the rest of P is spare)


def pair_capacity(num_pairs: int, num_experts: int, block_m: int) -> int:
    """P: rows enough for any routing of ``num_pairs`` pairs over ``num_experts`` experts."""
    blocks = -(-num_pairs // block_m) + min(num_experts, num_pairs)
    return blocks * block_m


def align_block_size(topk_ids_TK: torch.Tensor, num_experts: int, block_m: int) -> AlignedPairs:
    """Group the pairs of ``topk_ids_TK`` by expert (stable) into blocks of ``block_m`` rows.

    Ids must lie in ``[0, num_experts)``; this function does not check (it reads
    no values on the host).
    """
    device = topk_ids_TK.device
    ids_N = topk_ids_TK.reshape(-1).long()
    N = ids_N.numel()
    counts_E = torch.zeros(num_experts, dtype=torch.long, device=device)
    counts_E.index_add_(0, ids_N, torch.ones_like(ids_N))
    padded_E = (counts_E + block_m - 1) // block_m * block_m
    ends_E = torch.cumsum(padded_E, dim=0)
    order_N = torch.argsort(ids_N, stable=True)
    sorted_experts_N = ids_N[order_N]
    group_starts_E = torch.cumsum(counts_E, dim=0) - counts_E
    rank_N = torch.arange(N, device=device) - group_starts_E[sorted_experts_N]
    dest_N = (ends_E - padded_E)[sorted_experts_N] + rank_N
    P = pair_capacity(N, num_experts, block_m)
    sorted_pairs_P = torch.full((P,), N, dtype=torch.int32, device=device)
    sorted_pairs_P.scatter_(0, dest_N, order_N.to(torch.int32))
    block_starts_M = torch.arange(0, P, block_m, device=device)
    block_experts_M = torch.searchsorted(ends_E, block_starts_M, right=True)
    block_experts_M = torch.where(block_experts_M < num_experts, block_experts_M, -1)
    return AlignedPairs(
        sorted_pairs_P, block_experts_M.to(torch.int32), ends_E[-1:].to(torch.int32)
    )
