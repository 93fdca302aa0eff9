"""The guard's draft gate: grow and verify a tree only when the draft's first level pays."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from moe_spec.control import AcceptanceEstimates, Guard, StepCost, StepOutcome, StepPlan
from moe_spec.costmodel import get_cost_model, get_shape
from moe_spec.policies import PolicyError, get_policy

TREES = [(8, 4, 3), (4, 3, 3)]


def guard(**options) -> Guard:
    est = AcceptanceEstimates(2, 8, [n for n, _, _ in TREES])
    cost = StepCost(get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B"), 2, 8, TREES)
    g = Guard(est, cost, 2, 8, warmup=1, **options)
    g.tree_steps = 1  # past warm-up
    g.current = StepPlan("tree", *TREES[0])
    g.cost.decode_s = 0.004
    g.cost.draft_C = np.array([0.003, 0.003])  # tree 0: 3 draft forwards of 1 ms
    g.step_s_C[:] = [0.012, 0.009]  # draft + verify
    g.best_rate = 100.0  # tokens/s: the rest of tree 0's step costs 1.1 tokens, a decode 0.4
    return g


def logprobs(*q: float) -> torch.Tensor:
    """The draft's first level: log-probabilities ``log q`` of the root's children."""
    return torch.tensor([math.log(x) for x in q])


def test_grows_the_tree_exactly_when_its_expected_tokens_pay_for_it():
    g = guard()
    # nothing seen yet: a child of probability q counts its bin's centre (bins of 0.1), and
    # depth d is reached with prior probability 2**-d, so 0.25 / 0.5 + 0.125 / 0.5 = 0.75
    # tokens are expected past depth 1: expected = 1 + 1.75 * sum(centres); grown iff
    # expected - 1.1 >= 1 - 0.4, i.e. sum >= 0.4
    assert g.expected_tokens(logprobs(0.45).numpy(), 0) == pytest.approx(1 + 1.75 * 0.45)
    assert g.gate(logprobs(0.45)) is None
    assert g.gate(logprobs(0.35, 0.12)) is None  # 0.35 + 0.15
    reason = g.gate(logprobs(0.15, 0.05))  # 0.2: 1.35 tokens expected
    assert reason is not None and reason.startswith("draft gate: 1.35 expected tokens")
    assert g.gated == 0
    # only one child can be accepted: the first level counts at most once
    assert g.expected_tokens(logprobs(0.95, 0.95, 0.95).numpy(), 0) == pytest.approx(2.75)


def test_calibrated_bins_and_depths_replace_the_drafts_own_numbers():
    g = guard()
    q = torch.full((40,), 0.95)  # 40 nodes of q = 0.95 at depth 1, none accepted
    tree = torch.cat((torch.zeros(1), q.log()))
    depth_N = torch.cat((torch.zeros(1, dtype=torch.long), torch.ones(40, dtype=torch.long)))
    g.est.observe(StepOutcome("tree", [0], depth_N, tree, (41, 40, 1)), None, None)
    # bin 9 of the first level: (0 + 4 * 0.95) / (40 + 4) = 0.086; depth 1 reached
    # (0 + 0.5) / (1 + 1) = 0.25
    # of steps, depths 2 and 3 by their priors 0.25 and 0.125: past depth 1, 1 + 0.5 tokens
    a = 3.8 / 44
    assert g.expected_tokens(logprobs(0.95).numpy(), 0) == pytest.approx(1 + a * (1 + 1.5))
    assert g.gate(logprobs(0.95)) is not None  # 1.22 tokens expected


@pytest.mark.parametrize(
    "state",
    ["gate off", "guard off", "probe", "decoding", "another tree"],
)
def test_the_gate_stays_open(state):
    g = guard(gate=state != "gate off", guard=state != "guard off")
    if state == "probe":
        g.probing = True
    elif state == "decoding":
        g.current = StepPlan("autoregressive")
    elif state == "another tree":
        g.current = StepPlan("tree", 6, 2, 3)
    assert g.gate(logprobs(0.01)) is None


def test_a_gated_step_is_counted_but_its_time_is_not_a_decodes():
    g = guard(measure=True)
    assert g.gate(logprobs(0.01)) is not None
    g.started = 1.0  # a step planned long ago: its seconds would be huge
    g.observe(StepOutcome("autoregressive", [0], tree=(1, 1, 1)))
    assert list(g.gated_C[0]) == [1] and g.gated is None
    assert g.measured["autoregressive"] == 0  # the draft's seconds are not a decode's
    lp = torch.tensor([0.0, math.log(0.9)])
    g.observe(StepOutcome("tree", [0, 1], torch.tensor([0, 1]), lp, TREES[0]))
    assert list(g.gated_C[0]) == [1, 0]
    g.started = 0.0
    g.observe(StepOutcome("autoregressive", [0]))  # a planned decode
    assert list(g.gated_C[0]) == [1, 0]


def test_before_any_prediction_the_gate_trades_at_decodings_rate():
    g = guard()
    g.best_rate = 0.0  # no prediction yet: 250 tok/s, a decode costs 1 token
    g.step_s_C[0] = 0.010  # the rest of the step (9 ms) 2.25 tokens
    assert g.gate(logprobs(0.75)) is None  # 1 + 1.75 * 0.75 = 2.31 >= 2.25
    assert g.gate(logprobs(0.65)) is not None  # 2.14


def test_a_trees_prediction_counts_its_gated_steps():
    g = guard()
    committed_S = np.array([3.0, 3.0])
    # a verified step of tree 0 takes 12 ms: at 250 tok/s it counts 3 tokens
    gated_s = 0.001 + 0.004  # one draft forward and a decode, for one token
    g.gated_C[0].extend([1, 0, 0, 0] * 2)  # 8 decisions: a quarter gated
    want = (0.75 * 3.0 + 0.25) / (0.75 * 0.012 + 0.25 * gated_s)
    assert g.with_gated(0, committed_S, 250.0) == pytest.approx(want)
    g.gated_C[0].extend([1] * 6)  # the last 8 decisions count: 0 0 1 1 1 1 1 1
    want = (0.25 * 3.0 + 0.75) / (0.25 * 0.012 + 0.75 * gated_s)
    assert g.with_gated(0, committed_S, 250.0) == pytest.approx(want)


def test_with_few_decisions_behind_it_a_tree_is_judged_by_what_the_gate_would_do():
    g = guard()
    est = g.est
    est.steps_seen = 4
    est.ran_W[:4] = 0
    est.first_WB[:4] = 0
    est.first_WB[0, 9] = 1  # one confident first level (q in bin 9): 1 + 3 * 0.95 expected
    est.first_WB[1:4, 0] = 1  # three unsure ones: 1 + 3 * 0.05
    np.testing.assert_array_equal(
        g.would_gate(0, est.first_WB[:4], 100.0), [False, True, True, True]
    )
    committed_S = np.array([4.0, 1.0, 1.0, 2.0])
    # at 200 tok/s a 12 ms step counts 2.4 tokens where 2 were committed: the verified
    # step's 4 count 4.8
    want = (0.25 * 4.8 + 0.75) / (0.25 * 0.012 + 0.75 * 0.005)
    assert g.with_gated(0, committed_S, 200.0) == pytest.approx(want)
    assert g.with_gated(0, committed_S, 200.0) > 200.0  # the gate pays here
    assert guard(gate=False).with_gated(0, committed_S, 200.0) == 200.0


def test_while_decoding_the_gate_judges_the_full_tree_every_fourth_step_or_less_often():
    assert guard().gate_every == 0  # off by default
    g = guard(gate_every=4)
    g.predict = lambda: {0: 100.0, -1: 200.0}  # decoding predicted 2x faster
    g.probe0 = g.probe_every = g.max_probe = 10_000  # no blind probe here
    sure = iter([False, False, True, False])  # what the draft's first level says per look
    kinds = ""
    for _ in range(32):
        plan = g.plan()
        kinds += "T" if plan.kind == "tree" else "a"
        if plan.kind == "tree":
            assert plan.reason.startswith("the gate judges the full tree")
            reason = g.gate(logprobs(0.99 if next(sure) else 0.01))
            if reason is None:  # grown and verified: 3 tokens
                lp = torch.tensor([0.0, -0.01, -0.02])
                g.observe(StepOutcome("tree", [0, 1, 2], torch.tensor([0, 1, 2]), lp, TREES[0]))
                continue
        g.observe(
            StepOutcome("autoregressive", [0], tree=(1, 1, 1) if kinds[-1] == "T" else (1, 0, 0))
        )
    # turned down after 4, then after 8 decodes; the third look is verified: 4 again
    assert kinds == "aaaaT" + "a" * 8 + "T" + "a" * 16 + "T" + "a"
    assert list(g.gated_C[0]) == [1, 1, 0]
    assert g.look_every == 4
    for off in (guard(gate=False, gate_every=4), guard()):
        off.predict = g.predict
        assert all(off.plan().kind == "autoregressive" for _ in range(12))


def test_the_gate_rests_while_the_tree_clearly_beats_decoding():
    g = guard()  # gate_margin 25%
    g.switch({0: 260.0, 1: 200.0, -1: 200.0})  # 1.30x decoding
    assert not g.close_call and g.gate(logprobs(0.01)) is None
    g.switch({0: 240.0, 1: 200.0, -1: 200.0})  # 1.20x
    assert g.close_call and g.gate(logprobs(0.01)) is not None


def test_auto_passes_the_gate_options_and_refuses_bad_ones():
    policy = get_policy("auto", gate_margin=1.5, gate_every=2)
    assert policy.options["gate_margin"] == 1.5 and policy.options["gate_every"] == 2
    for bad in ({"gate_margin": -0.1}, {"gate_margin": True}, {"gate_every": -1}):
        with pytest.raises(PolicyError, match=next(iter(bad))):
            get_policy("auto", **bad)


def test_the_gate_rests_in_warm_up():
    """Judged by its priors and a step or two, a tree the gate turns down teaches nothing."""
    g = guard()
    g.warmup, g.tree_steps = 2, 1
    assert g.gate(logprobs(0.05)) is None
    g.tree_steps = 2
    assert g.gate(logprobs(0.05)) is not None


def test_the_gate_reads_the_first_levels_calibration_not_the_deeper_nodes():
    g = guard()
    # a step whose first level (q = 0.35) was accepted, and 30 deep nodes of the same q not
    n = 32
    lp = torch.cat((torch.zeros(1), torch.full((n - 1,), math.log(0.35))))
    depth_N = torch.cat((torch.zeros(1, dtype=torch.long), torch.full((n - 1,), 2)))
    depth_N[1] = 1
    g.est.observe(StepOutcome("tree", [0, 1], depth_N, lp, (n, 1, 2)), None, None)
    assert g.est.accept_B()[3] == pytest.approx((1 + 4 * 0.35) / 35)  # all nodes: 0.07
    assert g.est.accept_first_B()[3] == pytest.approx((1 + 4 * 0.35) / 5)  # depth 1: 0.48
    beyond = g.beyond_first(0)
    assert g.expected_tokens(logprobs(0.35).numpy(), 0) == pytest.approx(1 + 0.48 * (1 + beyond))


def test_a_run_of_gated_steps_on_the_full_tree_ends_in_a_probe():
    g = guard(probe=4)
    g.predict = lambda: {0: 100.0, -1: 90.0}  # the full tree, decoding close behind
    kinds = ""
    for _ in range(10):
        plan = g.plan()
        if plan.kind == "tree" and g.gate(logprobs(0.05)) is not None:  # an unsure draft
            kinds += "g"
            g.observe(StepOutcome("autoregressive", [0]))
        else:
            kinds += "P" if g.probing else "T"
            lp = torch.tensor([0.0, math.log(0.05)])
            g.observe(StepOutcome("tree", [0, 1], torch.tensor([0, 1]), lp, plan.tree))
    # without the probes the gate would turn every tree down and learn nothing again
    assert kinds == "ggggPggggP"
