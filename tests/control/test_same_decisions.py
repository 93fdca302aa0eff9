"""The controller's fast paths decide exactly what the straightforward versions decide.

The references below are the controller's first, plain implementations (one budget
vector priced at a time and one layer moved at a time; a node-by-expert hit table for
the distinct experts; a comparison per budget for the exact table), kept here as the
spec. The fast paths must give the same integers and the same floats, so that a run's
budgets, guard choices and reasons are unchanged.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import moe_spec.control.estimates as estimates_module
import moe_spec.control.planner as planner_module
from moe_spec.control import AcceptanceEstimates, StepCost, StepOutcome
from moe_spec.control.cost import step_tables
from moe_spec.control.estimates import WindowStep, exact_table
from moe_spec.control.planner import (
    Budgets,
    best_budgets,
    budget_levels,
    first_clear_best,
    layer_trials,
)
from moe_spec.costmodel import get_cost_model, get_shape
from moe_spec.policies import get_policy

TREES = [(32, 8, 6), (16, 8, 6), (8, 7, 6), (4, 3, 3)]


def reference_exact_table(need_LP: np.ndarray, levels_V: np.ndarray) -> np.ndarray:
    L, P = need_LP.shape
    return np.array(
        [[sum(need_LP[layer, p] <= b for p in range(P)) for b in levels_V] for layer in range(L)]
    )


def reference_throughput_V(cost, c, exact_SLB, committed_S, used_SL, B_VL, repair):
    """``exact_SLB``: the tables at every budget 0..E (indexed by the budget itself)."""
    L = exact_SLB.shape[1]
    exact_VS = np.minimum(exact_SLB[:, np.arange(L)[None, :], B_VL].min(axis=-1).T, committed_S)
    if repair:
        tokens_V = np.full(B_VL.shape[0], committed_S.sum(), dtype=float)
        repair_VS = committed_S[None] - exact_VS
    else:
        tokens_V = np.minimum(committed_S[None], exact_VS + 1).sum(axis=-1)
        repair_VS = np.zeros_like(exact_VS)
    read_VS = np.minimum(B_VL[:, None, :], used_SL[None]).mean(axis=-1)
    budgeted_V1 = (B_VL < cost.E).any(axis=-1)[:, None]
    return tokens_V / cost.tree_seconds(c, read_VS, repair_VS, budgeted_V1).sum(axis=-1)


def reference_exact_and_seconds(cost, c, exact_SLB, committed_S, used_SL, B_L, repair):
    """Budgets ``B_L``'s untouched path prefix per step (uncapped) and mean step seconds."""
    L = exact_SLB.shape[1]
    exact_S = exact_SLB[:, np.arange(L), B_L].min(axis=-1)
    repair_S = committed_S - np.minimum(exact_S, committed_S) if repair else 0
    read_S = np.minimum(B_L, used_SL).mean(axis=-1)
    seconds_S = cost.tree_seconds(c, read_S, np.asarray(repair_S), bool((B_L < cost.E).any()))
    return exact_S, float(seconds_S.sum() / seconds_S.size)


def reference_best_budgets(cost, c, window, levels_V, repair, passes=2, min_gain=0.01):
    exact_SLB, committed_S, used_SL = window
    L = exact_SLB.shape[1]
    levels_desc = levels_V[::-1]
    uniform_VL = np.repeat(levels_desc[:, None], L, axis=1)
    tp_V = reference_throughput_V(cost, c, exact_SLB, committed_S, used_SL, uniform_VL, repair)
    best = first_clear_best(tp_V, min_gain)
    B_L, tp = uniform_VL[best].copy(), float(tp_V[best])
    below = float(tp_V[1:].max() / tp_V[0]) if tp_V.size > 1 else 0.0  # the best uniform / cap
    for _ in range(passes):
        changed = False
        for layer in range(L):
            trial_VL = np.repeat(B_L[None], levels_desc.size, axis=0)
            trial_VL[:, layer] = levels_desc
            tp_V = reference_throughput_V(
                cost, c, exact_SLB, committed_S, used_SL, trial_VL, repair
            )
            v = first_clear_best(tp_V, min_gain)
            if tp_V[v] > tp * (1 + 1e-9) and not np.array_equal(trial_VL[v], B_L):
                B_L, tp, changed = trial_VL[v].copy(), float(tp_V[v]), True
        if not changed:
            break
    exact_S, step_s = reference_exact_and_seconds(
        cost, c, exact_SLB, committed_S, used_SL, B_L, repair
    )
    return Budgets(B_L, tp, exact_S, step_s, below)


