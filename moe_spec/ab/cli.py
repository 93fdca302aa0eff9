"""``moe-spec ab``: compare policies, budgets and baselines side by side on your prompts."""

from __future__ import annotations

import argparse
import sys
import time

DEFAULT_CONFIGS = (
    "autoregressive",
    "none",
    "depth-width",
    "token-priority:B=8",
    "token-priority:B=16",
)
DEFAULT_CONTROLLER_MODEL = ("OLMoE-1B-7B", "H200")


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ab", help="A/B test policies, budgets and baselines on the same prompts"
    )
    p.add_argument(
        "--prompts",
        help="JSONL with a 'prompt' field, or text one prompt per line "
        "(default: 20 held-out stdlib prompts)",
    )
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="SPEC",
        help="NAME[:key=value,...] or a .json/.toml file; repeatable (default: "
        + ", ".join(DEFAULT_CONFIGS)
        + ")",
    )
    p.add_argument("--reference", help="label differences are measured against (default: none)")
    p.add_argument("--backend", choices=("engine", "sglang"), default="engine")
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="sglang: a server per configuration, in --config order",
    )
    p.add_argument("--checkpoint", help="engine: checkpoint folder (default: the shipped one)")
    p.add_argument("--target", help="engine: a transformers target model (needs --draft)")
    p.add_argument(
        "--draft",
        help="engine: a causal LM sharing the target's tokenizer, or an engine-format EAGLE "
        "head for the target (local directory; needs --target)",
    )
    p.add_argument("--num-tokens", type=int, default=32, help="default tree tokens per step")
    p.add_argument("--width", type=int, default=8, help="default tree width")
    p.add_argument("--depth", type=int, default=6, help="default tree depth")
    p.add_argument("--mode", default="substitution", help="default budget mode")
    p.add_argument("--temperature", type=float, default=0.0, help="default temperature")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--seed", type=int, default=0, help="prompt i runs with seed + i")
    p.add_argument("--out", default="out/ab", help="output folder (results, report, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--model-shape", help="add modeled throughput for this model shape")
    p.add_argument("--gpu", help="... on this GPU (A100-80GB, H100, H200)")
    p.add_argument(
        "--overhead-us",
        type=float,
        default=0.0,
        help="cost model: fixed microseconds per layer per forward (default 0: the pure "
        "roofline; 101 reproduces the paper's OLMoE gain on an H200, see docs)",
    )
    p.add_argument("--threads", type=int, help="engine: torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ab)


def load_prompt_list(args) -> list[str]:
    from moe_spec.ab.prompts import held_out_benchmark_prompts, load_prompts

    if args.num_prompts is not None and args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.prompts:
        prompts = load_prompts(args.prompts)
    else:
        prompts = held_out_benchmark_prompts(args.num_prompts or 20)
    return prompts[: args.num_prompts] if args.num_prompts else prompts


def load_configs(args):
    from moe_spec.ab.configs import finalize, parse_config

    defaults = {
        "num_tokens": args.num_tokens,
        "width": args.width,
        "depth": args.depth,
        "mode": args.mode,
        "temperature": args.temperature,
    }
    if args.backend == "sglang" and not args.config:
        raise ValueError("--backend sglang needs a --config (and a --server) for every server")
    configs = [c for text in (args.config or DEFAULT_CONFIGS) for c in parse_config(text, defaults)]
    if args.backend == "sglang":
        if args.server and len(args.server) != len(configs):
            raise ValueError(f"{len(args.server)} --server URLs for {len(configs)} configurations")
        configs = [
            c if c.server or not args.server else _with_server(c, url)
            for c, url in zip(configs, args.server or [None] * len(configs), strict=False)
        ]
    return finalize(configs, args.reference, add_unbudgeted=args.backend == "engine")


def _with_server(config, url):
    from dataclasses import replace

    return replace(config, server=url)


def cost_model(args):
    from moe_spec.costmodel import get_gpu, get_shape

    if bool(args.model_shape) != bool(args.gpu):
        raise ValueError("--model-shape and --gpu go together")
    if not args.overhead_us >= 0:
        raise ValueError(f"--overhead-us must be >= 0, got {args.overhead_us}")
    shape, gpu = (args.model_shape, args.gpu) if args.gpu else DEFAULT_CONTROLLER_MODEL
    return get_gpu(gpu), get_shape(shape), bool(args.gpu)


def provenance(args, backend) -> tuple[str, str]:
    """``(model, code)`` fingerprints a resumed run must match (``moe_spec.ab.provenance``)."""
    from moe_spec.ab.provenance import code_sha, model_sha

    if hasattr(backend, "provenance"):
        return backend.provenance()
    if args.target:
        return model_sha([args.target, args.draft]), code_sha()
    from moe_spec.engine.checkpoint import SHIPPED

    return model_sha([args.checkpoint or SHIPPED]), code_sha()


def make_backend(args, configs, gpu, shape):
    if args.backend == "sglang":
        from moe_spec.ab.sglang_backend import SglangBackend

        return SglangBackend({c.label: c.server for c in configs if c.server})
    from moe_spec.ab.engine_backend import EngineBackend

    return EngineBackend(load_engine(args), gpu, shape, args.overhead_us * 1e-6)


def load_engine(args):
    if bool(args.target) != bool(args.draft):
        raise ValueError("--target and --draft go together")
    if args.target:
        try:
            from moe_spec.integration.transformers import load_engine as load_hf
        except ImportError as exc:
            raise ValueError(
                "--target/--draft need moe_spec.integration.transformers.load_engine, which this "
                f"installation lacks ({exc})"
            ) from None
        return load_hf(args.target, args.draft)
    from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint
    from moe_spec.engine.generate import Engine

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    return Engine(load_checkpoint(args.checkpoint or SHIPPED))


def cmd_ab(args: argparse.Namespace) -> int:
    from moe_spec.ab.plots import plot_experts, plot_tradeoff
    from moe_spec.ab.provenance import config_sha
    from moe_spec.ab.records import Store, fingerprint
    from moe_spec.ab.report import analyze, format_table, write_json, write_markdown
    from moe_spec.ab.runner import run_all
    from moe_spec.ab.stats import Modeled
    from moe_spec.checks import check_positive, check_seed, prepare_output_dir

    started = time.perf_counter()
    check_positive("--max-new-tokens", args.max_new_tokens)
    out = prepare_output_dir(args.out, "--out")
    prompts = load_prompt_list(args)
    check_seed(args.seed + len(prompts) - 1, f"--seed {args.seed} + prompt index")
    configs, reference = load_configs(args)
    gpu, shape, modeled_columns = cost_model(args)
    backend = make_backend(args, configs, gpu, shape)
    backend.check(configs)
    model, code = provenance(args, backend)
    header = {
        "prompts_sha": fingerprint(prompts),
        "prompts": len(prompts),
        "seed": args.seed,
        "max_new_tokens": args.max_new_tokens,
        "backend": backend.name,
        "configs": [c.label for c in configs],
        "controller": None,
        "model": model,
        "code": code,
        "arms": {c.label: config_sha(c) for c in configs},
    }
    if any(c.kind == "depth-width" for c in configs):  # its choices depend on the cost model
        header["controller"] = f"{shape.name} on {gpu.name}, {args.overhead_us:g} us/layer"
    store = Store(out, header, args.resume)
    for notice in store.notices():
        print(f"moe-spec ab: {notice}", file=sys.stderr)
    print(
        f"{len(configs)} configurations x {len(prompts)} prompts, backend {backend.name}; "
        f"results in {out}",
        file=sys.stderr,
    )
    try:
        records = run_all(
            backend, configs, prompts, store, args.seed, args.max_new_tokens, not args.no_progress
        )
    except KeyboardInterrupt:
        total = len(configs) * len(prompts)
        print(
            f"\nmoe-spec ab: interrupted; {len(store.done)} of {total} runs are finished and kept "
            f"in {store.runs_path}. Run the same command with --resume to continue.",
            file=sys.stderr,
        )
        return 130
    modeled = Modeled(gpu, shape, args.overhead_us * 1e-6) if modeled_columns else None
    rows = analyze(configs, records, len(prompts), reference, backend.model_info(), modeled)
    meta = {
        "title": f"{len(configs)} configurations on {len(prompts)} prompts",
        "backend": backend.name,
        "model": args.target or args.checkpoint or "shipped stdlib-moe",
        "prompts": len(prompts),
        "prompts_sha": header["prompts_sha"],
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "reference": reference,
        "modeled_on": None
        if modeled is None
        else f"{shape.name} on {gpu.name}, {args.overhead_us:g} us/layer overhead",
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(rows, out / "results.json", meta)
    plots = [
        name
        for name, fn in (("tradeoff.png", plot_tradeoff), ("experts.png", plot_experts))
        if fn(rows, out / name, meta["title"])
    ]
    write_markdown(rows, out / "report.md", meta, plots)
    print(format_table(rows, reference))
    print(
        f"\nwrote {out}/results.json, report.md, {', '.join(plots)} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0
