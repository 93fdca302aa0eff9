"""The budgeting core: keep at most B experts per layer and re-route the rest.

Shape legend: T tokens, E experts, K top-k, B budget (see ``moe_spec.routing``).

Everything here is plain torch with static shapes and no host synchronisation,
so it runs unchanged inside CUDA-graph capture and ``torch.compile``. Value
checks (NaN scores, out-of-range ids), which must read tensors on the host,
run only in eager mode (see :func:`validation_enabled`).

Ties always break towards the lower expert id, so every tensor-parallel rank
that sees the same routing keeps the same experts.
"""

from __future__ import annotations

import operator
from dataclasses import replace
from typing import Literal, NamedTuple

import torch

from moe_spec.routing import RoutingRecord, check_values, sparsemixer_topk

Mode = Literal["substitution", "truncation"]
MODES: tuple[str, ...] = ("substitution", "truncation")


class BudgetedTopK(NamedTuple):
    """Rewritten routing: at most B distinct experts appear in ``topk_ids_TK``."""

    topk_ids_TK: torch.Tensor
    topk_weights_TK: torch.Tensor
    keep_E: torch.Tensor  # bool [E]: the experts the layer may read


def check_budget(budget: object, top_k: int, num_experts: int) -> int:
    """Return ``budget`` as an int, or raise ``ValueError`` naming the allowed range."""
    if isinstance(budget, bool | torch.Tensor):
        raise ValueError(f"budget must be a Python integer, got {budget!r}")
    try:
        value = operator.index(budget)
    except TypeError:
        raise ValueError(f"budget must be an integer, got {budget!r}") from None
    if value < max(top_k, 1):
        raise ValueError(
            f"budget B={value} is below top-k={top_k}: a token could not keep its k experts; "
            f"allowed: B >= {top_k} (B >= E={num_experts} turns budgeting off)"
        )
    return value


def check_mode(mode: str) -> None:
    if mode not in MODES:
        raise ValueError(f"budget mode is {mode!r}; allowed: {', '.join(MODES)}")


def validation_enabled(tensor: torch.Tensor, validate: bool | None = None) -> bool:
    """Whether value checks may run: ``validate`` if given, else only in eager mode.

    Under ``torch.compile`` or while a CUDA graph is being captured a value
    check would be a host synchronisation, so it is skipped there.
    """
    if validate is not None:
        return validate
    if torch.compiler.is_compiling():
        return False
    return not (tensor.is_cuda and torch.cuda.is_current_stream_capturing())


def select_kept(
    scores_E: torch.Tensor, budget: int | torch.Tensor, used_E: torch.Tensor | None = None
) -> torch.Tensor:
    """bool ``[E]``: the ``budget`` experts with the highest scores.

    Experts in ``used_E`` (bool ``[E]``, picked by some token) rank before all
    others, so a budget that covers every used expert changes nothing; where it
    exceeds them, only the used experts are kept (no spare slot goes to an expert
    no token picked, which re-routed padded rows would read). Ties go to the
    lower expert id. ``budget`` may be a 0-d tensor (a per-layer budget computed
    on device); the mask's size then varies, its shape never.
    """
    if not isinstance(budget, torch.Tensor):
        try:
            value = -1 if isinstance(budget, bool) else operator.index(budget)
        except TypeError:
            value = -1
        if value < 0:
            raise ValueError(f"budget is {budget!r}; allowed: an integer >= 0 or a 0-d tensor")
        budget = value
    return kept_of_rank(expert_rank_E(scores_E, used_E), budget, used_E)


def kept_of_rank(
    rank_E: torch.Tensor, budget: int | torch.Tensor, used_E: torch.Tensor | None = None
) -> torch.Tensor:
    """bool ``[..., E]``: the kept set of a ranking (:func:`expert_rank_E`): ``rank < budget``,
    and where some expert is used, only used ones (they rank first, so that is ``rank <
    min(budget, used)``). Without a used expert (every row padded), the budget's best by
    score. No host read."""
    keep_E = rank_E < budget
    if used_E is None:
        return keep_E
    used_E = used_E.bool()
    return keep_E & (used_E | ~used_E.any(dim=-1, keepdim=True))


def expert_rank_E(scores_E: torch.Tensor, used_E: torch.Tensor | None = None) -> torch.Tensor:
    """long ``[E]``: how many experts rank ahead of each (used first, then score, then id).

    ``rank < B`` is :func:`select_kept`'s kept set; the smallest budget that keeps a set
    of experts is their largest rank plus one.
    """
    return expert_rank_LE(scores_E, used_E)


