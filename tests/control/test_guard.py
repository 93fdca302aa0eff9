"""The guard's hysteresis and probes, on predictions given by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest
import torch

import moe_spec.control.guard as guard_module
from moe_spec.control import AcceptanceEstimates, Guard, StepCost, StepOutcome, StepPlan
from moe_spec.control.planner import Budgets
from moe_spec.control.replans import mean_and_spread
from moe_spec.costmodel import decode_seconds, get_cost_model, get_shape

TREES = [(8, 4, 3), (4, 3, 3)]


def guard(**options) -> Guard:
    est = AcceptanceEstimates(2, 8, [n for n, _, _ in TREES])
    cost = StepCost(get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B"), 2, 8, TREES)
    return Guard(est, cost, 2, 8, **options)


class StoppedClock:
    """``time`` for the guard, standing still unless the test moves ``now``: a step takes
    what the test says, not what a loaded machine adds while the step's routing is built."""

    def __init__(self) -> None:
        self.now = 1000.0

    def perf_counter(self) -> float:
        return self.now


@pytest.fixture
def clock(monkeypatch) -> StoppedClock:
    """The guard's clock, stopped (see :class:`StoppedClock`)."""
    stopped = StoppedClock()
    monkeypatch.setattr(guard_module, "time", stopped)
    return stopped


def test_switches_only_when_another_arm_wins_by_more_than_the_margin():
    g = guard(margin=0.1)
    g.switch({0: 100.0, 1: 90.0, -1: 109.0})
    assert g.choice == 0 and g.why.startswith("keeps tree 8/4/3")
    g.switch({0: 100.0, 1: 90.0, -1: 111.0})
    assert g.choice == -1 and g.why.startswith("switched to autoregressive")
    g.switch({0: 109.0, 1: 90.0, -1: 100.0})  # the tree is better, but not by the margin
    assert g.choice == -1
    g.switch({0: 120.0, 1: 90.0, -1: 100.0})
    assert g.choice == 0 and "tree 8/4/3" in g.why


def time_lost(tp: float, tp_decode: float, committed: float) -> float:
    """Seconds a step committing ``committed`` tokens at ``tp`` tokens/s loses against
    decoding them at ``tp_decode``."""
    return committed / tp - committed / tp_decode


@pytest.mark.parametrize("steps, spread", [(8, 0.0), (4, 2.0), (2, 0.5), (16, 3.0)])
@pytest.mark.parametrize("filled", [0.0, 0.5])
@pytest.mark.parametrize("smaller, fill_probe", [(95.0, 1), (85.0, 1), (40.0, 1), (85.0, 2)])
def test_while_decoding_a_smaller_tree_runs_as_often_as_explore_allows(
    smaller, fill_probe, filled, steps, spread
):
    g = guard(explore=0.02, hope=True, fill_probe=fill_probe)
    g.evidence.update({0: (steps, 1.5), 1: (steps, 1.5)})  # 1.5 tokens a step
    g.spread_C[1] = spread  # the standard deviation of its steps' committed tokens
    g.filled[1] = filled  # the share of its paths that fill it and probe the full tree next
    g.switch({0: 50.0, 1: smaller, -1: 100.0})
    assert g.choice == -1 and g.explored == 1
    # one step of it, committing its mean plus, while it is seen on fewer than 8 steps, one
    # standard error (the spread at least one token, at depth 3), and ``filled`` of a probe of
    # the full tree (``fill_probe`` steps), per n decodes (1/100 s each)
    hope = max(spread, 1.0) / steps**0.5 if steps < 8 else 0.0
    probe = filled * fill_probe * time_lost(50.0, 100.0, 1.5)
    lost = time_lost(smaller, 100.0, 1.5) - hope / 100.0 + probe
    n = g.explore_every  # the fewest decodes between its steps that lose at most 2%
    if lost <= 0:  # it might pay: after every decode
        assert n == 1
    else:
        assert lost / (n / 100.0) <= 0.02 and (n == 1 or lost / ((n - 1) / 100.0) > 0.02)
    assert g.why.endswith(f"explores with tree 4/3/3 B=8,8 every {n} decodes")
    g = guard(explore=0.0)  # off: decodes only
    g.evidence.update({0: (8, 1.5), 1: (8, 1.5)})
    g.switch({0: 50.0, 1: 95.0, -1: 100.0})
    assert g.choice == -1 and g.explored == 0


def test_explores_come_further_apart_as_their_steps_add_up():
    """The same predicted loss per step, but the more steps show the smaller tree, the
    smaller its hope of committing more, none from 8 steps on: explores spread out."""
    apart = []
    for steps in (2, 4, 8):
        g = guard(explore=0.02, hope=True)
        g.evidence.update({0: (steps, 1.5), 1: (steps, 1.5)})
        g.switch({0: 50.0, 1: 60.0, -1: 100.0})
        apart.append(g.explore_every)
    assert apart[0] < apart[1] < apart[2]


@pytest.mark.parametrize("committed, probes", [(4, True), (3, False)])
def test_a_smaller_trees_step_whose_path_fills_it_probes_the_full_tree_next(committed, probes):
    g = guard(explore=0.02, gate=False, warmup=1)
    g.tree_steps = 1  # past warm-up
    g.predict = lambda: {0: 50.0, 1: 95.0, -1: 100.0}
    g.evidence.update({0: (8, 1.0), 1: (8, 1.0)})
    plan = g.plan()
    assert plan.kind == "autoregressive" and plan.steps == g.explore_every == 3
    g.observe(StepOutcome("autoregressive", [0], steps=3))
    plan = g.plan()
    assert plan.tree == TREES[1] and plan.reason.startswith("explores with tree 4/3/3")
    path = list(range(committed))  # its accepted path: 4 nodes fill a tree of depth 3
    g.observe(StepOutcome("tree", path, torch.tensor([0, 1, 2, 3]), None, plan.tree))
    plan = g.plan()
    assert (plan.tree == TREES[0]) == probes
    assert probes or (plan.kind == "autoregressive" and plan.steps == 3)  # back to decoding


@pytest.mark.parametrize("fill_probe", [1, 2])
def test_fill_probe_runs_the_probe_a_filled_path_starts_for_that_many_steps(fill_probe):
    """With ``fill_probe=N`` the probe a smaller tree's filled path starts is N full-tree
    steps, and the guard decides again after the last (default 1: after the first)."""
    g = guard(explore=0.02, gate=False, warmup=1, fill_probe=fill_probe)
    g.tree_steps = 1  # past warm-up
    g.predict = lambda: {0: 50.0, 1: 95.0, -1: 100.0}
    g.evidence.update({0: (8, 1.0), 1: (8, 1.0)})
    plan = g.plan()
    g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    plan = g.plan()
    assert plan.tree == TREES[1]  # an explore
    g.observe(StepOutcome("tree", [0, 1, 2, 3], torch.tensor([0, 1, 2, 3]), None, plan.tree))
    replans, kinds = g.replans, ""
    for _ in range(fill_probe + 1):
        plan = g.plan()
        kinds += "T" if plan.tree == TREES[0] else "a"
        if plan.tree == TREES[0]:
            assert plan.reason.startswith("probe the full tree")
            g.observe(StepOutcome("tree", [0], torch.tensor([0, 1]), None, plan.tree))
    assert kinds == "T" * fill_probe + "a"  # the probe's steps, then back to decoding
    assert g.replans == replans + 2  # after the explore, at once, and the probe's last step


def test_auto_passes_fill_probe_and_refuses_a_bad_one():
    from moe_spec.policies import PolicyError, get_policy

    assert get_policy("auto", fill_probe=2).options["fill_probe"] == 2
    assert get_policy("auto").options["fill_probe"] == 2
    for bad in (0, 1.5, True):
        with pytest.raises(PolicyError, match=r"fill_probe is .*; allowed: an integer >= 1"):
            get_policy("auto", fill_probe=bad)


