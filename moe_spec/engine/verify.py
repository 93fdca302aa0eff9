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

Repair (``SpecConfig.repair``): a budgeted verify computes exact logits only
for tokens whose routing the budget left untouched in every layer, and whose
ancestors' routing too. Walking the path from the root, every decision made
at such a node is the unbudgeted one, so the path is right up to and
including the first node whose routing changed (its parent, exact, accepted
it). From that node on the target re-runs the path's remaining tokens as a
chain, unbudgeted, and ``accept_chain`` decides them again with exact logits
(and, when sampling, fresh random numbers). Both rules accept a candidate by
looking only at the target's distribution, never at how the candidate was
chosen, so the output is the unbudgeted run's: the same tokens when greedy,
the same distribution when sampling (up to floating-point rounding: an exact
token's expert matmuls may run beside other tokens than in the unbudgeted
forward, as tree verification itself does beside decoding). A short changed tail may instead be cut
(``rerun_tail``): the first changed node, accepted by its exact parent, ends
the step as its last token (the next root), which costs no forward and is
exact as well; the tokens below it are drafted again in the next step.
"""

from __future__ import annotations

import torch

from moe_spec.engine.tree import DraftTree


def accept(
    tree: DraftTree, logits_NV: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[list[int], int]:
    """``(path, bonus)``: ``accept_greedy`` at temperature 0, else ``accept_sampling``."""
    if temperature == 0:
        return accept_greedy(tree, logits_NV)
    return accept_sampling(tree, torch.softmax(logits_NV / temperature, dim=-1), generator)


def accept_greedy(tree: DraftTree, logits_NV: torch.Tensor) -> tuple[list[int], int]:
    """``(path, bonus)``: node indices from the root down, and the next token.

    Vectorised: a node is accepted when it and every ancestor carry the target's
    argmax at their parent; children's tokens are distinct, so the accepted
    nodes form one chain, and the deepest of them ends the path.
    """
    best_N = logits_NV.argmax(dim=-1)
    match_N = tree.tokens_N == best_N[tree.parent_N.clamp(min=0)]
    match_N[0] = True  # the root is already committed
    ancestors_NN = tree.ancestor_mask_NN()
    accepted_N = ~(ancestors_NN & ~match_N[None, :]).any(dim=1)
    last = int(torch.where(accepted_N, tree.depth_N, -1).argmax())
    path_N = ancestors_NN[last].nonzero().flatten()
    path_N = path_N[torch.sort(tree.depth_N[path_N]).indices]
    return path_N.tolist(), int(best_N[last])


def accept_sampling(
    tree: DraftTree, probs_NV: torch.Tensor, generator: torch.Generator
) -> tuple[list[int], int]:
    """``(path, bonus)`` under the target-only speculative sampling rule (see module doc).

    Sequential by nature (each draw depends on the last); it visits only the path's nodes.
    """
    children = tree.children()
    tokens = tree.tokens_N.tolist()
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


def exact_prefix(path: list[int], exact_N: torch.Tensor) -> int:
    """How many of the path's nodes, from the root, have routing the budget left untouched."""
    flags = exact_N[torch.tensor(path)].tolist()  # one read of the device tensor
    return next((i for i, exact in enumerate(flags) if not exact), len(path))


def rerun_tail(path_len: int, exact: int, min_tokens: int) -> bool:
    """Whether to re-run the path's changed tail (``path_len - exact`` nodes) or cut it.

    Cutting needs an exact root (``exact >= 1``); otherwise the tail is re-run when it
    has at least ``min_tokens`` nodes.
    """
    return exact == 0 or path_len - exact >= min_tokens


def accept_chain(
    tokens_Q: torch.Tensor, logits_QV: torch.Tensor, temperature: float, generator: torch.Generator
) -> tuple[int, int]:
    """``(accepted, bonus)`` along a chain whose first token is already accepted.

    Token ``q + 1`` is kept when the target accepts it after token ``q`` (greedy:
    it is the argmax; sampling: the single-candidate rule of ``sample_children``);
    ``accepted`` counts the kept tokens (at least 1) and ``bonus`` is the next token.
    """
    tokens = tokens_Q.tolist()
    best_Q = logits_QV.argmax(dim=-1).tolist() if temperature == 0 else None
    for q in range(len(tokens)):
        candidates = tokens[q + 1 : q + 2]
        if best_Q is not None:
            if candidates != best_Q[q : q + 1]:
                return q + 1, best_Q[q]
            continue
        p_V = torch.softmax(logits_QV[q].float() / temperature, dim=-1)
        accepted, residual_V = sample_children(candidates, p_V, generator)
        if accepted is None:
            return q + 1, int(torch.multinomial(residual_V, 1, generator=generator))
    raise AssertionError("unreachable: the last token has no candidate, so the loop returns")
