"""The tree speculative-sampling rule preserves the target distribution."""

from __future__ import annotations

import torch

from moe_spec.engine.tree import DraftTree
from moe_spec.engine.verify import accept_sampling, sample_children

P_V = torch.tensor([0.30, 0.05, 0.25, 0.10, 0.20, 0.10])  # a small vocabulary
DRAWS = 40_000
# Each frequency's standard error is at most sqrt(0.25 / 40000) = 0.0025; 0.012 is ~5 sigma,
# while the broken rules below are off by 0.05 or more.
TOL = 0.012


def emitted_distribution(candidates: list[int], rule=sample_children) -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(len(P_V))
    for _ in range(DRAWS):
        accepted, residual = rule(candidates, P_V, g)
        token = (
            candidates[accepted]
            if accepted is not None
            else int(torch.multinomial(residual, 1, generator=g))
        )
        counts[token] += 1
    return counts / DRAWS


def test_emitted_token_follows_the_target_for_any_candidate_set():
    for candidates in ([2], [0, 2, 4], [1, 3], [5, 4, 3, 2, 1, 0], []):
        freq = emitted_distribution(candidates)
        assert (freq - P_V).abs().max() < TOL, (candidates, freq)


def accept_by_draft_ratio(candidates, p_V, g):
    """A broken rule: accept every candidate with probability p (no conditioning after a reject)."""
    for i, token in enumerate(candidates):
        if torch.rand((), generator=g) < p_V[token]:
            return i, None
    return None, p_V.double()


def test_the_check_catches_a_broken_rule():
    freq = emitted_distribution([0, 2, 4], accept_by_draft_ratio)
    assert (freq - P_V).abs().max() > 3 * TOL


def test_two_level_tree_gives_the_target_joint_distribution():
    """Root children [0, 2]; node 0 has children [1, 4]; the second token given the first."""
    tree = DraftTree(
        tokens_N=torch.tensor([9, 0, 2, 1, 4]),
        parent_N=torch.tensor([-1, 0, 0, 1, 1]),
        depth_N=torch.tensor([0, 1, 1, 2, 2]),
        logprob_N=torch.tensor([0.0, -0.1, -0.2, -0.3, -0.4]),  # children in this order
    )
    p_after_0 = torch.tensor([0.1, 0.4, 0.1, 0.1, 0.2, 0.1])
    probs_NV = torch.stack([P_V, p_after_0, P_V, P_V, P_V])
    g = torch.Generator().manual_seed(1)
    first = torch.zeros(6)
    second_after_0 = torch.zeros(6)
    for _ in range(DRAWS):
        path, bonus = accept_sampling(tree, probs_NV, g)
        emitted = tree.tokens_N[path[1:]].tolist() + [bonus]
        first[emitted[0]] += 1
        if emitted[0] == 0:
            second_after_0[emitted[1]] += 1
    assert (first / DRAWS - P_V).abs().max() < TOL
    n0 = second_after_0.sum()
    assert n0 > 0.25 * DRAWS
    assert (second_after_0 / n0 - p_after_0).abs().max() < 2 * TOL
