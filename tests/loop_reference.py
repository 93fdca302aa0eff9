"""A per-token, pure-Python reference of the budgeting rules (the spec, written as loops).

It shares nothing with ``moe_spec.budget`` but the score matrices, which it takes
as inputs, so that a near-tie decided differently in float32 and float64 cannot
make the two disagree for the wrong reason.
"""

from __future__ import annotations


def rank_key(scores: list[float], e: int) -> tuple[float, int]:
    """Sort key: higher score first, then the lower expert id."""
    return (-scores[e], e)


def reference_keep(scores: list[float], used: list[bool], budget: int) -> list[bool]:
    """The ``budget`` best experts, used ones first, ties to the lower id; never an unused
    expert where some expert is used (no token needs it; re-routed padded rows would read it)."""
    order = sorted(range(len(scores)), key=lambda e: (not used[e], -scores[e], e))
    if any(used):
        order = [e for e in order if used[e]]
    kept = set(order[:budget])
    return [e in kept for e in range(len(scores))]


def reference_apply_budget(
    ids: list[list[int]],
    weights: list[list[float]],
    choice: list[list[float]],
    gates: list[list[float]],
    keep: list[bool],
    mode: str,
    renormalize: bool,
) -> tuple[list[list[int]], list[list[float]]]:
    """Rewrite each token's top-k, one token at a time."""
    out_ids, out_weights = [], []
    kept_experts = [e for e, k in enumerate(keep) if k]
    for t, row in enumerate(ids):
        if all(keep[e] for e in row):
            out_ids.append(list(row))
            out_weights.append(list(weights[t]))
            continue
        by_choice = sorted(kept_experts, key=lambda e: rank_key(choice[t], e))
        best = by_choice[0]
        K = len(row)
        if mode == "substitution":
            new_ids = by_choice[:K]
            new_w = [gates[t][e] for e in new_ids]
            new_ids += [best] * (K - len(new_ids))
            new_w += [0.0] * (K - len(new_w))
        else:
            new_ids = [e if keep[e] else best for e in row]
            new_w = [w if keep[e] else 0.0 for e, w in zip(row, weights[t], strict=True)]
            if not any(keep[e] for e in row):
                new_w[0] = gates[t][best]
        if renormalize:
            total = sum(new_w)
            new_w = [w / total for w in new_w]
        out_ids.append(new_ids)
        out_weights.append(new_w)
    return out_ids, out_weights


def reference_sparsemixer(
    logits: list[float], allowed: list[int], top_k: int, eps: float
) -> tuple[list[int], list[float]]:
    """PhiMoE's sparsemixer for one token, as loops: ``(ids, weights)`` among ``allowed``.

    Each step picks the best remaining logit ``m`` (lower id on ties) and weights it
    by the softmax, over the remaining experts with ``(m - s) / max(|s|, m) <= 2 eps``.
    """
    import math

    remaining = sorted(allowed)
    ids, weights = [], []
    for _ in range(min(top_k, len(remaining))):
        best = min(remaining, key=lambda e: (-logits[e], e))
        m = logits[best]
        near = []
        for e in remaining:
            factor = max(abs(logits[e]), m)
            if not (factor and (m - logits[e]) / factor > 2 * eps):
                near.append(e)
        total = sum(math.exp(logits[e] - m) for e in near)
        ids.append(best)
        weights.append(1.0 / total)  # exp(m - m) / total
        remaining.remove(best)
    return ids, weights