@pytest.mark.parametrize("committed", [1, 2, 3])  # 4 fills it: a probe comes next
def test_every_explore_decides_again_at_once(committed):
    """Below its tree's mean (a schedule made from a few lucky steps would explore on,
    unrevised) or above it (the text may have turned easy): an explore's step is news either
    way. Replans count tree steps, which come one an explore while the guard decodes, so an
    explore above the mean waited out 8 of them: on smollm2-moe's set C a prompt whose
    explores committed 2-3 tokens of 4 was decoded for 80 steps (BENCHMARKS.md)."""
    g = guard(explore=0.02, gate=False, warmup=1)
    g.tree_steps = 1  # past warm-up
    rates = {0: 50.0, 1: 99.0, -1: 100.0}  # level with decoding: explore often
    g.predict = lambda: dict(rates)
    g.evidence.update({0: (8, 2.0), 1: (8, 2.0)})  # its steps commit 2 tokens on average
    while (plan := g.plan()).kind == "autoregressive":
        g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    assert plan.reason.startswith("explores with tree 4/3/3") and g.replans == 1
    depth_N = torch.tensor([0, 1, 2, 3])
    g.observe(StepOutcome("tree", list(range(committed)), depth_N, None, plan.tree))
    rates[1] = 130.0  # what the step showed, as the next prediction would say
    plan = g.plan()
    assert g.replans == 2 and plan.tree == TREES[1] and plan.reason.startswith("switched to tree")


def test_an_explore_the_draft_gate_turns_down_doubles_the_decodes_before_the_next():
    """Turned into a decode, an explore showed nothing and cost a draft forward: the next
    comes twice as far apart, through replans, until an explore is verified."""
    g = guard(explore=0.02, gate=True, warmup=1)
    g.tree_steps = 1  # past warm-up
    g.predict = lambda: {0: 50.0, 1: 95.0, -1: 100.0}
    g.evidence.update({0: (8, 1.0), 1: (8, 1.0)})
    assert g.plan().steps == g.explore_every == 3
    g.observe(StepOutcome("autoregressive", [0], steps=3))
    for turned_down in (1, 2):
        assert g.plan().reason.startswith("explores with tree 4/3/3")
        g.gated = 1  # what DraftGate.gate sets when it sends the step to a decode
        g.observe(StepOutcome("autoregressive", [0]))
        assert g.plan().steps == 3 * 2**turned_down  # decodes up to the next explore
        g.switch(g.predict())  # a replan keeps the doubling
        assert g.explore_every == 3 * 2**turned_down
        g.observe(StepOutcome("autoregressive", [0], steps=g.explore_every))
    plan = g.plan()
    g.observe(StepOutcome("tree", [0, 1], torch.tensor([0, 1, 2, 3]), None, plan.tree))
    g.switch(g.predict())  # a verified explore: as far apart as before
    assert g.explore_every == 3


@pytest.mark.parametrize(
    ("committed", "max_warmup", "warm"),
    [
        ([1, 2, 1, 1], 4, 4),  # 1.5 then 1.33 tokens, break-even 1.82: one SE could pay
        ([1, 2, 1, 1], 6, 4),  # the third step's mean + SE 1.91, the fourth's 1.75: clear
        ([1, 2, 1, 1], 2, 2),  # max_warmup = warmup: no extension
        ([1, 1, 1, 1], 6, 2),  # 1 + 1/sqrt(2) = 1.71 < 1.82: clearly loses
        ([3, 3, 1, 1], 6, 2),  # it pays: the guard judges it as it runs
    ],
)
def test_the_warm_up_runs_on_while_its_trees_might_pay(committed, max_warmup, warm):
    """Past ``warmup`` steps, a warm-up whose trees' mean committed tokens lose to decoding
    but whose mean plus one standard error (spread at least one token) would pay runs one
    more full tree, up to ``max_warmup``."""
    g = guard(gate=False, warmup=2, max_warmup=max_warmup)
    break_even = g.warm_tree_seconds() / g.decode_seconds()
    assert 1.75 < break_even < 1.9  # the full tree 8/4/3 on OLMoE-1B-7B (H200, calibrated)
    reasons = []
    for c in committed:
        plan = g.plan()
        reasons.append(plan.reason)
        if plan.kind == "tree":
            observe_window_step(g, c, plan)
        else:
            g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    assert [r.startswith("warm-up") for r in reasons] == [i < warm for i in range(4)]
    assert g.warmup == warm


CAP = [[8, 8]] * 4


def warm_up_tree_step(g, committed: int, path_experts: tuple[int, int], plan=None) -> None:
    """:func:`observe_window_step` of a full-tree step whose tokens pick all 8 experts but
    whose path (at most 4 nodes of a chain) picks ``path_experts`` (a path of e needs e + 1)."""
    ids_NK = torch.tensor([[(2 * i) % 8, (2 * i + 1) % 8] for i in range(TREES[0][0])])
    ids_NK[:4] = torch.tensor(path_experts)
    observe_window_step(g, committed, plan, ids_LNK=ids_NK.expand(2, -1, 2))


@pytest.mark.parametrize(
    "path_experts, repair, budgets_run",
    [
        ((0, 1), True, CAP),
        ((6, 7), True, CAP + [[8, 8]] * 2),
        ((6, 7), False, CAP + [[2, 2], [8, 8]]),
    ],
)
def test_the_warm_up_is_judged_at_the_budgets_its_ranked_steps_give(
    path_experts, repair, budgets_run
):
    """From ``budget_from`` (4) ranked warm-up steps the full tree is priced at the budgets
    they give: paths that need 2 of 8 experts make a tree of 1.5 tokens a step pay at 2 (the
    warm-up ends at 4 steps, its budgets planned). Paths that need all 8 leave it, with
    repair, at the cap, where it is unclear (the mean + one standard error, 2.0, would pay)
    and the warm-up runs on to ``max_warmup``; without repair, at 2 with the tokens 2 would
    lose counted (one a step): unclear too, and its next step runs at them."""
    g = guard(gate=False, warmup=2, max_warmup=6, repair=repair)
    budgets = []
    for committed in [2, 1, 2, 1, 2, 1]:
        plan = g.plan()
        if not plan.reason.startswith("warm-up"):
            break
        budgets.append(g.budget_L.tolist())
        warm_up_tree_step(g, committed, path_experts, plan)
    assert g.tree_steps == g.warmup == len(budgets_run)
    assert budgets == budgets_run
    assert (g.budgets_C[0] < 8).all() == (path_experts == (0, 1))


@pytest.mark.parametrize("measure", [False, True])
def test_a_measured_warm_up_is_priced_by_its_timed_trees_not_by_budgets(measure):
    """With ``measure`` the warm-up's timed trees (at the cap) price the tree: no budgets
    are planned for it from its ranked steps."""
    g = guard(gate=False, warmup=2, max_warmup=6, repair=True, measure=measure)
    for _ in range(4):
        warm_up_tree_step(g, 2, (0, 1))  # paths that need 2 of 8 experts
    g.warm_budgets()
    assert (g.warm_rate is None) == measure
    assert (g.budgets_C[0] < 8).all() != measure


def run_steps(g, n: int) -> str:
    """Plan and observe ``n`` steps (a tree step accepts only its root); "T" tree, "a" decode."""
    kinds = ""
    for _ in range(n):
        plan = g.plan()
        kinds += "T" if plan.kind == "tree" else "a"
        if plan.kind == "tree":
            lp = torch.tensor([0.0, -1.0])
            g.observe(StepOutcome("tree", [0], torch.tensor([0, 1]), lp, plan.tree))
        else:
            g.observe(StepOutcome("autoregressive", [0]))
    return kinds


