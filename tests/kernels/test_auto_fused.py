"""``auto`` on the Triton kernel (interpreted) against its own torch path.

Where the kernels run on Triton (CUDA; here ``MOE_SPEC_KERNELS=triton`` with the
interpreter) ``auto`` budgets a layer in the fused selection kernel, its budget read from
the device tensor the controller rewrites and its ranking written by the kernel. Every
output must equal the torch path's: ids, kept set, ranking and top-k copies exactly,
weights within the dtype.
"""

from __future__ import annotations

import pytest
import torch

from moe_spec import get_policy
from moe_spec.budget import expert_rank_E
from moe_spec.kernels.budget_select_torch import ScoreRule, select_budget_torch
from moe_spec.kernels.budget_select_triton import select_budget_triton
from moe_spec.routing import RoutingRecord
from tests.conftest import make_record
from tests.host_sync import HostSyncRecorder

WEIGHT_TOL = {torch.float32: 1e-6, torch.float16: 1e-3}


def layer_records(
    L: int, T: int, E: int, K: int, seed: int, dtype=torch.float32, **kwargs
) -> list[RoutingRecord]:
    """L layers of one verify pass: depths (root first), path log-probabilities, padding."""
    g = torch.Generator().manual_seed(seed)
    depth_T = torch.cat(
        (torch.zeros(1, dtype=torch.long), torch.randint(1, 5, (T - 1,), generator=g))
    )
    logprob_T = -torch.rand(T, generator=g) * 4 * depth_T
    valid_T = torch.rand(T, generator=g) < 0.85
    valid_T[0] = True
    records = []
    for layer in range(L):
        base = make_record(torch.randn(T, E, generator=g) * 2, K, **kwargs)
        records.append(
            RoutingRecord(
                base.router_logits_TE.to(dtype),
                base.topk_ids_TK,
                base.topk_weights_TK.to(dtype),
                valid_T,
                depth_T=depth_T,
                path_logprob_T=logprob_T if kwargs.get("scoring") != "sigmoid" else None,
                layer_idx=layer,
                num_layers=L,
                scoring=base.scoring,
                renormalize=base.renormalize,
                correction_bias_E=base.correction_bias_E,
            )
        )
    return records


def served_auto(L: int, E: int, K: int, cap: int, budget_L: list[int], rows: int) -> object:
    """An ``auto`` with its device state as a server holds it: budgets, a calibration
    table other than the prior's, and the buffers a verify writes for ``observe``."""
    policy = get_policy("auto")
    policy.prepare(L, E, K, cap, torch.device("cpu"))
    policy.record_to_device(rows, K)
    policy.device_state["budget_L"].copy_(torch.tensor(budget_L))
    policy.device_state["accept_B"].copy_(torch.linspace(0.02, 0.98, 10) ** 2)
    policy.device_state["reach_D"].copy_(
        0.7 ** torch.arange(policy.device_state["reach_D"].numel())
    )
    return policy


