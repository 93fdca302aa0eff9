"""Configurations of an A/B run: the policies under test and the baselines.

A configuration is written ``NAME[:key=value,...]``. NAME is a budgeting
policy (``token-priority``, ``router-mass``, ... or a plugin's) or a baseline:

- ``autoregressive``: one target forward per token, no draft;
- ``none``: unbudgeted tree speculative decoding (what EAGLE-3 does);
- ``depth-width``: Cascade-style, unbudgeted, with the tree size chosen per
  step from the cost model (see ``moe_spec.ab.depth_width``).

An adaptive policy (``auto``) needs no budget (B is then its cap, default E):
``auto:repair=true,opt.shape=Qwen3-30B-A3B``; its guard may decode steps
autoregressively or on a smaller tree (the report's ``guard`` columns).

Keys: ``B``/``budget``, ``mode`` (substitution|truncation), ``tokens``/``num_tokens``,
``width``, ``depth``, ``T``/``temperature``, ``repair`` (true|false: re-run unbudgeted
the accepted path's tokens the budget changed, so the output is the unbudgeted run's;
engine backend), ``repair_min``/``repair_min_tokens`` (a shorter changed tail is cut
instead of re-run; default 1), ``label``, ``server`` (sglang backend), and
the policy's own options as ``opt.NAME=VALUE`` (VALUE read as JSON when it parses:
``draft-path:B=16,opt.order=logprob``). A ``.json`` file holds a list of objects with
the same keys (long names, plus ``policy``, and ``options`` as an object; numbers as
numbers: ``"B": "8"`` is refused), or ``{"configs": [...]}``; a ``.toml`` file holds
``[[config]]`` tables.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, fields
from pathlib import Path

import tomllib

from moe_spec.budget import MODES
from moe_spec.engine.generate import SpecConfig, repair_label
from moe_spec.policies import get_policy

BASELINES = ("autoregressive", "none", "depth-width")
ALIASES = {
    "B": "budget",
    "tokens": "num_tokens",
    "T": "temperature",
    "repair_min": "repair_min_tokens",
}


@dataclass(frozen=True)
class RunConfig:
    """One arm of the A/B run."""

    policy: str  # a policy name or one of BASELINES
    budget: int | None = None
    mode: str = "substitution"
    num_tokens: int = 32
    width: int = 8
    depth: int = 6
    temperature: float = 0.0
    label: str = ""
    server: str | None = None
    options: dict = field(default_factory=dict)  # the policy's keyword options
    repair: bool = False  # re-run unbudgeted what the budget changed on the accepted path
    repair_min_tokens: int = 1  # with repair: a shorter changed tail is cut instead

    def __post_init__(self) -> None:
        if not isinstance(self.policy, str) or not self.policy:
            raise ValueError(f"policy must be a non-empty name, got {self.policy!r}")
        check_label(self.label, default_ok=True)
        budgeted = self.policy not in BASELINES
        if budgeted and self.budget is None and not is_adaptive(self.policy):
            unknown = unknown_here(self.policy)
            if unknown:  # a typo, more likely than a policy installed on a server alone
                raise ValueError(
                    f"{unknown}; a policy installed only where it runs (a server's plugin) "
                    f"needs its budget here, e.g. {self.policy}:B=16"
                )
            raise ValueError(f"{self.policy}: a budget is required, e.g. {self.policy}:B=16")
        if not budgeted and self.budget is not None:
            raise ValueError(
                f"{self.policy} is a baseline and takes no budget (got B={self.budget})"
            )
        if not isinstance(self.options, dict):
            raise ValueError(f"options must be a mapping, got {self.options!r}")
        if self.options and not budgeted:
            raise ValueError(f"{self.policy} is a baseline and takes no policy options")
        if self.options:
            get_policy(self.policy, **self.options)  # unknown options: the policy's own error
        if self.mode not in MODES:
            raise ValueError(f"mode is {self.mode!r}; allowed: {', '.join(MODES)}")
        if self.repair and not budgeted:
            raise ValueError(f"{self.policy} is a baseline: repair applies to budgeted policies")
        if self.repair_min_tokens != 1 and not self.repair:
            raise ValueError("repair_min applies only with repair=true")
        for key, value in meaningless(self).items():  # (--mode, --num-tokens, ... defaults)
            object.__setattr__(self, key, value)
        self.spec()  # validates the tree and the temperature
        if not self.label:
            object.__setattr__(self, "label", default_label(self))

    @property
    def kind(self) -> str:
        return self.policy if self.policy in ("autoregressive", "depth-width") else "speculative"

    def spec(self) -> SpecConfig:
        """The engine's configuration (baselines run unbudgeted)."""
        budgeted = self.policy not in BASELINES
        return SpecConfig(
            width=self.width,
            depth=self.depth,
            num_tokens=self.num_tokens,
            temperature=self.temperature,
            policy=self.policy if budgeted else "none",
            budget=self.budget,
            mode=self.mode,  # type: ignore[arg-type]
            policy_options=dict(self.options),
            repair=self.repair,
            repair_min_tokens=self.repair_min_tokens,
        )


