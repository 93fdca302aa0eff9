"""Shared set-up for the MoE benchmarks: model shapes, expert weights, routings, timing stats.

Shape legend: T tokens, E experts, K top-k, B budget, L layers, D model dim, F expert dim;
U distinct experts a routing touches.

Imports only torch, so ``gpu_check.py`` can use it on a machine with nothing
but PyTorch and Triton.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch

from moe_spec.routing import softmax_topk


@dataclass(frozen=True)
class MoeShape:
    name: str
    E: int
    K: int
    D: int
    F: int

    def expert_bytes(self, dtype: torch.dtype) -> int:
        """Bytes of one expert's gate, up and down projections."""
        return 3 * self.D * self.F * torch.finfo(dtype).bits // 8


MODEL_SHAPES: dict[str, MoeShape] = {
    "olmoe": MoeShape("OLMoE-1B-7B", E=64, K=8, D=2048, F=1024),
    "qwen3": MoeShape("Qwen3-30B-A3B", E=128, K=8, D=2048, F=768),
}


def make_layers(
    shape: MoeShape, num_layers: int, dtype: torch.dtype, device: str | torch.device = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``num_layers`` random ``(w13_EFD [E, 2F, D], w2_EDF [E, D, F])`` pairs.

    Benchmarks cycle through several layers so that a call never finds its
    experts in the CPU's last-level cache (300 MiB here), as in a real model
    where the other layers run in between.
    """
    g = torch.Generator(device=device).manual_seed(0)
    layers = []
    for _ in range(num_layers):
        w13_EFD = torch.randn(
            shape.E, 2 * shape.F, shape.D, generator=g, device=device, dtype=dtype
        )
        w2_EDF = torch.randn(shape.E, shape.D, shape.F, generator=g, device=device, dtype=dtype)
        layers.append((w13_EFD.mul_(shape.D**-0.5), w2_EDF.mul_(shape.F**-0.5)))
    return layers


def uniform_routing(T: int, E: int, K: int, U: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k ids touching exactly ``U`` distinct experts (a random set), softmax weights.

    Needs ``K <= U <= T*K``; pairs are spread round-robin over the U experts.
    """
    if not K <= U <= min(E, T * K):
        raise ValueError(f"U={U} distinct experts; allowed: K={K} <= U <= min(E, T*K)")
    g = torch.Generator().manual_seed(seed)
    experts_U = torch.randperm(E, generator=g)[:U]
    # Row t takes experts (t*K + k) mod U: K distinct per row, all U covered when T*K >= U.
    slots_TK = (torch.arange(T)[:, None] * K + torch.arange(K)[None, :]) % U
    ids_TK = experts_U[slots_TK]
    weights_TK = torch.rand(T, K, generator=g).softmax(-1)
    return ids_TK, weights_TK


def skewed_logits(T: int, E: int, seed: int, zipf: float = 0.7) -> torch.Tensor:
    """Router logits with realistic popularity skew: ``popularity + context + token``.

    The same model as ``moe_spec.trace.synthetic_trace`` without the tree
    correlation: ``-zipf * log(rank[e])`` over a random ranking of experts, a
    Gaussian context vector shared by all tokens, Gaussian per-token noise
    (scale 1.5). Returns fp32 ``[T, E]``.
    """
    g = torch.Generator().manual_seed(seed)
    rank_E = torch.argsort(torch.rand(E, generator=g)).float() + 1.0
    popularity_E = -zipf * torch.log(rank_E)
    context_E = torch.randn(E, generator=g)
    return popularity_E + context_E + 1.5 * torch.randn(T, E, generator=g)


def model_topk(logits_TE: torch.Tensor, K: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own routing: top-k of the softmax, renormalised (OLMoE and Qwen3 do)."""
    weights_TK, ids_TK = softmax_topk(logits_TE, K, renormalize=True)
    return ids_TK, weights_TK


def distinct(ids_TK: torch.Tensor) -> int:
    return int(ids_TK.unique().numel())


@dataclass(frozen=True)
class Stats:
    """Median and spread of repeated measurements."""

    median: float
    spread: float  # (p75 - p25) / median: the noise of this measurement

    @staticmethod
    def of(values: list[float]) -> Stats:
        q = statistics.quantiles(values, n=4, method="inclusive") if len(values) > 1 else [0, 0, 0]
        med = statistics.median(values)
        return Stats(med, (q[2] - q[0]) / med if med else math.nan)
