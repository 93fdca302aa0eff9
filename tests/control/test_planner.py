"""The planner's predicted throughput against a per-step loop, and its budget choices."""

from __future__ import annotations

import numpy as np
import pytest

from moe_spec.control.cost import StepCost
from moe_spec.control.estimates import exact_table
from moe_spec.control.planner import (
    best_budgets,
    budget_levels,
    level_index,
    throughput_X,
    window_budgets,
)
from moe_spec.costmodel import get_cost_model, get_shape


def tiny_cost() -> StepCost:
    return StepCost(
        get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B"), 2, 8, [(8, 4, 3)]
    )


def loop_throughput(cost, need_SLP, committed_S, used_SL, B_L, repair) -> float:
    """The planner's rule written one step at a time."""
    tokens = seconds = 0.0
    for need_LP, c, used_L in zip(need_SLP, committed_S, used_SL, strict=True):
        exact = 0
        for p in range(need_LP.shape[1]):
            if all(need_LP[layer, p] <= B_L[layer] for layer in range(len(B_L))):
                exact += 1
            else:
                break
        exact = min(exact, c)
        got, tail = (c, c - exact) if repair else (min(c, exact + 1), 0)
        read = np.mean([min(b, u) for b, u in zip(B_L, used_L, strict=True)])
        tokens += got
        seconds += float(cost.tree_seconds(0, np.array(read), np.array(tail)))
    return tokens / seconds


@pytest.mark.parametrize("repair", [False, True])
def test_throughput_matches_the_loop(repair):
    rng = np.random.default_rng(0)
    S, L, P = 40, 3, 4
    need_SLP = np.maximum.accumulate(rng.integers(1, 9, (S, L, P)), axis=2)
    committed_S = rng.integers(1, P + 1, S)
    used_SL = rng.integers(2, 9, (S, L))
    B_VL = rng.integers(2, 9, (7, L))
    cost = tiny_cost()
    levels_V = np.arange(2, 9)  # every budget the rows use
    exact_SLV = np.stack([exact_table(need_LP, levels_V) for need_LP in need_SLP])
    got = throughput_X(cost, 0, exact_SLV, committed_S, used_SL, levels_V, B_VL, repair)
    want = [loop_throughput(cost, need_SLP, committed_S, used_SL, B, repair) for B in B_VL]
    np.testing.assert_allclose(got, want, rtol=1e-12)


def hand_cost(verify_D, repair_per_token: float) -> StepCost:
    cost = tiny_cost()
    cost.draft_C[:] = 0.0
    cost.verify_CD[0] = verify_D
    cost.repair_Q = repair_per_token * np.arange(cost.repair_Q.size, dtype=float)
    return cost


