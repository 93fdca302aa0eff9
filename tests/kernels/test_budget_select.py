"""The Triton budget-selection kernel (interpreted) against the torch core, and its wiring.

Ids and kept sets must be equal; weights equal within the weights' dtype.
"""

from __future__ import annotations

import pytest
import torch

from moe_spec import get_policy
from moe_spec.kernels.budget_select_torch import ScoreRule, select_budget_torch
from moe_spec.kernels.budget_select_triton import select_budget_triton
from moe_spec.routing import RoutingRecord
from tests.conftest import make_record

MODES = ["substitution", "truncation"]
WEIGHT_TOL = {torch.float32: 1e-6, torch.float16: 1e-3, torch.bfloat16: 8e-3}


def random_record(T: int, E: int, K: int, seed: int, **kwargs) -> RoutingRecord:
    g = torch.Generator().manual_seed(seed)
    valid_T = torch.rand(T, generator=g) < 0.8
    valid_T[0] = True
    return make_record(torch.randn(T, E, generator=g) * 2, K, valid_T=valid_T, **kwargs)


def assert_same_selection(record: RoutingRecord, budget: int, rule: ScoreRule, mode: str) -> None:
    got, got_scores_E = select_budget_triton(record, budget, rule, mode)
    want, want_scores_E = select_budget_torch(record, budget, rule, mode)
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    assert got.topk_ids_TK.dtype == record.topk_ids_TK.dtype
    assert got.topk_weights_TK.dtype == record.topk_weights_TK.dtype
    tol = WEIGHT_TOL[record.topk_weights_TK.dtype]
    torch.testing.assert_close(got.topk_weights_TK, want.topk_weights_TK, atol=tol, rtol=tol)
    torch.testing.assert_close(got_scores_E, want_scores_E, atol=1e-5, rtol=1e-5)


