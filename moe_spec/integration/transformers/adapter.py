"""Find the sparse-MoE blocks of a transformers model and budget them in a verify forward.

Shape legend: T tokens of the forward (batch 1), E routed experts, K top-k, B budget.

transformers 5.x builds every supported MoE block from two modules: a router
(``block.gate`` or ``block.router``) returning ``(router_logits, top_k_weights,
top_k_index)``, and a fused experts module called as ``experts(hidden,
top_k_index, top_k_weights)``. :func:`budgeted_verify` adds a forward hook on
the router that hands its routing to the policy (through the budgeting core,
with the model's own convention) and replaces the ids and weights the block
passes on, plus a pre-hook on the experts module that records which experts
the block actually computes. Conventions per architecture (registered as plugins,
:mod:`moe_spec.integration.transformers.architectures`):
softmax top-k with or without renormalisation (``norm_topk_prob``), DeepSeek's
``routed_scaling_factor``, and sigmoid gates chosen with a correction bias
(DeepSeek-V3, GLM-4.5). Shared experts (Qwen2-MoE, DeepSeek, GLM) sit outside
the experts module and are never touched. Outside the context manager
no hook is installed: prefill and decoding run the model's own code.
"""

from __future__ import annotations

import copy
import weakref
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from moe_spec.budget import Mode, check_budget, check_mode
from moe_spec.engine.model import VerifyBudget
from moe_spec.integration.transformers.architectures import (
    BUILTIN_ARCHITECTURES,
    RouterConvention,
    UnsupportedModelError,
    router_convention,
)
from moe_spec.integration.transformers.contract import check_router_contract
from moe_spec.policies import Policy
from moe_spec.routing import RoutingRecord, used_experts_E

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "MoEBlock",
    "RouterConvention",
    "UnsupportedModelError",
    "VerifyRouting",
    "budgeted_verify",
    "find_moe_blocks",
    "router_convention",
]


SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(b.model_type for b in BUILTIN_ARCHITECTURES)


@dataclass(frozen=True)
class MoEBlock:
    """One sparse-MoE block: its index among the MoE layers, router and experts."""

    layer_idx: int
    router: nn.Module
    experts: nn.Module
    num_experts: int
    top_k: int
    correction_bias_E: torch.Tensor | None = None  # sigmoid routers' selection bias


_FOUND: weakref.WeakKeyDictionary[nn.Module, tuple[RouterConvention, list[MoEBlock]]] = (
    weakref.WeakKeyDictionary()
)


def find_moe_blocks(model: nn.Module) -> list[MoEBlock]:
    """Every sparse-MoE block of ``model`` in layer order (dense layers are skipped).

    Found, and each router checked against the registered convention
    (:func:`~moe_spec.integration.transformers.contract.check_router_contract`),
    once per model; later calls return the same blocks.
    """
    return moe_routing(model)[1]


def moe_routing(model: nn.Module) -> tuple[RouterConvention, list[MoEBlock]]:
    """The model's routing convention and its checked MoE blocks, found once per model."""
    if model in _FOUND:
        return _FOUND[model]
    convention = router_convention(model.config)
    modules = [
        m
        for m in model.modules()
        if isinstance(getattr(m, convention.router_attr, None), nn.Module)
        and isinstance(getattr(m, convention.experts_attr, None), nn.Module)
    ]
    if not modules:
        raise UnsupportedModelError(
            f"found no sparse-MoE block (a module with .{convention.router_attr} and "
            f".{convention.experts_attr}) in {type(model).__name__}; is this a "
            f"{model.config.model_type} MoE model?"
        )
    blocks = []
    for i, m in enumerate(modules):
        router = getattr(m, convention.router_attr)
        bias_E = getattr(router, convention.bias_attr) if convention.bias_attr else None
        experts = getattr(m, convention.experts_attr)
        block = MoEBlock(i, router, experts, router.num_experts, router.top_k, bias_E)
        with torch.no_grad():
            check_router_contract(block, convention, model.config.hidden_size)
        blocks.append(block)
    _FOUND[model] = convention, blocks
    return convention, blocks
    return blocks


