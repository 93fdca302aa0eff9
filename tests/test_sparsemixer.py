"""PhiMoE's sparsemixer weighting in the core: against transformers' own function and a loop."""

from __future__ import annotations

import warnings

import pytest
import torch

from moe_spec import RoutingRecord, apply_budget, get_policy
from moe_spec.routing import sparsemixer_topk, used_experts_E
from tests.loop_reference import reference_sparsemixer


def phimoe_record(T: int, E: int, seed: int, eps: float = 0.01, valid_T=None) -> RoutingRecord:
    g = torch.Generator().manual_seed(seed)
    logits_TE = torch.randn(T, E, generator=g) * 0.5  # close logits: the "near" masks matter
    weights_TK, ids_TK = sparsemixer_topk(logits_TE, 2, eps)
    return RoutingRecord(
        logits_TE, ids_TK, weights_TK, valid_T=valid_T, scoring="sparsemixer",
        renormalize=False, sparsemixer_eps=eps,
    )  # fmt: skip


@pytest.mark.parametrize("eps", [0.0, 0.01, 0.3])
def test_sparsemixer_equals_transformers_own_in_eval(eps):
    from transformers.models.phimoe.modeling_phimoe import sparsemixer

    logits_TE = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)) * 0.5
    want_w, want_ids = sparsemixer(logits_TE, jitter_eps=eps, training=False, top_k=2)
    got_w, got_ids = sparsemixer_topk(logits_TE, 2, eps)
    assert torch.equal(got_ids, want_ids)
    torch.testing.assert_close(got_w, want_w, rtol=0, atol=0)


def test_sparsemixer_matches_the_loop_reference_with_an_allowed_set():
    logits_TE = torch.randn(40, 12, generator=torch.Generator().manual_seed(2)) * 0.4
    allowed_E = torch.arange(12) % 3 != 0
    got_w, got_ids = sparsemixer_topk(logits_TE, 3, 0.05, allowed_E)
    allowed = allowed_E.nonzero().flatten().tolist()
    for t in range(40):
        ids, weights = reference_sparsemixer(logits_TE[t].tolist(), allowed, 3, 0.05)
        assert got_ids[t].tolist() == ids
        assert got_w[t].tolist() == pytest.approx(weights, rel=1e-5)


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize("seed", range(6))
def test_budgeted_sparsemixer_rows_follow_the_models_own_rule(mode, seed):
    record = phimoe_record(24, 16, seed)
    budget = 5
    out = apply_budget(record, budget, mode=mode)
    assert int(used_experts_E(out.topk_ids_TK, 16).sum()) <= budget
    kept = out.keep_E.nonzero().flatten().tolist()
    logits = record.router_logits_TE.tolist()
    rerouted = 0
    for t in range(24):
        row_ids, row_w = record.topk_ids_TK[t].tolist(), record.topk_weights_TK[t].tolist()
        got = {}
        for e, w in zip(out.topk_ids_TK[t].tolist(), out.topk_weights_TK[t].tolist(), strict=True):
            got[e] = got.get(e, 0.0) + w
        got = {e: w for e, w in got.items() if w}
        if set(row_ids) <= set(kept):
            assert (
                out.topk_ids_TK[t].tolist() == row_ids and out.topk_weights_TK[t].tolist() == row_w
            )
            continue
        rerouted += 1
        if mode == "substitution":
            want = dict(zip(*reference_sparsemixer(logits[t], kept, 2, 0.01), strict=True))
        else:
            want = {e: w for e, w in zip(row_ids, row_w, strict=True) if e in kept}
            if not want:
                first, weight = reference_sparsemixer(logits[t], kept, 1, 0.01)
                want = {first[0]: weight[0]}
        assert set(got) == set(want), (t, got, want)
        for e in want:
            assert got[e] == pytest.approx(want[e], rel=1e-5)
    assert rerouted > 0


@pytest.mark.parametrize("name", ["router-mass", "token-priority", "draft-path"])
def test_policies_budget_sparsemixer_records_on_the_torch_path(name, monkeypatch):
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")  # the kernel has no sparsemixer rule
    record = phimoe_record(12, 16, 0, valid_T=torch.arange(12) < 10)
    record = RoutingRecord(**{**record.__dict__, "depth_T": torch.arange(12) // 4})
    policy = get_policy(name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a kernel that failed and fell back warns
        out = policy.apply(record, 4)
    assert policy.fused_error is None  # the kernel was not tried (it would have failed)
    assert int(used_experts_E(out.topk_ids_TK, 16).sum()) <= 4
    assert torch.equal(out.topk_ids_TK, apply_budget(record, 4, out.keep_E).topk_ids_TK)


def test_a_negative_sparsemixer_eps_is_refused():
    record = phimoe_record(2, 8, 0)
    with pytest.raises(ValueError, match="sparsemixer_eps is -1.0; allowed: >= 0"):
        RoutingRecord(**{**record.__dict__, "sparsemixer_eps": -1.0})