def expert_rank_LE(scores_LE: torch.Tensor, used_LE: torch.Tensor | None = None) -> torch.Tensor:
    """long ``[..., E]``: :func:`expert_rank_E` of each row (any leading dims, as L layers).
    A NaN score ranks as ``-inf`` (last, by id): NaN compares false, and would otherwise rank
    ahead of every expert and be kept beyond the budget."""
    if used_LE is not None and used_LE.shape != scores_LE.shape:
        raise ValueError(
            f"used experts have shape {tuple(used_LE.shape)}; expected the scores' "
            f"{tuple(scores_LE.shape)}"
        )
    E = scores_LE.shape[-1]
    ids_E = torch.arange(E, device=scores_LE.device)
    if scores_LE.is_floating_point():  # one op, graph-safe: no host read
        inf = float("inf")
        scores_LE = torch.nan_to_num(scores_LE, nan=-inf, posinf=inf, neginf=-inf)
    s_i, s_j = scores_LE[..., :, None], scores_LE[..., None, :]
    ahead_LEE = (s_j > s_i) | ((s_j == s_i) & (ids_E[None, :] < ids_E[:, None]))
    if used_LE is not None:
        u_i, u_j = used_LE[..., :, None], used_LE[..., None, :]
        ahead_LEE = (u_j & ~u_i) | ((u_j == u_i) & ahead_LEE)
    return ahead_LEE.sum(dim=-1)


def apply_budget(
    record: RoutingRecord,
    budget: int,
    keep_E: torch.Tensor | None = None,
    *,
    mode: Mode = "substitution",
    validate: bool | None = None,
) -> BudgetedTopK:
    """Rewrite the layer's top-k so that at most ``budget`` distinct experts appear.

    Args:
        record: the layer's routing in this verify pass.
        budget: B, at least top-k; ``B >= E`` returns the input unchanged.
        keep_E: bool ``[E]`` experts to keep (at most B of them); by default
            the top-B by router probability summed over valid tokens.
        mode: ``"substitution"``: a token that lost an expert re-takes its
            top-k inside the kept set from its router scores, with weights as
            the model computes them (renormalised or raw gate values).
            ``"truncation"``: a token keeps only its surviving experts
            (renormalised if the model renormalises); one that lost them all
            falls back to its best kept expert. Empty slots repeat a kept
            expert with weight 0, so ids are never -1.
        validate: run value checks (NaN/inf, ids, kept-set size); default:
            only outside ``torch.compile`` and CUDA-graph capture.

    Returns:
        :class:`BudgetedTopK`; rows whose experts all survive are bit-identical
        to the input, and padded rows are re-routed too (so the MoE kernel reads
        only kept experts) though they never count towards the scores; a record's
        masked rows (:attr:`~moe_spec.routing.RoutingRecord.masked_rows`) come back as
        they came.
    """
    check_mode(mode)
    E, K = record.num_experts, record.top_k
    budget = check_budget(budget, K, E)
    if record.masked_rows:
        unmasked, routed_T = without_masked_rows(record)
        budgeted = apply_budget(unmasked, budget, keep_E, mode=mode, validate=validate)
        return with_masked_rows(budgeted, record, routed_T)
    ids_TK, weights_TK = record.topk_ids_TK, record.topk_weights_TK
    if budget >= E:
        keep_all_E = torch.ones(E, dtype=torch.bool, device=ids_TK.device)
        return BudgetedTopK(ids_TK, weights_TK, keep_all_E)
    validating = validation_enabled(ids_TK, validate)
    if validating:
        check_values(record)
    if keep_E is None:
        keep_E = select_kept(record.router_mass_E(), budget, record.used_E())
    check_keep_shape(keep_E, E)
    if validating:
        check_keep_size(keep_E, budget)
    return reroute(record, keep_E, mode)


def without_masked_rows(record: RoutingRecord) -> tuple[RoutingRecord, torch.Tensor | None]:
    """``(record, routed_T)``: a record with :attr:`~moe_spec.routing.RoutingRecord.masked_rows`
    as every policy may read it (its masked rows invalid, their ids clamped to 0), and the
    bool ``[T]`` rows not masked (:func:`with_masked_rows` hands the others back); an
    unmasked record as it is, and None."""
    if not record.masked_rows:
        return record, None
    ids_TK = record.topk_ids_TK
    routed_T = (ids_TK >= 0).all(dim=1)
    valid_T = routed_T if record.valid_T is None else routed_T & record.valid_T
    unmasked = replace(record, topk_ids_TK=ids_TK.clamp(min=0), valid_T=valid_T, masked_rows=False)
    return unmasked, routed_T


def with_masked_rows(
    budgeted: BudgetedTopK, record: RoutingRecord, routed_T: torch.Tensor | None
) -> BudgetedTopK:
    """``budgeted`` (of :func:`without_masked_rows`' record) with ``record``'s masked rows
    (``routed_T`` False) as they came, in its dtypes; ``routed_T`` None (a record without
    masked rows): ``budgeted`` as it is."""
    if routed_T is None:
        return budgeted
    ids_TK, weights_TK = record.topk_ids_TK, record.topk_weights_TK
    routed_T1 = routed_T[:, None]
    return BudgetedTopK(
        torch.where(routed_T1, budgeted.topk_ids_TK.to(ids_TK.dtype), ids_TK),
        torch.where(routed_T1, budgeted.topk_weights_TK.to(weights_TK.dtype), weights_TK),
        budgeted.keep_E,
    )


