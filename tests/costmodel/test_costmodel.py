"""The roofline cost model: shapes against published sizes, bounds, mapping, paper check."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from moe_spec.costmodel import (
    GPU,
    SHAPES,
    ModeledStep,
    Overheads,
    coverage_fraction,
    decode_seconds,
    draft_seconds,
    get_gpu,
    get_shape,
    independent_distinct,
    map_distinct,
    speculative_tokens_per_s,
    verify_seconds,
)
from moe_spec.costmodel.paper import PAPER_CASES, check_case, implied_overhead_s
from moe_spec.costmodel.roofline import verify_parts
from moe_spec.costmodel.shapes import ModelShape

# Total parameters each model card states (billions).
PUBLISHED_TOTAL_B = {
    "OLMoE-1B-7B": 6.9,
    "Qwen3-30B-A3B": 30.5,
    "Mixtral-8x7B": 46.7,
    "DeepSeek-V2-Lite": 15.7,
}
PUBLISHED_ACTIVE_B = {"OLMoE-1B-7B": 1.3, "Qwen3-30B-A3B": 3.3, "Mixtral-8x7B": 12.9}


@pytest.mark.parametrize("name", list(SHAPES))
def test_shapes_add_up_to_the_published_parameter_counts(name):
    s = SHAPES[name]
    total = s.dense_bytes / 2 + s.n_moe_layers * s.n_experts * s.expert_bytes / 2
    assert total / 1e9 == pytest.approx(PUBLISHED_TOTAL_B[name], rel=0.04)
    if name in PUBLISHED_ACTIVE_B:
        assert s.active_params_per_token / 1e9 == pytest.approx(PUBLISHED_ACTIVE_B[name], rel=0.1)


TOY = ModelShape("toy", 2, 2, 64, 8, 2, 32, 0, 4 * 64 * 64, 0, 100, 2 * 2 * 64 * 2)


def test_a_small_verify_is_bandwidth_bound_and_sums_bytes_by_hand():
    gpu = get_gpu("h100")
    expert_bytes = 3 * 64 * 32 * 2
    dense = (2 * 4 * 64 * 64 + 2 * 64 * 8 + 100 * 64) * 2
    kv = (10 + 3) * (2 * 2 * 64 * 2)
    expected = (dense + 2 * 5 * expert_bytes + kv) / gpu.bandwidth_Bps
    assert verify_seconds(gpu, TOY, 3, 5, context=10) == pytest.approx(expected)


def test_a_huge_verify_is_compute_bound():
    gpu, shape = get_gpu("A100-80GB"), get_shape("OLMoE-1B-7B")
    parts = verify_parts(shape, 100_000, shape.n_experts, 0)
    experts = next(p for p in parts if p.name == "experts")
    assert experts.seconds(gpu) == pytest.approx(experts.flops / gpu.peak_flops)
    assert experts.flops == 100_000 * 2 * shape.n_moe_layers * shape.top_k * 3 * 2048 * 1024


def test_fewer_experts_and_faster_gpus_give_shorter_steps():
    shape = get_shape("Qwen3-30B-A3B")
    a100, h200 = get_gpu("A100-80GB"), get_gpu("H200")
    assert verify_seconds(h200, shape, 63, 64) < verify_seconds(h200, shape, 63, 80)
    assert verify_seconds(h200, shape, 63, 80) < verify_seconds(a100, shape, 63, 80)
    assert decode_seconds(h200, shape) < verify_seconds(h200, shape, 63, 80)
    assert draft_seconds(h200, shape, 8, 6) == pytest.approx(6 * draft_seconds(h200, shape, 8, 1))


def test_overheads_add_per_forward_per_layer_and_per_expert_read_terms():
    gpu, shape = get_gpu("H200"), get_shape("Qwen3-30B-A3B")
    o = Overheads(forward_s=3e-5, layer_s=1e-4, expert_s=2e-6)
    base, slow = verify_seconds(gpu, shape, 8, 30), verify_seconds(gpu, shape, 8, 30, overheads=o)
    assert slow == pytest.approx(base + 3e-5 + 48 * 1e-4 + 48 * 30 * 2e-6)
    # a draft forward is one layer reading no routed experts, depth times
    assert draft_seconds(gpu, shape, 8, 6, overheads=o) == pytest.approx(
        draft_seconds(gpu, shape, 8, 6) + 6 * (3e-5 + 1e-4)
    )
    assert decode_seconds(gpu, shape, overheads=o) == pytest.approx(
        decode_seconds(gpu, shape) + 3e-5 + 48 * 1e-4 + 48 * 8 * 2e-6
    )
    with pytest.raises(ValueError, match="layer_s must be a finite number of seconds >= 0"):
        Overheads(layer_s=-1e-6)


def test_throughput_is_committed_tokens_over_modeled_time():
    gpu, shape = get_gpu("H200"), get_shape("OLMoE-1B-7B")
    steps = [ModeledStep(3, 32, 8, 6, 40.0), ModeledStep(1, 32, 8, 6, 30.0)]
    seconds = sum(
        draft_seconds(gpu, shape, 8, 6) + verify_seconds(gpu, shape, 32, s.distinct) for s in steps
    )
    assert speculative_tokens_per_s(gpu, shape, steps) == pytest.approx(4 / seconds)
    repaired = [ModeledStep(3, 32, 8, 6, 40.0, repair_tokens=3, repair_distinct=20.0), steps[1]]
    seconds += verify_seconds(gpu, shape, 3, 20.0)  # one more target forward, over 3 tokens
    assert speculative_tokens_per_s(gpu, shape, repaired) == pytest.approx(4 / seconds)
    with pytest.raises(ValueError, match="no speculative steps"):
        speculative_tokens_per_s(gpu, shape, [])
    with pytest.raises(ValueError, match=r"ModeledStep committed=-3: counts are >= 0"):
        ModeledStep(-3, 32, 8, 6, 40.0)  # it would price -3 tokens a step as tokens/s < 0
    with pytest.raises(ValueError, match=r"budgeted a bool or a share from 0 to 1"):
        ModeledStep(3, 32, 8, 6, 40.0, budgeted=-5)  # a selection that saves time


def test_sglangs_draft_extend_is_one_draft_forward_over_the_verified_tokens():
    gpu, shape = get_gpu("H200"), get_shape("OLMoE-1B-7B")
    chain, decode = ModeledStep(3, 4, 1, 3, 20.0), ModeledStep(1, 1, 1, 0, 8.0)
    plain = [verify_seconds(gpu, shape, 4, 20.0) + draft_seconds(gpu, shape, 1, 3),
             verify_seconds(gpu, shape, 1, 8.0)]  # fmt: skip
    assert speculative_tokens_per_s(gpu, shape, [chain, decode]) == pytest.approx(4 / sum(plain))
    extended = [replace(step, draft_extend=True) for step in (chain, decode)]
    # after each verify one draft forward over its tokens: 4 for the chain, 1 for a decode
    seconds = sum(plain) + draft_seconds(gpu, shape, 4, 1) + draft_seconds(gpu, shape, 1, 1)
    assert speculative_tokens_per_s(gpu, shape, extended) == pytest.approx(4 / seconds)


def test_mapping_keeps_the_endpoints_and_the_budget_order():
    assert map_distinct(4, 4, 32, 8, 64) == 8
    assert map_distinct(32, 4, 32, 8, 64) == 64
    assert map_distinct(16, 4, 32, 8, 64) == pytest.approx(8 + 12 / 28 * 56)
    assert coverage_fraction(40, 4, 32) == 1.0 and coverage_fraction(5, 5, 5) == 0.0
    mapped = [map_distinct(b, 4, 32, 8, 128) for b in (8, 12, 16, 24)]
    assert mapped == sorted(mapped)


@pytest.mark.parametrize(("K", "E", "K2", "E2"), [(8, 32, 8, 64), (4, 32, 8, 128), (2, 8, 4, 60)])
@pytest.mark.parametrize("tokens", [1, 2, 3, 4, 7, 16, 40])
def test_a_forward_of_few_tokens_is_never_carried_past_what_they_can_read(K, E, K2, E2, tokens):
    """T tokens read between K' (all agree) and min(E', T*K') (none share) experts."""
    most = min(E, tokens * K)
    for d in range(K, most + 1):
        mapped = map_distinct(d, K, E, K2, E2, tokens)
        assert K2 <= mapped <= min(E2, tokens * K2) + 1e-9
    assert map_distinct(K, K, E, K2, E2, tokens) == K2  # every token agrees
    assert map_distinct(most, K, E, K2, E2, tokens) == pytest.approx(min(E2, tokens * K2))
    if tokens * K >= E and tokens * K2 >= E2:  # a tree that can cover both layers: as before
        assert map_distinct(most - 1, K, E, K2, E2, tokens) == map_distinct(most - 1, K, E, K2, E2)


