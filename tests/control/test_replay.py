"""moe_spec.control.replay: a live guard's calls, recorded, replay to the same decisions."""

from __future__ import annotations

import pytest
import torch

from moe_spec.control import AcceptanceEstimates, Guard, StepCost, StepOutcome
from moe_spec.control.replay import Recording, record, replay_seconds
from moe_spec.costmodel import get_cost_model, get_shape

TREES = [(8, 4, 3), (4, 3, 3)]
L, E, K = 2, 8, 2


def guard(**options) -> Guard:
    est = AcceptanceEstimates(L, E, [n for n, _, _ in TREES])
    cost = StepCost(get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B"), K, E, TREES)
    return Guard(est, cost, K, E, gate=False, warmup=1, probe=4, **options)


def run(g: Guard, plans: int, rank_LE: torch.Tensor) -> str:
    """``plans`` plans, each observed: a tree step accepts only its root (so the guard turns
    to decoding and probes), with a ranking and top-k for the window; "T" tree, "a" decode."""
    kinds = ""
    for _ in range(plans):
        plan = g.plan()
        if plan.kind == "autoregressive":
            kinds += "a" * plan.steps
            g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
            continue
        kinds += "T"
        n = plan.num_tokens
        ids_LNK = (torch.arange(L * n * K).reshape(L, n, K) % E).long()
        lp = -torch.arange(n, dtype=torch.float32) / 2
        depth = torch.tensor([0] + [1] * (n - 1))
        g.observe(StepOutcome("tree", [0], depth, lp, plan.tree), rank_LE, ids_LNK)
        rank_LE.add_(1).remainder_(E)  # the buffer the next step rewrites, as a server's
    return kinds


def test_a_replay_decides_as_the_live_run_and_times_each_kind_of_step():
    recording = Recording()
    rank_LE = torch.arange(E).repeat(L, 1)
    kinds = run(record(guard(), recording), 12, rank_LE)
    assert "T" in kinds and "a" in kinds, kinds
    assert [name for name, *_ in recording.calls] == ["plan", "observe"] * 12
    timed = replay_seconds(recording, guard, repeats=2)
    assert (timed.tree_steps, timed.decodes) == (kinds.count("T"), kinds.count("a"))
    assert timed.tree_s > 0 and timed.decode_s > 0
    assert timed.per_tree_step_s == timed.tree_s / kinds.count("T")


def test_a_recorded_ranking_is_the_one_the_step_passed_not_the_buffer_rewritten_after():
    recording = Recording()
    rank_LE = torch.arange(E).repeat(L, 1)
    run(record(guard(), recording), 1, rank_LE)  # the warm-up tree step
    (_, (_, kept, _), _, _) = recording.calls[1]
    assert kept.tolist() == torch.arange(E).repeat(L, 1).tolist() != rank_LE.tolist()


def test_a_replay_that_decides_otherwise_is_refused():
    recording = Recording()
    run(record(guard(), recording), 6, torch.arange(E).repeat(L, 1))
    with pytest.raises(ValueError, match=r"the replay's plan call \d+ answered .* the live run"):
        replay_seconds(recording, lambda: guard(guard=False))  # never leaves the full tree
    with pytest.raises(ValueError, match="repeats is 0; allowed: an integer >= 1"):
        replay_seconds(recording, guard, repeats=0)


def test_a_replay_feeds_the_draft_guesses_a_shadowing_guard_was_told():
    """A chain guard with ``shadow``: the draft's guesses at the decoded tokens (at a read
    after them, or at the catch-up before a tree) show the chain committing all it drafts,
    so the guard goes back to the chain, whose steps commit only the root. Without those
    calls the replay would decide otherwise."""
    chains = [(4, 1, 3), (2, 1, 1)]

    def chain_guard() -> Guard:
        est = AcceptanceEstimates(L, E, [n for n, _, _ in chains])
        cost = StepCost(
            get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B"), K, E, chains
        )
        return Guard(est, cost, K, E, gate=False, warmup=1, shadow=True, explore=0.005)

    recording, rank_LE = Recording(), torch.arange(E).repeat(L, 1)
    g = record(chain_guard(), recording)
    unread = reads = 0
    for _ in range(40):
        plan = g.plan()
        if plan.kind == "autoregressive":
            unread += plan.steps
            if plan.read:
                g.draft_matched([True] * unread)
                unread, reads = 0, reads + 1
            g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
            continue
        if unread:  # the draft catches up before the tree
            g.draft_matched([True] * unread)
            unread, reads = 0, reads + 1
        n = plan.num_tokens
        ids_LNK = (torch.arange(L * n * K).reshape(L, n, K) % E).long()
        depth = torch.arange(n)
        g.observe(StepOutcome("tree", [0], depth, -depth.float(), plan.tree), rank_LE, ids_LNK)
    reasons = [result.reason for name, _, _, result in recording.calls if name == "plan"]
    assert reads >= 2 and any(r.startswith("switched to tree 4/1/3") for r in reasons)
    replay_seconds(recording, chain_guard, repeats=1)
    recording.calls = [c for c in recording.calls if c[0] != "draft_matched"]
    with pytest.raises(ValueError, match="the replay's plan call"):
        replay_seconds(recording, chain_guard, repeats=1)
