"""``auto`` in the SGLang plugin: per-layer budgets from a device tensor, no host reads,
and the acceptance of every verify step fed back to the policy between steps."""

from __future__ import annotations

import re

import pytest

from moe_spec.integration.sglang.runtime import BudgetRuntime
from moe_spec.integration.sglang.settings import ServeSettings, server_option_errors
from moe_spec.kernels.budget_select_torch import REST
from tests.integration.sglang.conftest import run_scenario
from tests.integration.sglang.scenarios import ACCEPT_INDEX, DEPTHS, ROOT_ONLY

EXPERTS = [8, 16]  # the scenario's two MoE layers: Qwen3-MoE (top-2), OLMoE (top-4)


def test_per_layer_budgets_change_in_place_between_passes():
    result = run_scenario("auto", MOE_SPEC_POLICY="auto", MOE_SPEC_BUDGET="16")
    assert result["host_syncs"] == []
    assert result["same_tensor"]  # rewritten in place: a captured graph stays valid
    assert not result["record_routing"]
    assert result["distinct"]["[8, 16]"] == result["before"]  # B >= E: nothing cut
    assert result["before"][0] > 3 and result["before"][1] > 6  # something to cut
    for budgets in ([3, 6], [2, 4]):
        got = result["distinct"][str(budgets)]
        assert got == budgets, (budgets, got)
    # at the cap the policy may rest: every row as SGLang routed it, and no ranking made;
    # rested with its scores kept (REST_SCORED), ranked after the forward as inside it
    # (layer 0 has 8 experts of the buffer's 16: the columns past its experts do not count)
    inside = [row[:E] for row, E in zip(result["ranked_inside"], EXPERTS, strict=True)]
    assert [sorted(row) for row in inside] == [list(range(E)) for E in EXPERTS]
    assert result["rested"] == {"rows_unchanged": True, "ranks": [[-1] * 16] * 2}
    scored = result["rested_scored"]
    assert scored["rows_unchanged"]
    assert [row[:E] for row, E in zip(scored["ranks"], EXPERTS, strict=True)] == inside
    # a plain decode (one row per request) that budgets [2, 4] would cut: auto's decodes
    # rest, so the plugin runs no selection there; a policy that budgets decodes cuts it
    assert all(d > b for d, b in zip(result["decode_distinct"], [2, 4], strict=True))
    assert result["decodes"]["False"] == {
        "calls": 0,
        "rows_unchanged": True,
        "distinct": result["decode_distinct"],
    }
    budgeted = result["decodes"]["True"]
    assert budgeted["calls"] == 2 and not budgeted["rows_unchanged"]
    assert budgeted["distinct"] == [2, 4]


@pytest.fixture(scope="module")
def fed():
    # every step enters the window and the guard replans every 8 steps (the defaults thin
    # both once the window is full: tests/test_auto_policy.py), so that 32 root-only steps
    # are enough for the budgets to follow; the options also travel through the environment
    options = '{"learn_every": 1, "max_replan": 8}'
    return run_scenario(
        "auto_feed", MOE_SPEC_POLICY="auto", MOE_SPEC_BUDGET="16", MOE_SPEC_POLICY_OPTIONS=options
    )


def paths(accept_index: list[list[int]]) -> list[list[int]]:
    """Each request's accepted tree nodes (its own indices), as observe should get them."""
    return [[r - 7 * i for r in rows if r >= 0] for i, rows in enumerate(accept_index)]


def test_every_verify_step_reaches_observe_with_what_was_accepted(fed):
    assert set(fed["hooked"].values()) == {1}  # EAGLE and multi-layer EAGLE workers
    assert fed["host_syncs"] == []  # recording the routing reads nothing inside the forward
    assert len(fed["steps"]) == 44
    for n, step in enumerate(fed["steps"]):
        want = paths(ACCEPT_INDEX if n < 12 else ROOT_ONLY)[:1]  # the batch's first request
        assert [o["path"] for o in step["outcomes"]] == want, n
        for i, outcome in enumerate(step["outcomes"]):
            assert outcome["depth_N"] == DEPTHS[i]
            assert outcome["tree"] == [7, 4, 3]  # --speculative-num-draft-tokens/topk/steps
            assert outcome["logprob_N"] is None  # SGLang keeps no draft scores
            assert all(outcome["ids_match_unbudgeted"]), (n, i)
        assert all(step["kept_within_ranked"]), n  # the recorded ranking is the one applied
        for distinct, budget, E in zip(step["distinct"], step["budgets"], EXPERTS, strict=True):
            assert distinct <= min(budget, E), (n, step)
    assert (
        "auto observed 44 verify steps (44 request steps folded in, from 0 requests)"
        in fed["feed_line"]
    )
    assert "mean accepted length 1.41" in fed["feed_line"]  # (12 * (2 + 3) + 32 * 2) / 88


