"""Each tree's latest committed tokens, resting steps included (``moe_spec.control.lately``)."""

from __future__ import annotations

import pytest
import torch

from moe_spec.control import StepOutcome
from tests.control.test_guard import TREES, guard, observe_window_step


def rested_step(g, committed: int) -> None:
    """A planned step of the full tree that rested: it reaches the guard without routing,
    so it does not enter the window (past the learning steps)."""
    plan = g.plan()
    assert plan.kind == "tree" and plan.tree == TREES[0]
    n = TREES[0][0]
    outcome = StepOutcome(
        "tree",
        list(range(committed)),
        torch.tensor([0, *range(1, n)]),
        -torch.arange(n, dtype=torch.float32),
        TREES[0],
    )
    g.observe(outcome, None, None)


def window_of(g, committed: int, steps: int = 8) -> None:
    """``steps`` window steps of the full tree committing ``committed`` tokens each."""
    g.tree_steps = 1  # past warm-up
    for _ in range(steps):
        observe_window_step(g, committed)


def test_the_mean_blends_the_latest_steps_with_pseudo_steps_at_the_windows_mean():
    g = guard(lately=6, lately_prior=3.0)
    for committed in (1, 1, 1):
        g.note_lately(0, committed)
    assert g.lately_mean(0, 4.0) is None  # fewer than 4 steps
    for committed in (1, 2, 5, 5):  # 7 steps, the latest 6 kept: 1, 1, 2, 5, 5 and a 1
        g.note_lately(0, committed)
    assert list(g.lately_C[0]) == [1, 1, 1, 2, 5, 5]
    assert g.lately_mean(0, 4.0) == pytest.approx((15 + 3 * 4.0) / (6 + 3))
    assert g.lately_mean(1, 4.0) is None  # the smaller tree ran no step
    assert guard().lately_mean(0, 4.0) is None  # off by default


@pytest.mark.parametrize("lately", [0, 24])
def test_a_prediction_follows_the_steps_the_window_did_not_take(lately):
    """Eight window steps of 4 tokens (put in the window by hand: the guard did not see
    them run), then 8 planned steps that rested at 1 token: with ``lately`` the full tree
    is predicted at (8 * 1 + 3 * 4) / 11 tokens a step, not at the window's 4."""
    g = guard(gate=False, lately=lately, replan_every=100, max_replan=100, drift=0)
    window_of(g, 4)
    before = g.predict()
    smaller = g.evidence[1][1]  # the 4-token tree's window mean
    for _ in range(8):
        rested_step(g, 1)
    assert len(g.est.window) == 8 and g.choice == 0  # the resting steps did not enter it
    after = g.predict()
    expected = (8 * 1 + 3 * 4.0) / 11 if lately else 4.0
    assert after[0] == pytest.approx(before[0] * expected / 4.0)
    assert g.evidence[0][1] == pytest.approx(expected)
    # the smaller tree, seen in the window alone, is scaled alike: the text's level moved
    assert after[1] == pytest.approx(before[1] * expected / 4.0)
    assert g.evidence[1][1] == pytest.approx(smaller * expected / 4.0)
    assert after[-1] == before[-1] and g.rate_C == after


@pytest.mark.parametrize(
    "committed, rates, lately, replanned",
    [
        (1, {0: 100.0, -1: 80.0}, 24, True),  # (1 + 1/2) / 4 of 100 is 37.5: behind decoding
        (4, {0: 100.0, -1: 80.0}, 24, False),  # as predicted
        (2, {0: 100.0, -1: 50.0}, 24, False),  # (2 + 1/2) / 4 of 100: still ahead of it
        (2, {0: 100.0, 1: 104.0, -1: 30.0}, 24, False),  # behind a smaller tree only
        (1, {0: 100.0, -1: 80.0}, 0, False),  # off
    ],
)
def test_steps_that_put_the_tree_behind_decoding_replan_it_at_once(
    committed, rates, lately, replanned
):
    g = guard(gate=False, warmup=1, lately=lately, replan_every=100, max_replan=100)
    window_of(g, 4)

    def predict():
        g.evidence.update({0: (8, 4.0), 1: (8, 3.0)})
        g.spread_C[0] = 1.0
        g.rate_C = dict(rates)
        return dict(rates)

    g.predict = predict
    for _ in range(4):  # the first plan replans; then 4 resting steps since it
        rested_step(g, committed)
    assert g.replans == 1
    assert g.surprised() == ("behind" if replanned else "")
    g.plan()
    assert g.replans == 1 + replanned
    assert len(g.est.window) == 8  # a replan for being behind keeps the window


def test_behind_waits_for_4_steps_and_a_prediction():
    g = guard(gate=False, lately=24)
    assert not g.behind(3, 3, 4.0, 1.0)  # 3 steps
    assert not g.behind(4, 4, 4.0, 1.0)  # no prediction yet
    g.choice, g.rate_C = 0, {0: 100.0, -1: 90.0}
    assert g.behind(4, 4, 4.0, 1.0)  # (1 + 1/2) / 4 of 100 < 90
    assert not g.behind(4, 4, 4.0, 8.0)  # a spread of 8: (1 + 4) / 4 of 100 > 90
    g.rate_C = {0: 100.0}  # without the guard: no decoding to fall behind
    assert not g.behind(4, 4, 4.0, 1.0)


def test_a_new_request_keeps_each_trees_latest_carry_steps():
    g = guard(gate=False, carry=2, warmup=1, lately=24)
    g.tree_steps = 1
    for committed in (1, 2, 3, 4, 5):
        g.note_lately(0, committed)
    g.note_lately(1, 3)
    g.new_request()
    assert list(g.lately_C[0]) == [4, 5] and list(g.lately_C[1]) == [3]


def test_auto_passes_lately_and_refuses_bad_values():
    from moe_spec.policies import PolicyError, get_policy

    policy = get_policy("auto", lately=8, lately_prior=0)
    assert policy.options["lately"] == 8 and policy.options["lately_prior"] == 0.0
    assert get_policy("auto").options["lately"] == 0  # off by default
    for bad in (-1, 2.0, True):
        with pytest.raises(PolicyError, match=r"lately is .*; allowed: an integer >= 0"):
            get_policy("auto", lately=bad)
    for bad in (-1, True, "x"):
        with pytest.raises(PolicyError, match=r"lately_prior is .*; allowed: a number >= 0"):
            get_policy("auto", lately_prior=bad)