def test_probes_the_full_tree_and_backs_off_when_it_does_not_win():
    g = guard(probe=2, max_probe=8, warmup=1, gate=False)
    g.tree_steps = 1  # past warm-up
    g.predict = lambda: {0: 100.0, -1: 110.0}  # decoding always predicted a little faster
    kinds = run_steps(g, 20)
    # probes after 2, then 4, then 8 (the cap) decoding steps
    assert kinds == "aaTaaaaTaaaaaaaaTaaa"
    assert g.probe_every == 8


def run_plans(g, n: int) -> str:
    """As :func:`run_steps`, but a plan of ``steps`` decodes is run and observed as one."""
    kinds = ""
    while len(kinds) < n:
        plan = g.plan()
        if plan.kind == "tree":
            kinds += "T"
            lp = torch.tensor([0.0, -1.0])
            g.observe(StepOutcome("tree", [0], torch.tensor([0, 1]), lp, plan.tree))
        else:
            kinds += "a" * plan.steps
            g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    return kinds[:n]


def test_one_plan_covers_the_decodes_up_to_the_next_probe():
    single, runs = (guard(probe=2, max_probe=8, warmup=1, gate=False) for _ in range(2))
    for g in (single, runs):
        g.tree_steps = 1
        g.predict = lambda: {0: 100.0, -1: 110.0}
    assert run_plans(runs, 20) == run_steps(single, 20) == "aaTaaaaTaaaaaaaaTaaa"
    assert single.decisions == 20 and runs.decisions == 7  # 4 runs of decodes, 3 trees
    looks = guard(probe=2, warmup=1, gate_every=3)  # the gate's look ends a run too
    looks.tree_steps = 1
    looks.predict = lambda: {0: 100.0, -1: 300.0}
    assert looks.plan().steps == 3


def test_probes_cost_at_most_probe_cost_of_the_time_between_them():
    def decoding(**options) -> Guard:
        options = {"probe_cost": 0.01, **options}
        g = guard(probe=2, warmup=1, gate=False, switch_prior=0.0, **options)
        g.tree_steps = 1
        g.evidence = {0: (24, 3.0)}  # the full tree commits 3 tokens a step
        g.predict = lambda: {0: 50.0, -1: 120.0}
        g.plan()
        assert g.choice == -1
        return g

    # a probe spends 3/50 s on what decoding commits in 3/120 s: 35 ms lost, which is 1%
    # of 420 decodes of 1/120 s (the gap rule alone: 2 * 2.4**2 = 11 steps)
    assert decoding().probe_every == 420
    assert guard().probe_cost == 0.005  # the default: 840 here
    assert decoding(probe_cost=0.04).probe_every == 105
    assert decoding(max_probe=100).probe_every == 100
    assert run_plans(decoding(probe_cost=0.04), 107) == "a" * 105 + "Ta"
    backed_off = decoding()
    backed_off.probe_every = 840  # after a probe that did not win
    backed_off.new_request()  # new text: the doubling goes, the floor stays
    assert backed_off.probe_every == 420


def test_a_measured_probe_that_lost_more_than_predicted_spaces_the_next_ones(clock):
    g = guard(probe=2, warmup=1, gate=False, measure=True, probe_cost=0.01)
    g.tree_steps, g.measured["autoregressive"] = 1, 2  # past warm-up and measuring
    g.predict = lambda: {0: 100.0, -1: 120.0}  # no window: the gap rule alone, 2 * 1.2**2
    assert g.plan().kind == "autoregressive" and g.probe_every == 2
    g.since_full = g.probe_every
    plan = g.plan()
    assert plan.reason.startswith("probe the full tree")
    g.started = clock.now - 0.06  # the probe took 60 ms for 2 tokens
    lp = torch.tensor([0.0, -1.0])
    g.observe(StepOutcome("tree", [0, 1], torch.tensor([0, 1]), lp, plan.tree))
    assert g.last_probe[1] == 2 and g.last_probe[0] == pytest.approx(0.06, abs=1e-9)
    assert g.plan().kind == "autoregressive"  # replanned right after the probe
    # decoding commits those 2 tokens in 2/120 s: 43 ms lost = 1% of 520 decodes of 1/120 s
    # (the stopped clock's 60 ms is a float rounding under 0.06, so the ceiling is 520, not 521)
    assert g.probe_every == 520


def test_without_the_guard_only_the_full_tree_is_planned():
    g = guard(guard=False, warmup=1)
    g.tree_steps = 1
    g.predict = lambda: {0: 100.0}
    assert {g.plan().kind for _ in range(5)} == {"tree"}


def test_without_the_guard_the_reason_weighs_the_tree_against_decoding_without_a_draft():
    g = guard(guard=False, margin=0.05)
    plain = 1.0 / g.cost.plain_decode_s
    # no draft forward at all, where SGLang's depth-0 step runs a draft extend
    cost_model, shape = get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B")
    sglang = StepCost(cost_model, shape, 2, 8, TREES, draft_extend=True)
    assert sglang.plain_decode_s == g.cost.plain_decode_s < sglang.decode_s
    assert g.cost.plain_decode_s == decode_seconds(
        cost_model.gpu, shape, overheads=cost_model.overheads
    )
    g.evidence[0] = (7, 1.0)  # fewer than trusted (8) steps: no verdict
    g.switch({0: plain / 2})
    assert g.slower is None and g.why.endswith(f"; decoding without speculation {plain:.4g}")
    g.evidence[0] = (8, 1.0)
    g.switch({0: plain / 1.06})  # more than the margin below
    assert g.slower == (plain / 1.06, plain)
    assert g.why.endswith(", 6% faster (the tree runs every step here)")
    g.evidence[0] = (3, 1.0)  # after a drift: a few steps keep the verdict
    g.switch({0: plain * 2})
    assert g.slower == (plain / 1.06, plain)
    assert g.why.endswith(", 6% faster at the last verdict (fewer than 8 steps since)")
    g.evidence[0] = (8, 2.0)
    g.switch({0: plain / 1.04})  # within the margin: still slower, at the new rate
    assert g.slower == (plain / 1.04, plain) and g.why.endswith(
        ", 4% faster (the tree runs every step here)"
    )
    g.switch({0: plain})  # level: cleared
    assert g.slower is None and g.why.endswith(f"without speculation {plain:.4g}")
    g.switch({0: plain / 1.04})  # within the margin, from level: not slower
    assert g.slower is None
    g = guard()  # with the guard, decoding is an arm of its own: no note
    g.evidence[0] = (8, 1.0)
    g.switch({0: plain / 2, -1: plain})
    assert g.slower is None and "without speculation" not in g.why


def test_the_further_behind_the_full_tree_the_rarer_the_probe():
    g = guard(probe=2, max_probe=64, warmup=1, gate=False)
    g.tree_steps = 1
    g.predict = lambda: {0: 100.0, -1: 300.0}  # decoding 3x faster: probe after 2 * 3**2
    kinds = run_steps(g, 20)
    assert kinds == "a" * 18 + "Ta"
    assert g.probe_every == 36  # doubled after the probe lost


def test_a_tree_seen_in_few_steps_needs_more_to_win_a_switch():
    g = guard(margin=0.05, explore=0.0)  # on the full tree; tree 1 predicted 20% faster
    g.evidence = {0: (24, 2.5), 1: (2, 2.5)}  # tree 1 from two steps of 2.5 tokens
    g.switch({0: 100.0, 1: 120.0, -1: 50.0})
    # 120 * (2 + 2 / 2.5) / (2 + 2) = 84: two pseudo-steps of one token outweigh two steps
    assert g.choice == 0 and "tree 4/3/3 B=8,8 84" in g.why
    g.evidence[1] = (24, 2.5)  # a full window of the same: shrunk by 4.6% only
    g.switch({0: 100.0, 1: 120.0, -1: 50.0})
    assert g.choice == 1 and "tree 4/3/3 B=8,8 114.5" in g.why
    # the current choice and decoding are taken as predicted
    g.switch({0: 100.0, 1: 120.0, -1: 126.1})
    assert g.choice == -1 and "tree 4/3/3 B=8,8 120," in g.why


