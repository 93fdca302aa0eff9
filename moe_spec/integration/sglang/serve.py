"""``moe-spec serve``: validate a budgeting setup, then start SGLang with the plugin on.

Everything that can be checked before the GPU is touched is checked here: the
policy and its options, the budget against the model's ``config.json`` (when the
model path is a local directory), the speculative setup and SGLang's version.
The server itself then replaces this process (``exec``) as ``python -m
sglang.launch_server <args>``, with the plugin configured through the environment
its ranks inherit.
"""

from __future__ import annotations

import json
import os
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import entry_points
from pathlib import Path
from typing import NoReturn

from moe_spec.budget import check_budget
from moe_spec.integration.sglang.compat import (
    Findings,
    adaptive_chain,
    check_adaptive_chain,
    check_server_args,
    check_sglang_version,
    installed_sglang_version,
    resolved,
)
from moe_spec.integration.sglang.settings import (
    ENV_DISABLE,
    ServeSettings,
    SettingsError,
    plugin_disabled,
    server_option_errors,
)
from moe_spec.policies import PolicyError, get_policy

PLUGIN_NAME = "moe_spec"
EXPERT_KEYS = ("num_experts", "num_local_experts", "n_routed_experts", "moe_num_experts")
TOPK_KEYS = ("num_experts_per_tok", "moe_topk", "moe_top_k", "top_k")


class ServeError(ValueError):
    """``moe-spec serve`` refuses to start: the message says what to change."""


@dataclass
class Launch:
    """The command ``moe-spec serve`` runs and the environment it adds."""

    argv: list[str]
    env: dict[str, str]
    warnings: list[str]


def parse_sglang_args(sglang_args: Sequence[str]):
    """SGLang's own parser applied to ``sglang_args``, ``--config`` YAML merged as SGLang does.

    Nothing is resolved or started; see :func:`resolve_sglang_args`.
    """
    import argparse

    from sglang.srt.server_args import ServerArgs

    parser = argparse.ArgumentParser(prog="python -m sglang.launch_server", add_help=False)
    ServerArgs.add_cli_args(parser)
    argv = list(sglang_args)
    if "--config" in argv:
        from sglang.srt.utils.server_args_config_parser import ConfigArgumentMerger

        try:
            argv = ConfigArgumentMerger(parser).merge_config_with_args(argv)
        except Exception as exc:  # missing file, bad YAML, unknown keys: SGLang's message
            raise ServeError(f"SGLang could not read its --config: {exc}") from None
    try:
        return parser.parse_args(argv)
    except SystemExit:
        raise ServeError(f"SGLang rejected its arguments: {' '.join(sglang_args)}") from None


def resolve_sglang_args(args) -> tuple[object, str | None]:
    """A resolved copy of SGLang's settings (aliases, ``auto`` backends, derived sizes).

    Returns ``(view, None)`` (SGLang's resolved view of its ``ServerArgs``:
    :func:`~moe_spec.integration.sglang.compat.resolved`), or ``(args, why)`` when SGLang
    cannot resolve them on
    this machine (e.g. a GPU setup checked from a CPU host, a model not on disk): the
    checks then read the arguments as given, and every rank checks its resolved
    settings again when the model loads.
    """
    from sglang.srt.server_args import ServerArgs

    try:
        server_args = ServerArgs.from_cli_args(args)
        server_args.resolve_once()
    except BaseException as exc:  # noqa: BLE001 (SGLang may sys.exit on what it refuses)
        if isinstance(exc, KeyboardInterrupt):
            raise
        first = (str(exc).strip().splitlines() or ["(no message)"])[0]  # a bare assert: none
        return args, f"{type(exc).__name__}: {first[:200]}"
    return resolved(server_args), None


