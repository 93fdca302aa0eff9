"""Property-based tests of apply_budget over random shapes, budgets, modes and conventions."""

from __future__ import annotations

import torch
from hypothesis import event, given, settings
from hypothesis import strategies as st

from moe_spec import RoutingRecord, apply_budget, get_policy
from moe_spec.routing import used_experts_E
from tests.conftest import make_record
from tests.loop_reference import reference_apply_budget, reference_keep


@st.composite
def routings(draw, drop: bool = True) -> tuple[RoutingRecord, int, str]:
    """A record as a model would produce it, a budget and a mode.

    With ``drop`` the budget lies below the distinct experts the valid rows use
    whenever they use more than K, so the case re-routes something; otherwise
    (and for one case in 16 either way) it is drawn from [K, E + 2].
    """
    T = draw(st.integers(2, 12))
    E = draw(st.integers(2, 16))
    K = draw(st.integers(1, E - 1))
    scoring = draw(st.sampled_from(["softmax", "sigmoid"]))
    # Small integer logits make exact ties common: the tie rule is exercised.
    ints = draw(st.lists(st.integers(-3, 3), min_size=T * E, max_size=T * E))
    noise = draw(st.sampled_from([0.0, draw(st.floats(0.0, 1.0))]))
    seed = draw(st.integers(0, 2**16))
    logits_TE = torch.tensor(ints, dtype=torch.float32).view(T, E)
    logits_TE = logits_TE + noise * torch.randn(T, E, generator=torch.Generator().manual_seed(seed))
    valid_T = torch.ones(T, dtype=torch.bool)
    if draw(st.booleans()):  # padded rows, at least one row valid
        valid_T = torch.tensor(draw(st.lists(st.booleans(), min_size=T, max_size=T)))
        valid_T[draw(st.integers(0, T - 1))] = True
    bias_E = None
    if scoring == "sigmoid" and draw(st.booleans()):
        bias_E = torch.tensor(draw(st.lists(st.integers(-2, 2), min_size=E, max_size=E))) * 0.1
    record = make_record(
        logits_TE,
        K,
        scoring=scoring,
        renormalize=draw(st.booleans()),
        valid_T=valid_T,
        correction_bias_E=bias_E,
    )
    used = int(record.used_E().sum())
    if drop and used > K and draw(st.integers(0, 15)):
        budget = draw(st.integers(K, used - 1))
    else:
        budget = draw(st.integers(K, E + 2))
    mode = draw(st.sampled_from(["substitution", "truncation"]))
    describe(record, budget, mode)
    return record, budget, mode


def drops_experts(record: RoutingRecord, budget: int) -> bool:
    """Whether the valid rows use more distinct experts than the budget allows."""
    return int(record.used_E().sum()) > budget


def describe(record: RoutingRecord, budget: int, mode: str) -> None:
    """Label the case in Hypothesis' statistics (``pytest --hypothesis-show-statistics``)."""
    event("drops experts" if drops_experts(record, budget) else "drops nothing")
    event(f"mode={mode}")
    event(f"scoring={record.scoring}")
    event("padded rows" if not bool(record.valid_mask_T().all()) else "no padded rows")
    logits_TE = record.router_logits_TE
    ties = int((logits_TE[:, :, None] == logits_TE[:, None, :]).sum()) > logits_TE.numel()
    event("exact ties" if ties else "no ties")


def reference_inputs(record: RoutingRecord):
    """The loop reference's inputs from the record's raw fields, not its score methods:
    ``(mass, used, ids, weights, choice, gates)``, the scores in float32 as the model's are
    (so exact ties fall the same way). :func:`routings` draws softmax and sigmoid routers
    only; a sparsemixer has no reference here."""
    logits_TE = record.router_logits_TE.float()
    if record.scoring == "softmax":
        gates_TE = torch.softmax(logits_TE, dim=-1)
        probs_TE = gates_TE
    elif record.scoring == "sigmoid":  # each token's mass is 1: sigmoids over their row sum
        gates_TE = torch.sigmoid(logits_TE)
        probs_TE = gates_TE / gates_TE.sum(dim=-1, keepdim=True)
    else:
        raise AssertionError(f"no reference for scoring={record.scoring!r}")
    choice_TE = gates_TE  # the bias chooses experts, it does not weight them
    if record.correction_bias_E is not None:
        choice_TE = gates_TE + record.correction_bias_E.float()
    ids = record.topk_ids_TK.tolist()
    T, E = logits_TE.shape
    valid = [True] * T if record.valid_T is None else record.valid_T.tolist()
    mass = (probs_TE * torch.tensor(valid)[:, None]).sum(0).tolist()  # valid rows only
    used = [False] * E
    for row, is_valid in zip(ids, valid, strict=True):
        if is_valid:
            for e in row:
                used[e] = True
    weights = record.topk_weights_TK.tolist()
    return mass, used, ids, weights, choice_TE.tolist(), gates_TE.tolist()


@settings(max_examples=300, deadline=None)
@given(routings())
def test_matches_the_per_token_loop_reference(case):
    record, budget, mode = case
    out = apply_budget(record, budget, mode=mode)
    if budget >= record.num_experts:
        assert out.topk_ids_TK is record.topk_ids_TK
        return
    mass, used, ids, weights, choice, gates = reference_inputs(record)
    keep = reference_keep(mass, used, budget)
    assert out.keep_E.tolist() == keep
    want_ids, want_weights = reference_apply_budget(
        ids, weights, choice, gates, keep, mode, record.renormalize
    )
    assert out.topk_ids_TK.tolist() == want_ids
    torch.testing.assert_close(
        out.topk_weights_TK, torch.tensor(want_weights), rtol=1e-5, atol=1e-6
    )
    unchanged_T = out.keep_E[record.topk_ids_TK].all(-1)
    assert torch.equal(out.topk_weights_TK[unchanged_T], record.topk_weights_TK[unchanged_T])


