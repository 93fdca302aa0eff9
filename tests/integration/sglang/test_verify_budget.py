"""Real SGLang MoE blocks (Qwen3-MoE, OLMoE) on CPU, with the plugin loaded by SGLang.

How deep this reaches: SGLang's load_plugins() and HookRegistry patch the real
classes; ``Qwen3MoeSparseMoeBlock`` and ``OlmoeMoE`` are built from SGLang's
models with a published runtime context; their gate, TopK and FusedMoE
(native CPU expert loop) run under SGLang's real ``forward_context``. The
ForwardBatch is a stand-in carrying the fields the plugin reads (mode,
positions, seq_lens, non-padded count). Not reached: a scheduler, the EAGLE
workers, CUDA-graph capture and the Triton fused-MoE kernel (no GPU here).
"""

from __future__ import annotations

import pytest

from tests.integration.sglang.conftest import run_scenario

B = 4


@pytest.fixture(
    scope="module",
    params=[
        {"MOE_SPEC_POLICY": "router-mass", "MOE_SPEC_MODE": "substitution"},
        {
            "MOE_SPEC_POLICY": "token-priority",
            "MOE_SPEC_MODE": "truncation",
            "MOE_SPEC_POLICY_OPTIONS": '{"decay": 0.7}',
        },
    ],
    ids=["router-mass-substitution", "token-priority-truncation"],
)
def verify(request):
    return run_scenario("verify", MOE_SPEC_BUDGET=str(B), **request.param)


def test_other_forward_modes_are_untouched(verify):
    assert verify["untouched_modes"] == {
        "DECODE": True,
        "EXTEND": True,
        "DRAFT_EXTEND_V2": True,
        "IDLE": True,
    }


def test_verify_reads_at_most_b_experts_per_layer(verify):
    for layer in verify["layers"]:
        assert layer["type"] == "StandardTopKOutput"
        assert layer["distinct_before"] > B  # the budget had something to cut
        assert layer["distinct_after"] <= B  # measured on what FusedMoE received
        assert layer["min_id"] >= 0  # re-routed, never -1
        assert layer["out_changed"]


def test_verify_routing_equals_the_budgeting_core(verify, request):
    """Same combine weight per (token, expert) as the core; ids distinct in every row."""
    for layer in verify["layers"]:
        assert layer["routing_equal_core"], layer
        assert layer["distinct_ids_per_row"], layer
        if "substitution" in request.node.callspec.id:
            assert layer["ids_equal_core"], layer  # substitution: the very same tensors


def test_sglang_experts_compute_what_the_loop_reference_computes(verify):
    for layer in verify["layers"]:
        assert layer["out_vs_loop_reference"] < 1e-5


def test_hook_never_waits_for_the_device(verify):
    assert verify["host_syncs"] == []


def test_padded_rows_keep_what_sglang_wrote(verify):
    assert verify["padded_rows_as_sglang_wrote"]
    assert verify["sglang_padded_ids"] == [[-1], [-1]]  # SGLang's own mask, not ours
    assert all(n <= B for n in verify["padded_distinct_after"])


def test_counters_see_every_verify_pass(verify):
    counters = verify["counters"]
    assert counters["passes"] == [2, 2]  # one full and one padded verify pass per layer
    assert all(a <= B for a in counters["after"])
    assert all(b > a for b, a in zip(counters["before"], counters["after"], strict=True))
    assert "-> 4.0" in verify["log_line"]


def test_draft_layers_and_unsupported_formats():
    result = run_scenario("draft_and_formats", MOE_SPEC_POLICY="router-mass", MOE_SPEC_BUDGET="4")
    assert result["draft_distinct"] > B  # a draft TopK in a verify pass keeps its routing
    assert result["bypassed_passed_through"]
    assert result["skipped_logged"] == ["TopK output BypassedTopKOutput cannot be rewritten"]
    refusals = result["refusals"]
    assert "BYPASSED routes inside the kernel" in refusals["bypassed_format"]
    assert "--disable-shared-experts-fusion" in refusals["fused_shared_experts"]
    assert "DP-attention" in refusals["dp_attention"]
    assert "--moe-a2a-backend deepep" in refusals["deepep"]
    assert "MoE layer 1: budget B=3 is below top-k=4" in refusals["budget_below_topk"]
    assert "MoE layer 0: 2 target TopK modules share this layer_id" in refusals["shared_layer_id"]
    assert (
        "a selection bias (correction_bias) on a softmax router (ERNIE-4.5"
        in (refusals["softmax_bias"])
    )
    for target in ("sglang.srt.layers.moe.topk.TopK.forward", "sglang.srt.model_executor."
                   "forward_context.forward_context"):  # fmt: skip
        assert (
            f"the budget runs in a hook on {target}, which this SGLang does not have"
            in (refusals[f"unhooked {target}"])
        )
    graphs = "sglang.srt.model_executor.model_runner.ModelRunner.init_cuda_graphs"
    assert refusals[f"unhooked {graphs}"] is None  # a warning: capture passes would count
    assert any("capture passes count" in w for w in result[f"warned {graphs}"])
    grouped = result["grouped_bias"]  # GLM-4.5's: scored by sigmoid, as SGLang does
    assert grouped["budgeted"] and grouped["before"] > B >= grouped["distinct"]
    assert grouped["skipped"] == result["skipped_logged"]  # nothing new skipped
    assert (
        "'layer-adaptive' (from built-in): budgets has 3 entries; the model has 2 MoE layers"
        in refusals["layer_budgets"]
    )