TREE_KEYS = ("num_tokens", "width", "depth")


def meaningless(config: RunConfig) -> dict:
    """``field -> default`` of the fields that cannot change ``config``'s tokens, held at
    their defaults so that labels and the resume check ignore them: a baseline's budget mode
    (it runs unbudgeted) and an autoregressive arm's tree (it drafts none)."""
    return {k: field_default(k) for k in meaningless_keys(config.policy)}


def refuse_meaningless(given: dict) -> None:
    """Refuse a key the user wrote for an arm it cannot change (:func:`meaningless_keys`),
    at a value other than its default."""
    policy = str(given["policy"])
    bad = [k for k in meaningless_keys(policy) if k in given and given[k] != field_default(k)]
    if bad:
        why = "it runs unbudgeted" if "mode" in bad else "it drafts no tree"
        raise ValueError(
            f"{', '.join(bad)} cannot change {policy} ({why}); leave "
            f"{'it' if len(bad) == 1 else 'them'} out"
        )


def field_default(name: str):
    """:class:`RunConfig`'s default for field ``name``."""
    return next(f.default for f in fields(RunConfig) if f.name == name)


def meaningless_keys(policy: str) -> tuple[str, ...]:
    """The fields that cannot change ``policy``'s tokens (:func:`meaningless`)."""
    keys = ("mode",) if policy in BASELINES else ()
    return keys + (TREE_KEYS if policy == "autoregressive" else ())


def check_label(value: object, default_ok: bool = False) -> None:
    """Refuse a label that is not a string or is blank (``default_ok``: ``""`` asks for the
    default label, as ``RunConfig`` allows)."""
    if not isinstance(value, str) or not (value.strip() or (default_ok and not value)):
        raise ValueError(f"label={value!r}: a label must be a non-empty string")


def unknown_here(name: str) -> str:
    """The registry's "unknown policy" message for ``name`` (with its did-you-mean), or ""."""
    from moe_spec.policies.registry import registry

    if name in registry().policies():
        return ""
    try:
        get_policy(name)
    except ValueError as exc:
        return str(exc)
    return ""


def is_adaptive(name: str) -> bool:
    """Whether ``name`` is an installed policy that picks its own budget (``auto``)."""
    try:
        return get_policy(name).adaptive
    except ValueError:  # unknown here: the backend's check names it
        return False


def default_label(c: RunConfig) -> str:
    label = c.policy if c.budget is None else f"{c.policy} B={c.budget}"
    label += "".join(f" {k}={v}" for k, v in sorted(c.options.items()))
    if c.mode != "substitution":
        label += f" {c.mode}"
    label += repair_label(c.repair, c.repair_min_tokens)
    if (c.num_tokens, c.width, c.depth) != (32, 8, 6):
        label += f" tree={c.num_tokens}/{c.width}/{c.depth}"
    if c.temperature:
        label += f" T={c.temperature:g}"
    return label


INTEGER_KEYS = ("budget", "num_tokens", "width", "depth", "repair_min_tokens")


