"""The ``moe-spec`` command line."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from moe_spec.budget import MODES, check_budget
from moe_spec.policies import PluginError, PolicyError, list_policies

BUILTIN_DEMO_POLICIES = ("topk-frequency", "router-mass", "layer-adaptive", "token-priority")


def parse_int_list(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected comma-separated integers, got {text!r}"
        ) from None


def cmd_policies(args: argparse.Namespace) -> int:
    infos = list_policies()
    width = max(len(i.name) for i in infos)
    origin_width = max(len(i.origin) for i in infos)
    for info in infos:
        print(f"{info.name:<{width}}  {info.origin:<{origin_width}}  {info.description}")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from moe_spec.compare import compare, format_table
    from moe_spec.trace import load_trace, synthetic_trace

    if args.trace:
        trace = load_trace(args.trace)
    else:
        trace = synthetic_trace(tree_size=args.tree_size, seed=args.seed)
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


def cmd_trace(args: argparse.Namespace) -> int:
    from moe_spec.trace import save_trace, synthetic_trace

    trace = synthetic_trace(
        num_layers=args.layers,
        num_experts=args.experts,
        top_k=args.top_k,
        tree_size=args.tree_size,
        seed=args.seed,
    )
    save_trace(trace, args.out)
    print(f"wrote {args.out}: {trace.source}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moe-spec", description="Expert budgeting for speculative decoding on MoE models."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("policies", help="list installed budgeting policies and their origin")
    p.set_defaults(func=cmd_policies)

    p = sub.add_parser("demo", help="compare the built-in policies on a routing trace")
    p.add_argument("--trace", help="a trace file (safetensors) instead of a synthetic trace")
    p.add_argument("--budgets", type=parse_int_list, default=[16, 32], help="default: 16,32")
    p.add_argument("--mode", choices=MODES, default="substitution")
    p.add_argument("--policies", type=lambda s: s.split(","), default=list(BUILTIN_DEMO_POLICIES))
    p.add_argument("--tree-size", type=int, default=32, help="synthetic trace: tree tokens")
    p.add_argument("--seed", type=int, default=0, help="synthetic trace: seed")
    p.set_defaults(func=cmd_demo)

    p = sub.add_parser("trace", help="write a synthetic routing trace to a safetensors file")
    p.add_argument("--out", required=True)
    p.add_argument("--layers", type=int, default=16)
    p.add_argument("--experts", type=int, default=64)
    p.add_argument("--top-k", type=int, default=8)
    p.add_argument("--tree-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_trace)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except (ValueError, PolicyError, PluginError) as exc:
        print(f"moe-spec: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
