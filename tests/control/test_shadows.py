"""The guard's shadows: what a chain would commit on decoded text, from the draft's guesses."""

from __future__ import annotations

import pytest
import torch

from moe_spec.control import AcceptanceEstimates, Guard, StepCost, StepOutcome, StepPlan
from moe_spec.control.looks import spacing
from moe_spec.control.shadows import chain_mean, shadow_runs
from moe_spec.costmodel import get_cost_model, get_shape
from moe_spec.policies import PolicyError, get_policy

CHAINS = [(4, 1, 3), (2, 1, 1)]
T, F = True, False


def guard(trees=CHAINS, **options) -> Guard:
    est = AcceptanceEstimates(2, 8, [n for n, _, _ in trees])
    cost = StepCost(get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B"), 2, 8, trees)
    return Guard(est, cost, 2, 8, **options)


def chain_step(g: Guard, committed: int, tree=CHAINS[0]) -> None:
    """A step of chain ``tree`` committing ``committed`` tokens, with routing: it enters
    the window."""
    n = tree[0]
    outcome = StepOutcome(
        "tree", list(range(committed)), torch.arange(n), -torch.arange(n).float(), tree
    )
    g.observe(outcome, torch.arange(8).repeat(2, 1), torch.zeros((2, n, 2), dtype=torch.long))


@pytest.mark.parametrize(
    "matched, depth, runs",
    [
        # the last two runs reach the end of the text: cut at the levels it shows
        ([T, T, F, T, T, T, T], 3, [(2, 3), (1, 3), (0, 3), (3, 3), (3, 3), (2, 2), (1, 1)]),
        ([T, T, F, T, T, T, T], 1, [(1, 1), (1, 1), (0, 1), (1, 1), (1, 1), (1, 1), (1, 1)]),
        ([F, F, F], 3, [(0, 3), (0, 2), (0, 1)]),
        ([T, T], 3, [(2, 2), (1, 1)]),
        ([], 3, []),
    ],
)
def test_shadow_runs_count_the_drafts_a_greedy_chain_would_commit(matched, depth, runs):
    assert shadow_runs(matched, depth) == runs


def test_shadow_runs_match_a_chain_run_over_the_same_guesses():
    """Against a direct simulation: a chain rooted before token j drafts tokens j.. one at a
    time and stops at the first the target did not decode, or where the text ends."""
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        matched = (torch.rand(12, generator=g) < 0.7).tolist()
        want = []
        for j in range(12):
            committed, k = 0, j
            while committed < 3 and k < 12 and matched[k]:
                committed, k = committed + 1, k + 1
            want.append((committed, min(3, 12 - j)))
        assert shadow_runs(matched, 3) == want


def test_uncut_shadows_give_the_mean_of_the_runs():
    runs = [3, 2, 1, 0, 0, 2]
    for depth in (1, 2, 3):
        got = chain_mean([(r, 3) for r in runs], depth)
        assert got == pytest.approx(1 + sum(min(r, depth) for r in runs) / len(runs))


def test_cut_shadows_count_for_the_levels_they_show():
    """Against the product-limit estimate worked by hand, and against a simulation: runs
    of a chain whose drafts are each accepted with p, cut at random, estimate its mean
    where leaving the cut ones out underestimates it."""
    # level 1: all 6 show it, 4 passed; level 2: 3 of those show it (the cut (1, 1) shows
    # level 1 alone), 2 passed; level 3: those 2 show it, 1 passed
    shadows = [(0, 3), (0, 3), (1, 3), (2, 3), (3, 3), (1, 1)]
    s1 = 4 / 6
    s2 = s1 * 2 / 3
    s3 = s2 * 1 / 2
    assert chain_mean(shadows, 3) == pytest.approx(1 + s1 + s2 + s3)
    assert chain_mean([(1, 1)] * 4, 3) == 4.0  # a level no shadow shows: the hazard above
    g = torch.Generator().manual_seed(1)
    p, depth, shadows = 0.6, 3, []
    for _ in range(20000):
        seen = int(torch.randint(1, depth + 1, (1,), generator=g))
        run = 0
        while run < seen and float(torch.rand(1, generator=g)) < p:
            run += 1
        shadows.append((run, seen))
    truth = 1 + p + p**2 + p**3
    assert chain_mean(shadows, depth) == pytest.approx(truth, abs=0.03)
    uncut = [(run, seen) for run, seen in shadows if run < seen or seen == depth]
    assert 1 + sum(run for run, _ in uncut) / len(uncut) < truth - 0.3  # the old estimate


def guard_on_window(committed: int, trees=CHAINS, **options) -> Guard:
    """A chain guard past warm-up whose window holds 8 steps of ``committed`` tokens."""
    g = guard(trees, gate=False, warmup=1, **options)
    g.tree_steps = 1
    for _ in range(8):
        chain_step(g, committed)
    return g


@pytest.mark.parametrize("choice", [-1, 1])
def test_off_the_full_chain_shadows_stand_for_the_chains_committed_tokens(choice):
    """Decoding or on a smaller chain, each chain's tokens/s from the window is scaled by
    its shadows' mean over the window's mean; the evidence is the shadows' mean."""
    plain = guard_on_window(1, shadow=True).predict()
    g = guard_on_window(1, shadow=True)
    g.choice = choice
    g.draft_matched([T, T, T, F] * 4)  # runs 3, 2, 1, 0, four times (each ends in a miss)
    runs = [3, 2, 1, 0] * 4
    predicted = g.predict()
    for c, (_, _, depth) in enumerate(CHAINS):
        shadowed = 1 + sum(min(r, depth) for r in runs) / len(runs)
        assert g.evidence[c][1] == pytest.approx(shadowed)
        assert predicted[c] == pytest.approx(plain[c] * shadowed / 1.0)
    assert predicted[-1] == plain[-1]


def test_on_the_full_chain_too_few_shadows_or_shadow_off_change_nothing():
    plain = guard_on_window(1).predict()
    cases = [(0, True, [T, T, T, F] * 4), (-1, True, [T, T, F]), (-1, False, [T, T, T, F] * 4)]
    for choice, shadow, matched in cases:
        g = guard_on_window(1, shadow=shadow)
        g.choice = choice
        g.draft_matched(matched)  # [T, T, F]: 3 shadows, below the 4 needed
        assert g.predict() == plain


def test_a_tree_that_is_not_a_chain_takes_no_shadows():
    g = guard([(8, 4, 3), (4, 3, 3)], shadow=True)
    g.draft_matched([T, T, T, F] * 4)
    assert not g.shadowing and len(g.shadow) == 0


def test_shadows_decide_again_and_win_the_chain_back_from_decoding():
    g = guard_on_window(1, shadow=True, explore=0.0)
    g.replan()
    assert g.choice == -1  # one token a step: decoding
    plan = g.plan()
    assert plan.kind == "autoregressive"
    g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    g.draft_matched([T, T, T, F] * 4)
    assert g.since_replan >= g.replan_interval  # decides again at the next plan
    plan = g.plan()
    assert plan.kind == "tree" and plan.tree == CHAINS[0], g.why


def test_steps_off_the_full_chain_join_the_shadows_with_the_levels_they_show():
    """A probe's accepted drafts, over the full chain's levels; a smaller chain's, over its
    own (filled, it passed every level it drafted)."""
    g = guard_on_window(2, shadow=True)
    g.choice = -1
    chain_step(g, 3)  # a probe: 2 drafts accepted
    chain_step(g, 1, CHAINS[1])  # an explore: none
    chain_step(g, 2, CHAINS[1])  # filled: its one level passed
    assert list(g.shadow) == [(2, 3), (0, 1), (1, 1)]
    g.choice = 0
    chain_step(g, 4)
    assert list(g.shadow) == [(2, 3), (0, 1), (1, 1)]  # on the full chain: the window's


def test_a_switch_to_the_full_chain_and_a_new_request_clear_the_shadows():
    g = guard_on_window(2, shadow=True)
    g.choice = -1
    g.draft_matched([T, T, T, F] * 4)
    g.switch({0: 300.0, 1: 100.0, -1: 100.0})
    assert g.choice == 0 and len(g.shadow) == 0
    g.choice = -1
    g.draft_matched([T, T, T, F] * 4)
    assert len(g.shadow) == 16
    g.new_request()
    assert len(g.shadow) == 0


def test_while_decoding_the_draft_reads_every_few_decodes_spaced_by_explore():
    """The full chain alone (no smaller chain to explore with), probed every 1000 steps: the
    decodes run in plans that end in a read, as far apart as keeps a draft forward's time
    under ``explore`` of theirs."""
    options = dict(explore=0.005, probe=1000, max_probe=1000)
    g = guard_on_window(1, CHAINS[:1], shadow=True, **options)
    g.replan()
    assert g.choice == -1
    every = spacing(g.first_draft_s(0), g.decode_seconds(), 0.005)
    assert 1 < every < 1000
    assert g.plan() == StepPlan("autoregressive", reason=g.why, steps=every, read=True)
    for off in ({"shadow": False}, {"explore": 0.0}):  # no reads: decodes to the probe
        h = guard_on_window(1, CHAINS[:1], **{**options, "shadow": True, **off})
        h.replan()
        plan = h.plan()
        assert plan.steps == 1000 and not plan.read


def test_only_plain_decodes_read():
    with pytest.raises(ValueError, match="reads nothing"):
        StepPlan("tree", 4, 1, 3, read=True)


def test_auto_passes_shadow_on_and_refuses_a_non_bool():
    assert get_policy("auto").options["shadow"] is True
    with pytest.raises(PolicyError, match="shadow is 'yes'; allowed: true or false"):
        get_policy("auto", shadow="yes")


@pytest.mark.parametrize(
    "options, server, wants",
    [
        ({}, dict(guard=True, guesses=True), True),  # SGLang's plugin reads each decode's
        ({"shadow": False}, dict(guard=True, guesses=True), False),  # as the user set it
        ({}, dict(guard=True), False),  # a server that reads no guesses
        ({}, dict(guard=True, decode_extend=False, guesses=True), False),  # SGLang's skip
        ({}, dict(guard=False, guesses=True), False),  # the configured tree every step
    ],
)
def test_a_server_wants_the_drafts_guesses_only_where_it_hands_them_over(options, server, wants):
    policy = get_policy("auto", **options)
    policy.for_server(**server)
    policy.prepare(2, 8, 2, 8, torch.device("cpu"))
    policy.plan_step((4, 1, 3), False)
    assert policy.options["shadow"] is wants and policy.wants_guesses is wants


def test_auto_wants_the_drafts_guesses_on_a_chain_only():
    for tree, wants in (((4, 1, 3), True), ((8, 4, 3), False)):  # chains only
        local = get_policy("auto")
        assert not local.wants_guesses  # before its first plan
        local.prepare(2, 8, 2, 8, torch.device("cpu"))
        local.plan_step(tree, False)
        assert local.wants_guesses is wants


def test_a_new_requests_first_read_comes_after_at_most_6_decodes():
    options = dict(explore=0.005, probe=1000, max_probe=1000)
    g = guard_on_window(1, CHAINS[:1], shadow=True, **options)
    g.replan()
    every = g.read_every()
    assert every > 6 and g.plan().steps == every
    g.new_request()
    plan = g.plan()
    assert plan.read and plan.steps == 6  # the new text's first look
    g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    g.draft_matched([F] * 6)  # the chain would commit its root alone: decoding stays
    assert g.plan() == StepPlan("autoregressive", reason=g.why, steps=every, read=True)
