"""Predicted throughput of a tree and per-layer budgets over the window; the best budgets.

Shape legend: V budget levels, X budget vectors, S steps in the window, L MoE layers,
P path positions, J layers tried (from one layer on).

For a step s of the window and per-layer budgets ``B_l``:

- ``exact_s`` = path positions, from the root, whose need is met in every layer
  (``need[s, l, p] <= B_l``): the accepted path's prefix the budget leaves untouched,
  read from each step's table ``exact[s, l, v]`` at the budget levels ``levels_V``
  (``estimates.exact_table``) as ``min_l exact[s, l, v_l]``, ``levels_V[v_l] = B_l``;
- with **repair** the step commits what it committed (``committed_s``, the output is the
  unbudgeted one) and pays an unbudgeted forward of the ``committed_s - exact_s`` tokens
  after that prefix; **without** it, it is counted as committing
  ``min(committed_s, exact_s + 1)``: the untouched prefix plus one token decided by
  changed logits (a lower bound: a changed token may still be accepted);
- the verify reads ``mean_l min(B_l, used[s, l])`` experts per layer.

Predicted throughput = sum of committed tokens / sum of modeled step seconds. A window
whose steps were not all ranked (steps that rested unbudgeted: their need is unknown) is
searched over its ranked steps, and the throughput they predict is scaled by the whole
window's at the cap (:func:`window_budgets`). The search
starts from one budget for all layers (every level tried at once), then improves one
layer at a time (``passes`` rounds). A smaller budget must be predicted faster by more
than ``min_gain`` (default 1%) than the largest one within that margin: the window holds
a few dozen steps, and a budget that only fits them by a hair is noise, while a larger
budget changes less.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from moe_spec.control.cost import StepCost


def level_index(levels_V: np.ndarray, B: np.ndarray) -> np.ndarray:
    """Where each budget of ``B`` (any shape) stands in the ascending ``levels_V``."""
    v = np.searchsorted(levels_V, B)
    if (v >= levels_V.size).any() or (levels_V[np.minimum(v, levels_V.size - 1)] != B).any():
        bad = np.setdiff1d(B, levels_V).tolist()
        raise ValueError(f"budgets {bad} are not all in {levels_V.tolist()}")
    return v


def throughput_X(
    cost: StepCost,
    c: int,
    exact_SLV: np.ndarray,
    committed_S: np.ndarray,
    used_SL: np.ndarray,
    levels_V: np.ndarray,
    B_XL: np.ndarray,
    repair: bool,
) -> np.ndarray:
    """float ``[X]``: predicted tokens/s of tree ``c`` under each row of budgets ``B_XL``
    (each a level of ``levels_V``, the budgets of the tables ``exact_SLV``)."""
    return priced_X(cost, c, (exact_SLV, committed_S, used_SL), levels_V, B_XL, repair)[0]


def priced_X(
    cost: StepCost,
    c: int,
    window: tuple[np.ndarray, np.ndarray, np.ndarray],
    levels_V: np.ndarray,
    B_XL: np.ndarray,
    repair: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`throughput_X` and each step's modeled seconds, float ``[X, S]``."""
    exact_SLV, committed_S, used_SL = window
    L = exact_SLV.shape[1]
    exact_XS = exact_SLV[:, np.arange(L)[None, :], level_index(levels_V, B_XL)].min(axis=-1).T
    read_XS = np.minimum(B_XL[:, None, :], used_SL[None]).sum(axis=-1)  # over all layers
    budgeted_X1 = (B_XL < cost.E).any(axis=-1)[:, None]
    return price(cost, c, exact_XS, committed_S, read_XS, L, budgeted_X1, repair)


