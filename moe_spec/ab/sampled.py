"""Sampled mode: does an arm at temperature > 0 generate the unbudgeted distribution?

Speculative sampling is lossless in distribution, not token by token: with the same seed a
lossless arm may still draw other tokens. So at temperature > 0 each prompt runs with
several seeds (``--seeds S``), and per output position ``p`` (the first ``positions``) we
test whether the arm's tokens and the unbudgeted arm's tokens at ``p`` come from the same
distribution, prompt by prompt:

- per position ``p``: ``G_p = sum over prompts, tokens of (n_arm - n_ref)^2 / (n_arm + n_ref)``,
  a chi-square distance between the two arms' token counts at ``p`` for each prompt;
- statistic: ``G = sum of G_p`` over the first ``positions`` positions;
- null distribution: a permutation test stratified by prompt: a prompt's runs (whole token
  sequences, so positions keep their dependence) are reassigned to the two arms at random,
  group sizes kept, ``n_perm`` times; ``p = (1 + #{G_perm >= G}) / (1 + n_perm)``;
- the arm is *consistent* when ``p >= alpha`` (default 0.01); the report also names the
  position that contributes most to ``G``.

Runs of one seed are left unpaired: the arm's runs of even seed indices are tested against the
reference's runs of odd ones (``S // 2`` and ``S - S // 2`` runs a prompt). An arm and the
reference sampled with the same seed share their random numbers, so their tokens agree more
often than two independent draws do; tested together, that made any arm look like the
reference (a walkthrough measured p = 0.96 for B = top-k, whose log-probability fell by 0.74 a
token, against p = 0.012 with independent seeds). Under equal distributions the run labels
within a prompt are then exchangeable, so a lossless arm passes with probability at least
``1 - alpha``; a lossy one fails when some position's distribution moved enough for S / 2
seeds to see it (low power with few seeds: a pass is weak evidence, a fail is strong). Lossy
arms also report the change of the target's log-probability with its paired bootstrap CI
(``vs_reference``).
"""

from __future__ import annotations

from collections import Counter

import numpy as np


def g_statistic(groups: list[tuple[list[int], list[int]]]) -> float:
    """``sum (a - r)^2 / (a + r)`` over each group's token counts (arm tokens, ref tokens)."""
    total = 0.0
    for arm, ref in groups:
        a, r = Counter(arm), Counter(ref)
        for token in a.keys() | r.keys():
            total += (a[token] - r[token]) ** 2 / (a[token] + r[token])
    return total


Runs = list[list[int]]


def g_positions(groups: list[tuple[Runs, Runs]], positions: int) -> list[float]:
    """``G_p`` for ``p < positions``: each group is one prompt's (arm runs, reference runs)."""
    return [
        g_statistic(
            [([t[p] for t in arm if len(t) > p], [t[p] for t in ref if len(t) > p])
             for arm, ref in groups]
        )
        for p in range(positions)
    ]  # fmt: skip


def permutation_p(
    groups: list[tuple[Runs, Runs]], positions: int, n_perm: int, rng: np.random.Generator
) -> tuple[float, list[float]]:
    """P-value of ``sum(g_positions)`` under within-prompt relabelling of whole runs."""
    observed = g_positions(groups, positions)
    total = sum(observed)
    hits = 0
    for _ in range(n_perm):
        shuffled = []
        for arm, ref in groups:
            pooled = arm + ref
            order = rng.permutation(len(pooled))
            shuffled.append(
                ([pooled[i] for i in order[: len(arm)]], [pooled[i] for i in order[len(arm) :]])
            )
        hits += sum(g_positions(shuffled, positions)) >= total - 1e-9
    return (1 + hits) / (1 + n_perm), observed


def distribution_check(
    arm: Runs,
    ref: Runs,
    seeds: int,
    positions: int = 16,
    n_perm: int = 1000,
    alpha: float = 0.01,
    seed: int = 0,
) -> dict | None:
    """The test of ``arm`` against ``ref`` (token lists; run ``i`` is of prompt ``i // seeds``).

    Returns ``{"p_value", "consistent", "alpha", "seeds", "runs_per_arm", "positions",
    "worst_position"}``, or None with fewer than 2 seeds. Per prompt, the arm's runs of even
    seed indices against the reference's of odd ones (no two of one seed: see above).
    """
    if seeds < 2 or len(arm) != len(ref) or len(arm) % seeds:
        return None
    groups = [
        (arm[b * seeds : (b + 1) * seeds : 2], ref[b * seeds + 1 : (b + 1) * seeds : 2])
        for b in range(len(arm) // seeds)
    ]
    longest = max((len(t) for a, r in groups for t in a + r), default=0)
    positions = min(positions, longest)
    if positions == 0:
        return None
    p_value, g_p = permutation_p(groups, positions, n_perm, np.random.default_rng(seed))
    return {
        "p_value": p_value,
        "consistent": p_value >= alpha,
        "alpha": alpha,
        "seeds": seeds,
        "runs_per_arm": len(groups[0][0]),  # a prompt's
        "positions": positions,
        "worst_position": int(np.argmax(g_p)),
    }