def reference_window_step(est, logprob_N, path, rank_LE, ids_LNK) -> WindowStep:
    L, N, K = ids_LNK.shape
    P, l_L1 = len(path), np.arange(L)[:, None]
    need_LPK = rank_LE[l_L1, ids_LNK[:, path].reshape(L, -1)].reshape(L, P, K)
    need_LP = np.maximum.accumulate(need_LPK.max(axis=-1) + 1, axis=1)
    order_N = np.argsort(-logprob_N, kind="stable")
    place_N = np.empty(N, dtype=np.int64)
    place_N[order_N] = np.arange(N)
    path_place_P = np.maximum.accumulate(place_N[path])
    hits_LNE = np.zeros((L, N, est.E), dtype=bool)
    hits_LNE[l_L1[:, :, None], np.arange(N)[None, :, None], ids_LNK[:, order_N]] = True
    used_LN = np.logical_or.accumulate(hits_LNE, axis=1).sum(axis=-1)
    committed_C = np.full(len(est.candidate_tokens), -1)
    used_CL = np.zeros((len(est.candidate_tokens), L), dtype=int)
    for c, n in enumerate(est.candidate_tokens):
        if n <= N:
            committed_C[c] = int((path_place_P < n).sum())
            used_CL[c] = used_LN[:, n - 1]
    return WindowStep(need_LP, committed_C, used_CL)


def random_window(rng, L: int, E: int, K: int, S: int, P: int):
    """A window where budgets below E can pay: most of the path needs few experts in
    most layers (a heavy tail, heavier in some layers)."""
    skew_1L1 = rng.uniform(0.5, 4.0, (1, L, 1))
    need_SLP = np.minimum(E, K + (rng.pareto(skew_1L1, (S, L, P)) * E / 16).astype(np.int64))
    need_SLP = np.maximum.accumulate(need_SLP, axis=2)
    exact_SLB = np.stack([exact_table(need_LP, np.arange(E + 1)) for need_LP in need_SLP])
    return exact_SLB, rng.integers(max(1, P - 3), P + 1, S), rng.integers(K, E + 1, (S, L))