@pytest.mark.parametrize(
    ("hope", "steps", "spread", "kept"),
    [
        (True, 2, 0.5, True),  # the spread taken as 1: 147.1
        (True, 8, 0.5, True),  # 123.6
        (True, 16, 1.2, True),  # 120
        (True, 32, 0.5, False),  # 111.8, and 120 > 1.05 * 111.8
        (False, 2, 0.5, False),
        (True, 64, 1.2, False),  # a full window: as predicted
    ],
)
def test_with_hope_the_current_tree_seen_on_few_steps_counts_one_se_more(hope, steps, spread, kept):
    """With ``hope``, the current tree predicted from fewer steps than fill its window (64
    here; ``auto``'s 24) is judged at its mean plus one standard error (the spread at least
    one token); on a full window, or without hope, as predicted: decoding 20% faster then
    wins."""
    g = guard(margin=0.05, hope=hope, explore=0.0)
    assert g.est.window.maxlen == 64
    g.evidence = {0: (steps, 1.5)}
    g.spread_C[0] = spread
    g.switch({0: 100.0, -1: 120.0})
    se = max(spread, 1.0) / math.sqrt(steps)
    judged = 100.0 * (1.5 + se) / 1.5
    assert (g.choice == 0) == kept
    if kept:
        assert f"tree 8/4/3 B=8,8 {judged:.4g}," in g.why
        assert f"(tree 8/4/3 B=8,8 at its mean + 1 SE: {steps} steps)" in g.why
    else:
        assert g.why.startswith("switched to autoregressive")


@pytest.mark.parametrize(
    ("steps", "mean", "kept"),
    [
        (7, 1.0, True),  # below 8 steps: the one-token floor, 100 * (1 + 1 / sqrt(7)) = 137.8
        (8, 1.0, False),  # 8 steps of the root alone: their own spread, 0
        (16, 17 / 16, False),  # one draft in 16 steps: 100 * (1.0625 + 0.242 / 4) / 1.0625
        (8, 10 / 8, True),  # two in 8: above 1 + 1/8, the floor: 100 * (1.25 + 0.354) / 1.25
    ],
)
def test_hope_ends_from_8_steps_that_accepted_under_one_draft_in_8(steps, mean, kept):
    """From ``trusted`` (8) steps whose mean is at most 1 + 1/8 (fewer than one accepted draft
    in 8 steps, a draft of little use) the tree is judged at its own spread, not the one-token
    floor: one step that accepted a draft does not hold a useless draft's tree (the
    transformers engine's guard test held an 8-token tree for 37 steps at 1.06 tokens a step
    so); above it, or on fewer steps, the floor stays."""
    g = guard(margin=0.05, hope=True, explore=0.0)
    g.evidence = {0: (steps, mean)}
    g.spread_C[0] = math.sqrt((mean - 1) * (2 - mean))  # steps of 1 or 2 tokens
    g.switch({0: 100.0, -1: 120.0})
    assert (g.choice == 0) == kept


def test_hope_lifts_only_the_full_tree_as_the_current_choice_with_the_guard():
    g = guard(margin=0.05, hope=True, explore=0.0, switch_prior=0.0)
    g.choice = -1  # decoding: tree 0 is a challenger, taken as predicted
    g.evidence = {0: (2, 1.5)}
    g.switch({0: 100.0, -1: 120.0})
    assert g.choice == -1 and "tree 8/4/3 B=8,8 100," in g.why
    g.choice = 1  # a smaller tree chosen (its paths fill it often): as predicted
    g.evidence = {0: (8, 1.5), 1: (2, 1.5)}
    assert g.judged(1, 100.0) == 100.0 and g.hoped_steps() == 0
    g = guard(hope=True, guard=False)  # a server's tree every step: no switch to weigh
    g.evidence = {0: (2, 1.5)}
    assert g.judged(0, 100.0) == 100.0


def test_hope_holds_the_full_tree_against_decoding_not_against_a_smaller_tree():
    """Before 8 full-tree steps a smaller tree waits unless decoding would be chosen: that is
    judged on the full tree as predicted, not at the mean + 1 SE its hope lifts it to."""
    g = guard(margin=0.05, hope=True, explore=0.0, switch_prior=0.0)
    g.evidence = {0: (4, 1.5), 1: (4, 1.5)}
    g.spread_C[0] = 1.0  # lifted: 100 * (1.5 + 1 / 2) / 1.5 = 133.3
    g.switch({0: 100.0, 1: 150.0, -1: 110.0})  # as predicted the full tree loses to decoding
    assert g.choice == 1 and "waits" not in g.why
    g.choice = 0
    g.switch({0: 100.0, 1: 150.0, -1: 90.0})  # it does not: the smaller tree waits
    assert g.choice == 0 and "(a smaller tree waits for 8 full-tree steps, 4 seen)" in g.why
    g.switch({0: 100.0, 1: 105.0, -1: 110.0})  # against decoding alone the hope holds it
    assert g.choice == 0 and "tree 8/4/3 B=8,8 133.3," in g.why


def test_from_8_steps_the_hope_holds_the_full_tree_against_decoding_alone():
    """From 8 full-tree steps, a smaller tree that beats the full tree as predicted and beats
    decoding is switched to on the margin, against the full tree as predicted; where decoding
    beats the smaller tree the hope still holds the full tree against decoding."""
    g = guard(margin=0.05, hope=True, explore=0.0, switch_prior=0.0)
    g.evidence = {0: (8, 1.5), 1: (8, 1.5)}
    g.spread_C[0] = 1.0  # lifted: 100 * (1.5 + 1 / sqrt(8)) / 1.5 = 123.6
    g.switch({0: 100.0, 1: 105.0, -1: 110.0})  # decoding beats the smaller tree
    assert g.choice == 0 and "tree 8/4/3 B=8,8 123.6," in g.why and "1 SE: 8 steps" in g.why
    g.switch({0: 100.0, 1: 115.0, -1: 110.0})  # the smaller tree beats both as predicted
    assert g.choice == 1 and g.why.startswith("switched to tree 4/3/3")
    assert "tree 8/4/3 B=8,8 100," in g.why and "1 SE" not in g.why
    g.choice = 0
    g.switch({0: 100.0, 1: 104.0, -1: 103.0})  # within the margin of the full tree
    assert g.choice == 0


def test_hope_never_lifts_the_full_tree_past_its_depth_plus_one():
    g = guard(hope=True)  # tree 8/4/3: at most 4 tokens a step
    g.evidence = {0: (2, 3.8)}
    assert g.judged(0, 100.0) == pytest.approx(100.0 * 4 / 3.8)


def test_hope_holds_no_tree_the_draft_gate_decodes():
    g = guard(hope=True)
    g.evidence = {0: (2, 1.5)}
    assert g.hoped_steps() == 2
    g.gated_C[0].append(1)  # the gate turned one of its steps into a decode
    assert g.hoped_steps() == 0 and g.judged(0, 100.0) == 100.0


def test_without_a_switch_prior_predictions_are_taken_as_they_are():
    g = guard(margin=0.05, switch_prior=0.0)
    g.evidence = {0: (24, 2.5), 1: (1, 3.0)}
    g.switch({0: 100.0, 1: 106.0, -1: 50.0})
    assert g.choice == 1