def rules_for(record: RoutingRecord, seed: int) -> dict[str, ScoreRule]:
    g = torch.Generator().manual_seed(seed)
    weight_T = torch.rand(record.num_tokens, generator=g)
    root_T = (torch.arange(record.num_tokens) == 0) & record.valid_mask_T()
    return {
        "frequency": ScoreRule("frequency"),
        "mass": ScoreRule("mass"),
        "weighted-frequency": ScoreRule("frequency", weight_T),
        "weighted-mass-root": ScoreRule("mass", weight_T, root_T),
    }


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("T", "E", "K"), [(1, 8, 1), (7, 8, 2), (33, 64, 8), (7, 64, 8)])
def test_matches_torch_core_softmax(T, E, K, mode):
    record = random_record(T, E, K, seed=T + E + K, renormalize=K > 1)
    for rule in rules_for(record, seed=T).values():
        for budget in sorted({K, (K + E) // 2, E - 1}):
            if budget < E:
                assert_same_selection(record, budget, rule, mode)


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bias", [False, True])
def test_matches_torch_core_sigmoid(mode, bias):
    E = 64
    bias_E = torch.randn(E, generator=torch.Generator().manual_seed(5)) * 0.1 if bias else None
    record = random_record(
        33, E, 8, seed=6, scoring="sigmoid", renormalize=not bias, correction_bias_E=bias_E
    )
    for rule in rules_for(record, seed=7).values():
        assert_same_selection(record, 16, rule, mode)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("mode", MODES)
def test_half_precision_logits_and_weights(dtype, mode):
    base = random_record(33, 64, 8, seed=8)
    record = RoutingRecord(
        base.router_logits_TE.to(dtype),
        base.topk_ids_TK.to(torch.int32),
        base.topk_weights_TK.to(dtype),
        valid_T=base.valid_T,
    )
    for rule in rules_for(record, seed=9).values():
        assert_same_selection(record, 16, rule, mode)


@pytest.mark.parametrize("mode", MODES)
def test_all_tokens_on_one_expert_and_tied_scores(mode):
    """Equal logits everywhere: every score ties, so the lowest ids must win."""
    T, E, K = 7, 8, 2
    logits_TE = torch.zeros(T, E)
    ids_TK = torch.tensor([[3, 5]]).expand(T, K).contiguous()
    record = RoutingRecord(logits_TE, ids_TK, torch.full((T, K), 0.5))
    for rule in (ScoreRule("frequency"), ScoreRule("mass")):
        assert_same_selection(record, 2, rule, mode)  # B = K = the used set: nothing changes
        assert_same_selection(record, 3, rule, mode)
        got, _ = select_budget_triton(record, 3, rule, mode)
        assert got.keep_E.nonzero().flatten().tolist() == [3, 5]  # no spare slot for 0


def test_padded_rows_are_rerouted_but_never_score():
    T, E, K = 7, 64, 8
    record = random_record(T, E, K, seed=10)
    valid_T = torch.arange(T) < 4
    padded = RoutingRecord(
        record.router_logits_TE, record.topk_ids_TK, record.topk_weights_TK, valid_T
    )
    scrambled_TE = record.router_logits_TE.clone()
    scrambled_TE[4:] = torch.randn(T - 4, E, generator=torch.Generator().manual_seed(1)) * 10
    scrambled_ids_TK = record.topk_ids_TK.clone()
    scrambled_ids_TK[4:] = torch.arange(K) + 40
    scrambled = RoutingRecord(scrambled_TE, scrambled_ids_TK, record.topk_weights_TK, valid_T)
    for rule in (ScoreRule("frequency"), ScoreRule("mass")):
        a, _ = select_budget_triton(padded, 8, rule)
        b, _ = select_budget_triton(scrambled, 8, rule)
        assert torch.equal(a.keep_E, b.keep_E)
        assert b.keep_E[b.topk_ids_TK].all()  # padded rows too read only kept experts
        assert_same_selection(scrambled, 8, rule, "substitution")


@pytest.mark.parametrize("mode", MODES)
def test_untouched_rows_are_bit_identical_and_ids_never_negative(mode):
    """Rows 0-11 route among experts 0-7, which a budget of 16 keeps; the rest lose experts."""
    logits_TE = torch.randn(33, 64, generator=torch.Generator().manual_seed(11))
    logits_TE[:12, :8] += 10.0
    record = make_record(logits_TE, 8)
    got, _ = select_budget_triton(record, 16, ScoreRule("mass"), mode)
    untouched_T = got.keep_E[record.topk_ids_TK].all(dim=-1)
    assert untouched_T[:12].all() and not untouched_T.all()
    assert torch.equal(got.topk_ids_TK[untouched_T], record.topk_ids_TK[untouched_T])
    assert torch.equal(got.topk_weights_TK[untouched_T], record.topk_weights_TK[untouched_T])
    assert (got.topk_ids_TK >= 0).all() and got.keep_E[got.topk_ids_TK].all()
    assert int(got.keep_E.sum()) == 16


POLICIES = {
    "topk-frequency": {},
    "router-mass": {},
    "token-priority": {"decay": 0.5},
}


def tree_record(seed: int) -> RoutingRecord:
    g = torch.Generator().manual_seed(seed)
    return make_record(
        torch.randn(13, 16, generator=g),
        4,
        depth_T=torch.randint(0, 4, (13,), generator=g),
        valid_T=torch.arange(13) < 11,
    )


@pytest.fixture
def kernel_calls(monkeypatch) -> list[int]:
    """Counts calls of the Triton selection kernel's entry point."""
    import moe_spec.kernels.budget_select_triton as module

    calls: list[int] = []
    real = module.select_budget_triton

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(module, "select_budget_triton", spy)
    return calls


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", sorted(POLICIES))
def test_builtin_policies_use_the_kernel_when_triton_runs(name, mode, monkeypatch, kernel_calls):
    policy = get_policy(name, **POLICIES[name])
    record = tree_record(12)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "torch")
    want = policy.apply(record, 6, mode=mode)
    assert kernel_calls == []
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    got = policy.apply(record, 6, mode=mode)
    assert kernel_calls == [1]
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    torch.testing.assert_close(got.topk_weights_TK, want.topk_weights_TK, atol=1e-6, rtol=1e-6)


def test_cpu_default_and_full_budget_never_call_the_kernel(monkeypatch, kernel_calls):
    monkeypatch.delenv("MOE_SPEC_KERNELS", raising=False)
    record = tree_record(13)
    for name, options in POLICIES.items():
        get_policy(name, **options).apply(record, 6)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    out = get_policy("router-mass").apply(record, 16)  # B = E: budgeting is off
    assert out.topk_ids_TK is record.topk_ids_TK
    assert kernel_calls == []


def test_subclass_with_its_own_score_keeps_the_torch_path(monkeypatch, kernel_calls):
    from moe_spec.policies.builtin import RouterMass

    class Reversed(RouterMass):
        name = "reversed-mass"

        def score(self, record):
            return -record.router_mass_E()

    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    record = tree_record(14)
    got = Reversed().apply(record, 6)
    assert kernel_calls == []
    assert not torch.equal(got.keep_E, RouterMass().apply(record, 6).keep_E)


def test_nan_scores_on_the_kernel_path_name_the_policy(monkeypatch):
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    record = tree_record(15)
    policy = get_policy("token-priority")
    bad = RoutingRecord(
        record.router_logits_TE,
        record.topk_ids_TK,
        record.topk_weights_TK,
        record.valid_T,
        path_logprob_T=torch.full((13,), float("nan")),
    )
    with pytest.raises(ValueError, match="policy 'token-priority'.*NaN or inf"):
        policy.apply(bad, 6)


@pytest.mark.parametrize("name", ["router-mass", "auto"])
def test_a_kernel_that_cannot_run_here_falls_back_to_the_torch_path_once(name, monkeypatch):
    """Triton failing to build or launch the kernel (a device it does not support) must not
    stop a server: one warning, then the same selection on the torch path from then on."""
    import moe_spec.kernels.budget_select_triton as module

    calls: list[int] = []

    def broken(*args, **kwargs):
        calls.append(1)
        raise RuntimeError("triton: no kernel image for this device")

    record = tree_record(16)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "torch")
    want = get_policy(name).apply(record, 6)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    monkeypatch.setattr(module, "select_budget_triton", broken)
    policy = get_policy(name)
    with pytest.warns(RuntimeWarning, match=f"policy '{name}': the fused budget-selection kernel"):
        policy.apply(record, 6)  # auto: its first layer prepares on the torch path
        got = policy.apply(record, 6)
    assert calls == [1] and "no kernel image for this device" in policy.fused_error
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    policy.apply(record, 6)
    assert calls == [1]  # not tried again
