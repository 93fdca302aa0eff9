"""``moe-spec ab``: compare policies, budgets and baselines side by side on your prompts."""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path

from moe_spec.ab.pricing import COST_MODEL_CHOICES
from moe_spec.budget import MODES
from moe_spec.costmodel import GPUS, SHAPES

DEFAULT_BASELINES = ("autoregressive", "none", "depth-width")
DEFAULT_POLICY = "token-priority"


def default_configs(n_experts: int | None, top_k: int | None) -> list[str]:
    """The baselines plus ``token-priority`` at E/4 and E/2 (each in [K, E), deduplicated).

    Budgets follow the model: on the shipped model (32 experts, top-4) B=8 and B=16; on an
    8-expert top-2 model B=2 and B=4; a model whose top-k leaves no budget below E gets none.
    """
    if n_experts is None or top_k is None:
        n_experts, top_k = 32, 4
    budgets = sorted({max(top_k, n_experts // 4), max(top_k, n_experts // 2)})
    return [*DEFAULT_BASELINES] + [f"{DEFAULT_POLICY}:B={b}" for b in budgets if b < n_experts]


def add_parser(subparsers) -> None:
    p = subparsers.add_parser(
        "ab", help="A/B test policies, budgets and baselines on the same prompts"
    )
    p.add_argument(
        "--prompts",
        help="JSONL with a 'prompt' field, a JSON array of strings or such objects, or text "
        "one prompt per line (default: 20 held-out stdlib prompts)",
    )
    p.add_argument("--num-prompts", type=int, default=None, help="use only the first N prompts")
    p.add_argument(
        "--config",
        action="append",
        default=None,
        metavar="SPEC",
        help="NAME[:key=value,...] or a .json/.toml file; repeatable (default: "
        + ", ".join(DEFAULT_BASELINES)
        + f", {DEFAULT_POLICY} at B=E/4 and E/2 of the model)",
    )
    p.add_argument("--reference", help="label differences are measured against (default: none)")
    p.add_argument(
        "--backend",
        choices=("engine", "sglang"),
        default="engine",
        help="engine: this process's engine; sglang: running SGLang servers (--server)",
    )
    p.add_argument(
        "--server",
        action="append",
        default=[],
        metavar="URL",
        help="sglang: a server per configuration, in --config order",
    )
    p.add_argument(
        "--checkpoint",
        help="engine: a model name (smollm2-moe, the default; stdlib-toy, the small shipped "
        "toy) or a checkpoint folder",
    )
    p.add_argument("--target", help="engine: a transformers target model (needs --draft)")
    p.add_argument(
        "--draft",
        help="engine: a causal LM sharing the target's tokenizer, or an engine-format EAGLE "
        "head for the target (local directory; needs --target)",
    )
    p.add_argument("--num-tokens", type=int, default=32, help="default tree tokens per step")
    p.add_argument("--width", type=int, default=8, help="default tree width")
    p.add_argument("--depth", type=int, default=6, help="default tree depth")
    p.add_argument(
        "--mode",
        choices=MODES,
        default="substitution",
        help="budget mode of each budgeted --config that names none (mode=...); the "
        "baselines run unbudgeted",
    )
    p.add_argument("--temperature", type=float, default=0.0, help="default temperature")
    p.add_argument("--max-new-tokens", type=int, default=64, help="tokens generated per prompt")
    p.add_argument("--seed", type=int, default=0, help="prompt i runs with seed + i")
    p.add_argument(
        "--seeds",
        type=int,
        default=1,
        help="run each prompt this many times (seeds seed + i): at temperature > 0 the "
        "report tests each arm's per-position token distribution against unbudgeted (at 0 "
        "the runs repeat the same tokens, only timing); the CIs resample whole prompts",
    )
    p.add_argument("--out", default="out/ab", help="output folder (results, report, plots)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument(
        "--model-shape",
        help=f"add modeled throughput for this model shape ({', '.join(SHAPES)})",
    )
    p.add_argument("--gpu", help=f"... on this GPU ({', '.join(GPUS)})")
    p.add_argument(
        "--cost-model",
        choices=COST_MODEL_CHOICES,
        default=None,
        help="calibrated (default: roofline plus overheads fitted to published points), "
        "roofline (bytes/bandwidth and FLOPs/peak only) or measured (overheads fitted to "
        "the GPU check's CUDA-graph forwards; H200 only); see docs/ab.md",
    )
    p.add_argument(
        "--overhead-us",
        type=float,
        default=None,
        help="the roofline plus this fixed time per layer per forward (microseconds; "
        "implies --cost-model roofline)",
    )
    p.add_argument("--threads", type=int, help="engine: torch CPU threads (default: torch's)")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_ab)


def load_prompt_list(args) -> list[str]:
    from moe_spec.ab.prompts import held_out_benchmark_prompts, load_prompts

    if args.num_prompts is not None and args.num_prompts < 1:
        raise ValueError(f"--num-prompts must be >= 1, got {args.num_prompts}")
    if args.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {args.seeds}")
    if args.prompts:
        prompts = load_prompts(args.prompts)
        if args.num_prompts and args.num_prompts > len(prompts):
            raise ValueError(
                f"--num-prompts {args.num_prompts}, but {args.prompts} holds only "
                f"{len(prompts)} prompt{'s' * (len(prompts) != 1)}"
            )
    else:
        prompts = held_out_benchmark_prompts(args.num_prompts or 20)
    prompts = prompts[: args.num_prompts] if args.num_prompts else prompts
    return [p for p in prompts for _ in range(args.seeds)]  # run i: prompt i // seeds


def check_run_seeds(seed: int, runs: int, seeds: int = 1) -> None:
    """Run ``i`` samples with ``seed + i``: refuse naming the first run whose seed torch
    refuses (``--seed`` itself where that is out of range)."""
    from moe_spec.ab.runner import run_name
    from moe_spec.checks import check_seed

    first = seed if seed < 0 else max(seed, 2**63)  # the lowest out-of-range seed of a run
    i = first - seed
    if i < runs:
        check_seed(first, "--seed" if i == 0 else f"--seed {seed} + {i} ({run_name(i, seeds)})")


def check_default_flags(args) -> None:
    """The tree and temperature flags every arm defaults to, refused as flags (an arm's
    error would name an arm the user did not write, such as the automatic ``none``)."""
    from moe_spec.checks import check_temperature
    from moe_spec.cli import SPEC_FLAGS, flags_named
    from moe_spec.engine.generate import SpecConfig

    check_temperature(args.temperature, "--temperature")
    with flags_named(SPEC_FLAGS):
        SpecConfig(num_tokens=args.num_tokens, width=args.width, depth=args.depth)


def load_configs(args, n_experts: int | None = None, top_k: int | None = None):
    from moe_spec.ab.configs import finalize, parse_config

    defaults = {
        "num_tokens": args.num_tokens,
        "width": args.width,
        "depth": args.depth,
        "mode": args.mode,
        "temperature": args.temperature,
    }
    check_default_flags(args)
    if args.backend == "sglang" and not args.config:
        raise ValueError("--backend sglang needs a --config (and a --server) for every server")
    if args.backend == "engine" and args.server:
        raise ValueError(
            f"--server {args.server[0]} applies to --backend sglang, not engine; add "
            "--backend sglang or leave out --server"
        )
    texts = args.config or default_configs(n_experts, top_k)
    configs = [c for text in texts for c in parse_config(text, defaults)]
    served = next((c for c in configs if c.server and args.backend == "engine"), None)
    if served is not None:
        raise ValueError(
            f"{served.label}: server={served.server!r} applies to --backend sglang, not engine; "
            "add --backend sglang or leave out server="
        )
    if args.backend == "sglang":
        if args.server and len(args.server) != len(configs):
            n, m = len(args.server), len(configs)
            raise ValueError(
                f"{n} --server URL{'s' * (n != 1)} for {m} configuration{'s' * (m != 1)}; "
                "allowed: one --server per --config, in order"
                + (
                    ""
                    if any(c.policy == "none" for c in configs)
                    else " (--backend sglang adds no 'none' arm of its own: to compare with "
                    "unbudgeted speculation, add --config none and its server)"
                )
            )
        configs = [
            c if c.server or not args.server else _with_server(c, url)
            for c, url in zip(configs, args.server or [None] * len(configs), strict=False)
        ]
    final = finalize(configs, args.reference, add_unbudgeted=args.backend == "engine")
    if args.resume and not args.config:
        check_resumed_arms(args, [c.label for c in final[0]])
    return final


def run_size(n_runs: int, seeds: int) -> str:
    """``3 prompts`` or ``3 prompts x 4 seeds`` (``n_runs``: prompts times seeds)."""
    text = f"{n_runs // seeds} prompt{'s' * (n_runs // seeds != 1)}"
    return text + (f" x {seeds} seeds" if seeds > 1 else "")


def warnings_for(args, configs, n_experts: int | None) -> list[str]:
    """What runs other than a user would read from the command: repeated greedy seeds, fixed
    budgets that cut nothing (``B >= E``), and a cost model that prices nothing."""
    from moe_spec.ab.configs import unbudgeted_arms

    out = [
        f"{c.label}: B={c.budget} is not below the model's {n_experts} experts: nothing to "
        "cut, every verify pass runs unbudgeted (budgeting is off)"
        for c in unbudgeted_arms(configs, n_experts)
    ]
    priced = getattr(args, "model_shape", None) and getattr(args, "gpu", None)
    given = [f for f, v in (("--cost-model", args.cost_model), ("--overhead-us", args.overhead_us))
             if v is not None]  # fmt: skip
    if given and not priced:
        chooses = any(c.kind == "depth-width" for c in configs) and not stored_controller(args)
        out.append(
            f"{' and '.join(given)} without --model-shape/--gpu price nothing: no modeled "
            "columns"
            + ("; only the depth-width arm chooses its trees with it" if chooses else "")
            + "; add --model-shape and --gpu to price the run"
        )
    if args.seeds > 1 and all(c.temperature == 0 for c in configs):
        out.append(
            f"--seeds {args.seeds} at temperature 0: greedy decoding gives the same tokens on "
            "every seed, so the extra runs repeat only the timing (the CIs still count each "
            "prompt once)"
        )
    return out


FEW_PROMPTS = 5  # fewer distinct prompts (but 2 or more) are warned about: rough CIs


def check_resume(args) -> None:
    """``--resume`` needs a folder that holds a run (a typo in --out would start afresh)."""
    if args.resume and not (Path(args.out) / "run.json").is_file():
        raise ValueError(
            f"--resume: nothing to resume in {args.out} (no run.json there); "
            "check --out, or leave out --resume to start a new run"
        )


def _with_server(config, url):
    from dataclasses import replace

    return replace(config, server=url)


def provenance(args, backend) -> tuple[str, str]:
    """``(model, code)`` fingerprints a resumed run must match (``moe_spec.ab.provenance``)."""
    from moe_spec.ab.provenance import code_sha, model_sha

    if hasattr(backend, "provenance"):
        return backend.provenance()
    if args.target:
        return model_sha([args.target, args.draft]), code_sha()
    return model_sha([args.checkpoint_path]), code_sha()


def make_backend(args, configs, engine, controller):
    if args.backend == "sglang":
        from moe_spec.ab.sglang_backend import SglangBackend

        return SglangBackend({c.label: c.server for c in configs if c.server})
    from moe_spec.ab.engine_backend import EngineBackend

    return EngineBackend(engine, controller.cost, controller.shape)


def load_engine(args):
    """The engine backend's model: a transformers pair or the reference engine."""
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
    from moe_spec.models.registry import open_engine

    if args.threads is not None:
        import torch

        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    engine, args.checkpoint_path, args.model_description = open_engine(args.checkpoint)
    return engine


def run_model_name(args) -> str:
    """How the command named its model: ``--checkpoint stdlib-toy``, ``--target T --draft D``,
    or the servers (SGLang)."""
    if args.backend == "sglang":
        return "the SGLang servers' models"
    if args.target:
        return f"--target {args.target} --draft {args.draft}"
    return f"--checkpoint {args.checkpoint or 'smollm2-moe'}"


def stored_run(args) -> dict:
    """A resumed folder's ``run.json`` (empty: not resuming, no file, or one that does not
    read: the store refuses that folder, naming the file)."""
    import json

    try:
        stored = json.loads((Path(args.out) / "run.json").read_text()) if args.resume else {}
    except (OSError, ValueError):
        return {}
    return stored if isinstance(stored, dict) else {}


def check_resumed_arms(args, labels: list[str]) -> None:
    """``--resume`` without ``--config`` runs the default arms: refuse where the folder's run
    holds others (they would be left out of the report, and the defaults run anew)."""
    stored = stored_run(args).get("configs")
    if isinstance(stored, list) and sorted(stored) != sorted(labels):
        raise ValueError(
            f"--resume without --config runs the default arms {labels}, but {args.out}/run.json "
            f"holds the arms {stored}: pass the run's --config options again (stored results "
            "are reused; new arms run)"
        )


def stored_controller(args):
    """The depth-width controller a resumed folder's ``run.json`` holds (None: none stored)."""
    return stored_run(args).get("controller")


def warn(notes: list[str], text: str, prefix: str = "warning: ") -> None:
    """Print ``text`` to stderr and keep it for the report's Warnings section."""
    print(f"moe-spec ab: {prefix}{text}", file=sys.stderr)
    notes.append(text)


@contextmanager
def kept_warnings(notes: list[str]):
    """Python warnings raised inside (a plugin that fails to load, a policy's own) are shown
    as usual and also kept in ``notes``, so the report carries them."""
    with warnings.catch_warnings():
        shown = warnings.showwarning

        def show(message, category, filename, lineno, file=None, line=None):
            notes.append(f"{category.__name__}: {message}")
            shown(message, category, filename, lineno, file, line)

        warnings.showwarning = show
        yield


def cmd_ab(args: argparse.Namespace) -> int:
    notes: list[str] = []
    with kept_warnings(notes):
        return run_ab(args, notes)


def run_ab(args: argparse.Namespace, notes: list[str]) -> int:
    """``cmd_ab``'s work; ``notes`` collects what the report's Warnings section lists."""
    from moe_spec.ab.plots import plot_experts, plot_tradeoff
    from moe_spec.ab.pricing import (
        controller,
        planned_for,
        planning_mismatches,
        priced_budgets,
        pricing,
    )
    from moe_spec.ab.provenance import config_sha
    from moe_spec.ab.records import Store, fingerprint
    from moe_spec.ab.report import analyze, format_table, write_json, write_markdown
    from moe_spec.ab.runner import run_all
    from moe_spec.checks import check_output_dir, check_positive, prepare_output_dir

    started = time.perf_counter()
    check_positive("--max-new-tokens", args.max_new_tokens)
    check_resume(args)
    prompts = load_prompt_list(args)
    check_run_seeds(args.seed, len(prompts), args.seeds)
    check_output_dir(args.out, "--out")  # created once the configurations pass their checks
    engine = load_engine(args) if args.backend == "engine" else None
    cfg = getattr(engine, "config", None)
    configs, reference = load_configs(
        args, getattr(cfg, "n_experts", None), getattr(cfg, "top_k", None)
    )
    for warning in warnings_for(args, configs, getattr(cfg, "n_experts", None)):
        warn(notes, warning)
    if 1 < (distinct := len(prompts) // args.seeds) < FEW_PROMPTS:
        warn(
            notes,
            f"{distinct} prompts: a bootstrap CI over so few has few distinct resamples and can "
            f"look exact (e.g. '1.53-1.53x'); read the verdicts as rough, and decide on "
            f"{FEW_PROMPTS} or more prompts",
        )
    modeled = pricing(args.model_shape, args.gpu, args.cost_model, args.overhead_us)
    planned = planned_for(configs) if args.backend == "engine" else {}
    for warning in planning_mismatches(planned, modeled):
        warn(notes, warning)
    stored = stored_controller(args)
    pick = controller(modeled, stored, args.cost_model, args.overhead_us)
    backend = make_backend(args, configs, engine, pick)
    backend.check(configs)
    if hasattr(backend, "check_room"):  # each prompt's run fits the model's context
        backend.check_room(configs, prompts[:: args.seeds], args.max_new_tokens)
    out = prepare_output_dir(args.out, "--out")  # after every check: a refusal leaves no folder
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
        "model_name": run_model_name(args),  # for messages only: "model" is what is matched
        "code": code,
        "arms": {c.label: config_sha(c) for c in configs},
    }
    if stored is not None or any(c.kind == "depth-width" for c in configs):
        header["controller"] = stored if stored is not None else pick.to_json()
    store = Store(out, header, args.resume)
    for notice in store.notices():
        warn(notes, notice, prefix="")
    print(
        f"{len(configs)} configurations x {run_size(len(prompts), args.seeds)}, "
        f"backend {backend.name}; results in {out}",
        file=sys.stderr,
    )
    if args.resume:
        print(f"moe-spec ab: {store.reused(len(prompts))}", file=sys.stderr)
    try:
        records = run_all(
            backend,
            configs,
            prompts,
            store,
            args.seed,
            args.max_new_tokens,
            not args.no_progress,
            args.seeds,
        )
    except KeyboardInterrupt:
        total = len(configs) * len(prompts)
        print(
            f"\nmoe-spec ab: interrupted; {len(store.done)} of {total} runs are finished and kept "
            f"in {store.runs_path}. Run the same command with --resume to continue.",
            file=sys.stderr,
        )
        return 130
    rows = analyze(
        configs, records, len(prompts), reference, backend.model_info(), modeled, args.seeds
    )
    meta = {
        "title": f"{len(configs)} configurations on {run_size(len(prompts), args.seeds)}",
        "backend": backend.name,
        "model": args.target or getattr(args, "model_description", None) or args.checkpoint,
        "prompts": len(prompts) // args.seeds,
        "prompts_sha": header["prompts_sha"],
        "max_new_tokens": args.max_new_tokens,
        "seed": args.seed,
        "seeds": args.seeds,
        "reference": reference,
        "modeled_on": None if modeled is None else modeled.describe(),
        "cost_model": None if modeled is None else modeled.cost.name,
        "depth_width_controller": None
        if header["controller"] is None
        else f"{pick.shape.name}, {pick.cost.describe()}",
        "priced_budgets": None
        if modeled is None
        else priced_budgets(configs, backend.model_info(), modeled.shape) or None,
        "planned_for": {
            label: f"{shape}, {cost} cost model on {gpu}"
            for label, (shape, gpu, cost) in planned.items()
        }
        or None,
        "warnings": notes,
        "seconds": round(time.perf_counter() - started, 1),
    }
    write_json(rows, out / "results.json", meta)
    plots = [
        name
        for name, fn in (("tradeoff.png", plot_tradeoff), ("experts.png", plot_experts))
        if fn(rows, out / name, meta)
    ]
    write_markdown(rows, out / "report.md", meta, plots)
    print(format_table(rows, reference))
    print(
        f"\nwrote {out}/results.json, report.md, {', '.join(plots)} "
        f"in {time.perf_counter() - started:.0f} s"
    )
    return 0