def run(policy, records, cap: int, mode: str, backend: str, monkeypatch):
    monkeypatch.setenv("MOE_SPEC_KERNELS", backend)
    out = [policy.apply(r, cap, mode=mode) for r in records]
    state = {k: policy.device_state[k].clone() for k in ("rank_LE", "ids_LRK", "depth_R")}
    routing = {k: dict(getattr(policy, k)) for k in ("rank_LE", "ids_LNK")}
    return out, state, routing


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize(
    ("T", "E", "K", "cap", "budget_L", "kwargs"),
    [
        (1, 8, 1, 8, [1, 8], {}),  # one row: nothing to cut
        (4, 64, 8, 64, [8, 13, 64], {}),  # a chain of 4 at OLMoE's width
        (13, 60, 4, 24, [4, 24, 60], {"renormalize": False}),  # E not a power of two
        (33, 64, 8, 32, [9, 32], {"scoring": "sigmoid", "renormalize": True}),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("engine", [True, False], ids=["engine", "server"])
def test_fused_auto_equals_its_torch_path(
    T, E, K, cap, budget_L, kwargs, dtype, mode, engine, monkeypatch
):
    """``engine``: the ranking kept for an eager engine's observe as well; ``server``: only
    in the device buffers (the kernel writes the ranking straight into them)."""
    L = len(budget_L)
    records = layer_records(L, T, E, K, seed=T * E + K, dtype=dtype, **kwargs)
    rows = min(T, 6)
    policies = [served_auto(L, E, K, cap, budget_L, rows) for _ in range(2)]
    for policy in policies:
        policy.record_routing = engine
    want, want_state, want_routing = run(policies[0], records, cap, mode, "torch", monkeypatch)
    got, got_state, got_routing = run(policies[1], records, cap, mode, "triton", monkeypatch)
    tol = WEIGHT_TOL[dtype]
    for layer, (g, w) in enumerate(zip(got, want, strict=True)):
        assert int(g.keep_E.sum()) <= min(budget_L[layer], cap)
        assert torch.equal(g.keep_E, w.keep_E)
        assert torch.equal(g.topk_ids_TK.long(), w.topk_ids_TK.long())
        torch.testing.assert_close(g.topk_weights_TK, w.topk_weights_TK, atol=tol, rtol=tol)
    for key in want_state:  # what a server's observe reads after the forward
        assert torch.equal(got_state[key], want_state[key]), key
    for key in want_routing:  # what an eager engine's observe reads
        assert (
            sorted(got_routing[key])
            == sorted(want_routing[key])
            == list(range(L) if engine else [])
        )
        for layer in want_routing[key]:
            assert torch.equal(got_routing[key][layer], want_routing[key][layer])


def test_fused_auto_is_one_kernel_call_per_layer_without_host_reads(monkeypatch):
    import moe_spec.kernels.budget_select_triton as module

    calls: list[dict] = []
    real = module.select_budget_triton

    def spy(*args, **kwargs):
        calls.append(kwargs)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "select_budget_triton", spy)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    records = layer_records(2, 6, 16, 2, seed=3)
    policy = served_auto(2, 16, 2, 16, [3, 16], rows=6)
    policy.validate = False  # as on a server's hot path
    with HostSyncRecorder() as recorder:
        kept = [policy.apply(r, 16).keep_E for r in records]
    assert recorder.syncs == []
    assert len(calls) == 2
    assert [c["limit_1"].data_ptr() for c in calls] == [
        policy.device_state["budget_L"][layer : layer + 1].data_ptr() for layer in (0, 1)
    ]
    # at the cap every expert a token picked is kept
    assert [int(k.sum()) for k in kept] == [3, int(records[1].used_E().sum())]
    assert torch.equal(kept[1], records[1].used_E())


def test_budget_rewritten_between_steps_takes_effect_in_the_kernel(monkeypatch):
    """The kernel reads the budget at run time: a rewrite of the device tensor (as the
    controller's between steps, or a captured graph's replay) changes the next pass."""
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    records = layer_records(1, 9, 32, 4, seed=5)
    policy = served_auto(1, 32, 4, 32, [32], rows=4)
    policy.validate = False
    sizes = []
    for budget in (32, 5, 11):
        policy.device_state["budget_L"].fill_(budget)
        sizes.append(int(policy.apply(records[0], 32).keep_E.sum()))
    used = int(records[0].used_E().sum())
    assert 11 < used < 32
    assert sizes == [used, 5, 11]  # at 32 the experts the tokens picked


def test_a_resting_step_keeps_every_expert_and_records_its_top_k_not_a_ranking(monkeypatch):
    """With the policy's rest flag set (a step at the cap that needs no ranking), each
    layer's kernel keeps every expert and copies the rows; the recorded top-k (what a
    resting step is learned from) is written, the ranking buffer is not. Cleared: ranks."""
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    records = layer_records(2, 7, 16, 3, seed=8)
    policy = served_auto(2, 16, 3, 16, [16, 16], rows=7)
    policy.validate, policy.record_routing = False, False
    rank_LE = policy.device_state["rank_LE"]
    rank_LE.fill_(-3)
    policy.flag_rest(True)
    out = [policy.apply(r, 16) for r in records]
    for r, budgeted in zip(records, out, strict=True):
        assert bool(budgeted.keep_E.all())
        assert torch.equal(budgeted.topk_ids_TK, r.topk_ids_TK)
        assert torch.equal(budgeted.topk_weights_TK, r.topk_weights_TK)
    assert torch.equal(rank_LE, torch.full_like(rank_LE, -3))
    ids_LRK = policy.device_state["ids_LRK"]
    assert all(torch.equal(ids_LRK[i], r.topk_ids_TK) for i, r in enumerate(records))
    policy.flag_rest(False)
    for r in records:
        policy.apply(r, 16)
    for layer, r in enumerate(records):
        want = expert_rank_E(select_budget_torch(r, 16, policy.rule(r))[1], r.used_E())
        assert torch.equal(rank_LE[layer], want)


@pytest.mark.parametrize("limit", [2, 5, 40])
def test_kernel_limit_and_ranks(limit):
    """``limit_1`` caps the budget on the device; ``rank_E`` is :func:`expert_rank_E`."""
    g = torch.Generator().manual_seed(limit)
    valid_T = torch.rand(11, generator=g) < 0.8
    valid_T[0] = True
    record = make_record(torch.randn(11, 40, generator=g), 2, valid_T=valid_T)
    rule = ScoreRule("mass", torch.rand(11, generator=g), (torch.arange(11) == 0) & valid_T)
    rank_E = torch.full((40,), -1, dtype=torch.long)
    got, scores_E = select_budget_triton(
        record, 9, rule, limit_1=torch.tensor([limit]), rank_E=rank_E
    )
    want, _ = select_budget_torch(record, min(9, limit), rule)
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    assert torch.equal(rank_E, expert_rank_E(scores_E, record.used_E()))
    with pytest.raises(ValueError, match="rank_E must be a contiguous long tensor"):
        select_budget_triton(record, 9, rule, rank_E=torch.zeros(40, dtype=torch.int32))


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_kernel_rest_flag_keeps_every_expert_and_copies_rows(mode, dtype):
    """``rest_1`` nonzero: every expert kept, every row copied bit for bit, scores 0 and the
    ranking left as it was; zero: the same selection as without the flag."""
    g = torch.Generator().manual_seed(4)
    T, E, K = 13, 24, 3  # several rewrite programs, a ragged last one
    base = make_record(torch.randn(T, E, generator=g) * 2, K)
    record = RoutingRecord(
        base.router_logits_TE.to(dtype), base.topk_ids_TK, base.topk_weights_TK.to(dtype)
    )
    rule = ScoreRule("mass", torch.rand(T, generator=g), torch.arange(T) == 0)
    rank_E = torch.full((E,), -7, dtype=torch.long)
    rest = torch.ones(1, dtype=torch.int32)
    got, scores_E = select_budget_triton(record, 5, rule, mode, rest_1=rest, rank_E=rank_E)
    assert bool(got.keep_E.all()) and got.keep_E.shape == (E,)
    assert torch.equal(got.topk_ids_TK, record.topk_ids_TK)
    assert torch.equal(got.topk_weights_TK, record.topk_weights_TK)  # bits, dtype kept
    assert torch.equal(scores_E, torch.zeros(E))
    assert torch.equal(rank_E, torch.full((E,), -7, dtype=torch.long))
    rest.zero_()  # the same launch with the flag cleared: the budgeted selection
    got, scores_E = select_budget_triton(record, 5, rule, mode, rest_1=rest, rank_E=rank_E)
    want, _ = select_budget_torch(record, 5, rule, mode)
    assert int(got.keep_E.sum()) == 5 and torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    tol = WEIGHT_TOL[dtype]
    torch.testing.assert_close(got.topk_weights_TK, want.topk_weights_TK, atol=tol, rtol=tol)
    assert torch.equal(rank_E, expert_rank_E(scores_E, record.used_E()))
    with pytest.raises(ValueError, match="rest_1 must be an int32 tensor of one element"):
        select_budget_triton(record, 5, rule, rest_1=torch.zeros(1, dtype=torch.long))


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize("scoring", ["softmax", "sigmoid"])
def test_kernel_rest_scored_keeps_every_expert_and_writes_the_scores_it_ranks_from(mode, scoring):
    """``rest_1`` at REST_SCORED: every expert kept, every row copied, the ranking left as it
    was, and the scores and used mask written into the caller's buffers exactly as a
    ranking launch writes them (what :func:`rank_scored_triton` ranks after the forward)."""
    from moe_spec.kernels.budget_select_torch import REST_SCORED

    g = torch.Generator().manual_seed(11)
    T, E, K = 13, 24, 3
    valid_T = torch.rand(T, generator=g) < 0.8
    valid_T[0] = True
    record = make_record(torch.randn(T, E, generator=g) * 2, K, valid_T=valid_T, scoring=scoring)
    rule = ScoreRule("mass", torch.rand(T, generator=g), (torch.arange(T) < 2) & valid_T)
    rank_E = torch.full((E,), -7, dtype=torch.long)
    scores_E = torch.full((E,), -1.0)
    used_E = torch.full((E,), -1, dtype=torch.int32)
    rest = torch.tensor([REST_SCORED], dtype=torch.int32)
    args = dict(rest_1=rest, rank_E=rank_E, scores_E=scores_E, used_E=used_E)
    got, returned_E = select_budget_triton(record, 5, rule, mode, **args)
    assert returned_E is scores_E
    assert bool(got.keep_E.all())
    assert torch.equal(got.topk_ids_TK, record.topk_ids_TK)
    assert torch.equal(got.topk_weights_TK, record.topk_weights_TK)
    assert torch.equal(rank_E, torch.full((E,), -7, dtype=torch.long))
    torch.testing.assert_close(scores_E, select_budget_torch(record, 5, rule, mode)[1])
    assert torch.equal(used_E.bool(), record.used_E())
    scored = scores_E.clone()
    rest.zero_()  # ranked in the forward: the same scores, and ranks made from them
    select_budget_triton(record, 5, rule, mode, **args)
    assert torch.equal(scores_E, scored)
    assert torch.equal(rank_E, expert_rank_E(scores_E, record.used_E()))
    with pytest.raises(ValueError, match=r"scores_E must be a contiguous torch.float32 tensor"):
        select_budget_triton(record, 5, rule, scores_E=torch.zeros(E, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"used_E must be .* of shape \(24,\)"):
        select_budget_triton(record, 5, rule, used_E=torch.zeros(E + 1, dtype=torch.int32))


@pytest.mark.parametrize("flag", ["RANK", "REST", "REST_SCORED"])
def test_kernel_copies_the_first_rows_top_k_at_every_flag(flag):
    """``ids_out``: the first R rows' ids as long, a row's first id repeated past K (a layer
    narrower than the widest), whatever the rest flag (a resting step is learned from too)."""
    import moe_spec.kernels.budget_select_torch as flags

    g = torch.Generator().manual_seed(12)
    record = make_record(torch.randn(19, 24, generator=g), 3)
    record = RoutingRecord(
        record.router_logits_TE, record.topk_ids_TK.to(torch.int32), record.topk_weights_TK
    )
    ids_out = torch.full((18, 5), -7, dtype=torch.long)
    rest = torch.tensor([getattr(flags, flag)], dtype=torch.int32)
    select_budget_triton(record, 5, ScoreRule("mass"), rest_1=rest, ids_out=ids_out)
    ids_RK = record.topk_ids_TK[:18].long()
    assert torch.equal(ids_out, torch.cat([ids_RK, ids_RK[:, :1].expand(18, 2)], dim=1))
    for bad, allowed in (
        (ids_out.int(), "contiguous long"),
        (torch.empty(20, 5, dtype=torch.long), "R <= T=19"),
        (torch.empty(4, 2, dtype=torch.long), "W >= K=3"),
    ):
        with pytest.raises(ValueError, match=allowed):
            select_budget_triton(record, 5, ScoreRule("mass"), ids_out=bad)


def test_a_fresh_policy_prepares_on_the_torch_path_then_runs_the_kernel(monkeypatch):
    """The first layer an unprepared ``auto`` sees creates its state on the torch path (the
    rule's calibrated weights read that state); later layers run the kernel."""
    import moe_spec.kernels.budget_select_triton as module

    calls: list[int] = []
    real = module.select_budget_triton
    monkeypatch.setattr(
        module, "select_budget_triton", lambda *a, **k: calls.append(1) or real(*a, **k)
    )
    records = layer_records(2, 7, 16, 2, seed=9)
    fresh, reference = get_policy("auto"), get_policy("auto")
    monkeypatch.setenv("MOE_SPEC_KERNELS", "torch")
    want = [reference.apply(r, 8) for r in records]
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    got = [fresh.apply(records[0], 8)]
    assert calls == [] and fresh.device_state
    got.append(fresh.apply(records[1], 8))
    assert calls == [1]
    for layer, (g, w) in enumerate(zip(got, want, strict=True)):
        assert torch.equal(g.topk_ids_TK, w.topk_ids_TK)
        assert torch.equal(fresh.rank_LE[layer], reference.rank_LE[layer])