def test_a_smaller_tree_waits_for_8_steps_of_the_full_tree():
    g = guard(margin=0.05, switch_prior=0.0, explore=0.0)
    g.evidence = {0: (4, 2.0), 1: (4, 2.0)}  # tree 1 predicted from the full tree's 4 steps
    g.switch({0: 100.0, 1: 130.0, -1: 50.0})
    assert g.choice == 0 and g.why.endswith("(a smaller tree waits for 8 full-tree steps, 4 seen)")
    g.switch({0: 100.0, 1: 100.0, -1: 110.0})  # decoding is still chosen at once
    assert g.choice == -1
    g.switch({0: 120.0, 1: 130.0, -1: 50.0})  # back to the full tree
    assert g.choice == 0 and "waits" in g.why
    # where decoding would be chosen instead, the smaller tree is (both end the full tree's steps)
    g.switch({0: 100.0, 1: 130.0, -1: 110.0})
    assert g.choice == 1 and "waits" not in g.why
    g.choice = 0
    g.evidence = {0: (8, 2.0), 1: (8, 2.0)}
    g.switch({0: 100.0, 1: 130.0, -1: 50.0})
    assert g.choice == 1 and "waits" not in g.why
    g.evidence = {0: (4, 2.0), 1: (4, 2.0)}  # a new text: the current choice is kept
    g.switch({0: 100.0, 1: 130.0, -1: 50.0})
    assert g.choice == 1 and "waits" not in g.why


def test_replans_come_less_often_while_nothing_changes():
    g = guard(gate=False, warmup=1, replan_every=2, max_replan=8)
    g.tree_steps = 1  # past warm-up
    for _ in range(8):  # a window that no longer learns: its replans may be steady
        observe_window_step(g, 2)
    g.predict = lambda: {0: 100.0, -1: 50.0}  # the full tree, the same budgets every time
    at = []
    for i in range(24):
        before = g.replans
        run_steps(g, 1)
        at += [i] * (g.replans - before)
    # the first prediction, then intervals of 2, 4 and 8 tree steps (the cap)
    assert at == [0, 2, 6, 14, 22] and g.replan_interval == 8
    g.predict = lambda: {0: 100.0, -1: 200.0}  # decoding wins now: a change
    run_steps(g, 8)
    assert g.choice == -1 and g.replan_interval == 2  # back to every 2 steps
    assert guard().max_replan == 64  # by default: the window's length


@pytest.mark.parametrize("steps", [0, -1, 2.0, True])
def test_a_plan_of_decodes_runs_at_least_one(steps):
    with pytest.raises(ValueError, match="an integer >= 1"):
        StepPlan("autoregressive", steps=steps)


def test_a_tree_plan_is_one_step():
    assert StepPlan("autoregressive", steps=5).steps == 5
    with pytest.raises(ValueError, match=r"allowed: an integer >= 1 \(1 for a tree\)"):
        StepPlan("tree", 4, 2, 2, steps=2)


def run_budgeted(g, n: int, touched: bool) -> None:
    """Plan and observe ``n`` tree steps committing 2 tokens, the budget touching the
    second (``exact`` 1) or not."""
    for _ in range(n):
        plan = g.plan()
        assert plan.kind == "tree"
        lp = torch.tensor([0.0, -1.0])
        g.observe(StepOutcome("tree", [0, 1], torch.tensor([0, 1]), lp, plan.tree, 2 - touched))


def test_a_budget_that_touches_the_path_more_than_predicted_is_replanned_at_once():
    g = guard(gate=False, warmup=1, replan_every=2, max_replan=16)
    g.tree_steps = 1  # past warm-up
    for _ in range(8):  # a window that no longer learns: its replans may be steady
        observe_window_step(g, 2)

    def predict():  # a budget below E that left every window step's path untouched
        g.budgets_C[0][:] = 4
        g.touched_C[0] = 0.0
        return {0: 100.0, -1: 50.0}

    g.predict = predict
    run_budgeted(g, 7, touched=False)
    assert g.replans == 3 and g.replan_interval == 8  # at steps 0, 2, 6
    run_budgeted(g, 2, touched=True)  # two surprises: a replan at the next step
    assert g.replans == 3
    run_budgeted(g, 1, touched=False)
    # the interval starts again from 2 (and doubles, as that replan changed nothing)
    assert g.replans == 4 and g.replan_interval == 4
    # as often as predicted is no surprise
    g.predict = lambda: (predict(), g.touched_C.__setitem__(0, 1.0))[0]
    g.since_replan = g.replan_interval
    run_budgeted(g, 6, touched=True)
    assert g.replans == 5


def observe_window_step(
    g, committed: int, plan=None, expert: int = 0, ranked: bool = True, ids_LNK=None
) -> None:
    """A tree step of the full tree whose accepted path is ``committed`` nodes long, with
    its routing (so it enters the window): every token picks ``expert`` (or ``ids_LNK``),
    expert e ranked e (a path of ``expert`` needs a budget of ``expert + 1``; not
    ``ranked``: a step that rested, its need unknown); through ``g.observe`` when
    ``plan``-ned, else straight into the window."""
    n = TREES[0][0]
    depth_N = torch.tensor([0] + list(range(1, n)))  # a chain: node i at depth i
    lp = -torch.arange(n, dtype=torch.float32)
    rank_LE = torch.arange(8).repeat(2, 1) if ranked else None
    if ids_LNK is None:
        ids_LNK = torch.full((2, n, 2), expert)
    outcome = StepOutcome("tree", list(range(committed)), depth_N, lp, TREES[0])
    if plan is None:
        g.est.observe(outcome, rank_LE, ids_LNK)
    else:
        g.observe(outcome, rank_LE, ids_LNK)


def windows_after_a_change(before: dict, after: dict) -> tuple[Guard, list[int]]:
    """A guard past warm-up planned on 8 window steps like ``before`` (committing 4 tokens
    a step), then 5 planned steps like ``after`` (``observe_window_step``'s keywords); the
    window lengths its predictions read (the evidence: mean 4 tokens, spread 1)."""
    g = guard(gate=False, warmup=1, replan_every=8, max_replan=8)
    g.tree_steps = 1  # past warm-up
    for _ in range(8):
        observe_window_step(g, 4, **before)
    windows = []

    def predict():
        windows.append(len(g.est.window))
        g.evidence[0], g.spread_C[0] = (len(g.est.window), 4.0), 1.0
        return {0: 100.0, -1: 50.0}

    g.predict = predict
    for _ in range(5):
        observe_window_step(g, plan=g.plan(), **{"committed": 4, **after})
    return g, windows


@pytest.mark.parametrize("committed, replanned", [(2, True), (4, False)])
def test_a_drift_in_committed_tokens_replans_from_the_steps_since(committed, replanned):
    g, windows = windows_after_a_change({}, {"committed": committed})
    # 4 steps of 2 tokens against a window mean of 4 (spread 1): 4 standard errors
    assert windows == ([8, 4] if replanned else [8])
    assert len(g.est.window) == (4 + 1 if replanned else 8 + 5)  # the 5th step came after
    # the hope counts the full tree's steps from the drift: a new text seen on few steps
    assert g.full_run_steps == (1 if replanned else 5)


@pytest.mark.parametrize("expert, replanned", [(0, True), (6, False)])
def test_a_drift_in_the_budget_the_paths_need_replans_from_the_steps_since(expert, replanned):
    """The same tokens a step, but paths that need a budget of 1 where the window's needed 7."""
    g, windows = windows_after_a_change({"expert": 6}, {"expert": expert})
    assert g.est.window[-1].path_need == expert + 1
    # 4 steps needing 1 against a window needing 7 (spread 0, taken as 1): 12 standard errors
    assert windows == ([8, 4] if replanned else [8])
    assert len(g.est.window) == (4 + 1 if replanned else 8 + 5)


