"""Split one FFN's neurons into a shared expert and E equal routed experts.

Shape legend: T tokens, F FFN neurons, N routed neurons, E routed experts, D hidden size.

A neuron's contribution to a token's output is ``a[t, j] * W_down[:, j]``, so its
importance is ``|a[t, j]| * ||W_down[:, j]||``. The ``shared`` neurons with the largest
mean importance form the always-on shared expert; the rest are grouped by
**balanced spherical k-means** on their importance profiles over the calibration
tokens (neurons that fire together share an expert: the MoEfication idea), every
group exactly ``N / E`` neurons. The result is a permutation of the FFN's neurons:
shared first, then expert 0's, expert 1's, ...
"""

from __future__ import annotations

import torch


def importance(act_TF: torch.Tensor, w_down_DF: torch.Tensor) -> torch.Tensor:
    """``|a[t, j]| * ||W_down[:, j]||``: each neuron's output norm per token ``[T, F]``."""
    return act_TF.abs() * w_down_DF.norm(dim=0)


def balanced_assign(sim_NE: torch.Tensor, size: int) -> torch.Tensor:
    """Each row's group ``[N]``: best similarity first, every group holding exactly ``size``."""
    N, E = sim_NE.shape
    if E * size != N:
        raise ValueError(f"{N} neurons cannot fill {E} groups of {size}")
    order = torch.argsort(sim_NE.flatten(), descending=True, stable=True).tolist()
    group = [-1] * N
    room = [size] * E
    left = N
    for flat in order:
        n, e = divmod(flat, E)
        if group[n] < 0 and room[e] > 0:
            group[n] = e
            room[e] -= 1
            left -= 1
            if not left:
                break
    group_N = torch.tensor(group, dtype=torch.long)
    return group_N


def balanced_kmeans(
    profile_NT: torch.Tensor, n_groups: int, iters: int = 12, seed: int = 0
) -> torch.Tensor:
    """Balanced spherical k-means of rows; the group of each row ``[N]`` (seeded, deterministic)."""
    x_NT = torch.nn.functional.normalize(profile_NT.double(), dim=1)
    N = x_NT.shape[0]
    g = torch.Generator().manual_seed(seed)
    centers_ET = x_NT[torch.randperm(N, generator=g)[:n_groups]]
    group_N = torch.zeros(N, dtype=torch.long)
    for _ in range(iters):
        group_N = balanced_assign(x_NT @ centers_ET.T, N // n_groups)
        sums_ET = torch.zeros_like(centers_ET).index_add_(0, group_N, x_NT)
        centers_ET = torch.nn.functional.normalize(sums_ET, dim=1)
    return group_N


def split_neurons(
    act_TF: torch.Tensor, w_down_DF: torch.Tensor, shared: int, n_experts: int, seed: int = 0
) -> torch.Tensor:
    """The FFN's neuron permutation ``[F]``: ``shared`` shared neurons, then ``n_experts``
    groups of ``(F - shared) / n_experts`` (each group's neurons in ascending order)."""
    F = act_TF.shape[1]
    if not 0 <= shared < F or (F - shared) % n_experts:
        raise ValueError(
            f"shared={shared} must be in [0, {F}) and leave a multiple of n_experts={n_experts}"
        )
    imp_TF = importance(act_TF, w_down_DF)
    by_mean_F = torch.argsort(imp_TF.mean(0), descending=True, stable=True)
    shared_ids = torch.sort(by_mean_F[:shared]).values
    routed_ids = torch.sort(by_mean_F[shared:]).values
    group_N = balanced_kmeans(imp_TF[:, routed_ids].T, n_experts, seed=seed)
    parts = [shared_ids] + [routed_ids[group_N == e] for e in range(n_experts)]
    return torch.cat(parts)
