"""Padded rows never reach the scores and never break the budget, whatever they hold.

A CUDA-graph batch pads the verify pass with rows whose router logits are
whatever the buffer held: NaN, inf or stale values. Invalid rows must be left
out by selection (``NaN * 0`` is NaN), and the rewrite must keep even them
inside the kept set, with value checks off (as under compile or CUDA graphs).
"""

from __future__ import annotations

import pytest
import torch

from moe_spec import RoutingRecord, apply_budget, get_policy
from moe_spec.kernels.budget_select_torch import ScoreRule, select_budget_torch
from moe_spec.kernels.budget_select_triton import select_budget_triton
from moe_spec.routing import used_experts_E
from tests.conftest import BUILTIN_NAMES, make_record

E, K, B = 16, 2, 8
GARBAGE = {"nan": float("nan"), "inf": float("inf"), "-inf": float("-inf"), "huge": 3e38}


def padded_record(fill: float, scoring: str = "softmax") -> tuple[RoutingRecord, RoutingRecord]:
    """``(record with garbage in its padded rows, the same record with clean padded rows)``."""
    g = torch.Generator().manual_seed(0)
    logits_TE = torch.randn(12, E, generator=g) * 3
    valid_T = torch.ones(12, dtype=torch.bool)
    valid_T[8:] = False
    clean = make_record(
        logits_TE, K, valid_T=valid_T, scoring=scoring, depth_T=torch.arange(12) // 3
    )
    dirty_TE = logits_TE.clone()
    dirty_TE[8:] = fill
    dirty_TE[9, ::2] = 0.5  # a row that is only partly garbage
    # The padded rows' own top-k: whatever a kernel makes of the garbage, spread over experts
    # no valid row picked, so that keeping them would break the budget.
    ids_TK = clean.topk_ids_TK.clone()
    ids_TK[8:] = torch.tensor([[E - 1, E - 2], [E - 3, E - 4], [E - 5, E - 6], [E - 7, E - 8]])
    weights_TK = clean.topk_weights_TK.clone()
    weights_TK[8:] = fill if fill == fill else float("nan")
    dirty = RoutingRecord(
        dirty_TE, ids_TK, weights_TK, valid_T=valid_T, depth_T=clean.depth_T, scoring=scoring
    )
    return dirty, clean


@pytest.mark.parametrize("fill", GARBAGE)
@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES if n != "none"])
@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_garbage_in_padded_rows_changes_nothing_and_the_budget_holds(fill, name, mode):
    dirty, clean = padded_record(GARBAGE[fill])
    policy = get_policy(name)
    policy.validate = False  # as under torch.compile or CUDA-graph capture
    got = policy.apply(dirty, B, mode=mode)
    want = policy.apply(clean, B, mode=mode)
    assert torch.equal(got.keep_E, want.keep_E)
    valid_T = dirty.valid_mask_T()
    assert torch.equal(got.topk_ids_TK[valid_T], want.topk_ids_TK[valid_T])
    assert torch.equal(got.topk_weights_TK[valid_T], want.topk_weights_TK[valid_T])
    assert int(used_experts_E(got.topk_ids_TK, E).sum()) <= B  # padded rows included
    assert bool(got.keep_E[got.topk_ids_TK].all())
    rewritten_T = (got.topk_ids_TK != dirty.topk_ids_TK).any(dim=-1)
    assert not bool(got.topk_weights_TK[rewritten_T].isnan().any())  # untouched rows stay bitwise


@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES if n != "none"])
def test_eager_checks_do_not_blame_the_policy_for_padded_rows(name):
    dirty, clean = padded_record(float("nan"))
    got = get_policy(name).apply(dirty, B)  # validation on: must not raise
    assert torch.equal(got.keep_E, get_policy(name).apply(clean, B).keep_E)