def test_no_drift_in_the_budget_needed_is_judged_against_a_window_without_ranked_steps():
    """A window whose steps all rested knows no need: the ranked steps after the replan are
    no change from it (judged against a need of 0 they drifted, and cut the window)."""
    g, windows = windows_after_a_change({"expert": 6, "ranked": False}, {"expert": 6})
    assert g.need_at_replan == (0.0, 0.0, 0)
    assert windows == [8] and len(g.est.window) == 8 + 5


def test_a_drift_on_a_new_request_is_judged_and_replanned_on_its_text_alone():
    """Steps of the old text after the last replan neither dilute the new text's drift nor
    stay in the window it is replanned from (counted from the replan, the drift came a
    step later than 4 and its window kept [4, 4, 4, 1, 1])."""
    g = guard(gate=False, warmup=1, replan_every=8, max_replan=8, carry=4)
    g.tree_steps = 1  # past warm-up
    for _ in range(8):
        observe_window_step(g, 4)
    windows = []

    def predict():
        windows.append(g.est.arrays(0)[1].tolist())
        g.evidence[0], g.spread_C[0] = (len(g.est.window), 4.0), 1.0
        return {0: 100.0, -1: 50.0}

    g.predict = predict
    for _ in range(3):  # a replan, then more steps of the old text
        observe_window_step(g, 4, g.plan())
    g.new_request()
    assert g.est.arrays(0)[1].tolist() == [4, 4, 4, 4]  # carried
    for _ in range(3):
        observe_window_step(g, 1, g.plan())
    assert windows == [[4] * 8]  # 3 steps of 1 token: no drift yet
    observe_window_step(g, 1, g.plan())
    g.plan()  # 4 steps of 1 token against a mean of 4 (spread 1): 6 standard errors
    assert windows == [[4] * 8, [1, 1, 1, 1]]


def test_a_replan_made_while_the_guard_learns_does_not_double_the_interval():
    """A plan from a window under ``trusted`` (8) steps, or from a new text's first steps,
    is provisional: replans that change nothing double the interval only after that."""
    g = guard(gate=False, warmup=1, replan_every=2, max_replan=16, carry=2)
    g.tree_steps = 1  # past warm-up
    g.predict = lambda: {0: 100.0, -1: 50.0}
    intervals = []
    for steps in (2, 2, 8, 8, 8):  # window steps at each replan
        while len(g.est.window) < steps:
            observe_window_step(g, 2)
        assert g.learning() == (steps < 8)
        g.replan()
        intervals.append(g.replan_interval)
    assert intervals == [2, 2, 4, 8, 16]
    g.new_request()  # the new text's first 4 steps: learning again
    for _ in range(6):
        observe_window_step(g, 2)
    g.replan()  # window: 2 carried + 6 new steps, no longer learning
    assert not g.learning() and g.replan_interval == 16
    g.new_request()
    observe_window_step(g, 2)
    assert g.learning()
    g.replan()
    assert g.replan_interval == 2


def test_a_new_requests_first_steps_all_enter_the_window():
    g = guard(gate=False, warmup=1, carry=2)
    assert not g.learning_new_text()  # the first request learns in its warm-up
    g.tree_steps = 1
    for _ in range(4):
        observe_window_step(g, 2)
    assert not g.learning_new_text()
    g.new_request()
    assert g.learning_new_text() and len(g.est.window) == 2
    for _ in range(4):
        assert g.learning_new_text()
        observe_window_step(g, 2)
    assert not g.learning_new_text()


def test_a_plan_from_a_short_window_is_made_again_when_the_window_doubles():
    g = guard(gate=False, warmup=1, replan_every=100, max_replan=100, drift=0, surprise=0)
    g.tree_steps = 1
    windows = []

    def predict():
        windows.append(len(g.est.window))
        return {0: 100.0, -1: 50.0}

    g.predict = predict
    observe_window_step(g, 2)
    for _ in range(30):
        observe_window_step(g, 2, g.plan())
    assert windows == [1, 2, 4, 8, 16]  # then the window is full (24): the interval rules


def planned_on(committed: tuple[int, ...], carry: int) -> tuple[Guard, list[list[int]]]:
    """A guard past warm-up, replanning every 4 tree steps, planned once on a window of
    steps that committed ``committed``, then told of a new request; and the windows its
    predictions read (the full tree's)."""
    g = guard(gate=False, warmup=1, replan_every=4, max_replan=4, drift=0, carry=carry)
    g.tree_steps = 1
    for n in committed:
        observe_window_step(g, n)
    windows = []

    def predict():
        windows.append(g.est.arrays(0)[1].tolist())
        return {0: 100.0, -1: 50.0}

    g.predict = predict
    observe_window_step(g, committed[-1], g.plan())
    g.new_request()
    return g, windows


def test_a_new_request_keeps_the_latest_carry_steps_and_replans_when_due():
    g, windows = planned_on((5, 5, 5, 5, 2, 3, 4), carry=3)  # the old text ends 3, 4, 4
    assert windows == [[5, 5, 5, 5, 2, 3, 4]] and len(g.est.window) == 3
    for _ in range(3):  # every step of the new text enters; the window's growth replans not
        observe_window_step(g, 1, g.plan())
    g.plan()  # the 4th tree step since the last replan: due
    assert windows == [[5, 5, 5, 5, 2, 3, 4], [3, 4, 4, 1, 1, 1]]


def test_a_choice_made_without_a_prediction_of_the_full_tree_probes_it_soon():
    g = guard(probe=2, max_probe=64, warmup=1, gate=False)
    g.probe_every = 64  # backed off earlier
    g.switch({0: 100.0, -1: 110.0})
    assert g.choice == -1 and g.probe_every == 64
    g.switch({1: 90.0, -1: 110.0})  # the window (forgotten: new text) knows no full tree
    assert g.choice == -1 and g.probe_every == 2


def test_a_new_request_starts_probes_of_the_full_tree_again():
    g = guard(probe=2, max_probe=64, warmup=1, gate=False)
    g.tree_steps = 1
    g.predict = lambda: {0: 100.0, -1: 110.0}  # decoding predicted a little faster
    assert run_plans(g, 23) == "aaTaaaaTaaaaaaaaTaaaaaa" and g.probe_every == 16
    g.new_request()  # 6 decodes since the last probe: at 2 apart, as at first, it is due
    assert run_plans(g, 4) == "Taaa" and g.probe_every == 4


@pytest.mark.parametrize("relook", [0, 2])
def test_relook_takes_a_new_request_on_a_smaller_tree_back_to_the_full_tree(relook):
    """With ``relook=N`` a new request, the guard on a smaller tree, runs the full tree and
    replans after N of its steps; without it (the default) the smaller tree runs on."""
    g = guard(gate=False, warmup=1, replan_every=8, max_replan=8, relook=relook)
    g.tree_steps = 1
    for _ in range(8):
        observe_window_step(g, 4)
    g.predict = lambda: {0: 100.0, 1: 150.0, -1: 50.0}
    g.replan()
    g.choice = 1  # the smaller tree, chosen on the last text (past the full tree's wait)
    g.since_replan, replans = 3, g.replans
    g.new_request()
    first = g.plan()
    if not relook:
        assert first.tree == TREES[1] and g.replans == replans
        return
    assert first.tree == TREES[0] and first.reason.startswith("a new request: the full")
    observe_window_step(g, 4, first)
    assert g.plan().tree == TREES[0] and g.replans == replans  # its 2nd full-tree step
    observe_window_step(g, 4, g.current)
    g.plan()  # after 2 steps: the replan (the full tree now weighed on the new text)
    assert g.replans == replans + 1


def test_auto_passes_relook_and_refuses_a_bad_one():
    from moe_spec.policies import PolicyError, get_policy

    assert get_policy("auto", relook=4).options["relook"] == 4
    assert get_policy("auto").options["relook"] == 0
    for bad in (-1, 2.0, True):
        with pytest.raises(PolicyError, match=r"relook is .*; allowed: an integer >= 0"):
            get_policy("auto", relook=bad)


