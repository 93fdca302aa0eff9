"""apply_budget and select_kept on hand-made routing, and every bad input they refuse."""

from __future__ import annotations

import math

import pytest
import torch

from moe_spec import RoutingRecord, apply_budget, select_kept
from moe_spec.budget import expert_rank_E
from tests.conftest import make_record

# Token 0 prefers experts 0 > 1 > 2 > 3, token 1 the reverse.
PROBS_TE = torch.tensor([[0.4, 0.3, 0.2, 0.1], [0.1, 0.2, 0.3, 0.4]])
LOGITS_TE = PROBS_TE.log()


def mask(*experts: int, E: int = 4) -> torch.Tensor:
    keep_E = torch.zeros(E, dtype=torch.bool)
    keep_E[list(experts)] = True
    return keep_E


@pytest.mark.parametrize(
    "mode, renormalize, keep, want_ids, want_weights",
    [
        # Token 1 (top-2 = [3, 2]) loses expert 3 and re-takes its best two kept: 2, 1.
        ("substitution", True, (0, 1, 2), [2, 1], [0.6, 0.4]),
        ("substitution", False, (0, 1, 2), [2, 1], [0.3, 0.2]),
        # Truncation keeps expert 2; the empty slot repeats it with weight 0.
        ("truncation", True, (0, 1, 2), [2, 2], [0.0, 1.0]),
        ("truncation", False, (0, 1, 2), [2, 2], [0.0, 0.3]),
        # Token 1 loses both: it falls back to its best kept expert, 1.
        ("truncation", True, (0, 1), [1, 1], [1.0, 0.0]),
        ("truncation", False, (0, 1), [1, 1], [0.2, 0.0]),
        ("substitution", True, (0, 1), [1, 0], [2 / 3, 1 / 3]),
    ],
)
def test_rewrites_only_tokens_that_lost_an_expert(mode, renormalize, keep, want_ids, want_weights):
    record = make_record(LOGITS_TE, 2, renormalize=renormalize)
    assert record.topk_ids_TK.tolist() == [[0, 1], [3, 2]]
    out = apply_budget(record, len(keep), mask(*keep), mode=mode)
    assert torch.equal(out.topk_ids_TK[0], record.topk_ids_TK[0])
    assert torch.equal(out.topk_weights_TK[0], record.topk_weights_TK[0])  # bit for bit
    assert out.topk_ids_TK[1].tolist() == want_ids
    torch.testing.assert_close(out.topk_weights_TK[1], torch.tensor(want_weights))


def test_default_keeps_top_b_by_router_mass():
    # Summed probability: [0.5, 0.5, 0.5, 0.5] ties everywhere, so the lower ids win;
    # but expert 3 carries token 1's largest weight... ties still go to the lower id.
    record = make_record(LOGITS_TE, 2)
    out = apply_budget(record, 3)
    assert out.keep_E.tolist() == [True, True, True, False]
    heavy = make_record(torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3, 0.4]]).log(), 2)
    assert apply_budget(heavy, 2).keep_E.tolist() == [False, False, True, True]


def test_sigmoid_router_chooses_by_biased_score_and_weights_by_gate():
    logits_TE = torch.zeros(1, 4)  # every gate is sigmoid(0) = 0.5
    bias_E = torch.tensor([0.0, 0.1, 0.2, 0.3])
    record = make_record(logits_TE, 2, scoring="sigmoid", correction_bias_E=bias_E)
    assert record.topk_ids_TK.tolist() == [[3, 2]]
    out = apply_budget(record, 2, mask(0, 1))
    assert out.topk_ids_TK.tolist() == [[1, 0]]  # bias decides the order
    assert out.topk_weights_TK.tolist() == [[0.5, 0.5]]  # gates decide the weights


def test_ties_break_towards_the_lower_expert_id():
    record = make_record(torch.zeros(3, 6), 2)
    assert record.topk_ids_TK.tolist() == [[0, 1]] * 3
    out = apply_budget(record, 2, mask(5, 3, E=6))
    assert out.topk_ids_TK.tolist() == [[3, 5]] * 3
    assert select_kept(torch.ones(6), 3).tolist() == [True, True, True, False, False, False]


