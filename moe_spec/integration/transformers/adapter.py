"""Find the sparse-MoE blocks of a transformers model and budget them in a verify forward.

Shape legend: T tokens of the forward (batch 1), E routed experts, K top-k, B budget.

transformers 5.x builds every supported MoE block from two modules: a router
(``block.gate`` or ``block.router``) returning ``(router_logits, top_k_weights,
top_k_index)``, and a fused experts module called as ``experts(hidden,
top_k_index, top_k_weights)``. :func:`budgeted_verify` adds a forward hook on
the router that hands its routing to the policy (through the budgeting core,
with the model's own convention) and replaces the ids and weights the block
passes on, plus a pre-hook on the experts module that records which experts
the block actually computes. Conventions per architecture (:data:`ARCHITECTURES`):
softmax top-k with or without renormalisation (``norm_topk_prob``), DeepSeek's
``routed_scaling_factor``, and sigmoid gates chosen with a correction bias
(DeepSeek-V3, GLM-4.5). Shared experts (Qwen2-MoE, DeepSeek, GLM) sit outside
the experts module and are never touched. Outside the context manager
no hook is installed: prefill and decoding run the model's own code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from moe_spec.budget import Mode, check_budget, check_mode
from moe_spec.engine.model import VerifyBudget
from moe_spec.policies import Policy
from moe_spec.routing import RoutingRecord, Scoring, used_experts_E


class UnsupportedModelError(ValueError):
    """The model's architecture has no routing adapter."""


@dataclass(frozen=True)
class RouterConvention:
    """How an architecture routes: where the router sits and how it weights experts."""

    router_attr: str  # the block's router child: "gate" or "router"
    scoring: Scoring = "softmax"
    renormalize: bool = True  # top-k weights rescaled to sum to 1
    scale: float = 1.0  # DeepSeek's routed_scaling_factor, applied after the top-k
    bias_attr: str | None = None  # sigmoid routers: the router's selection-bias buffer


def softmax_topk_convention(config) -> RouterConvention:
    """Qwen2-MoE, Qwen3-MoE, OLMoE: softmax top-k, renormalised iff ``norm_topk_prob``."""
    return RouterConvention("gate", renormalize=bool(config.norm_topk_prob))


def deepseek_v2_convention(config) -> RouterConvention:
    """DeepSeek-V2(-Lite): greedy softmax top-k, raw weights times ``routed_scaling_factor``."""
    if config.topk_method != "greedy":
        raise UnsupportedModelError(
            f"deepseek_v2 with topk_method={config.topk_method!r} is not supported (a re-route "
            "would ignore its group limit); supported: topk_method='greedy' (DeepSeek-V2-Lite)"
        )
    return RouterConvention("gate", renormalize=False, scale=float(config.routed_scaling_factor))


def sigmoid_bias_convention(config) -> RouterConvention:
    """DeepSeek-V3, GLM-4.5: sigmoid gates, top-k chosen by gate + correction bias,
    weights from the gates (renormalised iff ``norm_topk_prob``) times ``routed_scaling_factor``.
    """
    if config.topk_group != config.n_group:
        raise UnsupportedModelError(
            f"{config.model_type} with n_group={config.n_group}, topk_group={config.topk_group} "
            "limits each token to some expert groups, which a re-route would ignore; "
            "supported: topk_group == n_group (e.g. n_group=1, as GLM-4.5)"
        )
    return RouterConvention(
        "gate",
        scoring="sigmoid",
        renormalize=bool(config.norm_topk_prob),
        scale=float(config.routed_scaling_factor),
        bias_attr="e_score_correction_bias",
    )


ARCHITECTURES: dict[str, Callable[[object], RouterConvention]] = {
    "qwen3_moe": softmax_topk_convention,
    "qwen2_moe": softmax_topk_convention,
    "olmoe": softmax_topk_convention,
    "mixtral": lambda config: RouterConvention("gate"),
    "deepseek_v2": deepseek_v2_convention,
    # softmax over the top-k logits (router bias included) == renormalised softmax top-k
    "gpt_oss": lambda config: RouterConvention("router"),
    "deepseek_v3": sigmoid_bias_convention,
    "glm4_moe": sigmoid_bias_convention,
}
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(sorted(ARCHITECTURES))


def check_model_type(model_type: str) -> None:
    if model_type not in ARCHITECTURES:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no MoE routing adapter; "
            f"supported: {', '.join(SUPPORTED_MODEL_TYPES)}"
        )


def router_convention(config) -> RouterConvention:
    """The routing convention of a model config, or :class:`UnsupportedModelError`."""
    model_type = getattr(config, "model_type", None)
    check_model_type(model_type)
    return ARCHITECTURES[model_type](config)