def test_a_new_request_changes_nothing_in_warm_up():
    g = guard(gate=False, warmup=3, carry=1)
    for _ in range(2):
        observe_window_step(g, 3, g.plan())
    g.new_request()
    assert len(g.est.window) == 2 and g.plan().reason.startswith("warm-up")


def test_auto_passes_the_replan_triggers_and_refuses_bad_ones():
    from moe_spec.policies import PolicyError, get_policy

    policy = get_policy("auto", surprise=0, drift=3, carry=1)
    assert policy.options["surprise"] == 0.0 and policy.options["drift"] == 3.0
    assert policy.options["carry"] == 1
    for bad in ({"surprise": -1}, {"drift": True}, {"drift": "x"}):
        with pytest.raises(PolicyError, match=f"{next(iter(bad))}.*a number >= 0"):
            get_policy("auto", **bad)
    for bad in (0, 2.0, True):
        with pytest.raises(PolicyError, match=r"carry is .*; allowed: an integer >= 1"):
            get_policy("auto", carry=bad)
        with pytest.raises(PolicyError, match=r"budget_from is .*; allowed: an integer >= 1"):
            get_policy("auto", budget_from=bad)


def test_per_layer_budgets_wait_for_4_steps_of_this_text_or_8_with_carried_ones(monkeypatch):
    import moe_spec.control.guard as guard_module

    passes = []

    def spy(cost, c, window, ranked_S, levels_V, repair, passes_=2, min_ranked=1):
        passes.append((c, window[1].size, passes_))
        return Budgets(np.full(window[0].shape[1], levels_V[-1]), 1.0, window[1], 1.0)

    monkeypatch.setattr(guard_module, "window_budgets", spy)
    g = guard(gate=False)

    def predict_at(n: int) -> list:
        while len(g.est.window) < n:
            observe_window_step(g, 2, plan=True)
        passes.clear()
        g.predict()
        return passes

    for n in (3, 4, 8):  # the first text: every window step is its own
        # the full tree per layer once 4 steps show it; the smaller tree always uniform
        assert predict_at(n) == [(0, n, 2 if n >= 4 else 0), (1, n, 0)]
    g.new_request()  # the window keeps the last text's latest 4 steps
    for n in (4, 7, 8):  # carried steps in the window: per layer from 8 steps
        assert predict_at(n) == [(0, n, 2 if n >= 8 else 0), (1, n, 0)]


def test_the_share_of_paths_that_fill_a_smaller_tree_comes_from_the_window():
    g = guard(gate=False)
    paths = (5, 4, 3, 1, 6, 2)
    for committed in paths:  # chains: tree 4/3/3's 4 nodes are their first 4
        observe_window_step(g, committed, plan=True)
    g.predict()
    assert g.filled[1] == sum(n >= 4 for n in paths) / len(paths)  # 4 nodes fill depth 3


def measured_guard(prompt_tokens: int, prompt_ratio: float, **options) -> Guard:
    """A ``measure`` guard whose decodes measured 1x the model and whose prompt's forward
    (``prompt_tokens`` tokens) took ``prompt_ratio`` times its modeled seconds."""
    g = guard(measure=True, gate=False, **options)
    g.prefilled(prompt_tokens, prompt_ratio * g.cost.forward_seconds(prompt_tokens))
    return g


def decodes_measured(g: Guard, clock: StoppedClock | None = None) -> None:
    """Two measured decodes; on a stopped ``clock``, each takes its modeled time (a step of
    no time is not measured)."""
    for _ in range(2):  # the two decodes that measure a decode's time
        plan = g.plan()
        assert plan.kind == "autoregressive" and plan.reason.startswith("measuring")
        if clock is not None:
            clock.now += g.cost.decode_s
        g.observe(StepOutcome("autoregressive", [0]))
    g.log_ratio["autoregressive"] = 0.0  # a decode took its modeled time


def test_prices_a_tree_from_the_prompt_before_the_first_one():
    """The prompt's measured over modeled seconds, carried to the full tree's 8 tokens
    linearly in tokens from a decode's (1 token)."""
    g = measured_guard(512, 4.0)
    decodes_measured(g)
    g.log_ratio["autoregressive"] = np.log(2.0)  # a decode took twice its modeled time
    # 7 / 511 of the way from the decode's ratio to the prompt's
    assert g.tree_ratio() == pytest.approx(2.0 + 2.0 * 7 / 511)
    assert measured_guard(8, 3.0).tree_ratio() == pytest.approx(3.0)  # P = N: the prompt's
    assert measured_guard(1, 3.0).tree_ratio() == pytest.approx(3.0)  # one token: its own
    unmeasured = guard(gate=False)  # without measure the prompt is not read
    unmeasured.prefilled(64, 1.0)
    assert unmeasured.prompt_ratio is None and unmeasured.plan().reason.startswith("warm-up")


def test_extends_the_prompt_line_past_a_short_prompt_within_bounds():
    """P < N: the line through the decode's and the prompt's ratios, extended to N, kept
    between the lower of the two and the prompt's ratio times N / P times the modeled
    forward of P over N's (a forward's time at most proportional to its tokens)."""
    g = measured_guard(5, 1.4)
    decodes_measured(g)  # a decode at its modeled time: ratio 1
    assert g.tree_ratio() == pytest.approx(1.0 + 0.4 * 7 / 4)  # 1.7, under the cap
    forward = g.cost.forward_seconds
    assert g.tree_ratio() < 1.4 * 8 / 5 * forward(5) / forward(8)
    capped = measured_guard(5, 2.0)  # the line would reach 2.75: above the cap
    decodes_measured(capped)
    assert capped.tree_ratio() == pytest.approx(2.0 * 8 / 5 * forward(5) / forward(8))
    assert capped.tree_ratio() < 1.0 + 1.0 * 7 / 4
    steep = measured_guard(2, 3.0)  # two tokens at 3x a decode's ratio: the line, 15x at 8
    decodes_measured(steep)
    assert steep.tree_ratio() == pytest.approx(3.0 * 8 / 2 * forward(2) / forward(8))
    falling = measured_guard(4, 0.5)  # the prompt's ratio below the decode's: not below it
    decodes_measured(falling)
    assert falling.tree_ratio() == pytest.approx(0.5)


def test_decodes_before_any_tree_where_the_prompt_prices_it_to_lose():
    g = measured_guard(8, 20.0, probe=4)  # a verify 20x its modeled time: a CPU's
    decodes_measured(g)
    tree_s, decode_s = g.step_s_C[0] * 20.0, g.cost.decode_s
    committed = 1 + 0.5 + 0.25 + 0.125  # the prior reaches depth d with 2**-d
    assert committed / tree_s * 1.25 < 1 / decode_s  # decoding clearly faster
    plan = g.plan()
    assert plan.kind == "autoregressive" and plan.reason.startswith("no tree yet")
    # the probe (the 2 warm-up trees) comes once it loses at most probe_cost of the time since
    floor = int(np.ceil(2 * (tree_s - committed * decode_s) / (0.005 * decode_s)))
    assert g.pause == min(floor, 1024) and plan.steps == g.pause - 2
    g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    assert g.plan().reason.startswith("warm-up (0/2")  # the probe starts the warm-up
    assert g.probe_every == 4  # and later probes are spaced as before
    lp = torch.tensor([0.0, -1.0])
    g.observe(StepOutcome("tree", [0], torch.tensor([0, 1]), lp, TREES[0]))
    assert g.plan().reason.startswith("warm-up (1/2")  # no second look at the prior


def test_runs_the_warm_up_where_the_prompt_prices_a_tree_to_pay():
    g = measured_guard(8, 1.0)  # the device scales as the model: a tree step pays here
    decodes_measured(g)
    assert g.plan().reason.startswith("warm-up (0/2")
    without_guard = measured_guard(8, 20.0, guard=False)
    assert without_guard.plan().reason.startswith("warm-up (0/2")  # no decodes to choose