def window(levels_V: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One step: layer 0 needs 1, 3, 3 along the path; layer 1: 1, 1, 5."""
    need_LP = np.array([[1, 3, 3], [1, 1, 5]])
    return exact_table(need_LP, levels_V)[None], np.array([3]), np.array([[8, 8]])


@pytest.mark.parametrize("repair", [False, True])
def test_budgeting_that_does_not_pay_keeps_every_expert(repair):
    flat = hand_cost(np.ones(9), repair_per_token=1.0)  # reading fewer experts saves nothing
    levels_V = budget_levels(2, 8, 8)
    B_L, tp, exact_S, step_s, _ = best_budgets(flat, 0, window(levels_V), levels_V, repair)
    assert B_L.tolist() == [8, 8] and tp == pytest.approx(3.0)
    assert exact_S.tolist() == [3] and step_s == pytest.approx(1.0)  # the path untouched


def test_budgeting_that_pays_keeps_what_the_path_needs_per_layer():
    linear = hand_cost(np.arange(9, dtype=float), repair_per_token=10.0)  # time = experts read
    B_L, tp, exact_S, step_s, _ = best_budgets(
        linear, 0, window(np.arange(1, 9)), np.arange(1, 9), repair=True
    )
    assert B_L.tolist() == [3, 5]  # the least that keeps the path whole in each layer
    assert tp == pytest.approx(3 / 4) and exact_S.tolist() == [3] and step_s == pytest.approx(4)


def test_budget_levels_span_top_k_to_the_cap():
    assert budget_levels(4, 32, 8).tolist() == [4, 8, 12, 16, 20, 24, 28, 32]
    assert budget_levels(2, 3, 8).tolist() == [2, 3]


def test_exact_table_counts_the_kept_prefix():
    table = exact_table(np.array([[1, 3, 3], [2, 2, 9]]), np.arange(10))
    assert table.tolist() == [[0, 1, 1, 3, 3, 3, 3, 3, 3, 3], [0, 0, 2, 2, 2, 2, 2, 2, 2, 3]]
    assert exact_table(np.array([[1, 3, 3], [2, 2, 9]]), np.array([2, 8, 9])).tolist() == [
        [1, 3, 3],
        [2, 2, 3],
    ]


def test_a_budget_that_is_not_a_level_is_refused():
    with pytest.raises(ValueError, match=r"budgets \[5\] are not all in \[1, 3, 8\]"):
        level_index(np.array([1, 3, 8]), np.array([3, 5]))


def test_a_smaller_budget_only_a_hair_faster_is_not_taken():
    nearly_flat = hand_cost(1.0 + 0.001 * np.arange(9), repair_per_token=10.0)
    levels_V = np.arange(1, 9)
    B_L = best_budgets(nearly_flat, 0, window(levels_V), levels_V, repair=True).B_L
    assert B_L.tolist() == [8, 8]  # (3, 5) would be 0.3% faster: within the 1% margin
    B_L = best_budgets(nearly_flat, 0, window(levels_V), levels_V, repair=True, min_gain=0.0).B_L
    assert B_L.tolist() == [3, 5]


def test_a_window_all_ranked_is_searched_as_before():
    linear = hand_cost(np.arange(9, dtype=float), repair_per_token=10.0)
    levels_V = np.arange(1, 9)
    want = best_budgets(linear, 0, window(levels_V), levels_V, repair=True)
    got = window_budgets(linear, 0, window(levels_V), np.array([True]), levels_V, repair=True)
    assert got.B_L.tolist() == want.B_L.tolist() and got.tokens_per_s == want.tokens_per_s


def unranked_window(levels_V):
    """The ranked step of :func:`window` and a step that rested (its need unknown: the
    estimates count every budget as keeping its path) committing 1 token, 6 experts read."""
    exact_SLV, committed_S, used_SL = window(levels_V)
    rested_LV = np.full((2, levels_V.size), 1)
    return (
        np.concatenate((exact_SLV, rested_LV[None])),
        np.append(committed_S, 1),
        np.concatenate((used_SL, [[6, 6]])),
    )


@pytest.mark.parametrize("pays", [True, False])
def test_budgets_come_from_ranked_steps_and_their_gain_scales_the_whole_window(pays):
    verify_D = np.arange(9, dtype=float) if pays else np.ones(9)
    cost = hand_cost(verify_D, repair_per_token=10.0)
    levels_V = np.arange(1, 9)
    whole = unranked_window(levels_V)
    got = window_budgets(cost, 0, whole, np.array([True, False]), levels_V, repair=True)
    ranked = best_budgets(cost, 0, window(levels_V), levels_V, repair=True)
    assert got.B_L.tolist() == ranked.B_L.tolist() == ([3, 5] if pays else [8, 8])
    cap = np.array([[8, 8]])
    # the whole window at the cap (4 tokens; the steps read 8 and 6 experts), times the
    # ranked step's gain from the cap to its budgets
    at_cap = throughput_X(cost, 0, *whole, levels_V, cap, repair=True)[0]
    gain = ranked.tokens_per_s / throughput_X(cost, 0, *window(levels_V), levels_V, cap, True)[0]
    assert at_cap == pytest.approx(4 / (verify_D[8] + verify_D[6]))
    assert got.tokens_per_s == pytest.approx(at_cap * gain)
    assert got.exact_S.tolist() == [3]  # the ranked step's alone


def test_no_ranked_step_keeps_the_cap():
    linear = hand_cost(np.arange(9, dtype=float), repair_per_token=10.0)
    levels_V = np.arange(1, 9)
    whole = tuple(a[1:] for a in unranked_window(levels_V))  # the rested step alone
    got = window_budgets(linear, 0, whole, np.array([False]), levels_V, repair=True)
    assert got.B_L.tolist() == [8, 8] and got.exact_S.size == 0
    assert got.tokens_per_s == pytest.approx(1 / 6) and got.step_s == pytest.approx(6)


@pytest.mark.parametrize("verify", ["linear", "flat"])
def test_below_cap_is_the_best_uniform_budget_below_the_cap_over_the_caps(verify):
    verify_D = np.arange(9, dtype=float) if verify == "linear" else np.ones(9)
    cost = hand_cost(verify_D, repair_per_token=10.0)
    levels_V = np.arange(1, 9)
    got = best_budgets(cost, 0, window(levels_V), levels_V, repair=True).below_cap
    uniform_VL = np.repeat(levels_V[:, None], 2, axis=1)
    tp_V = throughput_X(cost, 0, *window(levels_V), levels_V, uniform_VL, repair=True)
    assert got == pytest.approx(tp_V[:-1].max() / tp_V[-1])
    assert (got > 1) == (verify == "linear")  # reading fewer experts pays only there
    whole = unranked_window(levels_V)
    assert window_budgets(cost, 0, whole, np.array([True, False]), levels_V, True).below_cap == (
        pytest.approx(got)  # the ranked steps'
    )


@pytest.mark.parametrize("whole_ranked", [True, False])
def test_fewer_ranked_steps_than_min_ranked_keep_the_cap_and_say_what_budgets_would_gain(
    whole_ranked,
):
    """A budget below the cap from ``min_ranked`` ranked steps: a few short paths show what
    a small budget keeps of them, not of the longer paths to come."""
    linear = hand_cost(np.arange(9, dtype=float), repair_per_token=10.0)
    levels_V = np.arange(1, 9)
    whole, ranked_S = window(levels_V), np.array([True])
    if not whole_ranked:
        whole, ranked_S = unranked_window(levels_V), np.array([True, False])
    searched = window_budgets(linear, 0, whole, ranked_S, levels_V, repair=True)
    assert searched.B_L.tolist() == [3, 5]  # what one ranked step asks for
    held = window_budgets(linear, 0, whole, ranked_S, levels_V, repair=True, min_ranked=2)
    cap = throughput_X(linear, 0, *whole, levels_V, np.array([[8, 8]]), repair=True)[0]
    assert held.B_L.tolist() == [8, 8] and held.tokens_per_s == pytest.approx(cap)
    assert held.below_cap == searched.below_cap > 1  # how close budgets come: still known
    assert held.exact_S.tolist() == [3]  # the ranked step at the cap: its whole path (3)
    enough = window_budgets(linear, 0, whole, ranked_S, levels_V, repair=True, min_ranked=1)
    assert enough.B_L.tolist() == searched.B_L.tolist()
