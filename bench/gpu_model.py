"""A real-shaped MoE target with random weights, built on the device: its decode and verify steps.

Shape legend: T tokens, E experts, K top-k, B budget, L layers, D model dim, F expert dim,
V vocabulary, H query heads, G KV heads, Dh head dim, C committed context; U distinct
experts a layer reads.

``bench/gpu_check.py`` times one forward of this model the way a served target runs it
at batch 1: RMSNorm, q/k/v projections with rotary positions, attention over a KV cache
of C committed tokens plus the tree (SDPA with a tree mask; FlashInfer does not travel
to the check's machine), output projection, router, optional budget selection
(``select_budget_triton``, router-mass rule), the project's Triton fused MoE, and the LM
head over every tree token. Nothing is downloaded: weights are random bf16 drawn on the
device, and routing is steered (router logits plus a fixed per-layer bias) so that the
unbudgeted verify reads the distinct-expert count the paper reports. Imports only torch
and moe_spec's kernels, so it runs with a GPU machine's preinstalled packages.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F_
from moe_bench_common import model_topk, skewed_logits


@dataclass(frozen=True)
class ModelDims:
    """The parts of a model's ``config.json`` a forward's cost depends on."""

    name: str  # a shape name of moe_spec.costmodel.SHAPES (or "tiny")
    L: int
    D: int
    H: int
    G: int
    Dh: int
    E: int
    K: int
    F: int
    V: int
    distinct: int  # U the unbudgeted verify is steered to read (the paper's count)
    budgets: tuple[int, ...]  # B timed for the verify

    def __post_init__(self) -> None:
        if not (self.K <= self.distinct <= self.E and self.H % self.G == 0):
            raise ValueError(f"{self.name}: need K <= distinct <= E and G dividing H")


MODELS: dict[str, ModelDims] = {
    # OLMoE-1B-7B-0924: MHA 16 x 128; the paper: 54 distinct experts on a 255-token tree.
    "olmoe": ModelDims("OLMoE-1B-7B", 16, 2048, 16, 16, 128, 64, 8, 1024, 50304, 54, (16, 32)),
    # Qwen3-30B-A3B: GQA 32 / 4 x 128; the paper: about 80 distinct experts on a 63-token tree.
    "qwen3": ModelDims("Qwen3-30B-A3B", 48, 2048, 32, 4, 128, 128, 8, 768, 151936, 80, (32, 64)),
}
TINY = ModelDims("tiny", 2, 64, 4, 2, 16, 16, 2, 48, 128, 10, (4, 8))


class RandomMoeModel:
    """Random bf16 weights of ``dims`` on ``device`` and a KV cache of ``context`` tokens."""

    def __init__(self, dims: ModelDims, device: str, context: int, max_tokens: int) -> None:
        self.dims, self.device, self.context = dims, device, context
        d, dt = dims, torch.bfloat16
        g = torch.Generator(device=device).manual_seed(0)

        def rand(*shape: int, scale: float) -> torch.Tensor:
            return torch.randn(*shape, generator=g, device=device, dtype=dt).mul_(scale)

        qkv_out = (d.H + 2 * d.G) * d.Dh
        self.embed_VD = rand(d.V, d.D, scale=1.0)
        self.head_VD = rand(d.V, d.D, scale=d.D**-0.5)
        self.layers = []
        for _ in range(d.L):
            self.layers.append(
                {
                    "wqkv": rand(qkv_out, d.D, scale=d.D**-0.5),
                    "wo": rand(d.D, d.H * d.Dh, scale=(d.H * d.Dh) ** -0.5),
                    "router_ED": rand(d.E, d.D, scale=d.D**-0.5),
                    "w13_EFD": rand(d.E, 2 * d.F, d.D, scale=d.D**-0.5),
                    "w2_EDF": rand(d.E, d.D, d.F, scale=d.F**-0.5),
                    "k_cache": rand(d.G, context + max_tokens, d.Dh, scale=1.0),
                    "v_cache": rand(d.G, context + max_tokens, d.Dh, scale=1.0),
                }
            )
        self.norm_D = torch.ones(d.D, device=device, dtype=dt)
        inv_freq = 1.0 / (1e6 ** (torch.arange(0, d.Dh, 2, device=device).float() / d.Dh))
        self.inv_freq = inv_freq
        self.bias_LTE: torch.Tensor | None = None

    def steer_routing(self, T: int, seed: int = 0) -> None:
        """Fix a per-layer router bias so ``T`` tokens touch at most ``dims.distinct`` experts."""
        d = self.dims
        self.bias_LTE = steered_bias(d.E, d.distinct, d.L, T, seed).to(self.device)


def steered_bias(E: int, distinct: int, L: int, T: int, seed: int = 0) -> torch.Tensor:
    """fp32 ``[L, T, E]`` router logits whose top-k touch at most ``distinct`` experts per layer.

    Skewed logits (``moe_bench_common.skewed_logits``) over a random set of U experts per
    layer, the rest pushed down by 30: a routing reads U or a little less (counted after
    the run, never assumed).
    """
    rows = []
    for layer in range(L):
        logits_TE = skewed_logits(T, E, seed=seed * 1000 + layer)
        g = torch.Generator().manual_seed(seed * 1000 + layer)
        outside_E = torch.ones(E, dtype=torch.bool)
        outside_E[torch.randperm(E, generator=g)[:distinct]] = False
        rows.append(logits_TE - 30.0 * outside_E.float())
    return torch.stack(rows)


def rms_norm(x_TD: torch.Tensor, w_D: torch.Tensor) -> torch.Tensor:
    x = x_TD.float()
    return (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + 1e-6)).to(x_TD.dtype) * w_D


def rotate(x_THD: torch.Tensor, cos_TD: torch.Tensor, sin_TD: torch.Tensor) -> torch.Tensor:
    half = x_THD.shape[-1] // 2
    x1, x2 = x_THD[..., :half], x_THD[..., half:]
    rotated = torch.cat((-x2, x1), dim=-1)
    return x_THD * cos_TD[:, None] + rotated * sin_TD[:, None]


@dataclass
class StepInputs:
    """Static inputs of one forward (same tensors at every CUDA-graph replay)."""

    tokens_T: torch.Tensor
    cos_TD: torch.Tensor
    sin_TD: torch.Tensor
    mask_TS: torch.Tensor  # bool [T, C + T]: committed context, then the tree's ancestors

    @staticmethod
    def tree(model: RandomMoeModel, T: int, seed: int = 0) -> StepInputs:
        """A random tree of ``T`` tokens (parent of node i drawn among nodes < i)."""
        g = torch.Generator().manual_seed(seed)
        parent = [-1] + [int(torch.randint(0, i, (1,), generator=g)) for i in range(1, T)]
        ancestors_TT = torch.eye(T, dtype=torch.bool)
        depth = [0] * T
        for i in range(1, T):
            ancestors_TT[i] |= ancestors_TT[parent[i]]
            depth[i] = depth[parent[i]] + 1
        C, dev = model.context, model.device
        mask_TS = torch.cat([torch.ones(T, C, dtype=torch.bool), ancestors_TT], dim=1)
        pos_T = torch.tensor(depth, dtype=torch.float32) + C
        freqs = pos_T[:, None] * model.inv_freq.cpu()[None, :]
        emb = torch.cat((freqs, freqs), dim=-1)
        return StepInputs(
            torch.randint(0, model.dims.V, (T,), generator=g).to(dev),
            emb.cos().to(dev, torch.bfloat16),
            emb.sin().to(dev, torch.bfloat16),
            mask_TS.to(dev),
        )


def forward(
    model: RandomMoeModel,
    inputs: StepInputs,
    budget: int | None = None,
    *,
    fixed_ids: list[tuple[torch.Tensor, torch.Tensor]] | None = None,
    moe: bool = True,
) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """One target forward over ``inputs``; returns (logits ``[T, V]``, expert ids per layer).

    ``budget``: at most B distinct experts per layer (router-mass selection, substitution).
    ``fixed_ids``: per layer ``(ids_TK, weights_TK)`` used instead of routing and selection
    (the same experts with no selection cost: the check's overhead split). ``moe=False``
    skips the routed experts (the split's other end).
    """
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton

    d = model.dims
    T = inputs.tokens_T.shape[0]
    C = model.context
    x_TD = model.embed_VD[inputs.tokens_T]
    ids_per_layer = []
    for i, layer in enumerate(model.layers):
        h_TD = rms_norm(x_TD, model.norm_D)
        q, k, v = (h_TD @ layer["wqkv"].T).split([d.H * d.Dh, d.G * d.Dh, d.G * d.Dh], dim=-1)
        q_THD = rotate(q.view(T, d.H, d.Dh), inputs.cos_TD, inputs.sin_TD)
        k_TGD = rotate(k.view(T, d.G, d.Dh), inputs.cos_TD, inputs.sin_TD)
        layer["k_cache"][:, C : C + T] = k_TGD.transpose(0, 1)
        layer["v_cache"][:, C : C + T] = v.view(T, d.G, d.Dh).transpose(0, 1)
        attn_HTD = F_.scaled_dot_product_attention(
            q_THD.transpose(0, 1),
            layer["k_cache"][:, : C + T],
            layer["v_cache"][:, : C + T],
            attn_mask=inputs.mask_TS,
            enable_gqa=d.G != d.H,
        )
        x_TD = x_TD + attn_HTD.transpose(0, 1).reshape(T, d.H * d.Dh) @ layer["wo"].T
        h_TD = rms_norm(x_TD, model.norm_D)
        if not moe:
            continue
        if fixed_ids is not None:
            ids_TK, weights_TK = fixed_ids[i]
        else:
            logits_TE = (h_TD @ layer["router_ED"].T).float() + model.bias_LTE[i, :T]
            ids_TK, weights_TK = model_topk(logits_TE, d.K)
            if budget is not None and budget < d.E:
                ids_TK, weights_TK = select_mass(logits_TE, ids_TK, weights_TK, budget)
        ids_per_layer.append(ids_TK)
        x_TD = x_TD + fused_moe_triton(h_TD, layer["w13_EFD"], layer["w2_EDF"], ids_TK, weights_TK)
    logits_TV = rms_norm(x_TD, model.norm_D) @ model.head_VD.T
    return logits_TV, ids_per_layer


def select_mass(
    logits_TE: torch.Tensor, ids_TK: torch.Tensor, weights_TK: torch.Tensor, budget: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Triton budget selection (router-mass, substitution): budgeted ``(ids_TK, weights_TK)``."""
    from moe_spec.kernels.budget_select_torch import ScoreRule
    from moe_spec.kernels.budget_select_triton import select_budget_triton
    from moe_spec.routing import RoutingRecord

    record = RoutingRecord(logits_TE, ids_TK, weights_TK)
    out, _ = select_budget_triton(record, budget, ScoreRule("mass"))
    return out.topk_ids_TK, out.topk_weights_TK


def steered_routing(model: RandomMoeModel, T: int) -> list[tuple[torch.Tensor, ...]]:
    """Per layer ``(logits_TE, ids_TK, weights_TK)`` of the steered routing (bias only)."""
    out = []
    for i in range(model.dims.L):
        logits_TE = model.bias_LTE[i, :T].contiguous()
        out.append((logits_TE, *model_topk(logits_TE, model.dims.K)))
    return out


def selections(routing: list[tuple[torch.Tensor, ...]], budget: int) -> None:
    """Only the budget selections of one forward (the check's overhead timing)."""
    for logits_TE, ids_TK, weights_TK in routing:
        select_mass(logits_TE, ids_TK, weights_TK, budget)


def served_auto(dims: ModelDims, T: int, budget: int, device: str):
    """An ``auto`` policy as SGLang's plugin holds it (no value checks, the routing copied
    into device buffers for ``observe``), every layer's budget ``budget`` on the device."""
    from moe_spec.policies import get_policy

    policy = get_policy("auto")
    policy.validate, policy.record_routing = False, False
    policy.prepare(dims.L, dims.E, dims.K, dims.E, torch.device(device))
    policy.record_to_device(T, dims.K)
    policy.device_state["budget_L"].fill_(budget)
    return policy


def auto_selections(policy, routing: list[tuple[torch.Tensor, ...]]) -> None:
    """``auto``'s work inside one verify forward (every layer ranks, keeps its device budget
    and records what ``observe`` reads), as the SGLang plugin calls it; rows at depth
    ``t`` (a chain's)."""
    from moe_spec.routing import RoutingRecord

    L = len(routing)
    for layer, (logits_TE, ids_TK, weights_TK) in enumerate(routing):
        depth_T = torch.arange(logits_TE.shape[0], device=logits_TE.device)
        record = RoutingRecord(
            logits_TE, ids_TK, weights_TK, depth_T=depth_T, layer_idx=layer, num_layers=L
        )
        policy.apply(record, logits_TE.shape[1])


def auto_ranked_after(policy, routing: list[tuple[torch.Tensor, ...]]) -> torch.Tensor:
    """What ``auto`` does for a step at the cap that rested in the engines (``rank_after``):
    every layer's ranking at once from the routing kept, after the forward
    (``Auto.rank_routing``: on CUDA one Triton launch); rows at depth ``t`` (a chain's)."""
    from moe_spec.routing import RoutingRecord

    L = len(routing)
    depth_T = torch.arange(routing[0][0].shape[0], device=routing[0][0].device)
    records = [
        RoutingRecord(logits_TE, ids_TK, weights_TK, depth_T=depth_T, layer_idx=i, num_layers=L)
        for i, (logits_TE, ids_TK, weights_TK) in enumerate(routing)
    ]
    return policy.rank_routing(records)


def auto_scored(policy, routing: list[tuple[torch.Tensor, ...]]) -> None:
    """A server's step at the cap ranked after its forward: every layer's selection at
    ``REST_SCORED`` (rows copied, scores kept) inside the forward, then
    ``Auto.rank_scored`` (on CUDA one Triton launch), as SGLang's plugin runs them."""
    auto_selections(policy, routing)
    policy.rank_scored()


def plugin_budgets(policy, routing: list[tuple[torch.Tensor, ...]]) -> None:
    """``auto``'s work in one verify forward as SGLang's plugin does it, its handling of the
    rows SGLang masks included (``BudgetRuntime``'s ``budget_rows``, every row real, no
    SGLang needed): what a server pays a forward at the policy's rest flag."""
    from moe_spec.integration.sglang.runtime import budget_rows
    from moe_spec.routing import RoutingRecord

    L, (logits_TE, _, _) = len(routing), routing[0]
    T, E = logits_TE.shape
    real_T = torch.ones(T, dtype=torch.bool, device=logits_TE.device)
    depth_T = torch.arange(T, device=logits_TE.device)
    for layer, (logits_TE, ids_TK, weights_TK) in enumerate(routing):
        served = RoutingRecord(
            logits_TE, ids_TK, weights_TK, valid_T=real_T, depth_T=depth_T, layer_idx=layer,
            num_layers=L, masked_rows=True,
        )  # fmt: skip
        budget_rows(policy, served, E, "substitution")
