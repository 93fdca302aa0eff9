"""Acceptance rules: which path of a verified draft tree to keep, and the bonus token.

Shape legend: N tree tokens, V vocabulary.

Greedy (temperature 0): walk down from the root; at each node move to the child
whose token is the target's argmax there; stop when no child matches. The
target's argmax at the last node is the bonus token. The output is exactly the
target's own greedy output.

Sampling (temperature > 0), the target-only rule for deterministic trees: at a
node with target distribution p and children c_1, c_2, ... (most likely first),
accept c_1 with probability p(c_1); if rejected, condition p on "not c_1"
(zero it, renormalise) and try c_2 the same way, and so on. If every child is
rejected, the bonus token is drawn from the conditioned p. Each step samples
from p restricted to the not-yet-rejected tokens, so the token emitted at
every position is distributed exactly as p: the output distribution is the
target's own, whatever the draft proposed.
"""

from __future__ import annotations

import torch


def accept_greedy(children: list[list[int]], tokens_N: torch.Tensor, logits_NV: torch.Tensor):
    """``(path, bonus)``: node indices from the root down, and the next token."""
    best_N = logits_NV.argmax(dim=-1).tolist()
    tokens = tokens_N.tolist()
    path = [0]
    while True:
        node = path[-1]
        match = next((c for c in children[node] if tokens[c] == best_N[node]), None)
        if match is None:
            return path, best_N[node]
        path.append(match)


def accept_sampling(
    children: list[list[int]],
    tokens_N: torch.Tensor,
    probs_NV: torch.Tensor,
    generator: torch.Generator,
):
    """``(path, bonus)`` under the target-only speculative sampling rule (see module doc)."""
    tokens = tokens_N.tolist()
    path = [0]
    while True:
        node = path[-1]
        accepted, residual_V = sample_children(
            [tokens[c] for c in children[node]], probs_NV[node], generator
        )
        if accepted is None:
            return path, int(torch.multinomial(residual_V, 1, generator=generator))
        path.append(children[node][accepted])


def sample_children(candidates: list[int], p_V: torch.Tensor, generator: torch.Generator):
    """Try ``candidates`` in order against ``p_V``.

    Returns ``(index of the accepted candidate, None)`` or ``(None, residual_V)``,
    the distribution to draw the bonus token from when all are rejected.
    """
    residual_V = p_V.double().clone()
    for i, token in enumerate(candidates):
        mass = residual_V.sum()
        u = torch.rand((), generator=generator, dtype=torch.float64)
        if mass > 0 and u * mass < residual_V[token]:
            return i, None
        residual_V[token] = 0.0
    # Some mass is left: had the candidates covered all of it, the last one would have
    # been accepted with certainty (u < 1).
    return None, residual_V
