"""Carrying distinct-expert counts from a small model to a large model's shape.

A verify step of a tree reads between K experts per layer (every token agrees)
and E (the tree covers all). The harness measures counts on a small model
(the shipped one: 32 experts, top-4) and the cost model needs them for a large
one (OLMoE: 64, top-8). We carry the *coverage fraction*

    f = (d - K) / (E - K)        d' = K' + f * (E' - K')

i.e. how far from "no more than one token's experts" towards "all experts" the
step got. Budgets map the same way (B=16 of 32, top-4 -> f=0.43 -> 32 of 64,
top-8 in OLMoE), so a budgeted count stays below the mapped budget. With equal
K/E the fraction matches a correlated-routing curve ``E(1-(1-K/E)^T_eff)`` with the
same effective token count, so for OLMoE (K/E=1/8 like the shipped model) the
two mappings agree; for Qwen3 (1/16) the fraction mapping is the higher of the two.
A forward of T tokens reads at most ``T*K`` experts, so with T given the fraction is of
the range T tokens can reach at each shape (``min(E, T*K)`` in place of E): without it a
4-token chain of a top-8-of-32 model carried to OLMoE (top-8 of 64) could be priced at 64
experts, twice what 4 tokens can read. Trees of ``T*K' >= E'`` map as before.
Checked against the paper: the shipped model's unbudgeted 32-token tree reads
22.8 of 32 (f=0.67) -> 45.6 of 64 in OLMoE; the paper reports about 39 for a
31-token OLMoE tree (f=0.55), so the mapped counts are somewhat pessimistic
for the unbudgeted baseline (which favours budgeting less than the paper's trees).
"""

from __future__ import annotations


def coverage_fraction(distinct: float, top_k: int, n_experts: int) -> float:
    """``(d - K) / (E - K)`` clipped to ``[0, 1]`` (0 when K == E)."""
    if n_experts == top_k:
        return 0.0
    return min(max((distinct - top_k) / (n_experts - top_k), 0.0), 1.0)


def map_distinct(
    distinct: float,
    top_k: int,
    n_experts: int,
    to_top_k: int,
    to_n_experts: int,
    tokens: int | None = None,
) -> float:
    """A distinct-expert count measured at ``(K, E)`` carried to ``(K', E')``.

    With ``tokens`` (the forward's T) the fraction is taken of what T tokens can read at
    each shape, from K (every token agrees) to ``min(E, T*K)`` (no two share an expert), so
    a forward of few tokens is never priced above the ``T*K'`` experts they can read.
    """
    if not 1 <= to_top_k <= to_n_experts:
        raise ValueError(
            f"cannot carry expert counts to top-k {to_top_k} of {to_n_experts} experts; "
            "allowed: 1 <= top-k <= experts"
        )
    most, to_most = n_experts, to_n_experts
    if tokens is not None:
        most, to_most = min(most, tokens * top_k), min(to_most, tokens * to_top_k)
    f = coverage_fraction(distinct, top_k, most)
    return to_top_k + f * (to_most - to_top_k)


def independent_distinct(tokens: float, top_k: int, n_experts: int) -> float:
    """Distinct experts ``T`` tokens with independent uniform routing would read (upper curve)."""
    return n_experts * (1 - (1 - top_k / n_experts) ** tokens)
