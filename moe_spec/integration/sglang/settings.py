"""The plugin's configuration: environment variables inherited by every SGLang rank.

SGLang plugins have no command-line flags of their own, so ``moe-spec serve``
(or the user) sets these before ``python -m sglang.launch_server`` starts:

=============================  =========================================================
``MOE_SPEC_POLICY``            policy name (``moe-spec policies`` lists them); unset: off
``MOE_SPEC_BUDGET``            B, distinct experts per MoE layer in a verify pass
``MOE_SPEC_MODE``              ``substitution`` (default) or ``truncation``
``MOE_SPEC_POLICY_OPTIONS``    the policy's keyword options as a JSON object
``MOE_SPEC_SGLANG_DISABLE``    ``1``: load the plugin but change nothing (off switch)
``MOE_SPEC_LOG_INTERVAL``      seconds between expert-count log lines (default 30, 0: off)
``MOE_SPEC_COUNTERS``          ``0``: no distinct-expert counters in the verify graph (default on)
=============================  =========================================================
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field

from moe_spec.budget import MODES, check_mode
from moe_spec.checks import FALSE_WORDS, TRUE_WORDS, flag_value

ENV_POLICY = "MOE_SPEC_POLICY"
ENV_BUDGET = "MOE_SPEC_BUDGET"
ENV_MODE = "MOE_SPEC_MODE"
ENV_OPTIONS = "MOE_SPEC_POLICY_OPTIONS"
ENV_DISABLE = "MOE_SPEC_SGLANG_DISABLE"
ENV_LOG_INTERVAL = "MOE_SPEC_LOG_INTERVAL"
ENV_COUNTERS = "MOE_SPEC_COUNTERS"
# options a server cannot honour (``auto``'s, which ``Auto.for_server`` would override)
SERVER_REFUSED_OPTIONS = {
    "guard": "SGLang runs the configured tree every step and a plugin cannot switch to a smaller "
    "tree or to plain decoding (on a chain with --speculative-adaptive the guard runs, and "
    "guard=true is allowed there)",
    "measure": "every tensor-parallel rank must plan alike, so a server prices its steps with "
    "the cost model, not with the wall times each rank would measure",
    "gate": "the draft gate reads the draft's first level on the host before the tree, and "
    "SGLang drafts on the device",
}


class SettingsError(ValueError):
    """An environment variable of the plugin holds a value it cannot use."""


@dataclass(frozen=True)
class ServeSettings:
    """What the plugin applies in every target MoE layer of a verify forward."""

    policy: str
    budget: int
    mode: str = "substitution"
    options: dict = field(default_factory=dict)
    log_interval_s: float = 30.0
    counters: bool = True

    def __post_init__(self) -> None:
        """Every field that is out of range, named in one :class:`SettingsError`."""
        errors = []
        if not self.policy:
            errors.append(f"{ENV_POLICY} is empty; name a policy (see `moe-spec policies`)")
        if isinstance(self.budget, bool) or not isinstance(self.budget, int) or self.budget < 1:
            errors.append(f"{ENV_BUDGET}={self.budget!r}; allowed: an integer >= 1")
        try:
            check_mode(self.mode)
        except ValueError:
            errors.append(f"{ENV_MODE}={self.mode!r}; allowed: {', '.join(MODES)}")
        if not isinstance(self.options, dict):
            errors.append(f"{ENV_OPTIONS} must be a JSON object, got {self.options!r}")
        if not self.log_interval_s >= 0:  # NaN too
            errors.append(f"{ENV_LOG_INTERVAL}={self.log_interval_s}; allowed: >= 0")
        if errors:
            raise SettingsError("; ".join(errors))

    def to_environ(self) -> dict[str, str]:
        """The environment variables that reproduce these settings in a rank process."""
        return {
            ENV_POLICY: self.policy,
            ENV_BUDGET: str(self.budget),
            ENV_MODE: self.mode,
            ENV_OPTIONS: json.dumps(self.options, sort_keys=True),
            ENV_LOG_INTERVAL: f"{self.log_interval_s:g}",
            ENV_COUNTERS: "1" if self.counters else "0",
        }


def server_option_errors(settings: ServeSettings, chains: bool) -> list[str]:
    """The options a server cannot honour (:data:`SERVER_REFUSED_OPTIONS`) that ``settings``
    turn on, each with why; ``guard`` is what runs on an adaptive chain (``chains``), so
    there it may be given. Checked by ``moe-spec serve`` with every other refusal, and by
    every rank as the model loads (for settings made in the environment)."""
    errors = []
    for name, why in SERVER_REFUSED_OPTIONS.items():
        value = settings.options.get(name)
        if value and not (name == "guard" and chains):
            errors.append(
                f"policy option {name}={json.dumps(value)} ({settings.policy}): {why}; "
                f"leave {name} unset"
            )
    return errors


def env_flag(environ: Mapping[str, str], name: str, default: bool) -> bool:
    """An on/off variable: a true or false word (any case), ``default`` where unset or empty;
    anything else a :class:`SettingsError` (a typo must not leave a switch as it was)."""
    value = flag_value(environ.get(name), default)
    if value is None:
        allowed = f"{', '.join(TRUE_WORDS)} or {', '.join(FALSE_WORDS)} (or unset)"
        raise SettingsError(f"{name}={environ[name]!r}; allowed: {allowed}")
    return value


def plugin_disabled(environ: Mapping[str, str] | None = None) -> bool:
    """True when the off switch ``MOE_SPEC_SGLANG_DISABLE`` is set to a true word."""
    return env_flag(os.environ if environ is None else environ, ENV_DISABLE, False)


def settings_from_environ(environ: Mapping[str, str] | None = None) -> ServeSettings | None:
    """The settings in ``environ``; None when no policy is configured or the switch is off.
    Every malformed variable is named in one :class:`SettingsError` (a server that starts
    for each would take a start per typo)."""
    environ = os.environ if environ is None else environ
    if plugin_disabled(environ) or not environ.get(ENV_POLICY, "").strip():
        return None
    errors: list[str] = []

    def parsed(name: str, default: str, parse, allowed: str):
        raw = environ.get(name, "").strip() or default
        try:
            return parse(raw)
        except ValueError as exc:
            detail = f": {exc}" if isinstance(exc, json.JSONDecodeError) else ""
            errors.append(f"{name}={raw!r}{allowed}{detail}")
            return None

    if not environ.get(ENV_BUDGET, "").strip():
        errors.append(f"{ENV_POLICY} is set but {ENV_BUDGET} is not; set B, e.g. 32")
        budget = None
    else:
        budget = parsed(ENV_BUDGET, "", int, "; allowed: an integer >= 1")
    options = parsed(ENV_OPTIONS, "{}", json.loads, " is not JSON")
    interval = parsed(ENV_LOG_INTERVAL, "30", float, "; allowed: seconds")
    try:
        counters = env_flag(environ, ENV_COUNTERS, True)
    except SettingsError as exc:
        errors.append(str(exc))
        counters = True
    try:  # the fields that did not parse stand in valid: their errors are said above
        settings = ServeSettings(
            policy=environ[ENV_POLICY].strip(),
            budget=1 if budget is None else budget,
            mode=environ.get(ENV_MODE, "").strip() or "substitution",
            options={} if options is None else options,
            log_interval_s=30.0 if interval is None else interval,
            counters=counters,
        )
    except SettingsError as exc:
        errors.append(str(exc))
    if errors:
        raise SettingsError("; ".join(errors))
    return settings