def test_observed_acceptance_rewrites_the_budgets_in_place(fed):
    assert fed["same_tensor"]
    assert fed["initial"] == [16, 16]
    budgets = [step["budgets"] for step in fed["steps"]]
    assert any(b != fed["initial"] for b in budgets[1:12])  # it moved while paths were deep
    # only roots accepted at the end: any budget commits the same one token, so the
    # cheapest one that leaves room for every layer's top-k (4) wins
    assert fed["final"] == fed["host_copy"] == [4, 4]
    assert budgets[-1] == [4, 4]
    reach = fed["reach_D"]  # P(reach depth d), prior 2**-d: [1, .5, .25, .125]
    assert reach[1] < 0.5  # 12 of the (at most) 44 observed paths reached depth 1
    assert reach[3] < 0.01  # none reached depth 3


def test_a_verify_result_laid_out_otherwise_stops_learning_only(fed):
    stopped = fed["stopped"]
    assert "has no accept_index" in stopped["no_accept_index"]
    assert "rows of its own 7, root first" in stopped["rows_of_another_request"]
    # a step that was to be ranked after its forward: with no feed to rank them, the
    # selections stop writing scores (they rest, keeping every expert, as the budgets say)
    names = ("no_accept_index", "rows_of_another_request")
    assert {stopped[f"{name} rest flag"] for name in names} == {REST}


def test_the_feed_expects_the_tree_sglang_runs_not_the_sizes_given():
    """SGLang 0.5 resolves EAGLE's sizes into a view beside the fields as given (which it
    leaves as they were): 8 draft tokens on a chain of 3 steps run as 4. Read as given, the
    feed expected 8 rows a request and stopped at the first step of 2 requests."""
    result = run_scenario("resolved_tree", MOE_SPEC_POLICY="auto", MOE_SPEC_BUDGET="16")
    assert result == {"as_given": [8, 1, 3], "feed": [4, 1, 3]}


def test_a_missing_verify_hook_refuses_the_start(fed):
    for multi_layer, worker in (("False", "EAGLEWorkerV2"), ("True", "MultiLayerEagleWorkerV2")):
        refusal = fed["refused"][multi_layer]
        assert refusal and f"{worker}.verify, which this SGLang does not have" in refusal


def test_guard_is_refused_because_sglang_runs_the_configured_tree():
    guarded = ServeSettings("auto", 16, options={"guard": True, "measure": True})
    guard, measure = server_option_errors(guarded, chains=False)
    assert re.search(r"guard=true \(auto\).*cannot switch to a smaller", guard)
    assert "measure=true (auto)" in measure
    (measure,) = server_option_errors(guarded, chains=True)  # the guard is what runs there
    assert "measure=true (auto)" in measure
    runtime = BudgetRuntime(ServeSettings("auto", 16, options={"guard": False}))
    assert runtime.learns and runtime.policy.options["guard"] is False
    assert not BudgetRuntime(ServeSettings("token-priority", 16)).learns


def test_on_an_adaptive_chain_the_guard_chooses_sglangs_depth():
    result = run_scenario("auto_chain", MOE_SPEC_POLICY="auto", MOE_SPEC_BUDGET="16")
    # the hooks on EAGLEWorkerV2.__init__ and _build_trivial_verify_input were applied
    assert result["patched"] == [True, True]
    assert result["chain"] == {
        "chains": True,
        "guard": True,
        "params": "GuardedDepth",
        "candidates": [0, 1, 3, 7],  # the chain of 7, its halvings down to 1, plain decoding
        "guesses": True,  # every decode extends: the draft's guess before it is read
    }
    for setup in ("plain_chain", "tree"):  # the configured tree every step: budgets only
        assert result[setup]["chains"] is False and result[setup]["guard"] is False
        assert result[setup]["guesses"] is False
        assert result[setup]["params"] == "AdaptiveSpeculativeParams"  # left as SGLang made it
    unguessed = result["unguessed"]  # without the decode-input hook: no guesses, said so
    assert unguessed["guesses"] is False
    assert any("the guard decodes without them (shadow is off)" in w for w in unguessed["warnings"])
    assert "EAGLEWorkerV2.__init__, which this SGLang does not have" in result["refused"]
