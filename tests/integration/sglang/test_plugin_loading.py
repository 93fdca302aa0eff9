"""SGLang's own load_plugins() finds the entry point and registers the hooks (or not)."""

from __future__ import annotations

from importlib.metadata import entry_points

from moe_spec.integration.sglang.plugin import (
    FORWARD_CONTEXT,
    LOAD_MODEL,
    RUNNER_FORWARD,
    TOPK_FORWARD,
)
from tests.integration.sglang.conftest import run_scenario

ALL_HOOKS = sorted([FORWARD_CONTEXT, LOAD_MODEL, RUNNER_FORWARD, TOPK_FORWARD])
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


def test_off_switch_registers_nothing():
    state = run_scenario("load", **ON, MOE_SPEC_SGLANG_DISABLE="1")
    assert state == {"targets": [], "patched": [], "topk_wrapped": False, "settings": None}


def test_no_policy_registers_nothing():
    assert run_scenario("load")["targets"] == []


def test_bad_configuration_refuses_every_model_load():
    state = run_scenario("refusal", MOE_SPEC_POLICY="no-such-policy", MOE_SPEC_BUDGET="4")
    assert state["targets"] == [LOAD_MODEL] and not state["topk_wrapped"]
    assert len(state["refused"]) == 1
    assert "UnsupportedSetupError" in state["refused"][0]
    assert "unknown policy 'no-such-policy'" in state["refused"][0]
    assert "token-priority" in state["refused"][0]  # and what is available


def test_budget_without_policy_options_json_is_refused():
    state = run_scenario(
        "refusal",
        MOE_SPEC_POLICY="router-mass",
        MOE_SPEC_BUDGET="4",
        MOE_SPEC_POLICY_OPTIONS="{not json",
    )
    assert "MOE_SPEC_POLICY_OPTIONS" in state["refused"][0]