def reroute(record: RoutingRecord, keep_E: torch.Tensor, mode: Mode) -> BudgetedTopK:
    """:func:`apply_budget`'s rewrite for a checked kept set ``keep_E`` (bool ``[E]``), at
    any size up to E (an adaptive policy's per-layer budget may reach E); no checks."""
    ids_TK, weights_TK = record.topk_ids_TK, record.topk_weights_TK
    kept_TK = keep_E[ids_TK.long()]
    affected_T = ~kept_TK.all(dim=-1)
    choice_TE = kept_choice_TE(record, keep_E)
    best_kept_T = choice_TE.argmax(dim=-1)  # first maximum: lower id wins ties
    if mode == "substitution":
        new_ids_TK, new_weights_TK = substitute(record, keep_E, choice_TE, best_kept_T)
    else:
        new_ids_TK, new_weights_TK = truncate(record, keep_E, kept_TK, best_kept_T)
    new_weights_TK = torch.nan_to_num(new_weights_TK, nan=0.0)  # rows of NaN logits (padding)
    return BudgetedTopK(
        torch.where(affected_T[:, None], new_ids_TK.to(ids_TK.dtype), ids_TK),
        torch.where(affected_T[:, None], new_weights_TK.to(weights_TK.dtype), weights_TK),
        keep_E,
    )


def kept_choice_TE(record: RoutingRecord, keep_E: torch.Tensor) -> torch.Tensor:
    """fp32 ``[T, E]``: choice scores inside the kept set, ``-inf`` outside it.

    Non-finite scores of kept experts (a padded row may hold anything) become
    finite, so every row's best choices are kept experts whatever it holds.
    """
    big = torch.finfo(torch.float32).max
    choice_TE = torch.nan_to_num(record.choice_scores_TE(), nan=-big, posinf=big, neginf=-big)
    return choice_TE.masked_fill(~keep_E, float("-inf"))


def substitute(
    record: RoutingRecord, keep_E: torch.Tensor, choice_TE: torch.Tensor, best_kept_T: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's top-k among kept experts (``choice_TE`` is -inf outside them)."""
    K = record.top_k
    if record.scoring == "sparsemixer":  # the model's own rule, on the kept experts
        eps = record.sparsemixer_eps
        weights_TK, ids_TK = sparsemixer_topk(record.router_logits_TE, K, eps, keep_E)
        slot_ok_TK = torch.arange(K, device=ids_TK.device)[None, :] < keep_E.sum()
        weights_TK = torch.where(slot_ok_TK, weights_TK, 0.0)
        return torch.where(slot_ok_TK, ids_TK, best_kept_T[:, None]), weights_TK
    order_TE = torch.sort(choice_TE, dim=-1, descending=True, stable=True).indices
    ids_TK = order_TE[:, :K]
    # A kept set smaller than K (a policy's choice) leaves slots with no expert.
    slot_ok_TK = torch.arange(K, device=ids_TK.device)[None, :] < keep_E.sum()
    weights_TK = record.gate_weights_TE().gather(1, ids_TK) * slot_ok_TK
    if record.renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    ids_TK = torch.where(slot_ok_TK, ids_TK, best_kept_T[:, None])
    return ids_TK, weights_TK


def truncate(
    record: RoutingRecord, keep_E: torch.Tensor, kept_TK: torch.Tensor, best_kept_T: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Each token's surviving experts; all lost: its best kept expert alone."""
    weights_TK = torch.where(kept_TK, record.topk_weights_TK.float(), 0.0)
    lost_all_T = ~kept_TK.any(dim=-1)
    if record.scoring == "sparsemixer":  # its weight as the model's first pick among the kept
        fallback_T = sparsemixer_topk(record.router_logits_TE, 1, record.sparsemixer_eps, keep_E)[
            0
        ][:, 0]
    else:
        fallback_T = record.gate_weights_TE().gather(1, best_kept_T[:, None])[:, 0]
    first_slot_TK = torch.zeros_like(kept_TK)
    first_slot_TK[:, 0] = True
    weights_TK = torch.where(lost_all_T[:, None] & first_slot_TK, fallback_T[:, None], weights_TK)
    if record.renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True).clamp_min(1e-20)
    ids_TK = torch.where(kept_TK, record.topk_ids_TK.long(), best_kept_T[:, None])
    return ids_TK, weights_TK


def check_keep_shape(keep_E: torch.Tensor, num_experts: int) -> None:
    if tuple(keep_E.shape) != (num_experts,) or keep_E.dtype != torch.bool:
        raise ValueError(
            f"keep_E must be a bool mask of shape [E={num_experts}], "
            f"got {keep_E.dtype} {tuple(keep_E.shape)}"
        )


def check_keep_size(keep_E: torch.Tensor, budget: int) -> None:
    kept = int(keep_E.sum())
    if not 1 <= kept <= budget:
        raise ValueError(f"keep_E keeps {kept} experts; allowed: 1 to budget B={budget}")