@dataclass(frozen=True)
class MoEBlock:
    """One sparse-MoE block: its index among the MoE layers, router and experts."""

    layer_idx: int
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    correction_bias_E: torch.Tensor | None = None  # sigmoid routers' selection bias


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every sparse-MoE block of ``model`` in layer order (dense layers are skipped)."""
    convention = router_convention(model.config)
    modules = [
        m
        for m in model.modules()
        if isinstance(getattr(m, convention.router_attr, None), nn.Module)
        and isinstance(getattr(m, "experts", None), nn.Module)
    ]
    if not modules:
        raise UnsupportedModelError(
            f"found no sparse-MoE block (a module with .{convention.router_attr} and .experts) "
            f"in {type(model).__name__}; is this a {model.config.model_type} MoE model?"
        )
    blocks = []
    for i, m in enumerate(modules):
        router = getattr(m, convention.router_attr)
        bias_E = getattr(router, convention.bias_attr) if convention.bias_attr else None
        blocks.append(MoEBlock(i, router, m.experts, router.num_experts, router.top_k, bias_E))
    return blocks


@dataclass
class VerifyRouting(VerifyBudget):
    """The engine's :class:`VerifyBudget`, plus what each block computed.

    ``ids_before_LTK`` / ``ids_after_LTK``: each MoE layer's top-k ids before and
    after the policy. ``computed_LE``: bool ``[E]`` per layer, the experts the
    experts module received tokens for (measured at its input, inside the block).
    """

    computed_LE: list[torch.Tensor] = field(default_factory=list)

    def distinct_computed_L(self) -> list[int]:
        """Distinct experts each MoE layer computed in the forward."""
        return [int(used_E.sum()) for used_E in self.computed_LE]


def on_device(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``tensor`` on ``device`` (layers of a model split over GPUs sit on different ones)."""
    return None if tensor is None else tensor.to(device, non_blocking=True)


def budget_routing(
    state: VerifyRouting,
    convention: RouterConvention,
    block: MoEBlock,
    num_layers: int,
    output: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The router's ``(logits, weights, ids)`` with ids and weights budgeted by the policy."""
    logits, weights_TK, ids_TK = output
    logits_TE = logits.reshape(-1, block.num_experts)
    record = RoutingRecord(
        logits_TE,
        ids_TK,
        weights_TK / convention.scale if convention.scale != 1.0 else weights_TK,
        depth_T=on_device(state.depth_T, logits.device),
        path_logprob_T=on_device(state.path_logprob_T, logits.device),
        layer_idx=block.layer_idx,
        num_layers=num_layers,
        scoring=convention.scoring,
        renormalize=convention.renormalize,
        correction_bias_E=block.correction_bias_E,
    )
    new_ids_TK, new_weights_TK, _ = state.policy.apply(record, state.budget, mode=state.mode)
    new_ids_TK = new_ids_TK.to(ids_TK.dtype)
    if convention.scale != 1.0 or state.track_exact:
        changed_T = (new_ids_TK != ids_TK).any(-1)
        changed_T |= (new_weights_TK != record.topk_weights_TK).any(-1)
    if convention.scale != 1.0:  # unchanged rows keep the model's own weights bit for bit
        new_weights_TK = torch.where(
            changed_T[:, None], new_weights_TK * convention.scale, weights_TK
        )
    state.ids_before_LTK.append(ids_TK)
    state.ids_after_LTK.append(new_ids_TK)
    if state.track_exact:
        state.exact_LT.append(~changed_T)
    return logits, new_weights_TK.to(weights_TK.dtype), new_ids_TK


def record_computed(state: VerifyRouting, block: MoEBlock, args: tuple, kwargs: dict) -> None:
    """Pre-hook body: note which experts the experts module is about to compute."""
    ids = (
        args[1]
        if len(args) > 1
        else next(kwargs[k] for k in ("top_k_index", "router_indices") if k in kwargs)
    )
    state.computed_LE.append(used_experts_E(ids.reshape(-1, ids.shape[-1]), block.num_experts))


@contextmanager
def budgeted_verify(
    model: nn.Module,
    policy: Policy,
    budget: int,
    mode: Mode = "substitution",
    depth_T: torch.Tensor | None = None,
    path_logprob_T: torch.Tensor | None = None,
    track_exact: bool = False,
) -> Iterator[VerifyRouting]:
    """Budget every MoE block of ``model`` for the forwards run inside the ``with`` body.

    Yields the :class:`VerifyRouting` that fills up with each layer's routing.
    ``depth_T`` / ``path_logprob_T`` describe the T tokens of the forward (batch 1);
    ``track_exact`` records which tokens' routing the budget left unchanged (for repair).
    """
    convention = router_convention(model.config)
    blocks = find_moe_blocks(model)
    check_mode(mode)
    budget = check_budget(budget, blocks[0].top_k, blocks[0].num_experts)
    state = VerifyRouting(policy, budget, mode, depth_T, path_logprob_T, track_exact)
    handles = []

    def router_hook(block: MoEBlock):
        return lambda _m, _args, out: budget_routing(state, convention, block, len(blocks), out)

    def experts_hook(block: MoEBlock):
        return lambda _m, args, kwargs: record_computed(state, block, args, kwargs)

    try:
        for block in blocks:
            handles.append(block.router.register_forward_hook(router_hook(block)))
            handles.append(
                block.experts.register_forward_pre_hook(experts_hook(block), with_kwargs=True)
            )
        yield state
    finally:
        for handle in handles:
            handle.remove()