def test_select_kept_prefers_used_experts_and_takes_a_tensor_budget():
    scores_E = torch.tensor([5.0, 4.0, 3.0, 2.0])
    used_E = torch.tensor([False, True, False, True])
    assert select_kept(scores_E, 2, used_E).tolist() == [False, True, False, True]
    # past the used experts no spare slot goes to an unpicked one (re-routed padded rows
    # would read it): the kept set stops at the used experts
    assert select_kept(scores_E, 3, used_E).tolist() == [False, True, False, True]
    assert select_kept(scores_E, torch.tensor(4), used_E).tolist() == [False, True, False, True]
    assert expert_rank_E(scores_E, used_E).tolist() == [2, 0, 3, 1]
    # no used expert (every row padded): the budget's best by score
    assert select_kept(scores_E, 3, torch.zeros(4, dtype=torch.bool)).tolist() == [
        True,
        True,
        True,
        False,
    ]
    assert select_kept(scores_E, torch.tensor(1)).tolist() == [True, False, False, False]


def test_a_nan_score_ranks_last_so_the_budget_holds():
    """NaN compares false: unhandled it would rank ahead of all and be kept beyond B (on a
    server, where policies' values go unchecked, a plugin's 0/0 would widen the budget)."""
    nan = math.nan
    scores_E = torch.tensor([0.1, 0.5, nan, 0.3, 0.2, 0.9])
    assert select_kept(scores_E, 2).nonzero().flatten().tolist() == [1, 5]
    assert select_kept(scores_E, 6).all()  # still kept once the budget reaches it
    assert select_kept(torch.full((6,), nan), 2).nonzero().flatten().tolist() == [0, 1]
    used_E = torch.tensor([False, False, True, False, False, False])
    assert expert_rank_E(scores_E, used_E)[[2, 5]].tolist() == [0, 1]  # used first
    assert select_kept(scores_E, 2, used_E).nonzero().flatten().tolist() == [2]  # only used


@pytest.mark.parametrize("budget", [2.5, -1, True, "3"])
def test_select_kept_refuses_a_budget_that_is_not_a_count(budget):
    with pytest.raises(ValueError, match=rf"budget is {budget!r}; allowed: an integer >= 0"):
        select_kept(torch.rand(6), budget)
    with pytest.raises(ValueError, match=r"used experts have shape \(5,\); expected .*\(6,\)"):
        select_kept(torch.rand(6), 2, torch.ones(5, dtype=torch.bool))


def test_kept_set_smaller_than_top_k_repeats_an_expert_with_zero_weight():
    record = make_record(LOGITS_TE, 2)
    out = apply_budget(record, 2, mask(2), mode="substitution")
    assert out.topk_ids_TK.tolist() == [[2, 2], [2, 2]]
    assert out.topk_weights_TK.tolist() == [[1.0, 0.0], [1.0, 0.0]]


def test_budget_at_least_e_returns_the_input_objects():
    record = make_record(torch.randn(5, 8), 2)
    for budget in (8, 9, 1000):
        out = apply_budget(record, budget, mask(0, 1, E=8))
        assert out.topk_ids_TK is record.topk_ids_TK
        assert out.topk_weights_TK is record.topk_weights_TK
        assert bool(out.keep_E.all())


def test_padded_rows_do_not_score_but_are_rerouted():
    logits_TE = torch.tensor([[4.0, 3.0, 0.0, 0.0], [0.0, 0.0, 9.0, 9.0]])
    record = make_record(logits_TE, 2, valid_T=torch.tensor([True, False]))
    out = apply_budget(record, 2)
    assert out.keep_E.tolist() == [True, True, False, False]  # padded row's 9s ignored
    assert set(out.topk_ids_TK.flatten().tolist()) <= {0, 1}  # ... and it reads no dropped expert


def test_nan_in_padded_rows_is_ignored():
    logits_TE = torch.tensor([[1.0, 0.5, 0.0, -1.0], [math.nan] * 4])
    ids_TK = torch.tensor([[0, 1], [0, 0]])
    record = RoutingRecord(logits_TE, ids_TK, torch.ones(2, 2), valid_T=torch.tensor([True, False]))
    out = apply_budget(record, 2)
    assert out.keep_E.tolist() == [True, True, False, False]


