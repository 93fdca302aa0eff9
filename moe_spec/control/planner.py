"""Predicted throughput of a tree and per-layer budgets over the window; the best budgets.

Shape legend: V budget vectors, S steps in the window, L MoE layers, P path positions.

For a step s of the window and per-layer budgets ``B_l``:

- ``exact_s`` = path positions, from the root, whose need is met in every layer
  (``need[s, l, p] <= B_l``): the accepted path's prefix the budget leaves untouched,
  read from each step's table ``exact[s, l, b]`` (``estimates.exact_table``) as
  ``min_l exact[s, l, B_l]``;
- with **repair** the step commits what it committed (``committed_s``, the output is the
  unbudgeted one) and pays an unbudgeted forward of the ``committed_s - exact_s`` tokens
  after that prefix; **without** it, it is counted as committing
  ``min(committed_s, exact_s + 1)``: the untouched prefix plus one token decided by
  changed logits (a lower bound: a changed token may still be accepted);
- the verify reads ``mean_l min(B_l, used[s, l])`` experts per layer.

Predicted throughput = sum of committed tokens / sum of modeled step seconds. The search
starts from one budget for all layers (every level tried at once), then improves one
layer at a time (``passes`` rounds). A smaller budget must be predicted faster by more
than ``min_gain`` (default 1%) than the largest one within that margin: the window holds
a few dozen steps, and a budget that only fits them by a hair is noise, while a larger
budget changes less.
"""

from __future__ import annotations

import numpy as np

from moe_spec.control.cost import StepCost


def throughput_V(
    cost: StepCost,
    c: int,
    exact_SLB: np.ndarray,
    committed_S: np.ndarray,
    used_SL: np.ndarray,
    B_VL: np.ndarray,
    repair: bool,
) -> np.ndarray:
    """float ``[V]``: predicted tokens/s of tree ``c`` under each row of budgets ``B_VL``."""
    L = exact_SLB.shape[1]
    exact_SVL = exact_SLB[:, np.arange(L)[None, :], B_VL]
    exact_VS = np.minimum(exact_SVL.min(axis=-1).T, committed_S[None])
    if repair:
        tokens_V = np.full(B_VL.shape[0], committed_S.sum(), dtype=float)
        repair_VS = committed_S[None] - exact_VS
    else:
        tokens_V = np.minimum(committed_S[None], exact_VS + 1).sum(axis=-1)
        repair_VS = np.zeros_like(exact_VS)
    read_VS = np.minimum(B_VL[:, None, :], used_SL[None]).mean(axis=-1)
    budgeted_V1 = (B_VL < cost.E).any(axis=-1)[:, None]
    seconds_VS = cost.tree_seconds(c, read_VS, repair_VS, budgeted_V1)
    return tokens_V / seconds_VS.sum(axis=-1)


def budget_levels(top_k: int, cap: int, levels: int) -> np.ndarray:
    """Up to ``levels`` budgets from top-k to ``cap`` inclusive, evenly spaced, ascending."""
    return np.unique(np.linspace(top_k, cap, max(levels, 2)).round().astype(np.int64))


def best_budgets(
    cost: StepCost,
    c: int,
    window: tuple[np.ndarray, np.ndarray, np.ndarray],
    levels_V: np.ndarray,
    repair: bool,
    passes: int = 2,
    min_gain: float = 0.01,
) -> tuple[np.ndarray, float]:
    """``(B_L, predicted tokens/s)``: the best per-layer budgets for tree ``c``."""
    exact_SLB, committed_S, used_SL = window
    L = exact_SLB.shape[1]
    levels_desc = levels_V[::-1]
    uniform_VL = np.repeat(levels_desc[:, None], L, axis=1)
    tp_V = throughput_V(cost, c, exact_SLB, committed_S, used_SL, uniform_VL, repair)
    best = first_clear_best(tp_V, min_gain)
    B_L, tp = uniform_VL[best].copy(), float(tp_V[best])
    for _ in range(passes):
        changed = False
        for layer in range(L):
            trial_VL = np.repeat(B_L[None], levels_desc.size, axis=0)
            trial_VL[:, layer] = levels_desc
            tp_V = throughput_V(cost, c, exact_SLB, committed_S, used_SL, trial_VL, repair)
            v = first_clear_best(tp_V, min_gain)
            if tp_V[v] > tp * (1 + 1e-9) and not np.array_equal(trial_VL[v], B_L):
                B_L, tp, changed = trial_VL[v].copy(), float(tp_V[v]), True
        if not changed:
            break
    return B_L, tp


def first_clear_best(tp_V: np.ndarray, min_gain: float) -> int:
    """Index of the first (largest-budget) value within ``min_gain`` of the maximum."""
    return int(np.argmax(tp_V >= tp_V.max() / (1 + min_gain)))