def coerce(key: str, value, text: bool):
    """A field's value, or ``ValueError`` naming the key and value: from ``NAME:k=v`` text
    (``text``: every value a string, numbers and flags parsed here) or from a JSON or TOML
    file, whose numbers and booleans must be written as such (``"B": "8"`` and ``"repair":
    "true"`` are refused, not read as 8 and true)."""
    if key == "repair" and isinstance(value, str):
        if not text:
            raise ValueError(
                f"repair={value!r} is not a boolean but a string; in a JSON or TOML file "
                "write true or false without quotes"
            )
        flags = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
        if value.lower() not in flags:
            raise ValueError(f"repair={value!r} is not a flag; allowed: true, false (or 1, 0)")
        return flags[value.lower()]
    if key == "label":
        check_label(value)
    if key not in (*INTEGER_KEYS, "temperature"):
        return value
    kind = int if key in INTEGER_KEYS else float
    wanted = "an integer" if kind is int else "a number"
    if isinstance(value, str) and not text:
        raise ValueError(
            f"{key}={value!r} is not {wanted} but a string; in a JSON or TOML file write "
            "the number without quotes"
        )
    try:
        number = kind(value) if isinstance(value, str) else value
    except ValueError:
        number = None
    if isinstance(number, bool) or not isinstance(number, int if kind is int else int | float):
        raise ValueError(f"{key}={value!r} is not {wanted}")
    return number


def option_value(text: str):
    """A policy option's value: JSON when it parses (numbers, true/false, lists), else text."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def unique_keys(pairs, source: str) -> dict:
    """``(key, value)`` pairs as a dict keyed by long names; a key given twice, or with its
    alias, is a ``ValueError`` naming it (the last would silently win)."""
    out: dict = {}
    given: dict[str, str] = {}
    for key, value in pairs:
        name = ALIASES.get(key, key)
        if name in given:
            what = "is given twice" if given[name] == key else f"and {given[name]} both set {name}"
            raise ValueError(f"{source}: {key} {what}; give it once")
        given[name], out[name] = key, value
    return out


def from_mapping(data: dict, defaults: dict, source: str, text: bool = False) -> RunConfig:
    """One configuration from ``data`` (``text``: parsed ``NAME:k=v`` pairs, every value a
    string; else a JSON or TOML file's object), errors prefixed with ``source``."""
    allowed = {f.name for f in fields(RunConfig)}
    items = unique_keys(data.items(), source)
    options = items.pop("options", {})
    if not isinstance(options, dict):
        raise ValueError(
            f"{source}: options={options!r} is not an object; allowed: the policy's option "
            'names and values, e.g. {"order": "logprob"}'
        )
    options = dict(options)
    for key in [k for k in items if k.startswith("opt.")]:
        value = items.pop(key)
        if key[4:] in options:
            raise ValueError(f"{source}: option {key[4:]} is given twice (options and {key})")
        # text: every value a string, parsed here; a file's value is taken as written
        options[key[4:]] = option_value(value) if text and isinstance(value, str) else value
    if options:
        items["options"] = options
    unknown = sorted(set(items) - allowed)
    if unknown:
        keys = ", ".join(sorted(allowed | set(ALIASES) | {"opt.NAME"}))
        raise ValueError(f"{source}: unknown keys {unknown}; allowed: {keys}")
    if "policy" not in items:
        raise ValueError(
            f"{source}: no policy; each configuration names one, e.g. "
            '{"policy": "token-priority", "B": 8} (or a baseline: autoregressive, none, '
            "depth-width)"
        )
    try:
        given = {k: coerce(k, v, text) for k, v in items.items()}
        refuse_meaningless(given)  # a default from the command line is held quietly (meaningless)
        return RunConfig(**{**defaults, **given})
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from None


def parse_config(text: str, defaults: dict | None = None) -> list[RunConfig]:
    """``NAME[:k=v,...]`` -> one configuration; a ``.json``/``.toml`` path -> its list."""
    defaults = defaults or {}
    if text.endswith((".json", ".toml")):
        return load_config_file(Path(text), defaults)
    name, _, rest = text.partition(":")
    if re.fullmatch(r".*\.[A-Za-z]\w*", name.strip()) or "/" in name:
        raise ValueError(
            f"config {text!r} looks like a file; allowed: a .json or .toml config file, or "
            "NAME[:key=value,...] (e.g. token-priority:B=16)"
        )
    if "," in name:
        raise ValueError(
            f"config {text!r}: the policy name ends at ':' (e.g. {name.split(',')[0]}:"
            f"{name.partition(',')[2]}); got {name!r}"
        )
    pairs = [("policy", name.strip())]
    for item in filter(None, (s.strip() for s in split_items(rest, text))):
        key, eq, value = item.partition("=")
        if not eq:
            raise ValueError(f"config {text!r}: expected key=value, got {item!r}")
        pairs.append((key.strip(), value.strip()))
    source = f"config {text!r}"
    return [from_mapping(unique_keys(pairs, source), defaults, source, text=True)]


def split_items(text: str, config: str) -> list[str]:
    """Split ``k=v,k=v`` at commas outside brackets and quotes (``opt.budgets=[8,12]``)."""
    items, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            quote = "" if ch == quote else quote
        elif ch in "\"'":
            quote = ch
        elif ch in "[{":
            depth += 1
        elif ch in "]}":
            depth -= 1
        elif ch == "," and depth == 0:
            items.append(text[start:i])
            start = i + 1
    if depth or quote:
        raise ValueError(f"config {config!r}: unbalanced brackets or quotes")
    return [*items, text[start:]]


def load_config_file(path: Path, defaults: dict) -> list[RunConfig]:
    from moe_spec.ab.prompts import check_file  # not at the top: prompts -> demo -> configs

    check_file(path, "config file")

    def no_repeats(pairs: list[tuple]) -> dict:  # json.loads would keep the last silently
        keys = [k for k, _ in pairs]
        repeated = next((k for k in keys if keys.count(k) > 1), None)
        if repeated is not None:
            raise ValueError(f"{path}: key {repeated!r} is given twice in one object; give it once")
        return dict(pairs)

    try:
        if path.suffix == ".json":
            data = json.loads(path.read_text(encoding="utf-8"), object_pairs_hook=no_repeats)
        else:
            data = tomllib.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path}: cannot parse ({exc})") from None
    if isinstance(data, dict) and (extra := sorted(set(data) - {"configs", "config"})):
        raise ValueError(  # a second list or a misspelt key would be ignored
            f"{path}: unknown top-level keys {extra}; allowed: one list under 'configs' (or "
            "'config'), or the list itself"
        )
    items = data.get("configs", data.get("config")) if isinstance(data, dict) else data
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise ValueError(f"{path}: expected a list of configuration objects")
    if not items:  # (an empty TOML file has no list at all: the error above)
        raise ValueError(f"{path}: no configurations (the list is empty)")
    return [from_mapping(item, defaults, f"{path} entry {n}") for n, item in enumerate(items, 1)]