def test_ids_keep_their_integer_dtype_and_weights_their_float_dtype():
    ids_TK, weights_TK = (
        make_record(LOGITS_TE, 2).topk_ids_TK,
        make_record(LOGITS_TE, 2).topk_weights_TK,
    )
    record = RoutingRecord(LOGITS_TE, ids_TK.int(), weights_TK.half())
    out = apply_budget(record, 2)
    assert out.topk_ids_TK.dtype == torch.int32 and out.topk_weights_TK.dtype == torch.float16


@pytest.mark.parametrize(
    "budget, message",
    [
        (1, r"budget B=1 is below top-k=2.*allowed: B >= 2"),
        (0, r"budget B=0 is below top-k=2"),
        (-3, r"budget B=-3"),
        (2.5, r"budget must be an integer, got 2.5"),
        ("3", r"budget must be an integer, got '3'"),
        (True, r"budget must be a Python integer"),
        (torch.tensor(3), r"budget must be a Python integer"),
    ],
)
def test_bad_budgets_name_the_value_and_the_allowed_range(budget, message):
    with pytest.raises(ValueError, match=message):
        apply_budget(make_record(LOGITS_TE, 2), budget)


def test_bad_mode_lists_the_modes():
    with pytest.raises(ValueError, match=r"'drop'; allowed: substitution, truncation"):
        apply_budget(make_record(LOGITS_TE, 2), 3, mode="drop")


@pytest.mark.parametrize(
    "field, value, message",
    [
        ("router_logits_TE", torch.zeros(4), r"must be 2-D \[T, E\], got shape \(4,\)"),
        ("router_logits_TE", torch.zeros(2, 4, dtype=torch.long), r"floating point"),
        ("topk_ids_TK", torch.zeros(3, 2, dtype=torch.long), r"topk_ids_TK must be \[T=2, K\]"),
        ("topk_ids_TK", torch.zeros(2, 2), r"integer tensor"),
        (
            "topk_ids_TK",
            torch.zeros(2, 5, dtype=torch.long),
            r"top-k is 5; it must be in \[1, E=4\]",
        ),
        ("topk_weights_TK", torch.zeros(2, 3), r"shape of topk_ids_TK \(2, 2\), got \(2, 3\)"),
        ("valid_T", torch.ones(2), r"valid_T must be a bool tensor"),
        ("depth_T", torch.zeros(3), r"depth_T must have shape \[T=2\], got \(3,\)"),
        ("scoring", "relu", r"scoring is 'relu'; allowed: softmax, sigmoid"),
        ("layer_idx", 4, r"layer_idx is 4; it must be in \[0, num_layers=1\)"),
        ("correction_bias_E", torch.zeros(4), r"only used by sigmoid routers"),
    ],
)
def test_malformed_records_are_refused_on_construction(field, value, message):
    fields = dict(
        router_logits_TE=LOGITS_TE,
        topk_ids_TK=torch.tensor([[0, 1], [3, 2]]),
        topk_weights_TK=torch.ones(2, 2),
    )
    fields[field] = value
    with pytest.raises(ValueError, match=message):
        RoutingRecord(**fields)


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_router_logits_are_refused(bad):
    logits_TE = LOGITS_TE.clone()
    logits_TE[1, 2] = bad
    record = RoutingRecord(logits_TE, torch.tensor([[0, 1], [3, 2]]), torch.ones(2, 2))
    with pytest.raises(ValueError, match=rf"valid row 1, the first {bad} at expert 2; scores"):
        apply_budget(record, 2)
    apply_budget(record, 2, validate=False)  # the hot path may opt out: no exception


def test_out_of_range_ids_are_refused():
    record = RoutingRecord(LOGITS_TE, torch.tensor([[0, 1], [4, 2]]), torch.ones(2, 2))
    with pytest.raises(
        ValueError, match=r"topk_ids_TK row 1 is \[4, 2\]; ids must be in \[0, E=4\)"
    ):
        apply_budget(record, 2)


def test_bad_keep_masks_are_refused():
    record = make_record(LOGITS_TE, 2)
    with pytest.raises(ValueError, match=r"bool mask of shape \[E=4\]"):
        apply_budget(record, 2, torch.ones(4))
    with pytest.raises(ValueError, match=r"keeps 3 experts; allowed: 1 to budget B=2"):
        apply_budget(record, 2, mask(0, 1, 2))
    with pytest.raises(ValueError, match=r"keeps 0 experts"):
        apply_budget(record, 2, mask())
