"""The acceptance feed's host copies of a verify step: into buffers it keeps, two sets used
in turn, so a step's copies outlive the next step's (on CUDA a step is folded in at the
next one) and no step allocates host memory once the shapes are seen."""

from __future__ import annotations

import torch

from moe_spec.integration.sglang.feed import AcceptanceFeed
from moe_spec.kernels.budget_select_torch import RANK
from moe_spec.policies import get_policy

L, E, K, N = 2, 8, 2, 4


def feed_of() -> AcceptanceFeed:
    policy = get_policy("auto")
    policy.validate, policy.record_routing = False, False
    policy.for_server()
    policy.prepare(L, E, K, E, torch.device("cpu"))
    feed = AcceptanceFeed(policy, (N, 2, 2), K)
    policy.flag_rest(RANK)  # the forwards here rank: record() writes what they would
    return feed


def record(feed: AcceptanceFeed, value: int) -> None:
    """What a verify forward leaves in the policy's device buffers."""
    for buffer in feed.buffers.values():
        buffer.fill_(value)


def storage(snap) -> list[int]:
    tensors = [snap.lens_b, snap.index_bP, *snap.recorded.values()]
    return [t.data_ptr() for t in tensors]


def test_a_steps_copies_outlive_the_next_steps_and_the_buffers_alternate():
    feed = feed_of()
    snaps = []
    for step in range(4):
        record(feed, step)
        lens_b, index_bP = torch.tensor([step + 1]), torch.full((1, 3), step)
        snaps.append(feed.snapshot(lens_b, index_bP))
        if step:  # the step before, still pending on CUDA: its copies are its own
            before = snaps[step - 1]
            assert before.lens_b.tolist() == [step] and before.index_bP.tolist() == [[step - 1] * 3]
            assert all((t == step - 1).all() for t in before.recorded.values())
            assert set(storage(before)).isdisjoint(storage(snaps[step]))
    assert storage(snaps[2]) == storage(snaps[0]) and storage(snaps[3]) == storage(snaps[1])
    assert snaps[3].recorded["rank_LE"].shape == (L, E)  # the buffers' own shapes
    assert snaps[3].recorded["ids_LRK"].shape == (L, N, K)


def test_a_batch_of_another_size_gets_buffers_of_its_size():
    feed = feed_of()
    record(feed, 1)
    feed.snapshot(torch.tensor([2]), torch.tensor([[0, 1, -1]]))
    feed.snapshot(torch.tensor([1]), torch.tensor([[0, -1, -1]]))
    wide = feed.snapshot(torch.tensor([2, 3]), torch.tensor([[0, 1, -1], [4, 5, 6]]))
    assert wide.lens_b.tolist() == [2, 3] and wide.index_bP.tolist() == [[0, 1, -1], [4, 5, 6]]
    narrow = feed.snapshot(torch.tensor([1]), torch.tensor([[0, -1, -1]]))
    assert narrow.lens_b.tolist() == [1] and narrow.index_bP.tolist() == [[0, -1, -1]]
