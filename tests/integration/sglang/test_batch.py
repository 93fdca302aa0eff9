"""Which forward runs: tree depth from positions, and per-forward values computed once."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from moe_spec.integration.sglang.batch import (
    current_batch,
    once_per_forward,
    one_row_per_request,
    running_batch,
    tree_depth_T,
)


def test_depth_is_position_minus_the_requests_root():
    batch = SimpleNamespace(
        positions=torch.tensor([7, 8, 8, 9, 20, 21, 22, 22]), seq_lens=torch.tensor([7, 20])
    )
    assert tree_depth_T(batch, 8).tolist() == [0, 1, 1, 2, 0, 1, 2, 2]
    assert tree_depth_T(batch, 6) is None  # MoE rows that do not line up: no depth


def test_a_plain_decode_is_a_verify_of_one_row_per_request():
    batch = SimpleNamespace(seq_lens=torch.tensor([7, 20, 9]))
    assert one_row_per_request(batch, 3)
    assert not one_row_per_request(batch, 12)  # 4-token chains
    assert not one_row_per_request(SimpleNamespace(seq_lens=torch.tensor([], dtype=torch.long)), 0)
    assert not one_row_per_request(SimpleNamespace(), 3)  # nothing to tell it from


def test_values_are_computed_once_per_forward_and_fresh_for_the_next():
    calls = []

    def compute():
        calls.append(1)
        return len(calls)

    first, second = SimpleNamespace(), SimpleNamespace()
    with running_batch(first):
        assert current_batch() is first
        assert [once_per_forward("depth", compute) for _ in range(4)] == [1, 1, 1, 1]
        with running_batch(second):  # a nested forward has its own values
            assert once_per_forward("depth", compute) == 2
        assert once_per_forward("depth", compute) == 1
    with running_batch(first):  # the same batch object, a new forward
        assert once_per_forward("depth", compute) == 3
    assert current_batch() is None
    assert once_per_forward("depth", compute) == 4  # outside a forward: nothing kept
