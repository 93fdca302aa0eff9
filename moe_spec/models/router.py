"""Routers: a linear gate per layer, fit to an oracle of expert output norms.

Shape legend: T tokens, D hidden size, E routed experts, K top-k, F FFN neurons.

The oracle keeps, for each token, the K routed experts whose outputs
``W_down[:, group] a[group]`` have the largest norm. The router ``W [E, D]`` is a
ridge regression of the centred log output norms on the FFN input (closed form), its
scale set so the softmax puts its mass on the oracle's top-k.
"""

from __future__ import annotations

import torch


def expert_output_norms(
    act_TF: torch.Tensor, w_down_DF: torch.Tensor, perm_F: torch.Tensor, shared: int, n_experts: int
) -> torch.Tensor:
    """``||W_down[:, group_e] a[t, group_e]||`` for every token and routed expert ``[T, E]``."""
    size = (perm_F.numel() - shared) // n_experts
    out = []
    for e in range(n_experts):
        ids = perm_F[shared + e * size : shared + (e + 1) * size]
        out.append((act_TF[:, ids] @ w_down_DF[:, ids].T).norm(dim=1))
    return torch.stack(out, dim=1)


def oracle_topk(norms_TE: torch.Tensor, k: int) -> torch.Tensor:
    """The oracle's experts ``[T, K]``: largest output norm first."""
    return norms_TE.topk(k, dim=1).indices


def fit_router(x_TD: torch.Tensor, norms_TE: torch.Tensor, l2: float = 1e-3) -> torch.Tensor:
    """A linear router ``[E, D]``: ridge regression of each token's centred log expert-output
    norms on its FFN input (closed form, deterministic), then one temperature chosen so the
    softmax puts its mass on the oracle's top-k (cross-entropy to ``1/K`` on each)."""
    x_TD = x_TD.double()
    y_TE = norms_TE.double().clamp_min(1e-6).log()
    y_TE = y_TE - y_TE.mean(1, keepdim=True)
    gram_DD = x_TD.T @ x_TD / x_TD.shape[0]
    ridge = l2 * gram_DD.diagonal().mean()
    w_DE = torch.linalg.solve(
        gram_DD + ridge * torch.eye(gram_DD.shape[0], dtype=gram_DD.dtype),
        x_TD.T @ y_TE / x_TD.shape[0],
    )
    return w_DE.T.float().contiguous()


def fit_temperature(logits_TE: torch.Tensor, target_TE: torch.Tensor) -> float:
    """The scale ``s`` (log-spaced grid) minimising cross-entropy of ``softmax(s * logits)``."""
    best, best_loss = 1.0, float("inf")
    for s in torch.logspace(-1, 1.5, 26).tolist():
        loss = -(target_TE * torch.log_softmax(s * logits_TE, dim=1)).sum(1).mean().item()
        if loss < best_loss:
            best, best_loss = s, loss
    return best


def topk_target(ids_TK: torch.Tensor, n_experts: int) -> torch.Tensor:
    """``1/K`` on each of a token's experts ``[T, E]``."""
    T, K = ids_TK.shape
    return torch.zeros(T, n_experts).scatter_(1, ids_TK, 1.0 / K)


def recall(pred_TK: torch.Tensor, oracle_TK: torch.Tensor) -> float:
    """Share of the oracle's experts the router also picks."""
    hits = (pred_TK[:, :, None] == oracle_TK[:, None, :]).any(1).sum()
    return float(hits) / oracle_TK.numel()
