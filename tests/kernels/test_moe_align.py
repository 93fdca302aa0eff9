"""align_block_size against a plain Python grouping of the (token, slot) pairs."""

from __future__ import annotations

import pytest
import torch

from moe_spec.kernels.moe_align import align_block_size, pair_capacity
from tests.kernels.moe_cases import make_routing


def python_blocks(ids_TK: torch.Tensor, E: int, block_m: int) -> list[tuple[int, list[int]]]:
    """``(expert, pairs)`` per block, experts in id order, pairs in order, padded with N."""
    flat = ids_TK.reshape(-1).tolist()
    N = len(flat)
    blocks = []
    for e in range(E):
        pairs = [n for n, i in enumerate(flat) if i == e]
        for start in range(0, len(pairs), block_m):
            chunk = pairs[start : start + block_m]
            blocks.append((e, chunk + [N] * (block_m - len(chunk))))
    return blocks


@pytest.mark.parametrize(("T", "E", "K", "block_m"), [(1, 8, 1, 16), (7, 8, 2, 4), (33, 64, 8, 16)])
def test_blocks_match_python_grouping(T, E, K, block_m):
    ids_TK, _ = make_routing(T, E, K)
    aligned = align_block_size(ids_TK.to(torch.int32), E, block_m)
    want = python_blocks(ids_TK, E, block_m)
    used = int(aligned.num_padded_1[0])
    assert used == len(want) * block_m
    assert aligned.sorted_pairs_P.numel() == pair_capacity(T * K, E, block_m) >= used
    got_pairs = aligned.sorted_pairs_P[:used].view(-1, block_m).tolist()
    got_experts = aligned.block_experts_M[: len(want)].tolist()
    assert list(zip(got_experts, got_pairs, strict=True)) == want
    assert (aligned.block_experts_M[len(want) :] == -1).all()
    assert (aligned.sorted_pairs_P[used:] == T * K).all()


def test_one_pair_per_expert_and_all_pairs_on_one_expert():
    """One pair per expert: a block each. Nine pairs on expert 5: three blocks, the last padded."""
    E, block_m = 8, 4
    ids_TK = torch.arange(E)[:, None]
    aligned = align_block_size(ids_TK, E, block_m)
    assert int(aligned.num_padded_1[0]) == aligned.sorted_pairs_P.numel() - block_m * 2
    assert aligned.block_experts_M[:E].tolist() == list(range(E))
    one_expert = align_block_size(torch.full((9, 1), 5), E, block_m)
    assert one_expert.block_experts_M[:3].tolist() == [5, 5, 5]
    assert one_expert.sorted_pairs_P[:12].tolist() == list(range(9)) + [9, 9, 9]