def price(
    cost: StepCost,
    c: int,
    exact_XS: np.ndarray,
    committed_S: np.ndarray,
    read_XS: np.ndarray,
    layers: int,
    budgeted_X1: np.ndarray,
    repair: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """float ``[...]`` tokens/s of tree ``c`` over the window for each leading index X of
    ``exact_XS`` (untouched path prefix per step, before the cap at ``committed_S``) and
    ``read_XS`` (experts read per step, summed over ``layers`` layers), and float
    ``[..., S]`` each step's modeled seconds (contiguous)."""
    tokens_X, seconds_XS = tokens_and_seconds(
        cost, c, exact_XS, committed_S, read_XS, layers, budgeted_X1, repair
    )
    # contiguous: numpy sums a contiguous last axis pairwise, a strided one in order, and
    # the same numbers must come out whatever layout the trials were gathered in
    seconds_XS = np.ascontiguousarray(seconds_XS)
    return tokens_X / seconds_XS.sum(axis=-1), seconds_XS


def tokens_and_seconds(
    cost: StepCost,
    c: int,
    exact_XS: np.ndarray,
    committed_S: np.ndarray,
    read_XS: np.ndarray,
    layers: int,
    budgeted_X1: np.ndarray,
    repair: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`price`'s parts: tokens counted ``[...]`` and modeled seconds ``[..., S]``."""
    exact_XS = np.minimum(exact_XS, committed_S)
    if repair:
        tokens_X = np.full(exact_XS.shape[:-1], committed_S.sum(), dtype=float)
        repair_XS = committed_S - exact_XS
    else:
        tokens_X = np.minimum(committed_S, exact_XS + 1).sum(axis=-1)
        repair_XS = None
    return tokens_X, cost.tree_seconds_total(c, read_XS, layers, repair_XS, budgeted_X1)


def priced_cap(
    cost: StepCost,
    c: int,
    window: tuple[np.ndarray, np.ndarray, np.ndarray],
    levels_V: np.ndarray,
    repair: bool,
) -> tuple[float, np.ndarray]:
    """:func:`priced_X` of one row, every layer at the cap ``levels_V[-1]`` (the last
    column of the tables): tokens/s and float ``[S]`` step seconds, the same numbers."""
    exact_SLV, committed_S, used_SL = window
    cap = levels_V[-1]
    exact_1S = exact_SLV[:, :, -1].min(axis=1)[None]
    read_1S = np.minimum(cap, used_SL).sum(axis=-1)[None]
    tp_1, seconds_1S = price(
        cost, c, exact_1S, committed_S, read_1S, used_SL.shape[1], cap < cost.E, repair
    )
    return float(tp_1[0]), seconds_1S[0]


def budget_levels(top_k: int, cap: int, levels: int) -> np.ndarray:
    """Up to ``levels`` budgets from top-k to ``cap`` inclusive, evenly spaced, ascending."""
    return np.unique(np.linspace(top_k, cap, max(levels, 2)).round().astype(np.int64))


class Budgets(NamedTuple):
    """:func:`best_budgets`' answer for one tree, with what its pricing of them gave."""

    B_L: np.ndarray  # int [L]: the budget of each layer
    tokens_per_s: float  # predicted over the window
    exact_S: np.ndarray  # int [S]: each step's path prefix B_L leaves untouched (uncapped)
    step_s: float  # mean modeled seconds of a window step under B_L
    # the best one budget for all layers below the cap, its tokens/s over the cap's (how
    # close budgeting comes to paying; 0: no level below the cap, or no ranked step)
    below_cap: float = 0.0


def best_budgets(
    cost: StepCost,
    c: int,
    window: tuple[np.ndarray, np.ndarray, np.ndarray],
    levels_V: np.ndarray,
    repair: bool,
    passes: int = 2,
    min_gain: float = 0.01,
) -> Budgets:
    """The best per-layer budgets for tree ``c`` among the ascending ``levels_V``, the
    budgets of the window's tables (``exact_SLV``), as :class:`Budgets`.

    Each pass visits the layers in order and moves layer l to its best level given the
    others (the first level within ``min_gain`` of that layer's best, if it beats the
    current throughput). The trials of all layers not yet visited are priced at once
    against the current budgets (:func:`layer_trials`); after a move only the layers
    behind it are priced again, so a pass that moves nothing costs one call.
    """
    exact_SLV, committed_S, used_SL = window
    L = exact_SLV.shape[1]
    levels_desc = levels_V[::-1]
    exact_SLV = exact_SLV[:, :, ::-1]  # largest budget first, as levels_desc
    # one budget for all layers (throughput_X of the uniform rows)
    exact_VS = exact_SLV.min(axis=1).T
    read_VS = np.minimum(levels_desc[:, None, None], used_SL).sum(axis=-1)
    budgeted_V1 = (levels_desc < cost.E)[:, None]
    tp_V, seconds_VS = price(cost, c, exact_VS, committed_S, read_VS, L, budgeted_V1, repair)
    best = first_clear_best(tp_V, min_gain)
    B_L, tp = np.full(L, levels_desc[best]), float(tp_V[best])
    exact_S, seconds_S = exact_VS[best], seconds_VS[best]
    for _ in range(passes):
        changed, start = False, 0
        while start < L:
            tp_JV, exact_JVS, seconds_JVS = layer_trials(
                cost, c, exact_SLV, committed_S, used_SL, levels_desc, B_L, start, repair
            )
            tp_J = tp_JV.max(axis=1)
            v_J = np.argmax(tp_JV >= (tp_J / (1 + min_gain))[:, None], axis=1)
            got_J = tp_JV[np.arange(v_J.size), v_J]
            move_J = (got_J > tp * (1 + 1e-9)) & (levels_desc[v_J] != B_L[start:])
            if not move_J.any():
                break
            j = int(np.argmax(move_J))
            v = v_J[j]
            B_L[start + j], tp, changed = levels_desc[v], float(got_J[j]), True
            exact_S, seconds_S = exact_JVS[j, v], seconds_JVS[j, v]
            start += j + 1
        if not changed:
            break
    below = float(tp_V[1:].max() / tp_V[0]) if tp_V.size > 1 else 0.0
    return Budgets(B_L, tp, exact_S, float(seconds_S.sum() / seconds_S.size), below)


def layer_trials(
    cost: StepCost,
    c: int,
    exact_SLV: np.ndarray,
    committed_S: np.ndarray,
    used_SL: np.ndarray,
    levels_V: np.ndarray,
    B_L: np.ndarray,
    start: int,
    repair: bool,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """float ``[J, V]``: :func:`throughput_X` of ``B_L`` with layer ``start + j`` set to
    ``levels_V[v]`` (J = L - start), from per-layer partial results (the same numbers:
    integer minima and sums, and the same float operations per step); with each trial's
    untouched path prefixes int ``[J, V, S]`` and step seconds float ``[J, V, S]``."""
    S, L, V = exact_SLV.shape
    l_L = np.arange(L)
    cur_SL = exact_SLV[:, l_L, np.searchsorted(-levels_V, -B_L)]  # levels_V descends
    big_S1 = np.full((S, 1), np.iinfo(np.int64).max)
    before_SL = np.minimum.accumulate(np.concatenate((big_S1, cur_SL[:, :-1]), axis=1), axis=1)
    after_SL = np.minimum.accumulate(np.concatenate((big_S1, cur_SL[:, :0:-1]), axis=1), axis=1)[
        :, ::-1
    ]
    others_JS = np.minimum(before_SL, after_SL)[:, start:].T  # min over the other layers
    exact_JVS = np.minimum(others_JS[:, None, :], exact_SLV[:, start:, :].transpose(1, 2, 0))
    kept_SL = np.minimum(B_L, used_SL)
    others_read_JS = kept_SL.sum(axis=1) - kept_SL[:, start:].T
    read_JVS = others_read_JS[:, None, :] + np.minimum(
        levels_V[None, :, None], used_SL[:, start:].T[:, None, :]
    )
    below_L = B_L < cost.E
    others_J = (below_L.sum() - below_L[start:]) > 0
    budgeted_JV1 = (others_J[:, None] | (levels_V < cost.E)[None, :])[:, :, None]
    tp_JV, seconds_JVS = price(cost, c, exact_JVS, committed_S, read_JVS, L, budgeted_JV1, repair)
    return tp_JV, exact_JVS, seconds_JVS


def first_clear_best(tp_V: np.ndarray, min_gain: float) -> int:
    """Index of the first (largest-budget) value within ``min_gain`` of the maximum."""
    return int(np.argmax(tp_V >= tp_V.max() / (1 + min_gain)))


def window_budgets(
    cost: StepCost,
    c: int,
    window: tuple[np.ndarray, np.ndarray, np.ndarray],
    ranked_S: np.ndarray,
    levels_V: np.ndarray,
    repair: bool,
    passes: int = 2,
    min_ranked: int = 1,
) -> Budgets:
    """:func:`best_budgets` over a window some of whose steps were not ranked
    (``ranked_S`` False: they rested at the cap, ``levels_V[-1]``, their need unknown).

    The budgets are searched over the ranked steps; the tokens/s and step seconds are the
    whole window's at the cap times the ranked steps' ratio of the budgets' to the cap's
    (the budgets' gain or loss, measured where it can be, carried to steps whose tokens
    and experts are known). ``exact_S`` covers the ranked steps only. Fewer than
    ``min_ranked`` ranked steps (none at least): the cap, with the search's ``below_cap``
    (a few short paths show what a small budget keeps of them, not of the longer paths
    to come)."""
    ranked_n = int(np.count_nonzero(ranked_S))
    if ranked_n == ranked_S.size and ranked_n >= min_ranked:
        return best_budgets(cost, c, window, levels_V, repair, passes)
    L = window[0].shape[1]
    tp, seconds_S = priced_cap(cost, c, window, levels_V, repair)
    ranked = tuple(a[ranked_S] for a in window)
    budgets = best_budgets(cost, c, ranked, levels_V, repair, passes) if ranked_n else None
    if budgets is None or ranked_n < min_ranked or (levels_V[-1] == budgets.B_L).all():
        exact_S = ranked[0][:, :, -1].min(axis=1)
        below = 0.0 if budgets is None else budgets.below_cap
        cap_L = np.full(L, levels_V[-1])
        return Budgets(cap_L, tp, exact_S, float(seconds_S.sum() / seconds_S.size), below)
    tp_cap, seconds_cap_S = priced_cap(cost, c, ranked, levels_V, repair)
    step_s = seconds_S.sum() / seconds_S.size
    step_cap_s = seconds_cap_S.sum() / seconds_cap_S.size
    return Budgets(
        budgets.B_L,
        tp * budgets.tokens_per_s / tp_cap,
        budgets.exact_S,
        float(step_s * budgets.step_s / step_cap_s),
        budgets.below_cap,
    )