@pytest.mark.parametrize("seed", range(6))
def test_budget_search_matches_the_layer_by_layer_reference(seed):
    rng = np.random.default_rng(seed)
    moved = 0
    for i in range(8):
        # "measured" prices the expert ranking (select_s > 0), all of it on a budgeted step
        # and a share 1 / rank_every on an unbudgeted one: budgeted or not matters
        cost_model = get_cost_model(("calibrated", "measured")[i % 2], "H200")
        L, E = int(rng.integers(1, 24)), int(rng.choice([8, 32, 64]))
        K = min(8, E // 2)
        shape = get_shape("OLMoE-1B-7B")
        cost = StepCost(cost_model, shape, K, E, TREES[:2], rank_every=1 + i % 4)
        window = random_window(rng, L, E, K, int(rng.integers(1, 30)), int(rng.integers(2, 8)))
        levels_V = budget_levels(K, E, int(rng.integers(2, 10)))
        for repair in (False, True):
            for passes in (0, 2):
                want = reference_best_budgets(cost, 1, window, levels_V, repair, passes)
                at_levels = (window[0][:, :, levels_V], *window[1:])
                got = best_budgets(cost, 1, at_levels, levels_V, repair, passes)
                assert got.B_L.tolist() == want.B_L.tolist()
                assert got.tokens_per_s == want.tokens_per_s
                assert got.exact_S.tolist() == want.exact_S.tolist()
                assert got.step_s == want.step_s
                moved += len(set(want[0].tolist())) > 1  # layers that differ
    assert moved > 0, "the search never set per-layer budgets: nothing was compared"


@pytest.mark.parametrize("repair", [False, True])
def test_each_layers_trials_are_priced_as_the_reference_prices_them(repair):
    rng = np.random.default_rng(1)
    cost_model = get_cost_model("measured", "H200")  # select_s > 0
    for i in range(20):
        L, E = int(rng.integers(1, 12)), int(rng.choice([8, 32, 64]))
        K = min(8, E // 2)
        cost = StepCost(cost_model, get_shape("OLMoE-1B-7B"), K, E, TREES[:2], rank_every=1 + i % 4)
        exact_SLB, committed_S, used_SL = random_window(rng, L, E, K, 12, 5)
        levels_V = budget_levels(K, E, 6)[::-1]
        B_L = rng.choice(levels_V, L, p=[0.7] + [0.3 / (levels_V.size - 1)] * (levels_V.size - 1))
        start = int(rng.integers(0, L))
        got_JV, exact_JVS, seconds_JVS = layer_trials(
            cost, 0, exact_SLB[:, :, levels_V], committed_S, used_SL, levels_V, B_L, start, repair
        )
        for j in range(start, L):
            trial_VL = np.repeat(B_L[None], levels_V.size, axis=0)
            trial_VL[:, j] = levels_V
            want_V = reference_throughput_V(
                cost, 0, exact_SLB, committed_S, used_SL, trial_VL, repair
            )
            assert got_JV[j - start].tolist() == want_V.tolist()
            for v, trial_L in enumerate(trial_VL):
                want_S, want_s = reference_exact_and_seconds(
                    cost, 0, exact_SLB, committed_S, used_SL, trial_L, repair
                )
                assert exact_JVS[j - start, v].tolist() == want_S.tolist()
                got_s = seconds_JVS[j - start, v]
                assert float(got_s.sum() / got_s.size) == want_s


def test_window_steps_and_exact_tables_match_the_references():
    rng = np.random.default_rng(0)
    for _ in range(200):
        L, E = int(rng.integers(1, 10)), int(rng.choice([4, 8, 32, 64, 128]))
        K, N = int(rng.integers(1, min(E, 8) + 1)), int(rng.integers(1, 40))
        ids_LNK = np.stack([[rng.choice(E, K, replace=False) for _ in range(N)] for _ in range(L)])
        rank_LE = np.stack([rng.permutation(E) for _ in range(L)])
        logprob_N = np.round(-rng.exponential(1.0, N), 1)  # rounded: ties in the order
        logprob_N[0] = 0.0
        inner = rng.choice(np.arange(1, N), min(N - 1, int(rng.integers(0, 6))), replace=False)
        path = [0] + sorted(inner.tolist())
        for candidates in (
            sorted(set(rng.integers(1, 50, 4).tolist()))[::-1],
            [N + 3, N],  # none smaller than the tree (a fixed tree: SGLang's)
        ):
            est = AcceptanceEstimates(L, E, candidates)
            got = est.window_step(logprob_N, path, rank_LE, ids_LNK)
            want = reference_window_step(est, logprob_N, path, rank_LE, ids_LNK)
            for name in ("need_LP", "committed_C", "used_CL"):
                assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
        # without draft scores (SGLang) the nodes go by depth, through the kept order
        depth_N = np.sort(rng.integers(1, 7, N))
        depth_N[0] = 0
        rng.shuffle(depth_N[1:])
        for _ in range(2):  # made, then read back
            order = est.depth_order(depth_N)
            got = est.window_step(None, path, rank_LE, ids_LNK, order)
            want = reference_window_step(est, -depth_N.astype(np.float32), path, rank_LE, ids_LNK)
            for name in ("need_LP", "committed_C", "used_CL"):
                assert getattr(got, name).tolist() == getattr(want, name).tolist(), name
        levels_V = np.unique(rng.integers(0, E + 1, int(rng.integers(1, 9))))
        for budgets_V in (np.arange(E + 1), levels_V):
            np.testing.assert_array_equal(
                exact_table(got.need_LP, budgets_V), reference_exact_table(got.need_LP, budgets_V)
            )


def synthetic_run(policy, steps: int, L: int, E: int, K: int, seed: int) -> list[tuple]:
    """Plan and observe ``steps`` seeded steps; acceptance changes by phase so the guard
    moves between trees and decoding. Returns each step's decision and budgets."""
    rng = np.random.default_rng(seed)
    tree, out = TREES[0], []
    policy.prepare(L, E, K, E, torch.device("cpu"))
    pop_E = rng.dirichlet(np.full(E, 0.3))
    for i in range(steps):
        plan = policy.plan_step(tree, repair=bool(seed % 2))
        out.append((plan.kind, plan.tree, plan.reason, policy.device_state["budget_L"].tolist()))
        if plan.kind != "tree":
            policy.observe(StepOutcome("autoregressive", [0]))
            continue
        n, accept = plan.num_tokens, (0.9, 0.3, 0.95)[(i // 40) % 3]
        parent_N = np.array([-1] + [int(rng.integers(0, j)) for j in range(1, n)])
        logprob_N = np.zeros(n)
        for j in range(1, n):
            logprob_N[j] = logprob_N[parent_N[j]] + np.log(rng.uniform(0.05, 1.0))
        first = torch.from_numpy(logprob_N[1:][parent_N[1:] == 0])
        gated = policy.gate(first)
        out.append(("gate", gated))
        if gated is not None:
            policy.observe(StepOutcome("autoregressive", [0], tree=(1, 1, 1)))
            continue
        path = [0]
        while (kids := np.flatnonzero(parent_N == path[-1])).size and rng.random() < accept:
            path.append(int(kids[np.argmax(logprob_N[kids])]))
        depth_N = np.zeros(n, dtype=np.int64)
        for j in range(1, n):
            depth_N[j] = depth_N[parent_N[j]] + 1
        for layer in range(L):
            ids_NK = np.stack([rng.choice(E, K, replace=False, p=pop_E) for _ in range(n)])
            score_E = np.bincount(ids_NK.ravel(), minlength=E) + rng.random(E)
            policy.rank_LE[layer] = torch.from_numpy(np.argsort(np.argsort(-score_E)))
            policy.ids_LNK[layer] = torch.from_numpy(ids_NK)
        lp = torch.from_numpy(logprob_N).float()
        policy.observe(StepOutcome("tree", path, torch.from_numpy(depth_N), lp, plan.tree))
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_a_seeded_run_decides_as_with_the_reference_paths(seed, monkeypatch):
    L, E, K, steps = 6, 32, 4, 140
    options = {"cost_model": ("calibrated", "measured")[seed % 2], "gate": True}
    got = synthetic_run(get_policy("auto", **options), steps, L, E, K, seed)

    def reference_on_level_tables(cost, c, window, levels_V, repair, passes):
        exact_SLB = np.zeros((*window[0].shape[:2], cost.E + 1), dtype=np.int64)
        exact_SLB[:, :, levels_V] = window[0]  # the reference reads only these budgets
        return reference_best_budgets(cost, c, (exact_SLB, *window[1:]), levels_V, repair, passes)

    monkeypatch.setattr(planner_module, "best_budgets", reference_on_level_tables)
    monkeypatch.setattr(estimates_module, "exact_table", reference_exact_table)
    monkeypatch.setattr(
        AcceptanceEstimates,
        "window_step",
        lambda est, lp, path, rank, ids, order=None: reference_window_step(
            est, lp, path, rank, ids
        ),
    )
    want = synthetic_run(get_policy("auto", **options), steps, L, E, K, seed)
    assert got == want
    plans = [p for p in want if p[0] != "gate"]
    kinds = {kind for kind, *_ in plans}
    budgets = {tuple(b) for *_, b in plans}
    per_layer = any(len(set(b)) > 1 for b in budgets)  # budgets that differ by layer
    gated = any(p[0] == "gate" and p[1] is not None for p in want)
    assert kinds == {"tree", "autoregressive"} or per_layer or gated, (kinds, budgets)


def test_a_ranking_of_the_wrong_size_is_refused():
    est = AcceptanceEstimates(2, 8, [4])
    ids_LNK = np.zeros((2, 4, 1), dtype=np.int64)
    with pytest.raises(ValueError, match=r"rank_LE has shape \(2, 16\); expected \(2, 8\)"):
        est.window_step(np.zeros(4), [0], np.zeros((2, 16), dtype=np.int64), ids_LNK)


def test_step_tables_are_made_once_and_each_step_cost_owns_its_copy():
    cost_model, shape = get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B")
    first = StepCost(cost_model, shape, 4, 32, TREES)
    first.verify_CD[0] = 0.0  # a test may edit its tables: the next one is unaffected
    second = StepCost(cost_model, shape, 4, 32, list(TREES))
    fresh = step_tables.__wrapped__(cost_model, shape, 4, 32, tuple(TREES), 64)
    np.testing.assert_array_equal(second.verify_CD, fresh[1])
    assert second.verify_CD[0, 1] > 0 and step_tables.cache_info().hits >= 1


def test_totals_tables_are_shared_by_equal_tables_and_priced_as_the_interpolation():
    cost_model, shape = get_cost_model("calibrated", "H200"), get_shape("OLMoE-1B-7B")
    first, second = (StepCost(cost_model, shape, 4, 32, TREES) for _ in range(2))
    edited = StepCost(cost_model, shape, 4, 32, TREES)
    edited.verify_CD[1] *= 2.0  # its own numbers: its own table
    total_T = np.arange(6 * 32 + 1)
    got = [s.tree_seconds_total(1, total_T, 6, None) for s in (first, second, edited)]
    assert first.by_total[(1, 6)] is second.by_total[(1, 6)]  # made once, shared
    for cost, got_T in zip((first, edited), got[::2], strict=True):
        np.testing.assert_array_equal(got_T, cost.tree_seconds(1, total_T / 6, np.array(0)))
    assert (got[2] > got[0]).all()