def test_the_unbounded_mapping_overprices_a_short_chain():
    # the finding: 4 tokens of a top-8-of-32 model reading 32 were priced at 64 of OLMoE's 64
    assert map_distinct(32, 8, 32, 8, 64) == 64
    assert map_distinct(32, 8, 32, 8, 64, tokens=4) == 32
    with pytest.raises(ValueError, match="top-k 80 of 64 experts"):
        map_distinct(10, 4, 32, 80, 64)


def test_independent_routing_matches_the_notes_figures():
    # ../shared/notes: Qwen3-30B-A3B 8 tokens -> 52, 32 -> 112, 63 -> 126 of 128.
    for tokens, expected in ((8, 52), (32, 112), (63, 126)):
        assert independent_distinct(tokens, 8, 128) == pytest.approx(expected, abs=1)


@pytest.mark.parametrize("case", PAPER_CASES, ids=lambda c: c.shape)
def test_paper_check_is_the_step_time_ratio_and_calibration_reproduces_it(case):
    gpu, shape = get_gpu("A100-80GB"), get_shape(case.shape)
    draft = draft_seconds(gpu, shape, case.width, case.depth)
    full = draft + verify_seconds(gpu, shape, case.num_tokens, case.distinct)
    budgeted = draft + verify_seconds(gpu, shape, case.num_tokens, case.budget)
    check = check_case(case)
    assert check.predicted_gain == pytest.approx(full / budgeted * (1 - 0.014))
    assert check.in_range == (1.1 <= check.predicted_gain <= 1.3)
    overhead = implied_overhead_s(case)
    if overhead > 0:
        assert check_case(case, overhead_s=overhead).predicted_gain == pytest.approx(
            case.reported_gain, rel=1e-6
        )


