"""The plugin's environment variables: parsed, validated, round-tripped."""

from __future__ import annotations

import pytest

from moe_spec.integration.sglang.settings import (
    ServeSettings,
    SettingsError,
    plugin_disabled,
    settings_from_environ,
)


def test_round_trip_through_the_environment():
    settings = ServeSettings("token-priority", 32, "truncation", {"decay": 0.7}, 10.0)
    assert settings_from_environ(settings.to_environ()) == settings


def test_defaults_and_off():
    assert settings_from_environ({}) is None
    assert settings_from_environ({"MOE_SPEC_POLICY": "  "}) is None
    on = {"MOE_SPEC_POLICY": "router-mass", "MOE_SPEC_BUDGET": "16"}
    assert settings_from_environ(on) == ServeSettings("router-mass", 16)
    for word in ("1", "true", "YES", "on"):
        assert plugin_disabled({"MOE_SPEC_SGLANG_DISABLE": word})
        assert settings_from_environ({**on, "MOE_SPEC_SGLANG_DISABLE": word}) is None
    for word in ("0", "off", "", " "):
        assert not plugin_disabled({"MOE_SPEC_SGLANG_DISABLE": word})
    with pytest.raises(SettingsError, match=r"MOE_SPEC_SGLANG_DISABLE='Ture'; allowed: 1, true"):
        plugin_disabled({"MOE_SPEC_SGLANG_DISABLE": "Ture"})  # a typo leaves nothing as it was


@pytest.mark.parametrize(
    "env, words",
    [
        ({"MOE_SPEC_POLICY": "router-mass"}, "MOE_SPEC_BUDGET is not"),
        ({"MOE_SPEC_BUDGET": "lots"}, "MOE_SPEC_BUDGET='lots'"),
        ({"MOE_SPEC_BUDGET": "0"}, "MOE_SPEC_BUDGET=0; allowed: an integer >= 1"),
        ({"MOE_SPEC_MODE": "drop"}, "MOE_SPEC_MODE='drop'; allowed: substitution, truncation"),
        ({"MOE_SPEC_POLICY_OPTIONS": "{"}, "is not JSON"),
        ({"MOE_SPEC_POLICY_OPTIONS": "[1]"}, "must be a JSON object"),
        ({"MOE_SPEC_LOG_INTERVAL": "-1"}, "MOE_SPEC_LOG_INTERVAL=-1.0; allowed: >= 0"),
        ({"MOE_SPEC_LOG_INTERVAL": "soon"}, "MOE_SPEC_LOG_INTERVAL='soon'"),
    ],
)
def test_bad_values_name_the_variable_and_what_is_allowed(env, words):
    base = {"MOE_SPEC_POLICY": "router-mass", "MOE_SPEC_BUDGET": "16"}
    if env == {"MOE_SPEC_POLICY": "router-mass"}:
        base = {}
    with pytest.raises(SettingsError, match=words.replace("[", r"\[").replace("(", r"\(")):
        settings_from_environ({**base, **env})


def test_counters_switch():
    on = {"MOE_SPEC_POLICY": "router-mass", "MOE_SPEC_BUDGET": "16"}
    assert settings_from_environ(on).counters is True
    off = ServeSettings("router-mass", 16, counters=False)
    assert off.to_environ()["MOE_SPEC_COUNTERS"] == "0"
    assert settings_from_environ(off.to_environ()) == off
    for word in ("0", "false", "Off", "no"):
        assert settings_from_environ({**on, "MOE_SPEC_COUNTERS": word}).counters is False
    with pytest.raises(SettingsError, match="MOE_SPEC_COUNTERS='maybe'; allowed: 1, true"):
        settings_from_environ({**on, "MOE_SPEC_COUNTERS": "maybe"})


def test_every_malformed_variable_is_named_in_one_refusal():
    """A server under plain launch_server took a start per typo: the first bad variable
    alone was named (an SGLang walkthrough, five variables, five starts)."""
    environ = {
        "MOE_SPEC_POLICY": "router-mass",
        "MOE_SPEC_BUDGET": "abc",
        "MOE_SPEC_MODE": "bogus",
        "MOE_SPEC_POLICY_OPTIONS": "{bad",
        "MOE_SPEC_LOG_INTERVAL": "-1",
        "MOE_SPEC_COUNTERS": "2",
    }
    with pytest.raises(SettingsError) as got:
        settings_from_environ(environ)
    said = str(got.value)
    for part in (
        "MOE_SPEC_BUDGET='abc'; allowed: an integer >= 1",
        "MOE_SPEC_POLICY_OPTIONS='{bad' is not JSON",
        "MOE_SPEC_COUNTERS='2'; allowed:",
        "MOE_SPEC_MODE='bogus'; allowed: substitution, truncation",
        "MOE_SPEC_LOG_INTERVAL=-1.0; allowed: >= 0",
    ):
        assert part in said, part
