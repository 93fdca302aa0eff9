"""Masked rows (a negative id, as SGLang marks rows it does not route) on every path.

The reference drops the masked rows: what the others select must not change, and the
masked rows must come back as they came. The kernel (interpreted) skips them itself; the
torch core and a policy's torch path work on the record without them.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moe_spec import get_policy
from moe_spec.budget import apply_budget
from moe_spec.kernels.budget_select_torch import ScoreRule, select_budget_torch
from moe_spec.kernels.budget_select_triton import select_budget_triton
from moe_spec.routing import RoutingRecord
from tests.conftest import make_record

MODES = ["substitution", "truncation"]
MASKED = [2, 5, 6]  # whole rows of -1, as SGLang writes them
PARTLY = 9  # one slot of -1: masked too


def served_record(seed: int, scoring: str = "softmax", T: int = 13, E: int = 16, K: int = 4):
    """A tree's routing with SGLang's masked rows, whose logits shout for experts 12-15 (a
    masked row that counted would pull them in); the root (depth 0) masked too."""
    g = torch.Generator().manual_seed(seed)
    logits_TE = torch.randn(T, E, generator=g)
    depth_T = torch.tensor([0, 1, 0, 1, 2, 2, 3, 3, 3, 2, 1, 2, 3][:T])
    record = make_record(
        logits_TE, K, depth_T=depth_T, valid_T=torch.arange(T) < T - 1, scoring=scoring
    )
    rows = torch.tensor(MASKED)
    logits_TE = logits_TE.clone()
    logits_TE[rows, 12:] += 20.0
    ids_TK = record.topk_ids_TK.clone()
    ids_TK[rows] = -1
    ids_TK[PARTLY, 1] = -1
    return replace(record, router_logits_TE=logits_TE, topk_ids_TK=ids_TK, masked_rows=True)


def routed_T(record: RoutingRecord) -> torch.Tensor:
    return (record.topk_ids_TK >= 0).all(dim=1)


def dropped(record: RoutingRecord) -> RoutingRecord:
    """The reference's record: the masked rows gone."""
    keep = routed_T(record)
    return RoutingRecord(
        record.router_logits_TE[keep],
        record.topk_ids_TK[keep],
        record.topk_weights_TK[keep],
        record.valid_mask_T()[keep],
        depth_T=record.depth_T[keep],
        scoring=record.scoring,
        renormalize=record.renormalize,
    )


def assert_as_without(got, record: RoutingRecord, want) -> None:
    """``got`` (of ``record``) equals ``want`` (of :func:`dropped`) on the routed rows and
    holds the masked rows as they came."""
    keep = routed_T(record)
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK[keep], want.topk_ids_TK)
    torch.testing.assert_close(got.topk_weights_TK[keep], want.topk_weights_TK)
    assert torch.equal(got.topk_ids_TK[~keep], record.topk_ids_TK[~keep])
    assert torch.equal(got.topk_weights_TK[~keep], record.topk_weights_TK[~keep])
    assert got.topk_ids_TK.dtype == record.topk_ids_TK.dtype


def rules(record: RoutingRecord) -> list[ScoreRule]:
    """Rules, one with roots that get no bonus: masked ones (wholly, partly) and a padded one."""
    T = record.num_tokens
    weight_T = torch.rand(T, generator=torch.Generator().manual_seed(3))
    root_T = (record.depth_T == 0) | (torch.arange(T) == PARTLY) | (torch.arange(T) == T - 1)
    return [ScoreRule("frequency"), ScoreRule("mass"), ScoreRule("mass", weight_T, root_T)]


def dropped_rule(rule: ScoreRule, record: RoutingRecord) -> ScoreRule:
    """The reference's rule: the masked rows gone, the roots restricted to the valid rows."""
    keep = routed_T(record)
    weight_T = None if rule.weight_T is None else rule.weight_T[keep]
    root_T = None if rule.root_T is None else (rule.root_T & record.valid_mask_T())[keep]
    return ScoreRule(rule.kind, weight_T, root_T)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
@pytest.mark.parametrize("select", [select_budget_triton, select_budget_torch])
def test_the_selection_skips_masked_rows_and_hands_them_back(select, scoring, mode):
    record = served_record(0, scoring)
    for rule in rules(record):
        for budget in (4, 6, 9):
            got, got_scores_E = select(record, budget, rule, mode)
            want, want_scores_E = select_budget_torch(
                dropped(record), budget, dropped_rule(rule, record), mode
            )
            assert_as_without(got, record, want)
            torch.testing.assert_close(got_scores_E, want_scores_E)


@pytest.mark.parametrize("mode", MODES)
def test_apply_budget_hands_masked_rows_back(mode):
    record = served_record(1)
    keep_E = torch.zeros(16, dtype=torch.bool)
    keep_E[[0, 3, 5, 8, 9, 11]] = True
    got = apply_budget(record, 6, keep_E, mode=mode, validate=True)
    assert_as_without(got, record, apply_budget(dropped(record), 6, keep_E, mode=mode))


POLICIES = {"topk-frequency": {}, "router-mass": {}, "token-priority": {}, "layer-adaptive": {}}


@pytest.mark.parametrize("kernels", ["torch", "triton"])
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_policies_never_see_masked_rows(name, kernels, monkeypatch):
    monkeypatch.setenv("MOE_SPEC_KERNELS", kernels)
    record = served_record(2)
    seen: list[torch.Tensor] = []
    policy = get_policy(name, **POLICIES[name])
    keep = policy.keep
    policy.keep = lambda r, budget: seen.append(r.topk_ids_TK) or keep(r, budget)
    got = policy.apply(record, 6)
    want = get_policy(name, **POLICIES[name]).apply(dropped(record), 6)
    assert_as_without(got, record, want)
    assert all(bool((ids >= 0).all()) for ids in seen)


def test_checks_pass_masked_rows_and_refuse_negative_ids_elsewhere():
    record = served_record(3)
    policy = get_policy("router-mass")
    policy.validate = True
    policy.apply(record, 6)  # masked: no complaint
    with pytest.raises(
        ValueError, match=r"ids must be in \[0, E=16\) \(rows marked .*masked_rows=True"
    ):
        policy.apply(replace(record, masked_rows=False), 6)
    too_big = replace(record, topk_ids_TK=record.topk_ids_TK.clamp(min=0) + 16, masked_rows=False)
    with pytest.raises(ValueError, match=r"ids must be in \[0, E=16\)$"):  # no such hint
        policy.apply(too_big, 6)
