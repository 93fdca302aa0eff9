"""SGLang's own load_plugins() finds the entry point and registers the hooks (or not)."""

from __future__ import annotations

from importlib.metadata import entry_points

from moe_spec.integration.sglang.eagle_target import notice
from moe_spec.integration.sglang.plugin import (
    FORWARD_CONTEXT,
    INIT_GRAPHS,
    LOAD_MODEL,
    RUNNER_FORWARD,
    TOPK_FORWARD,
    WORKER_GRAPHS,
)
from tests.integration.sglang.conftest import run_scenario

ALL_HOOKS = sorted(
    [FORWARD_CONTEXT, INIT_GRAPHS, LOAD_MODEL, RUNNER_FORWARD, TOPK_FORWARD, WORKER_GRAPHS]
)
ON = {"MOE_SPEC_POLICY": "token-priority", "MOE_SPEC_BUDGET": "4"}


def test_entry_point_is_installed():
    names = {ep.name: ep.value for ep in entry_points(group="sglang.srt.plugins")}
    assert names["moe_spec"] == "moe_spec.integration.sglang.plugin:register"


def test_load_plugins_registers_and_applies_every_hook():
    state = run_scenario(
        "load", **ON, MOE_SPEC_MODE="truncation", MOE_SPEC_POLICY_OPTIONS='{"decay": 0.7}'
    )
    assert state["targets"] == ALL_HOOKS
    assert state["patched"] == ALL_HOOKS
    assert state["topk_wrapped"]
    assert state["settings"] == {
        "policy": "token-priority",
        "budget": 4,
        "mode": "truncation",
        "options": {"decay": 0.7},
    }


def test_sglang_plugins_allow_list_selects_the_plugin():
    assert run_scenario("load", **ON, SGLANG_PLUGINS="other,moe_spec")["patched"] == ALL_HOOKS
    skipped = run_scenario("load", **ON, SGLANG_PLUGINS="some_other_plugin")
    assert skipped["targets"] == [] and not skipped["topk_wrapped"]


def test_off_switch_changes_nothing_but_says_so_at_model_load():
    """Only hooks on load_model: a notice (SGLang configures the ranks' logging after the
    plugins) and the accessor EAGLE needs from a Qwen2-MoE target, which budgets nothing."""
    state = run_scenario("load", **ON, MOE_SPEC_SGLANG_DISABLE="1")
    assert state["targets"] == [LOAD_MODEL]
    assert not state["topk_wrapped"] and state["settings"] is None
    assert state["notices"] == [
        notice("Qwen2MoeForCausalLM"),
        "moe-spec: plugin loaded but switched off (MOE_SPEC_SGLANG_DISABLE)",
    ]
    assert state["accessor_added"]


def test_a_mistyped_off_switch_refuses_the_start():
    """``MOE_SPEC_SGLANG_DISABLE=ture`` is neither on nor off: an operator who meant to switch
    budgeting off must not get a server that budgets."""
    state = run_scenario("refusal", **ON, MOE_SPEC_SGLANG_DISABLE="ture")
    assert state["targets"] == [LOAD_MODEL] and not state["topk_wrapped"]
    assert (
        "invalid configuration: MOE_SPEC_SGLANG_DISABLE='ture'; allowed: 1, true"
        in (state["refused"][0])
    )


def test_no_policy_changes_nothing():
    state = run_scenario("load")
    assert state["targets"] == [LOAD_MODEL] and not state["topk_wrapped"]
    assert state["notices"] == [
        notice("Qwen2MoeForCausalLM"),
        "moe-spec: plugin loaded; no MOE_SPEC_POLICY set, nothing to budget",
    ]


def test_bad_configuration_refuses_every_model_load():
    state = run_scenario("refusal", MOE_SPEC_POLICY="no-such-policy", MOE_SPEC_BUDGET="4")
    assert state["targets"] == [LOAD_MODEL] and not state["topk_wrapped"]
    assert len(state["refused"]) == 1
    assert "UnsupportedSetupError" in state["refused"][0]
    assert "unknown policy 'no-such-policy'" in state["refused"][0]
    assert "token-priority" in state["refused"][0]  # and what is available


def broken_plugin(tmp_path):
    dist = tmp_path / "broken_policies-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: broken-policies\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[moe_spec.policies]\nbroken = broken_policies\n")
    (tmp_path / "broken_policies.py").write_text("raise ImportError('no such dependency')\n")
    return str(tmp_path)


def test_a_policy_from_a_broken_plugin_refuses_the_start(tmp_path):
    """The broken plugin is left out; asking for its policy is refused, naming why."""
    state = run_scenario(
        "refusal", MOE_SPEC_POLICY="broken", MOE_SPEC_BUDGET="4", PYTHONPATH=broken_plugin(tmp_path)
    )
    assert state["targets"] == [LOAD_MODEL] and not state["topk_wrapped"]
    assert "UnsupportedSetupError: moe-spec: invalid configuration" in state["refused"][0]
    assert "unknown policy 'broken'" in state["refused"][0]
    assert "left out: plugin broken-policies 0.1" in state["refused"][0]
    assert "no such dependency" in state["refused"][0]


def test_a_broken_plugin_beside_a_built_in_policy_is_left_out_and_the_server_budgets(tmp_path):
    state = run_scenario(
        "refusal",
        MOE_SPEC_POLICY="router-mass",
        MOE_SPEC_BUDGET="4",
        PYTHONPATH=broken_plugin(tmp_path),
    )
    assert state["topk_wrapped"] and state["settings"]["policy"] == "router-mass"


def test_budget_without_policy_options_json_is_refused():
    state = run_scenario(
        "refusal",
        MOE_SPEC_POLICY="router-mass",
        MOE_SPEC_BUDGET="4",
        MOE_SPEC_POLICY_OPTIONS="{not json",
    )
    assert "MOE_SPEC_POLICY_OPTIONS" in state["refused"][0]