@dataclass
class VerifyRouting(VerifyBudget):
    """The engine's :class:`VerifyBudget`, plus what each block computed.

    ``ids_before_LTK`` / ``ids_after_LTK``: each MoE layer's top-k ids before and
    after the policy. ``computed_LE``: bool ``[E]`` per layer, the experts the
    experts module received tokens for (measured at its input, inside the block).
    """

    computed_LE: list[torch.Tensor] = field(default_factory=list)
    kept_L: list[torch.Tensor] = field(default_factory=list)  # 0-d: each budgeted layer's kept set
    valid_T: torch.Tensor | None = None  # bool: the forward's real tokens (padding does not count)

    def distinct_computed_L(self) -> list[int]:
        """Distinct experts each MoE layer computed in the forward."""
        return [int(used_E.sum()) for used_E in self.computed_LE]

    def check_kept(self, top_k: int, num_experts: int) -> None:
        """After the forward: raise the policy's :class:`~moe_spec.policies.PolicyError` if a
        budgeted layer kept fewer than top-k or more than B experts (the check the policy
        makes itself with :attr:`~moe_spec.policies.Policy.validate`, which reads the host in
        every layer; here one read per layer once the forward is done). All E kept is a
        policy's ``keep()`` returning None: no budget in that layer."""
        low, high = min(top_k, num_experts), self.budget
        for layer, kept in enumerate(int(k) for k in self.kept_L):
            if not low <= kept <= high and kept != num_experts:
                raise self.policy.error(
                    f"keep() kept {kept} experts in MoE layer {layer}; allowed: top-k={top_k} "
                    f"to budget B={self.budget} (a token needs room for its k experts)"
                )


def on_device(tensor: torch.Tensor | None, device: torch.device) -> torch.Tensor | None:
    """``tensor`` on ``device`` (layers of a model split over GPUs sit on different ones)."""
    return None if tensor is None else tensor.to(device, non_blocking=True)


def budget_routing(
    state: VerifyRouting,
    convention: RouterConvention,
    block: MoEBlock,
    num_layers: int,
    output: tuple[torch.Tensor, torch.Tensor, torch.Tensor],
) -> tuple[torch.Tensor, ...]:
    """The router's output with ids and weights budgeted by the policy (same order)."""
    logits, weights_TK, ids_TK = convention.split(output)
    if state.valid_T is not None and state.valid_T.shape != ids_TK.shape[:1]:
        raise ValueError(
            f"budgeted_verify: valid_T holds {state.valid_T.shape[0]} entries but the forward "
            f"routes {ids_TK.shape[0]} tokens (batch x sequence); pass "
            "attention_mask.flatten().bool() of the same forward"
        )

    def make_record() -> RoutingRecord:
        return RoutingRecord(
            logits.reshape(-1, block.num_experts),
            ids_TK,
            weights_TK / convention.scale if convention.scale != 1.0 else weights_TK,
            depth_T=on_device(state.depth_T, logits.device),
            path_logprob_T=on_device(state.path_logprob_T, logits.device),
            valid_T=on_device(state.valid_T, logits.device),
            layer_idx=block.layer_idx,
            num_layers=num_layers,
            scoring=convention.scoring,
            renormalize=convention.renormalize,
            correction_bias_E=block.correction_bias_E,
            sparsemixer_eps=convention.sparsemixer_eps,
        )

    if state.skips(block.num_experts):  # no budget: note it
        state.note_unbudgeted(ids_TK, make_record)
        return output
    record = make_record()
    new_ids_TK, new_weights_TK, keep_E = state.policy.apply(record, state.budget, mode=state.mode)
    state.kept_L.append(keep_E.sum())  # read after the forward (check_kept): no sync here
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
    return convention.join(logits, new_weights_TK.to(weights_TK.dtype), new_ids_TK)


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
    validate: bool = True,
    valid_T: torch.Tensor | None = None,
) -> Iterator[VerifyRouting]:
    """Budget every MoE block of ``model`` for the forwards run inside the ``with`` body.

    Yields the :class:`VerifyRouting` that fills up with each layer's routing.
    ``depth_T`` / ``path_logprob_T`` describe the T tokens of the forward (batch 1);
    ``track_exact`` records which tokens' routing the budget left unchanged (for repair).
    ``validate`` runs the policy's value checks (a malformed kept set raises its
    ``PolicyError``), which read tensors on the host in every layer; ``validate=False``
    leaves the hot path without host synchronisation of its own (the engine then calls
    ``VerifyRouting.check_kept`` after the forward). ``valid_T``: bool ``[batch x seq]``,
    the forward's real tokens (``attention_mask.flatten().bool()`` of a padded batch): the
    others never count towards the kept set, though they are re-routed into it; without it
    every token counts, padding too.
    """
    if not isinstance(policy, Policy):
        raise ValueError(
            f"policy is {policy!r}; allowed: a Policy instance, e.g. get_policy('router-mass')"
        )
    convention, blocks = moe_routing(model)  # found and checked once per model
    check_mode(mode)
    budget = check_budget(budget, max(b.top_k for b in blocks), blocks[0].num_experts)
    if not validate and policy.validate is not False:  # the hot path reads nothing per layer
        policy = copy.copy(policy)
        policy.validate = False
    state = VerifyRouting(policy, budget, mode, depth_T, path_logprob_T, track_exact)
    state.valid_T = None if valid_T is None else valid_T.reshape(-1).bool()
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
