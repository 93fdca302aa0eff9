"""Run a dense Llama as the MoE it would become, by masking FFN neurons (for measuring).

Shape legend: T tokens, D hidden size, F FFN neurons, E routed experts, K top-k.

A routed expert is a group of FFN neurons, so the MoE layer's output equals the
dense FFN's with every unchosen routed neuron's activation zeroed and every chosen
one scaled by its expert's weight ``K * softmax-over-top-k`` (the Qwen2-MoE
checkpoint folds the ``K`` into the down projection). That is what
:class:`MaskedMoE` computes; ``tests/models`` checks it against the checkpoint.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from moe_spec.models.calibration import ffn_activations


@dataclass(frozen=True)
class LayerSplit:
    """One layer's split: neuron permutation ``[F]`` (shared first) and router ``[E, D]``."""

    perm_F: torch.Tensor
    shared: int
    router_ED: torch.Tensor | None  # None: the oracle (largest expert output norm) routes

    @property
    def n_experts(self) -> int:
        return self.router_ED.shape[0] if self.router_ED is not None else 0


def routed_weights(logits_TE: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Qwen2-MoE routing with ``norm_topk_prob``: ``(ids [T, K], weights [T, K])``, times K."""
    probs_TE = torch.softmax(logits_TE.float(), dim=-1)
    w_TK, ids_TK = probs_TE.topk(k, dim=-1)
    return ids_TK, k * w_TK / w_TK.sum(-1, keepdim=True)


class MaskedMoE(nn.Module):
    """A Llama MLP computed as shared expert + top-k of ``n_experts`` routed experts."""

    def __init__(self, mlp: nn.Module, split: LayerSplit, n_experts: int, k: int) -> None:
        super().__init__()
        self.mlp, self.split, self.n_experts, self.k = mlp, split, n_experts, k
        F = split.perm_F.numel()
        self.size = (F - split.shared) // n_experts
        group_F = torch.full((F,), -1, dtype=torch.long)
        group_F[split.perm_F[split.shared :]] = torch.arange(F - split.shared) // self.size
        device = mlp.down_proj.weight.device  # the split's tensors move there once
        self.group_F = group_F.to(device)  # -1: shared
        self.router_ED = None if split.router_ED is None else split.router_ED.to(device)

    def logits(self, x_TD: torch.Tensor, act_TF: torch.Tensor) -> torch.Tensor:
        if self.router_ED is not None:
            return x_TD.float() @ self.router_ED.T
        w_down = self.mlp.down_proj.weight
        norms = []
        for e in range(self.n_experts):
            ids = (self.group_F == e).nonzero()[:, 0]
            norms.append((act_TF[:, ids] @ w_down[:, ids].T).norm(dim=1))
        return torch.stack(norms, 1).log()  # oracle: larger norm, larger logit

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = x.shape
        x_TD = x.reshape(-1, shape[-1])
        act_TF = ffn_activations(self.mlp, x_TD)
        ids_TK, w_TK = routed_weights(self.logits(x_TD, act_TF), self.k)
        if self.router_ED is None:
            w_TK = torch.ones_like(w_TK)  # the oracle keeps its experts whole
        gate_TE = torch.zeros(x_TD.shape[0], self.n_experts + 1, device=x_TD.device)
        gate_TE.scatter_(1, ids_TK, w_TK)
        gate_TE[:, -1] = 1.0  # index -1 -> the shared expert
        act_TF = act_TF * gate_TE[:, self.group_F].to(act_TF.dtype)
        return self.mlp.down_proj(act_TF).reshape(shape)


@contextmanager
def as_moe(model, splits: list[LayerSplit], n_experts: int, k: int):
    """Inside the block, ``model``'s MLPs compute as MoE layers."""
    layers = model.model.layers
    originals = [layer.mlp for layer in layers]
    try:
        for layer, split in zip(layers, splits, strict=True):
            layer.mlp = MaskedMoE(layer.mlp, split, n_experts, k)
        yield model
    finally:
        for layer, mlp in zip(layers, originals, strict=True):
            layer.mlp = mlp


@torch.no_grad()
def perplexity(model, sequences: list[list[int]]) -> tuple[float, int]:
    """``(exp(mean next-token NLL), tokens scored)`` over the sequences."""
    nll, n = 0.0, 0
    for ids in sequences:
        x = torch.tensor([ids])
        logits = model(input_ids=x).logits[0, :-1].float()
        nll += torch.nn.functional.cross_entropy(logits, x[0, 1:], reduction="sum").item()
        n += len(ids) - 1
    return float(torch.tensor(nll / n).exp()), n