def test_unknown_names_list_the_known_ones():
    with pytest.raises(ValueError, match="known: A100-80GB, H100, H200"):
        get_gpu("V100")
    with pytest.raises(ValueError, match="OLMoE-1B-7B"):
        get_shape("llama")
    with pytest.raises(ValueError, match="unknown GPU 'A100'"):
        get_gpu("A100")  # not taken for the 80GB part: an A100-40GB reads 1.55 TB/s
    assert get_gpu("a100-80gb").name == "A100-80GB"
    for name in (42, None, True, 4.8):  # an option parsed as JSON, not a name
        with pytest.raises(ValueError, match=f"unknown GPU {name!r}"):
            get_gpu(name)
        with pytest.raises(ValueError, match=f"unknown model shape {name!r}"):
            get_shape(name)
    with pytest.raises(ValueError, match="outside"):
        verify_seconds(get_gpu("H200"), TOY, 4, 9)


@pytest.mark.parametrize(
    "call, message",
    [
        (lambda gpu: verify_seconds(gpu, TOY, -4, 2), r"tokens=-4; allowed: a number >= 0"),
        (lambda gpu: verify_seconds(gpu, TOY, 4, 2, context=-1), r"context=-1; allowed"),
        (lambda gpu: decode_seconds(gpu, TOY, context=float("nan")), r"context=nan; allowed"),
        (lambda gpu: draft_seconds(gpu, TOY, 0.5j, 2), r"width=0\.5j; allowed"),
        (lambda gpu: draft_seconds(gpu, TOY, 4, True), r"depth=True; allowed"),
    ],
)
def test_counts_the_roofline_cannot_price_are_named(call, message):
    with pytest.raises(ValueError, match=message):
        call(get_gpu("H200"))
    assert verify_seconds(get_gpu("H200"), TOY, np.int64(4), np.float64(2.0)) > 0  # numpy is fine


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"hidden": -2048}, "hidden is -2048; allowed: an integer >= 1"),
        ({"expert_dim": 2048.0}, "expert_dim is 2048.0; allowed: an integer >= 1"),
        ({"top_k": True}, "top_k is True; allowed: an integer >= 1"),
        ({"vocab": 0}, "vocab is 0; allowed: an integer >= 1"),
        ({"kv_bytes_per_token": -1}, "kv_bytes_per_token is -1; allowed: an integer >= 0"),
        ({"n_shared_experts": -2}, "n_shared_experts is -2; allowed: an integer >= 0"),
        ({"bytes_per_param": 0}, "bytes_per_param is 0; allowed: an integer >= 1"),
        ({"top_k": 9}, "top_k is 9; allowed: 1 to n_experts \\(8\\)"),
        ({"n_moe_layers": 3}, "n_moe_layers is 3; allowed: 1 to n_layers \\(2\\)"),
    ],
)
def test_a_shape_of_ones_own_refuses_impossible_sizes_by_field(change, message):
    with pytest.raises(ValueError, match=f"model shape 'toy': {message}"):
        replace(TOY, **change)
    assert replace(TOY, hidden=np.int64(64)).hidden == 64  # numpy integers are integers


@pytest.mark.parametrize(
    ("bandwidth", "peak"), [(4.8, 989.5e12), (4.8e12, float("nan")), (float("inf"), 1e12)]
)
def test_a_gpu_of_ones_own_refuses_rates_that_are_not_per_second(bandwidth, peak):
    with pytest.raises(ValueError, match="allowed: a finite number >= 1e\\+06"):
        GPU("mine", bandwidth, peak, "test")
    assert GPU("L40S", 864e9, 181e12, "test").bandwidth_Bps == 864e9


@pytest.mark.parametrize("bad", [float("inf"), float("nan"), -1.0, "1", True])
def test_overheads_are_finite_seconds(bad):
    with pytest.raises(ValueError, match="finite number of seconds >= 0"):
        Overheads(layer_s=bad)
