"""Budget selection in plain torch: the reference the Triton kernel must equal.

Shape legend: T tokens, E experts, K top-k, B budget (see ``moe_spec.routing``).

A :class:`ScoreRule` names what a built-in policy scores experts by, in the
form the fused kernel computes it: ``score[e] = sum_t v[t] * a[t] * x[t, e]``
with ``x`` the top-k hit (``"frequency"``) or the routing probability
(``"mass"``), ``a`` an optional per-token weight, plus a bonus above every
other score for the experts of optional ``root_T`` rows. The reference below is
exactly what the policies do on CPU: the record's own score helpers, then
:func:`moe_spec.budget.select_kept` and :func:`moe_spec.budget.apply_budget`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from moe_spec.budget import (
    BudgetedTopK,
    Mode,
    apply_budget,
    expert_rank_LE,
    select_kept,
    with_masked_rows,
    without_masked_rows,
)
from moe_spec.routing import RoutingRecord

#: Values of a selection's device rest flag (``rest_1``): rank and budget; keep every
#: expert and read no row; keep every expert but write the scores and used mask, to be
#: ranked after the forward (:func:`~moe_spec.kernels.budget_select_triton.rank_scored_triton`).
RANK, REST, REST_SCORED = 0, 1, 2

ScoreKind = Literal["frequency", "mass"]
SCORE_KINDS: tuple[str, ...] = ("frequency", "mass")


@dataclass(frozen=True)
class ScoreRule:
    """How to score experts: ``sum_t v[t] * a[t] * x[t, e]`` (+ root bonus).

    Attributes:
        kind: ``"frequency"`` (x = 1 if e in topk(t)) or ``"mass"`` (x = p[t, e]).
        weight_T: optional per-token weight ``a[t]`` (float ``[T]``).
        root_T: optional bool ``[T]``: experts in the top-k of these rows, the valid
            ones, rank above all others.
    """

    kind: ScoreKind
    weight_T: torch.Tensor | None = None
    root_T: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.kind not in SCORE_KINDS:
            raise ValueError(f"score kind is {self.kind!r}; allowed: {', '.join(SCORE_KINDS)}")


def score_experts_torch(record: RoutingRecord, rule: ScoreRule) -> torch.Tensor:
    """fp32 ``[E]``: the rule's expert scores (the built-in policies' ``score``)."""
    if rule.kind == "mass":
        score_E = record.router_mass_E(rule.weight_T)
    else:
        hits_TE = record.topk_hits_TE() & record.valid_mask_T()[:, None]
        if rule.weight_T is None:
            score_E = hits_TE.sum(dim=0).float()
        else:
            score_E = torch.where(hits_TE, rule.weight_T.float()[:, None], 0.0).sum(dim=0)
    if rule.root_T is not None:
        root_T = rule.root_T & record.valid_mask_T()
        root_E = (record.topk_hits_TE() & root_T[:, None]).any(dim=0)
        score_E = score_E + root_E * (score_E.sum() + 1.0)
    return score_E


def score_layers_torch(
    records: Sequence[RoutingRecord], rule: ScoreRule, hits_LTE: torch.Tensor | None = None
) -> torch.Tensor:
    """fp32 ``[L, E]``: :func:`score_experts_torch` of each of one forward's layers (the
    same tokens, so one rule) in batched ops where the layers route alike (a ``"mass"``
    rule over softmax routers of one shape; otherwise layer by layer): the ranking of a
    step that ran without it, made after the forward (``moe_spec.policies.auto``).
    ``hits_LTE``: :func:`topk_hits_LTE` of the records, where the caller has it."""
    first = records[0]
    shape = first.router_logits_TE.shape
    alike = all(r.scoring != "sigmoid" and r.router_logits_TE.shape == shape for r in records)
    if rule.kind != "mass" or not alike:
        return torch.stack([score_experts_torch(r, rule) for r in records])
    mass_LTE = torch.softmax(torch.stack([r.router_logits_TE for r in records]).float(), dim=-1)
    if rule.weight_T is not None:
        mass_LTE = mass_LTE * rule.weight_T.float()[:, None]
    score_LE = torch.where(first.valid_mask_T()[:, None], mass_LTE, 0.0).sum(dim=1)
    if rule.root_T is not None:
        hits_LTE = topk_hits_LTE(records) if hits_LTE is None else hits_LTE
        root_T = rule.root_T & first.valid_mask_T()
        root_LE = (hits_LTE & root_T[:, None]).any(dim=1)
        score_LE = score_LE + root_LE * (score_LE.sum(dim=-1, keepdim=True) + 1.0)
    return score_LE


def topk_hits_LTE(records: Sequence[RoutingRecord]) -> torch.Tensor:
    """bool ``[L, T, E]``: :meth:`RoutingRecord.topk_hits_TE` of each layer."""
    ids_LTK = torch.stack([r.topk_ids_TK.long() for r in records])
    L, T, _ = ids_LTK.shape
    hits_LTE = torch.zeros(L, T, records[0].num_experts, dtype=torch.bool, device=ids_LTK.device)
    return hits_LTE.scatter(2, ids_LTK, True)


def rank_layers_LE(records: Sequence[RoutingRecord], rule: ScoreRule) -> torch.Tensor:
    """long ``[L, E]``: :func:`moe_spec.budget.expert_rank_E` of each layer's scores
    (:func:`score_layers_torch`), used experts first, as each layer would have ranked."""
    hits_LTE = topk_hits_LTE(records)
    used_LE = (hits_LTE & records[0].valid_mask_T()[:, None]).any(dim=1)
    return expert_rank_LE(score_layers_torch(records, rule, hits_LTE), used_LE)


def select_budget_torch(
    record: RoutingRecord, budget: int, rule: ScoreRule, mode: Mode = "substitution"
) -> tuple[BudgetedTopK, torch.Tensor]:
    """Score, keep the best ``budget`` (used experts first, lower id on ties), rewrite top-k.

    Returns ``(BudgetedTopK, scores_E)``; a record's masked rows never count and come back
    as they came. No value checks (the caller's policy does them).
    """
    unmasked, routed_T = without_masked_rows(record)
    scores_E = score_experts_torch(unmasked, rule)
    keep_E = select_kept(scores_E, budget, unmasked.used_E())
    budgeted = apply_budget(unmasked, budget, keep_E, mode=mode, validate=False)
    return with_masked_rows(budgeted, record, routed_T), scores_E