def moe_shape(model_path: str) -> tuple[int, int, int | None] | None:
    """``(num_experts, top_k, MoE layers)`` from a local model directory's config.json, else
    None; the layer count is None where the config lays out its MoE layers in a way
    :func:`moe_layer_count` does not know.

    Raises :class:`ServeError` for a config that is not a JSON object, names no
    experts, or routes in a way SGLang would fold into the top-k where the plugin
    cannot follow (group-limited routing, a routed scaling factor).
    """
    config_path = Path(model_path) / "config.json"
    if not Path(model_path).is_dir():
        return None
    if not config_path.is_file():
        raise ServeError(f"{model_path} is a directory without config.json; is it a model?")
    try:
        config = json.loads(config_path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ServeError(f"cannot read {config_path}: {exc}") from None
    if isinstance(config, dict) and isinstance(config.get("text_config"), dict):
        config = config["text_config"]  # multimodal wrappers nest the LM's config
    if not isinstance(config, dict):
        raise ServeError(
            f"{config_path} holds a JSON {type(config).__name__}, not an object: "
            "is it a model's config.json?"
        )
    experts = next((config[k] for k in EXPERT_KEYS if isinstance(config.get(k), int)), None)
    top_k = next((config[k] for k in TOPK_KEYS if isinstance(config.get(k), int)), None)
    if experts is None or top_k is None:
        raise ServeError(
            f"{config_path} names no routed experts ({'/'.join(EXPERT_KEYS)}) and top-k "
            f"({'/'.join(TOPK_KEYS)}): MoE-Spec budgets Mixture-of-Experts models only"
        )
    refusals = routing_refusals(config)
    if refusals:
        raise ServeError(f"{config_path}: " + "; ".join(refusals))
    return experts, top_k, moe_layer_count(config)


# config.json keys of which layers are MoE that :func:`moe_layer_count` reads
DENSE_LAYER_KEYS = ("mlp_only_layers", "decoder_sparse_step", "first_k_dense_replace",
                    "moe_layer_freq")  # fmt: skip
LAYOUT_WORDS = re.compile(r"moe_layer|interleave|dense|sparse_step|mlp_only")


def moe_layer_count(config: dict) -> int | None:
    """How many of ``num_hidden_layers`` SGLang builds as MoE layers: those from
    ``first_k_dense_replace`` on and on ``moe_layer_freq`` (DeepSeek, GLM-MoE), else all.
    None where that is not sure: another layout key (Llama 4's ``interleave_moe_layer_step``,
    ERNIE's ``moe_layer_start_index``), or Qwen-MoE's ``mlp_only_layers`` or
    ``decoder_sparse_step`` set (SGLang 0.5's Qwen3-MoE builds every layer sparse anyway)."""
    n = config.get("num_hidden_layers")
    if type(n) is not int or n < 1:
        return None
    if any(LAYOUT_WORDS.search(k) and k not in DENSE_LAYER_KEYS for k in config):
        return None
    if config.get("mlp_only_layers") or config.get("decoder_sparse_step", 1) not in (1, None):
        return None
    first = config.get("first_k_dense_replace") or 0
    freq = config.get("moe_layer_freq") or 1
    if type(first) is not int or type(freq) is not int or first < 0 or freq < 1:
        return None
    return sum(i >= first and i % freq == 0 for i in range(n))


def routing_refusals(config: dict) -> list[str]:
    """DeepSeek-style routing in a config.json that the plugin cannot budget correctly."""
    found = []
    groups, topk_group = config.get("n_group"), config.get("topk_group")
    if isinstance(groups, int) and groups > 1 and topk_group != groups:
        found.append(
            f"group-limited routing (topk_group={topk_group} of n_group={groups}) is not "
            "supported: re-routed tokens could land in groups the router excluded"
        )
    factor = config.get("routed_scaling_factor")
    if isinstance(factor, int | float) and not isinstance(factor, bool) and factor != 1:
        found.append(
            f"routed_scaling_factor={factor}: SGLang folds it into the top-k weights of "
            "these models, and re-routed weights would miss it"
        )
    return found


def policy_errors(name: str, options: dict) -> list[str]:
    """Every reason the policy ``name`` refuses ``options`` (one per bad option), or []."""
    try:
        get_policy(name, **options)
        return []
    except PolicyError as exc:
        together = str(exc)
    try:
        get_policy(name)
    except PolicyError:
        return [together]  # unknown policy (or one that needs options): one reason
    alone = []
    for key, value in options.items():
        try:
            get_policy(name, **{key: value})
        except PolicyError as exc:
            alone.append(str(exc))
    return alone or [together]


def plugin_installed() -> bool:
    """Whether SGLang will find this package's ``sglang.srt.plugins`` entry point."""
    return any(ep.name == PLUGIN_NAME for ep in entry_points(group="sglang.srt.plugins"))


def plan_launch(
    settings: ServeSettings, sglang_args: Sequence[str], environ: Mapping[str, str] | None = None
) -> Launch:
    """Validate everything and return the launch; raise :class:`ServeError` with every refusal."""
    environ = os.environ if environ is None else environ
    policy = get_policy(settings.policy)  # unknown: PolicyError at once, before SGLang loads
    version = check_sglang_version(installed_sglang_version())
    if version.errors:  # nothing else can be checked without the right SGLang
        raise ServeError(version.errors[0])
    found = Findings()
    bad_options = policy_errors(settings.policy, settings.options)
    found.errors += bad_options
    if not plugin_installed():
        found.errors.append(
            "the moe_spec entry point (group sglang.srt.plugins) is not installed in this "
            "environment; reinstall moe-spec (pip install -e .)"
        )
    args = parse_sglang_args(sglang_args)
    runs, why = args, None  # a remote model: resolving would download its config
    if Path(args.model_path).is_dir():
        runs, why = resolve_sglang_args(args)
    if why is not None:
        found.warnings.append(
            f"SGLang could not resolve its settings here ({why}); checked them as given, and "
            "every rank checks its resolved settings again when the model loads"
        )
    found.extend(check_server_args(runs, guards_chains=policy.adaptive))
    found.errors += server_option_errors(settings, adaptive_chain(runs))
    if policy.adaptive:
        found.extend(check_adaptive_chain(runs, settings.policy, settings.options))
    shape = moe_shape(args.model_path)
    if shape is None:
        found.warnings.append(
            f"--model-path {args.model_path} is not a local directory: B={settings.budget} is "
            "checked against the model's experts and top-k, and SGLang's resolved settings "
            "against the plugin, when it loads"
        )
    else:
        try:
            check_budget(settings.budget, shape[1], shape[0])
        except ValueError as exc:
            found.errors.append(f"{args.model_path}: {exc}")
        if shape[2] is not None and not bad_options:
            try:
                get_policy(settings.policy, **settings.options).model_check(
                    shape[2], shape[0], shape[1]
                )
            except PolicyError as exc:
                found.errors.append(f"{args.model_path} (config.json): {exc}")
        if settings.budget >= shape[0] and not policy.adaptive:  # auto picks each layer's B
            found.warnings.append(
                f"--budget {settings.budget} is not below the model's {shape[0]} experts: "
                "nothing to cut, every verify pass runs unbudgeted (budgeting is off)"
            )
    try:  # inherited by every rank, which reads it only once the weights are loaded
        if plugin_disabled(environ):
            found.warnings.append(
                f"{ENV_DISABLE}={environ[ENV_DISABLE]} in this environment: the plugin loads "
                f"but changes nothing (budgeting is off); unset it to budget"
            )
    except SettingsError as exc:
        found.errors.append(str(exc))
    if found.errors:
        raise ServeError(
            "refusing to start SGLang:\n" + "\n".join(f"  - {e}" for e in found.errors)
        )
    env = settings.to_environ()
    allowed = environ.get("SGLANG_PLUGINS", "")
    if allowed.strip() and PLUGIN_NAME not in [x.strip() for x in allowed.split(",")]:
        env["SGLANG_PLUGINS"] = f"{allowed},{PLUGIN_NAME}"
    argv = [sys.executable, "-m", "sglang.launch_server", *sglang_args]
    return Launch(argv=argv, env=env, warnings=found.warnings)


def run_launch(launch: Launch) -> NoReturn:
    """Become the server: ``exec`` it with the plugin's environment (never returns).

    The checks above imported SGLang (about 1 GB); exec hands that memory back, and
    the server keeps this process's pid, signals and exit status, as if started directly.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(launch.argv[0], launch.argv, {**os.environ, **launch.env})
