"""Strict priority of experts by the tree tokens most likely to be accepted.

Shape legend: T tokens, E experts, K top-k (see ``moe_spec.routing``).

Greedy output is unchanged exactly when every token on the accepted path keeps
its own top-k experts in every layer: a token's hidden state depends only on
its ancestors, which are on the path too. The draft's path log-probabilities
are the best guess of that path. They decrease from parent to child, so ranking
tokens by them (root first, ``order="logprob"``) lists every token after its
ancestors: any prefix of the ranking is a subtree, the most likely one of its
size. ``order="path"`` first takes the likeliest token of each depth, shallow
first: a better guess of the accepted path when the draft under-rates deep
tokens (it is one tree's guess: in a batched verify pass, where several trees
share the depths, ``order="logprob"`` is the one that ranks them all).

Everything here is tensor operations with static shapes (pairwise comparisons,
``[T, T]`` boolean matrices, instead of data-dependent sorts into Python), so it
runs under ``torch.compile`` and CUDA-graph capture.
"""

from __future__ import annotations

import torch

from moe_spec.routing import RoutingRecord

ORDERS: tuple[str, ...] = ("path", "logprob")  # draft-path's token orders


def token_rank_T(
    record: RoutingRecord, root_T: torch.Tensor, logprob_T: torch.Tensor, path_first: bool = True
) -> torch.Tensor:
    """long ``[T]``: how many valid tokens rank ahead of each token.

    Order: root rows first; with ``path_first``, then the likeliest token of
    each depth, shallow first (the draft's guess of the accepted path); then the
    rest by higher ``logprob_T``, shallower depth, lower row. Padded rows never
    rank ahead of anything (nor are they any depth's likeliest).
    """
    T = record.num_tokens
    device = record.router_logits_TE.device
    valid_T = record.valid_mask_T()
    depth_T = record.depth_T if record.depth_T is not None else torch.zeros(T, device=device)
    row_T = torch.arange(T, device=device)
    row_gt = row_T[None, :] < row_T[:, None]
    lp_gt, lp_eq = pairwise(logprob_T.float())
    dep_gt, dep_eq = pairwise(-depth_T.float())
    by_lp_TT = lp_gt | (lp_eq & (dep_gt | (dep_eq & row_gt)))  # [t, s]: s ahead by log-prob
    root_gt, root_eq = pairwise(root_T.float())
    if path_first:
        best_T = valid_T & ~(by_lp_TT & dep_eq & valid_T[None, :]).any(dim=1)
        best_gt, best_eq = pairwise(best_T.float())
        path_TT = best_gt | (best_eq & best_T[:, None] & dep_gt)  # best ones, shallow first
        by_lp_TT = path_TT | (best_eq & ~best_T[:, None] & by_lp_TT)
    ahead_TT = root_gt | (root_eq & by_lp_TT)
    return (ahead_TT & valid_T[None, :]).sum(dim=1)


def pairwise(key_T: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """bool ``[T, T]`` pair: ``[t, s]`` is ``key[s] > key[t]``, and ``key[s] == key[t]``."""
    return key_T[None, :] > key_T[:, None], key_T[None, :] == key_T[:, None]


def slot_rank_TK(record: RoutingRecord) -> torch.Tensor:
    """long ``[T, K]``: rank of each of a token's top-k experts by its own choice score."""
    ids_TK = record.topk_ids_TK.long().clamp(0, record.num_experts - 1)
    c_TK = record.choice_scores_TE().gather(1, ids_TK)
    c_i, c_j = c_TK[:, :, None], c_TK[:, None, :]
    ahead_TKK = (c_j > c_i) | ((c_j == c_i) & (ids_TK[:, None, :] < ids_TK[:, :, None]))
    return ahead_TKK.sum(dim=2)


def priority_key_E(record: RoutingRecord, rank_T: torch.Tensor, tokens: int | None) -> torch.Tensor:
    """long ``[E]``: each expert's place in the strict priority order, ``T * K`` if none.

    The first ``tokens`` valid tokens of ``rank_T`` (all when None) contribute
    their top-k experts in turn, each token's in its own preference order; an
    expert's key is the first place it appears: ``rank[t] * K + slot``.
    """
    T, K, E = record.num_tokens, record.top_k, record.num_experts
    none = T * K
    prio_T = record.valid_mask_T()
    if tokens is not None:
        prio_T = prio_T & (rank_T < tokens)
    key_TK = rank_T[:, None] * K + slot_rank_TK(record)
    key_TK = torch.where(prio_T[:, None], key_TK, none)
    ids_TK = torch.where(prio_T[:, None], record.topk_ids_TK.long(), 0)
    key_E = torch.full((E,), none, dtype=torch.long, device=ids_TK.device)
    return key_E.scatter_reduce(0, ids_TK.flatten(), key_TK.flatten(), "amin")
