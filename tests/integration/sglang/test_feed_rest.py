"""A verify step whose selection rested (the policy's device rest flag set as its forward
ran: every expert kept, no ranking written) is observed without a ranking, as rested; the
flag is read when the step is copied, so a step folded in late (on CUDA, at the next one)
is judged by its own flag, not by the plan made since. A step that rested with its scores
kept is ranked after its forward and observed as ranked."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from moe_spec.budget import expert_rank_LE
from moe_spec.integration.sglang.feed import AcceptanceFeed
from moe_spec.kernels.budget_select_torch import REST_SCORED
from moe_spec.policies import get_policy

L, E, K, N = 2, 8, 2, 4


def served_feed(seen: list) -> tuple:
    """A served ``auto`` and its feed; each ``observe`` call's ``(rank_LE, ids_LNK,
    rested)`` appended to ``seen`` (the ranking cloned)."""
    policy = get_policy("auto")
    policy.validate, policy.record_routing = False, False
    policy.for_server()
    policy.prepare(L, E, K, E, torch.device("cpu"))
    feed = AcceptanceFeed(policy, (N, 2, 2), K)
    observe = policy.observe

    def spy(outcome, rank_LE=None, ids_LNK=None, rested=None):
        seen.append((None if rank_LE is None else rank_LE.clone(), ids_LNK, rested))
        observe(outcome, rank_LE, ids_LNK, rested=rested)

    policy.observe = spy
    return policy, feed


def test_a_rested_step_is_observed_without_its_ranking():
    calls = []
    policy, feed = served_feed(calls)
    result = SimpleNamespace(accept_lens=torch.tensor([2]), accept_index=torch.tensor([[0, 1, -1]]))
    batch = SimpleNamespace(forward_mode=None, reqs=[SimpleNamespace(rid="r0")])
    snaps = []
    for rest in (False, True, True, False):
        policy.flag_rest(rest)  # as plan_step sets it before the forward
        snaps.append(feed.snapshot(result.accept_lens, result.accept_index))
    assert [s.rested for s in snaps] == [False, True, True, False]
    policy.flag_rest(False)  # the plan made since: the late fold must not read it
    for snap in snaps:
        feed.fold(snap)
    seen = [(rank is None, ids is not None, rested) for rank, ids, rested in calls]
    ranked, rested = (False, True, False), (True, True, True)  # (no ranking, top-k, rested)
    assert seen == [ranked, rested, rested, ranked]
    policy.flag_rest(True)
    feed.after_verify(result, batch)  # on a CPU: copied and folded at once
    rank, ids, rested = calls[-1]
    assert (rank is None, ids is not None, rested) == (True, True, True)
    assert "3 of 5 tree steps rested (budgets at E, no ranking)" in feed.line()


def test_a_step_ranked_after_its_forward_is_observed_with_the_ranks_of_its_scores():
    """At REST_SCORED the forward's resting selections leave scores, not ranks: the feed
    has the policy rank them before the copies, and the step is observed as ranked."""
    seen = []
    policy, feed = served_feed(seen)
    g = torch.Generator().manual_seed(3)
    state = policy.device_state
    scores_LE = torch.randint(0, 3, (L, E), generator=g).float()  # ties broken by id
    used_LE = (torch.rand(L, E, generator=g) < 0.5).to(torch.int32)
    state["score_LE"].copy_(scores_LE)  # what the resting selections wrote
    state["used_LE"].copy_(used_LE)
    state["rank_LE"].fill_(-1)  # and no ranks
    policy.flag_rest(REST_SCORED)
    result = SimpleNamespace(accept_lens=torch.tensor([2]), accept_index=torch.tensor([[0, 1, -1]]))
    snap = feed.snapshot(result.accept_lens, result.accept_index)
    assert not snap.rested and snap.ranked_after
    want = expert_rank_LE(scores_LE, used_LE.bool())
    assert torch.equal(snap.recorded["rank_LE"], want)
    feed.fold(snap)
    assert len(seen) == 1 and torch.equal(seen[0][0], want) and seen[0][2] is False
    assert "0 of 1 tree steps rested (budgets at E, no ranking), 1 ranked after" in feed.line()