def test_budget_invariants_on_at_least_1000_cases_that_drop_experts():
    """Hypothesis runs 1300 cases; at least 1000 of them must re-route something."""
    kinds: dict[str, int] = {}

    @settings(max_examples=1300, deadline=None, database=None)
    @given(routings())
    def check(case):
        record, budget, mode = case
        check_budget_invariants(record, budget, mode)
        if drops_experts(record, budget):
            for kind in (
                "drops",
                mode,
                record.scoring,
                "padded" if not bool(record.valid_mask_T().all()) else "dense",
            ):
                kinds[kind] = kinds.get(kind, 0) + 1

    check()
    assert kinds.get("drops", 0) >= 1000, kinds
    for kind in ("substitution", "truncation", "softmax", "sigmoid", "padded", "dense"):
        assert kinds.get(kind, 0) >= 100, kinds  # every mode, scoring and padding is exercised


def check_budget_invariants(record: RoutingRecord, budget: int, mode: str) -> None:
    out = apply_budget(record, budget, mode=mode)
    E = record.num_experts
    ids_TK, w_TK = out.topk_ids_TK, out.topk_weights_TK
    assert int(used_experts_E(ids_TK, E).sum()) <= budget  # padded rows included
    assert bool(((ids_TK >= 0) & (ids_TK < E)).all())  # never -1
    assert bool(out.keep_E[ids_TK].all())  # ids are a subset of the kept set
    assert int(out.keep_E.sum()) <= budget
    assert bool(torch.isfinite(w_TK).all()) and bool((w_TK >= 0).all())
    if record.renormalize:
        torch.testing.assert_close(w_TK.sum(-1), torch.ones(record.num_tokens))
    elif mode == "substitution":  # raw gate values of the experts a token now uses (or 0)
        gates_TK = torch.tensor(reference_inputs(record)[5]).gather(1, ids_TK.long())
        assert bool(((w_TK == gates_TK) | (w_TK == 0)).all())
    again = apply_budget(record, budget, mode=mode)
    assert torch.equal(again.topk_ids_TK, ids_TK) and torch.equal(again.topk_weights_TK, w_TK)


@settings(max_examples=200, deadline=None)
@given(routings())
def test_a_budget_covering_every_used_expert_leaves_valid_rows_unchanged(case):
    record, _, mode = case
    used = int(record.used_E().sum())
    budget = max(used, record.top_k)
    for name in ("router-mass", "topk-frequency", "token-priority"):
        record_with_depth = make_record(
            record.router_logits_TE,
            record.top_k,
            valid_T=record.valid_T,
            depth_T=torch.arange(record.num_tokens),
            scoring=record.scoring,
            renormalize=record.renormalize,
            correction_bias_E=record.correction_bias_E,
        )
        out = get_policy(name).apply(record_with_depth, budget, mode=mode)
        valid_T = record.valid_mask_T()  # padded rows may move into the kept set
        assert torch.equal(out.topk_ids_TK[valid_T], record.topk_ids_TK[valid_T]), name
        assert torch.equal(out.topk_weights_TK[valid_T], record.topk_weights_TK[valid_T]), name


@settings(max_examples=200, deadline=None)
@given(routings(), st.randoms(use_true_random=False))
def test_row_order_only_permutes_the_rows(case, rnd):
    record, budget, mode = case
    # torch's vectorised CPU kernels may round an element differently depending on where it
    # sits in memory (1 ulp), which can flip an exact tie: spread the logits so none is exact.
    spread_TE = record.router_logits_TE + 1e-3 * torch.arange(record.num_experts)
    record = make_record(
        spread_TE,
        record.top_k,
        valid_T=record.valid_T,
        scoring=record.scoring,
        renormalize=record.renormalize,
        correction_bias_E=record.correction_bias_E,
    )
    perm = list(range(record.num_tokens))
    rnd.shuffle(perm)
    perm_T = torch.tensor(perm)
    shuffled = RoutingRecord(
        record.router_logits_TE[perm_T],
        record.topk_ids_TK[perm_T],
        record.topk_weights_TK[perm_T],
        valid_T=record.valid_T[perm_T],
        scoring=record.scoring,
        renormalize=record.renormalize,
        correction_bias_E=record.correction_bias_E,
    )
    # A fixed kept set makes every row's rewrite independent of the others.
    keep_E = torch.arange(record.num_experts) % 3 != 1
    keep_E[0] = True
    budget = max(budget, int(keep_E.sum()))
    out = apply_budget(record, budget, keep_E, mode=mode)
    out_shuffled = apply_budget(shuffled, budget, keep_E, mode=mode)
    assert torch.equal(out_shuffled.topk_ids_TK, out.topk_ids_TK[perm_T])
    torch.testing.assert_close(out_shuffled.topk_weights_TK, out.topk_weights_TK[perm_T])
    # Integer scores (topk-frequency) are order-independent too, kept set included.
    freq = get_policy("topk-frequency")
    a, b = freq.apply(record, budget, mode=mode), freq.apply(shuffled, budget, mode=mode)
    assert torch.equal(a.keep_E, b.keep_E)
    assert torch.equal(b.topk_ids_TK, a.topk_ids_TK[perm_T])