def finalize(
    configs: list[RunConfig], reference: str | None, add_unbudgeted: bool = True
) -> tuple[list[RunConfig], str]:
    """Add the unbudgeted run if missing (quality is measured against it); check labels.

    Returns the configurations and the reference label (default: the unbudgeted run).
    """
    temps = {c.temperature for c in configs if c.kind != "autoregressive"} or {0.0}
    for t in sorted(temps) if add_unbudgeted else ():
        if not any(c.policy == "none" and c.temperature == t for c in configs):
            # its tree is the first tree arm's (an autoregressive arm's tree keys mean nothing)
            base = next(
                (c for c in configs if c.temperature == t and c.kind != "autoregressive"), None
            )
            tree = (
                {}
                if base is None
                else {"num_tokens": base.num_tokens, "width": base.width, "depth": base.depth}
            )
            configs = [*configs, RunConfig("none", temperature=t, **tree)]
    labels = [c.label for c in configs]  # checked after the automatic arms are added
    duplicates = sorted({x for x in labels if labels.count(x) > 1})
    if duplicates:
        raise ValueError(
            f"configurations share labels {duplicates} (automatic reference arms included); "
            "give each a distinct label=..."
        )
    unbudgeted = next((c.label for c in configs if c.policy == "none"), configs[0].label)
    reference = reference or unbudgeted
    if reference not in [c.label for c in configs]:
        raise ValueError(f"reference {reference!r} is not a configuration; have {labels}")
    return configs, reference


def unbudgeted_arms(configs: list[RunConfig], n_experts: int | None) -> list[RunConfig]:
    """The arms whose fixed budget ``B >= E`` cuts nothing (an adaptive policy's B is a cap)."""
    if n_experts is None:
        return []
    return [
        c
        for c in configs
        if c.budget is not None and c.budget >= n_experts and not is_adaptive(c.policy)
    ]