def test_one_plan_covers_the_decodes_before_the_first_probe_even_with_gate_looks():
    g = measured_guard(8, 20.0, probe=4, gate_every=3)  # the gate's looks need a tree first
    decodes_measured(g)
    plan = g.plan()
    assert plan.reason.startswith("no tree yet") and plan.steps == g.pause - 2 > 3


def test_the_tree_step_that_reads_a_prompt_into_the_draft_is_not_timed():
    g = measured_guard(8, 1.0)

    def tree_step() -> int:
        g.started = time.perf_counter() - 0.05
        observe_window_step(g, 2, plan=TREES[0])
        return g.measured["tree"]

    assert [tree_step(), tree_step()] == [0, 1]  # the first caught the draft up on the prompt
    g.prefilled(8, g.cost.forward_seconds(8))  # the next request's prompt
    assert [tree_step(), tree_step()] == [1, 2]


def timed_tree_step(g: Guard, seconds: float, committed: int = 2) -> None:
    """A full-tree step the guard's clock saw take ``seconds``."""
    g.started = guard_module.time.perf_counter() - seconds
    observe_window_step(g, committed, plan=TREES[0])


def test_a_reported_draft_catch_up_comes_off_the_time_of_the_tree_step_after_a_prompt_or_decodes(
    clock,
):
    g = measured_guard(8, 1.0)
    times = []
    g.note_time = lambda kind, seconds, modeled: times.append((kind, seconds))
    g.caught_up(8, 0.03)  # the prompt's pairs, read before the first tree
    timed_tree_step(g, 0.05)
    g.caught_up(2, 0.01)  # after a tree: the last path's pairs, part of a tree step's cost
    timed_tree_step(g, 0.05)
    g.observe(StepOutcome("autoregressive", [0], steps=3))
    g.caught_up(3, 0.01)  # the decoded tokens
    timed_tree_step(g, 0.05)
    g.prefilled(8, g.cost.forward_seconds(8))  # a prompt whose catch-up is not reported
    timed_tree_step(g, 0.05)
    timed_tree_step(g, 0.05)
    trees = [seconds for kind, seconds in times if kind == "tree"]
    assert trees == pytest.approx([0.02, 0.05, 0.04, 0.05], abs=1e-9)


@pytest.mark.parametrize(
    "decodes, committed, paused", [(2.4, 2, False), (2.6, 2, True), (2.6, 1, True), (3.0, 4, False)]
)
def test_a_timed_warm_up_tree_that_clearly_loses_pauses_the_warm_up(
    clock, decodes, committed, paused
):
    """The first tree took ``decodes`` decodes' time (its catch-up taken off): it clearly
    loses (by more than 25%) at the prior's 1.875 tokens, or its own where more (one step
    may raise the estimate, not lower it). The pause is at most 4 * probe steps: one timed
    tree may have been a cold one."""
    g = measured_guard(8, 1.0, probe=4)  # the prompt prices a tree to pay: warm-up
    decodes_measured(g, clock)
    g.log_ratio["autoregressive"] = np.log(1000.0)  # decodes of ~4.4 s (1000x the model's)
    decode_s = g.decode_seconds()
    assert g.plan().reason.startswith("warm-up (0/2")
    g.caught_up(8, 0.5 * decode_s)
    timed_tree_step(g, (decodes + 0.5) * decode_s, committed)
    assert g.warm_seconds[0] == pytest.approx(decodes * decode_s, abs=1e-9)
    plan = g.plan()
    if not paused:
        assert plan.reason.startswith("warm-up (1/2")
        return
    assert plan.kind == "autoregressive" and plan.reason.startswith("warm-up paused (1/2")
    assert g.pause == plan.steps == 16  # the loss rule gives 120-145 decodes: capped
    clock.now += plan.steps * decode_s  # the paused decodes, at the time measured before
    g.observe(StepOutcome("autoregressive", [0], steps=plan.steps))
    g.log_ratio["autoregressive"] = np.log(1000.0)
    assert g.plan().reason.startswith("warm-up (1/2")  # the probe: the second warm-up tree
    assert g.probe_every == 4 and g.pause is None


def test_a_paused_warm_up_keeps_its_probe_while_new_prompts_price_the_tree():
    """The probe's distance is set as the pause starts; a new prompt that still prices the
    tree to lose leaves it, one that prices it to pay ends the pause."""
    g = measured_guard(8, 20.0, probe=4)
    decodes_measured(g)
    first = g.plan()
    half = first.steps // 2
    g.observe(StepOutcome("autoregressive", [0], steps=half))
    g.log_ratio["autoregressive"] = 0.0  # the decodes took their modeled time
    g.new_request()
    g.prefilled(8, 10.0 * g.cost.forward_seconds(8))  # still losing, by less
    plan = g.plan()
    assert plan.reason.startswith("no tree yet") and plan.steps == first.steps - half >= 1
    g.observe(StepOutcome("autoregressive", [0], steps=3))
    g.log_ratio["autoregressive"] = 0.0
    g.new_request()
    g.prefilled(8, g.cost.forward_seconds(8))  # a tree step that pays
    assert g.plan().reason.startswith("warm-up (0/2") and g.pause is None


@pytest.mark.parametrize("values", [[], [3], [1, 2, 2, 7], list(range(40)), [0.5, 1e9, -2.0]])
def test_mean_and_spread_are_numpys_mean_and_std(values):
    mean, spread = mean_and_spread(values)
    want = (np.mean(values), np.std(values)) if values else (0.0, 0.0)
    np.testing.assert_allclose([mean, spread], want, rtol=1e-12)


def test_without_hope_explores_are_spaced_by_the_mean_alone():
    """``hope`` is off by default: a tree seen on 2 steps is explored as its mean says."""
    spaced = []
    for hope in (False, True):
        g = guard(explore=0.02, hope=hope)
        g.evidence.update({0: (2, 1.5), 1: (2, 1.5)})
        g.switch({0: 50.0, 1: 60.0, -1: 100.0})
        spaced.append(g.explore_every)
    assert spaced[0] == math.ceil(time_lost(60.0, 100.0, 1.5) / (0.02 / 100.0))
    assert spaced[1] < spaced[0]


def test_budgets_below_the_cap_wait_for_budget_from_ranked_steps():
    """Two warm-up steps that committed the root alone show what a small budget keeps of
    them, not of the longer paths to come: the cap stays until ``budget_from`` ranked steps."""
    planned, rates = {}, {}
    for budget_from in (1, 4):
        g = guard(gate=False, budget_from=budget_from)
        seen, rates[budget_from] = [], []
        n = TREES[0][0]
        ids_LNK = torch.stack([torch.arange(n) % 8, (torch.arange(n) + 1) % 8], -1).repeat(2, 1, 1)
        outcome = StepOutcome(
            "tree", [0], torch.tensor([0] + list(range(1, n))), -torch.arange(n * 1.0), TREES[0]
        )  # the root alone, whose experts (0 and 1) rank first; the tree reads all 8
        for _ in range(4):
            g.est.observe(outcome, torch.arange(8).repeat(2, 1), ids_LNK)
            rates[budget_from].append(g.predict()[0])
            seen.append(g.budgets_C[0].tolist())
        planned[budget_from] = seen
        assert g.below_cap_C[0] > 1  # budgets pay on these steps, whatever was planned
    assert planned[1] == [[2, 2]] * 4  # top-k from the first step on
    assert planned[4] == [[8, 8]] * 3 + [[2, 2]]
    # while held at the cap the tree is judged at what the budgets would give, as before
    assert rates[4] == pytest.approx(rates[1], rel=1e-9)