def test_router_mass_and_weighted_frequency_ignore_padded_rows():
    dirty, clean = padded_record(float("nan"), scoring="sigmoid")
    weight_T = torch.full((12,), 0.5)
    weight_T[8:] = float("nan")  # e.g. exp() of a padded row's path log-probability
    assert torch.equal(dirty.router_mass_E(weight_T), clean.router_mass_E(weight_T.nan_to_num()))
    assert not bool(dirty.router_mass_E().isnan().any())
    for kind in ("mass", "frequency"):
        rule = ScoreRule(kind, weight_T)
        got, scores_E = select_budget_torch(dirty, B, rule)
        assert not bool(scores_E.isnan().any()), kind
        assert int(used_experts_E(got.topk_ids_TK, E).sum()) <= B, kind


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize("fill", ["nan", "inf"])
def test_triton_kernel_matches_torch_on_garbage_padded_rows(mode, fill):
    dirty, _ = padded_record(GARBAGE[fill])
    rule = ScoreRule("mass", torch.pow(0.5, dirty.depth_T.float()), dirty.depth_T == 0)
    got, got_scores_E = select_budget_triton(dirty, B, rule, mode)
    want, want_scores_E = select_budget_torch(dirty, B, rule, mode)
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    torch.testing.assert_close(
        got.topk_weights_TK, want.topk_weights_TK, atol=1e-6, rtol=1e-6, equal_nan=True
    )
    torch.testing.assert_close(got_scores_E, want_scores_E)
    assert int(used_experts_E(got.topk_ids_TK, E).sum()) <= B


def few_valid_experts() -> RoutingRecord:
    """Two valid rows picking 3 experts between them, and four padded rows picking others."""
    logits_TE = torch.randn(6, E, generator=torch.Generator().manual_seed(3))
    ids_TK = torch.tensor([[0, 1], [1, 2], [9, 10], [11, 12], [13, 14], [15, 3]])
    weights_TK = torch.full((6, K), 0.5)
    valid_T = torch.tensor([True, True, False, False, False, False])
    return RoutingRecord(logits_TE, ids_TK, weights_TK, valid_T=valid_T, depth_T=torch.zeros(6))


@pytest.mark.parametrize("name", [n for n in BUILTIN_NAMES if n != "none"])
@pytest.mark.parametrize("budget", [4, 8, 15])
def test_a_budget_past_the_valid_rows_experts_lets_padded_rows_read_only_those(name, budget):
    """B above the experts real tokens picked: no spare kept slot goes to an unpicked expert
    (re-routed padded rows would read it: B 4/8/16 read 4/7/11 experts before the fix)."""
    record = few_valid_experts()
    out = get_policy(name).apply(record, budget)
    assert out.keep_E.nonzero().flatten().tolist() == [0, 1, 2]
    assert used_experts_E(out.topk_ids_TK, E).nonzero().flatten().tolist() == [0, 1, 2]
    assert torch.equal(out.topk_ids_TK[:2], record.topk_ids_TK[:2])  # nothing lost


@pytest.mark.parametrize("kind", ["mass", "frequency"])
def test_the_triton_kernel_keeps_no_spare_experts_either(kind):
    record = few_valid_experts()
    got, _ = select_budget_triton(record, 8, ScoreRule(kind))
    want, _ = select_budget_torch(record, 8, ScoreRule(kind))
    assert got.keep_E.nonzero().flatten().tolist() == [0, 1, 2]
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)


def test_apply_budget_with_checks_off_holds_the_budget_on_nan_padding():
    dirty, _ = padded_record(float("nan"))
    out = apply_budget(dirty, B, validate=False)
    assert int(used_experts_E(out.topk_ids_TK, E).sum()) <= B


@pytest.mark.parametrize("dtype", [torch.int64, torch.int32, torch.bool])
def test_integer_topk_weights_are_refused(dtype):
    record = make_record(torch.randn(4, E), K)
    with pytest.raises(ValueError, match="topk_weights_TK must be floating point"):
        RoutingRecord(record.router_logits_TE, record.topk_ids_TK, record.topk_weights_TK.to(dtype))
