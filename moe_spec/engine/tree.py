"""Draft trees: EAGLE-2-style dynamic expansion, tree masks and positions.

Shape legend: N tree tokens (node 0 is the root), W width (children per expanded
node), V vocabulary, D model dim, S key positions.

The root is the last token the target produced; it is not yet in the target's
KV cache. Expansion: the root's W most likely children form depth 1; at every
further step the W candidates with the highest cumulative draft log-probability
at the newest depth are run through the draft, each proposing its W most
likely children. Finally the N-1 best candidates over all depths (by
cumulative log-probability; a child never beats its parent, so the set is
closed under ancestors) join the root to form the tree.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_spec.engine.attention import KVCache
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.model import MoETransformer


@dataclass(frozen=True)
class DraftTree:
    """Nodes in topological order (a parent before its children)."""

    tokens_N: torch.Tensor  # long
    parent_N: torch.Tensor  # long, -1 for the root
    depth_N: torch.Tensor  # long, 0 for the root
    logprob_N: torch.Tensor  # cumulative draft log-probability of the path root..node

    @property
    def size(self) -> int:
        return self.tokens_N.numel()

    def ancestor_mask_NN(self) -> torch.Tensor:
        """bool ``[N, N]``: node i may attend to node j iff j is i or one of its ancestors."""
        N = self.size
        mask = torch.eye(N, dtype=torch.bool)
        up_N = self.parent_N.clamp(min=0)  # the root is its own parent
        ancestor_N = up_N
        for _ in range(int(self.depth_N.max())):  # one hop up per level, all nodes at once
            mask[torch.arange(N), ancestor_N] = True
            ancestor_N = up_N[ancestor_N]
        return mask

    def children(self) -> list[list[int]]:
        """Child node indices of every node, most likely first."""
        kids: list[list[int]] = [[] for _ in range(self.size)]
        for i in range(1, self.size):
            kids[int(self.parent_N[i])].append(i)
        for k in kids:
            k.sort(key=lambda j: -float(self.logprob_N[j]))
        return kids


def verify_mask(tree: DraftTree, prefix: int) -> torch.Tensor:
    """bool ``[N, prefix + N]``: the whole committed prefix, then tree ancestors."""
    return torch.cat((torch.ones(tree.size, prefix, dtype=torch.bool), tree.ancestor_mask_NN()), 1)


@torch.no_grad()
def expand_tree(
    draft: EagleDraft,
    target: MoETransformer,
    cache: KVCache,
    root_token: int,
    root_feature_D: torch.Tensor,
    root_logprobs_V: torch.Tensor,
    width: int,
    depth: int,
    num_tokens: int,
) -> DraftTree:
    """Grow a tree of ``num_tokens`` nodes (root included) with at most ``depth`` levels below it.

    ``cache`` is the draft's KV cache holding every committed position; the
    root sits at position ``cache.length`` and its children are the first
    scratch entries. Scratch entries are left behind (the caller commits none).
    Candidates (M of them) live in flat tensors; the loop runs over depths only.
    """
    prefix, max_scratch = cache.length, width * max(depth - 1, 0)
    lp_M, tok_M = root_logprobs_V.topk(width)
    par_M = torch.full((width,), -1)
    dep_M = torch.ones(width, dtype=torch.long)
    feature_MD = root_feature_D.expand(width, -1)  # the parent's feature each candidate reads
    ancestors_MS = torch.zeros(width, max_scratch, dtype=torch.bool)  # expanded ancestors' slots
    frontier = torch.arange(width)
    for step in range(1, depth):
        n, scratch = frontier.numel(), cache.offset
        mask = torch.zeros(n, prefix + scratch + n, dtype=torch.bool)
        mask[:, :prefix] = True
        mask[:, prefix : prefix + scratch] = ancestors_MS[frontier, :scratch]
        mask[:, prefix + scratch :] = torch.eye(n, dtype=torch.bool)
        positions = torch.full((n,), prefix + step - 1)
        out_nD = draft(
            target, feature_MD[frontier][None], tok_M[frontier][None], positions, cache, mask
        )[0]
        cache.offset += n
        child_lp, child_tok = torch.log_softmax(target.lm_head(out_nD), dim=-1).topk(width, dim=-1)
        rows = torch.arange(n).repeat_interleave(width)  # frontier row of each new candidate
        new_anc = ancestors_MS[frontier[rows]].clone()
        new_anc[torch.arange(n * width), scratch + rows] = True
        first_new = tok_M.numel()
        tok_M = torch.cat((tok_M, child_tok.flatten()))
        par_M = torch.cat((par_M, frontier[rows]))
        dep_M = torch.cat((dep_M, torch.full((n * width,), step + 1)))
        lp_M = torch.cat((lp_M, lp_M[frontier[rows]] + child_lp.flatten()))
        feature_MD = torch.cat((feature_MD, out_nD[rows]))
        ancestors_MS = torch.cat((ancestors_MS, new_anc))
        best_new = torch.sort(lp_M[first_new:], descending=True, stable=True).indices[:width]
        frontier = first_new + best_new

    # Best num_tokens-1 by (-logprob, depth, index); then topological order (depth, index).
    order = torch.sort(dep_M, stable=True).indices
    order = order[torch.sort(lp_M[order], descending=True, stable=True).indices]
    chosen = torch.sort(order[: num_tokens - 1]).values
    chosen = chosen[torch.sort(dep_M[chosen], stable=True).indices]
    index_M = torch.full((tok_M.numel() + 1,), 0)  # parent -1 (the root) maps to node 0
    index_M[chosen] = torch.arange(1, chosen.numel() + 1)
    return DraftTree(
        tokens_N=torch.cat((torch.tensor([root_token]), tok_M[chosen])),
        parent_N=torch.cat((torch.tensor([-1]), index_M[par_M[chosen]])),
        depth_N=torch.cat((torch.tensor([0]), dep_M[chosen])),
        logprob_N=torch.cat((torch.tensor([0.0]), lp_M[chosen].float())),
    )
