"""The ``auto`` policy against fixed budgets, the baselines and autoregressive decoding.

Prompt sets (``--sets``, A and B by default; held out: A, the start of each held-out file's
code, B, the code that follows, C, code from 4,800 characters in, ``--chars`` characters
each, 1200 by default: about 300 tokens; D, chat requests in the model's chat template, where
a draft trained on code is accepted less: a model with a template, ``--model smollm2-moe``),
greedy decoding, on the shipped model (or ``--checkpoint DIR``, an engine checkpoint;
``--model smollm2-moe`` for the transformers engine on a named model).

1. **Measured on this CPU** (tokens/s, wall clock): autoregressive, unbudgeted tree
   speculation, and ``auto`` with ``measure=true`` (its guard corrects the cost model by
   measured step times), fresh per prompt and warm (one policy instance across the set,
   as a server keeps it). Arms alternate per prompt, ``--rounds`` times; each round's
   auto/AR ratio is reported too (median and range: this CPU drifts between rounds), and
   why ``auto``'s tree steps ran (warm-up, probes, exploring, a kept tree).
   ``--skip-modeled`` runs this part alone.
2. **Modeled** on ``--gpu`` for each ``--shapes`` (calibrated cost model): the runs'
   steps priced as ``moe-spec ab`` prices them; fixed budgets of ``token-priority`` (the
   ranking ``auto`` refines) with and without repair, ``depth-width`` (Cascade-style),
   and ``auto`` deciding with that shape's cost model, with and without repair. Best
   fixed B is chosen in hindsight per prompt set and shape; a line per cell gives ``auto``
   repair against ``depth-width`` (both lossless). ``--sglang`` prices every
   speculative step as SGLang runs it, with the draft extend after each verify (an
   ``auto`` decode's included: SGLang's depth-0 step; no draft gate); with ``--tree 4 1 3``
   that is SGLang's adaptive chain, and SGLang's own adaptive policy runs beside ``auto``.
3. **Controller overhead**: the auto policy's controller's own seconds (planning and
   observing), its calls from one live run per prompt replayed alone five times, fastest
   each (``moe_spec.control.replay``), per tree step against a modeled verify and per
   plain decode against a modeled decode; the live timer's figure per step beside it.

    PYTHONPATH=$PWD .venv/bin/python bench/auto_budget.py [--prompts 6] [--max-new 64]
        [--chars 1200] [--sets A B] [--rounds 2] [--threads 1]
        [--checkpoint DIR | --model smollm2-moe] [--out out/auto]
        [--skip-measured | --skip-modeled] [--auto-option KEY=VALUE ...] [--tree N W D]
        [--sglang]
"""

from __future__ import annotations

import argparse
import json
import re
import time
from collections import Counter
from collections.abc import Collection
from pathlib import Path
from statistics import fmean, median

import torch

from moe_spec.ab.configs import RunConfig, parse_config
from moe_spec.ab.engine_backend import EngineBackend
from moe_spec.ab.prompts import (
    PromptsError,
    chat_prompts,
    chat_template_of,
    held_out_benchmark_prompts,
    held_out_deep_prompts,
)
from moe_spec.ab.sglang_adaptive import SGLangAdaptiveDepth
from moe_spec.ab.stats import Modeled, modeled_pair
from moe_spec.cli import add_policy_option
from moe_spec.control.replay import Recording, record, replay_seconds
from moe_spec.costmodel import autoregressive_tokens_per_s, get_cost_model, get_shape
from moe_spec.costmodel.cpu import cpu_name
from moe_spec.engine.generate import SpecConfig
from moe_spec.models.repetition import repeated_ngram_share
from moe_spec.policies import get_policy
from moe_spec.policies.auto import server_options


def add_auto_option(ap: argparse.ArgumentParser, help: str) -> None:
    """``--auto-option KEY=VALUE`` (repeatable): ``args.auto_option``, a list of pairs."""
    add_policy_option(ap, help, "--auto-option")


def auto_priced(cost, shape, args, options: dict) -> Modeled:
    """How ``auto``'s steps are priced: with ``--sglang``, a draft extend after each step (a
    decode's too, but under ``--skip-decode-extend`` a run's last only) and a resting verify
    paying ``rest_share`` of a selection, one ranked after the forward ``after_share``
    (``options``: auto's, as it runs)."""
    rest_share = float(options.get("rest_share") or 0.0)
    decode_extend = not args.skip_decode_extend
    after = options.get("after_share")  # a step ranked after the forward (None: 2 / L)
    return Modeled(
        cost,
        shape,
        args.sglang,
        decode_extend=decode_extend,
        rest_share=rest_share,
        after_share=None if after is None else float(after),
    )


def option_text(pairs: list[tuple[str, object]]) -> str:
    """``(key, value)`` pairs as a run config's ``,opt.key=value`` suffix."""
    return "".join(f",opt.{k}={json.dumps(v)}" for k, v in pairs)


def tree_of(args) -> dict:
    """``--tree N W D`` as SpecConfig/RunConfig fields (default 32 tokens, width 8, depth 6)."""
    return dict(zip(("num_tokens", "width", "depth"), args.tree, strict=True))


def load(args):
    if args.model:  # fp32 on a CPU: transformers' bf16 grouped_mm refuses 12-neuron experts
        from moe_spec.models.registry import open_engine

        return open_engine(args.model)[0]
    from moe_spec.engine.checkpoint import load_checkpoint
    from moe_spec.engine.generate import Engine

    return Engine(load_checkpoint(Path(args.checkpoint)) if args.checkpoint else shipped())


def shipped():
    import moe_spec
    from moe_spec.engine.checkpoint import load_checkpoint

    return load_checkpoint(Path(moe_spec.__file__).parent / "assets" / "stdlib-moe")


def prompt_sets(
    n: int, chars: int = 1200, names: Collection[str] = "AB", engine=None
) -> dict[str, list[str]]:
    """The prompt sets ``names`` picks, ``n`` prompts each: held out, A, the start of each
    file's code; B, the code after it; C, code from 4,800 characters in (``deep-code``); and D,
    chat requests (``moe_spec.ab.prompts.CHAT_QUESTIONS``) in ``engine``'s chat template (a
    model with one: smollm2-moe)."""
    prompts = held_out_benchmark_prompts(20, chars)
    sets = {
        "A (file starts)": lambda: prompts[:n],
        "B (code after them)": lambda: prompts[12 : 12 + n],
        "C (deep in the files)": lambda: held_out_deep_prompts(n, chars),
        "D (chat requests)": lambda: chat_prompts(
            chat_template_of(getattr(engine, "tokenizer", None)), n
        ),
    }
    unknown = sorted(set(names) - {name[0] for name in sets})
    if unknown:
        raise ValueError(f"prompt sets {unknown} unknown; allowed: A, B, C, D")
    return {name: take() for name, take in sets.items() if name[0] in names}


def sets_or_exit(ap: argparse.ArgumentParser, args, engine) -> dict[str, list[str]]:
    """:func:`prompt_sets` for a command line: a set the model cannot run (D on a model
    without a chat template) exits with the reason."""
    try:
        return prompt_sets(args.prompts, args.chars, args.sets, engine)
    except PromptsError as exc:
        ap.error(f"--sets {' '.join(args.sets)}: {exc}")


class LivePolicy:
    """An engine whose speculative runs all use one live policy instance."""

    def __init__(self, engine, policy) -> None:
        self.engine, self.policy = engine, policy

    def __getattr__(self, name):
        return getattr(self.engine, name)

    def generate_speculative(self, *args, **kwargs):
        return self.engine.generate_speculative(*args, policy=self.policy, **kwargs)


def measured(engine, prompts: list[str], args) -> dict:
    """Tokens and seconds per arm on this CPU, arms alternating per prompt."""
    ids = [engine.encode(p) for p in prompts]
    options = {"measure": True, **dict(args.auto_option)}
    tree = SpecConfig(**tree_of(args))
    auto = SpecConfig(policy="auto", policy_options=options, **tree_of(args))
    arms = {"autoregressive": [0, 0.0], "none": [0, 0.0], "auto": [0, 0.0], "auto warm": [0, 0.0]}
    decisions = {"auto": [], "auto warm": []}
    tree_whys = {"auto": Counter(), "auto warm": Counter()}  # why its tree steps ran
    per_round = {"auto": [], "auto warm": []}  # auto / AR tokens/s within each round
    warm = get_policy("auto", **options)
    for r in range(args.rounds):
        before = {k: list(v) for k, v in arms.items()}
        for p in ids:
            runs = {
                "autoregressive": lambda p=p: engine.generate_autoregressive(p, args.max_new),
                "none": lambda p=p: engine.generate_speculative(p, args.max_new, tree),
                "auto": lambda p=p: engine.generate_speculative(p, args.max_new, auto),
                "auto warm": lambda p=p: engine.generate_speculative(
                    p, args.max_new, auto, policy=warm
                ),
            }
            order = list(runs) if r % 2 == 0 else list(runs)[::-1]
            for name in order:
                out = runs[name]()
                arms[name][0] += len(out.tokens)
                arms[name][1] += out.seconds
                if name in decisions:
                    decisions[name] += [s.guard for s in out.steps]
                    tree_whys[name].update(why(s.reason) for s in out.steps if s.guard == "tree")
        rate = {k: (n - before[k][0]) / (t - before[k][1]) for k, (n, t) in arms.items()}
        for k, ratios in per_round.items():
            ratios.append(rate[k] / rate["autoregressive"])
    tps = {k: n / s for k, (n, s) in arms.items()}
    share = {k: fmean(g == "autoregressive" for g in v) for k, v in decisions.items() if v}
    return {
        "tokens_per_s": tps,
        "autoregressive_step_share": share,
        "per_round": per_round,
        "tree_steps_by_reason": {k: dict(v.most_common()) for k, v in tree_whys.items()},
    }


def why(reason: str) -> str:
    """A step's reason without its budgets and details: "explores with tree 2/1/1"."""
    return re.sub(r" B=[\d,]+", "", reason).split(" (")[0].split(":")[0]


class TreeSized(LivePolicy):
    """An engine whose speculative runs all pick their tree with one ``tree_size``."""

    def generate_speculative(self, *args, **kwargs):
        return self.engine.generate_speculative(*args, tree_size=self.policy, **kwargs)


SGLANG_ADAPTIVE = "sglang-adaptive"


def spread(ratios: list[float]) -> str:
    """``median (min-max)`` of per-round ratios."""
    return f"{median(ratios):.3f} ({min(ratios):.3f}-{max(ratios):.3f})"


def overhead_line(name: str, o: dict, num_tokens: int, shape: str) -> str:
    """The controller's replayed time per tree step and per decode, fresh and warm, against
    the modeled GPU verify and decode; the live timer's figure per step beside it."""
    parts = []
    for mode in ("fresh", "warm"):
        t = o[mode]
        tree, decode = t["tree_s"] / max(t["tree_steps"], 1), t["decode_s"] / max(t["decodes"], 1)
        verify = ", ".join(f"{k} {tree / v:.1%}" for k, v in o["gpu_verify_s"].items())
        decodes = ", ".join(f"{k} {decode / v:.1%}" for k, v in o["gpu_decode_s"].items())
        run = (t["tree_s"] + t["decode_s"]) / t["gpu_run_s"]
        parts.append(
            f"{mode} {tree * 1e3:.3f} ms per tree step ({t['tree_steps']}) = {verify} of a "
            f"modeled {num_tokens}-token verify, {decode * 1e3:.4f} ms per decode "
            f"({t['decodes']}) = {decodes} of a modeled decode, {run:.2%} of the run's modeled "
            f"time on {shape}"
        )
    live = o["seconds"] / max(o["steps"], 1)
    return (
        f"- controller overhead, set {name} (replayed, fastest of 5): {'; '.join(parts)}; "
        f"live timer beside the model (fresh) {live * 1e3:.3f} ms per step = "
        f"{live / o['cpu_step_s']:.1%} of a measured step here"
    )


def controller_overhead(engine, prompts: list[str], args, shape) -> dict:
    """The auto arm on ``shape`` again with a live policy whose controller's calls are
    recorded, then replayed alone (``moe_spec.control.replay``): fresh (a controller per
    prompt, as an engine makes one per generation) and warm (one across the set, as a
    server keeps); beside it the live timer's seconds per step."""
    policy = get_policy(
        "auto", shape=shape.name, gpu=args.gpu, cost_model=args.cost_model, **dict(args.auto_option)
    )
    spec = SpecConfig(policy="auto", **tree_of(args))
    build = type(policy).build_controller.__get__(policy)  # a guard as the live one is built
    out = {"seconds": 0.0, "steps": 0}
    verify_s = []
    for mode in ("fresh", "warm"):
        recording = Recording()
        policy.controller = None
        policy.build_controller = lambda r=recording: record(build(), r)
        for p in prompts:
            if mode == "fresh" and policy.controller is not None:
                timed = replay_seconds(recording, build)
                recording.calls.clear()
                add_times(out, mode, timed)
                policy.controller = None
            run = engine.generate_speculative(engine.encode(p), args.max_new, spec, policy=policy)
            if mode == "fresh":
                out["seconds"] += policy.controller.overhead_s
                out["steps"] += len(run.steps)
                verify_s.append(run.seconds / max(len(run.steps), 1))
        add_times(out, mode, replay_seconds(recording, build))
    out["cpu_step_s"] = fmean(verify_s)
    return out


def add_times(out: dict, mode: str, timed) -> None:
    """Add a replay's :class:`ControllerTime` to ``out[mode]``'s sums."""
    sums = out.setdefault(mode, {})
    for key in ("tree_s", "decode_s", "tree_steps", "decodes"):
        sums[key] = sums.get(key, 0) + getattr(timed, key)


def modeled(engine, prompts: list[str], args) -> tuple[dict, dict, float]:
    """Modeled tokens/s and greedy agreement per arm and shape; the controller's overhead;
    the unbudgeted completions' mean share of repeated 5-grams (near 1: looping text)."""
    cost = get_cost_model(args.cost_model, args.gpu)
    shapes = [get_shape(s) for s in args.shapes]
    backend = EngineBackend(engine, cost, shapes[0])
    info = backend.model_info()
    common = ["none"] + [
        f"token-priority:B={b}{r}" for b in args.budgets for r in ("", ",repair=true")
    ]
    per_shape = {
        s.name: [
            f"auto:opt.shape={s.name},opt.gpu={args.gpu},opt.cost_model={args.cost_model}{r}"
            + option_text(args.auto_option)
            for r in ("", ",repair=true")
        ]
        + ["depth-width"]
        for s in shapes
    }
    records: dict[str, list] = {}
    configs: dict[str, RunConfig] = {}

    def run(text: str, shape=None):
        (config,) = parse_config(text, tree_of(args))
        key = text if shape is None else f"{text}@{shape.name}"
        configs[key] = config
        runner = backend if shape is None else EngineBackend(engine, cost, shape)
        records[key] = [runner.run(config, i, p, 0, args.max_new) for i, p in enumerate(prompts)]

    for text in common:
        run(text)
    for s in shapes:
        for text in per_shape[s.name]:
            run(text, s)
        for text in per_shape[s.name][:2]:  # auto again, one policy across the set (a server)
            (config,) = parse_config(text, tree_of(args))
            live = get_policy("auto", **config.options)
            runner = EngineBackend(LivePolicy(engine, live), cost, s)
            key = f"{text} warm@{s.name}"
            configs[key] = config
            records[key] = [
                runner.run(config, i, p, 0, args.max_new) for i, p in enumerate(prompts)
            ]
    if args.sglang and args.tree[1] == 1:  # SGLang's own adaptive chain, one server per set
        depth = SGLangAdaptiveDepth(args.tree[2])
        n, w, d = depth.largest
        (config,) = parse_config("none", {"num_tokens": n, "width": w, "depth": d})
        configs[SGLANG_ADAPTIVE] = config
        runner = EngineBackend(TreeSized(engine, depth), cost, shapes[0])
        records[SGLANG_ADAPTIVE] = [
            runner.run(config, i, p, 0, args.max_new) for i, p in enumerate(prompts)
        ]
    overhead = controller_overhead(engine, prompts, args, shapes[0])

    ref = records["none"]
    table: dict = {}
    for s in shapes:
        m = Modeled(cost, s, draft_extend=args.sglang)
        auto_m = auto_priced(cost, s, args, dict(args.auto_option))
        ar = autoregressive_tokens_per_s(cost.gpu, s, overheads=cost.overheads)
        row = {"autoregressive": ar}
        for key, recs in records.items():
            if "@" in key and not key.endswith(f"@{s.name}"):
                continue
            priced = auto_m if key.startswith("auto:") else m
            pairs = [modeled_pair(r, configs[key], info, priced) for r in recs]
            tps = sum(a for a, _ in pairs) / sum(b for _, b in pairs)
            agree = fmean(
                sum(x == y for x, y in zip(r.tokens, q.tokens, strict=False)) / len(q.tokens)
                for r, q in zip(recs, ref, strict=True)
            )
            ar_share = fmean(st.guard == "autoregressive" for r in recs for st in r.steps)
            row[key.split("@")[0]] = {"tok_s": tps, "agree": agree, "guard_ar": ar_share}
        table[s.name] = row
    # the run the overhead was timed on: the lossy auto arm of the first shape, its modeled
    # GPU seconds (fresh: a policy per prompt; warm: one across the set)
    s0, lossy = shapes[0], per_shape[shapes[0].name][0]
    priced = auto_priced(cost, s0, args, dict(args.auto_option))
    for mode, key in (("fresh", f"{lossy}@{s0.name}"), ("warm", f"{lossy} warm@{s0.name}")):
        pairs = [modeled_pair(r, configs[key], info, priced) for r in records[key]]
        overhead[mode]["gpu_run_s"] = sum(b for _, b in pairs)
    from moe_spec.costmodel import decode_seconds, verify_seconds

    overhead["gpu_verify_s"] = {
        s.name: verify_seconds(
            cost.gpu, s, args.tree[0], s.n_experts * 0.7, overheads=cost.overheads
        )
        for s in shapes
    }
    overhead["gpu_decode_s"] = {
        s.name: decode_seconds(cost.gpu, s, overheads=cost.overheads) for s in shapes
    }
    loops = fmean(repeated_ngram_share(r.tokens, 5) for r in records["none"])
    return table, overhead, loops


def auto_arm(row: dict, repair: bool, warm: bool) -> dict:
    """``auto``'s arm of one modeled row: with or without repair, fresh or warm."""
    return next(
        v
        for k, v in row.items()
        if k.startswith("auto:") and ("repair" in k) == repair and k.endswith(" warm") == warm
    )


def against_depth_width(set_name: str, shape: str, row: dict) -> str:
    """``auto`` repair against the Cascade-style depth-width baseline (both lossless)."""
    dw = row["depth-width"]
    fresh, warm = auto_arm(row, True, False), auto_arm(row, True, True)
    return (
        f"- depth-width (Cascade-style, {dw['agree']:.0%} agreement), set {set_name}, {shape}: "
        f"{dw['tok_s']:.0f} tok/s; auto repair {fresh['tok_s'] / dw['tok_s']:.3f}x it fresh, "
        f"{warm['tok_s'] / dw['tok_s']:.3f}x warm (agreement {fresh['agree']:.0%}, "
        f"{warm['agree']:.0%})"
    )


def summary(set_name: str, table: dict) -> list[str]:
    lines = []
    for shape, row in table.items():
        ar, none = row["autoregressive"], row["none"]["tok_s"]
        fixed = {k: v for k, v in row.items() if k.startswith("token-priority")}
        lossless = {k: v for k, v in fixed.items() if "repair" in k}
        lossy = {k: v for k, v in fixed.items() if "repair" not in k}
        best_ll = max(lossless, key=lambda k: lossless[k]["tok_s"])
        auto_ll, auto_ly = auto_arm(row, True, False), auto_arm(row, False, False)
        warm_ll, warm_ly = auto_arm(row, True, True), auto_arm(row, False, True)
        best_ly = max(lossy, key=lambda k: lossy[k]["tok_s"])
        dw = row["depth-width"]["tok_s"]
        floor = max(ar, none)
        lines.append(
            f"| {set_name} | {shape} | {ar:.0f} | {none:.0f} | {dw:.0f} | "
            f"{lossless[best_ll]['tok_s']:.0f} ({best_ll.split(':')[1]}) | "
            f"{auto_ll['tok_s']:.0f} | {auto_ll['tok_s'] / lossless[best_ll]['tok_s']:.3f} | "
            f"{auto_ll['tok_s'] / floor:.3f} | {auto_ll['guard_ar']:.0%} | "
            f"{lossy[best_ly]['tok_s']:.0f} ({best_ly.split(':')[1]}, "
            f"{lossy[best_ly]['agree']:.0%}) | {auto_ly['tok_s']:.0f} ({auto_ly['agree']:.0%}) | "
            f"{warm_ll['tok_s']:.0f} | {warm_ll['tok_s'] / lossless[best_ll]['tok_s']:.3f} | "
            f"{warm_ll['tok_s'] / floor:.3f} | {warm_ly['tok_s']:.0f} ({warm_ly['agree']:.0%}) |"
        )
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--checkpoint", default=None, help="an engine checkpoint folder")
    ap.add_argument("--model", default=None, help="a named model (transformers engine)")
    ap.add_argument("--prompts", type=int, default=6, help="prompts per set (at most 8)")
    ap.add_argument(
        "--sets",
        nargs="+",
        choices=["A", "B", "C", "D"],
        default=["A", "B"],
        help="prompt sets: A, file starts; B, the code after them; C, code from 4,800 "
        "characters in; D, chat requests (a model with a chat template: smollm2-moe)",
    )
    ap.add_argument("--max-new", type=int, default=64)
    ap.add_argument("--chars", type=int, default=1200, help="characters per prompt")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--gpu", default="H200")
    ap.add_argument("--cost-model", default="calibrated")
    ap.add_argument("--shapes", nargs="+", default=["OLMoE-1B-7B", "Qwen3-30B-A3B"])
    ap.add_argument("--budgets", type=int, nargs="+", default=[8, 12, 16, 20, 24])
    ap.add_argument(
        "--tree",
        type=int,
        nargs=3,
        default=[32, 8, 6],
        metavar=("N", "W", "D"),
        help="every arm's tree: tokens, width, depth (4 1 3: a chain of 3 drafts, SGLang's "
        "default for MoE targets)",
    )
    ap.add_argument(
        "--sglang",
        action="store_true",
        help="price every speculative step as SGLang runs it: a draft forward over the "
        "verified tokens after each verify, a plain decode of auto's included (auto plans "
        "with it, without the draft gate: draft_extend=true, gate=false); autoregressive "
        "decoding runs no draft. On a chain, SGLang's own adaptive policy runs as a baseline",
    )
    ap.add_argument(
        "--skip-decode-extend",
        action="store_true",
        help="with --sglang: as SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND=1 with the plugin, "
        "auto's plain decodes skip the draft extend except the last of each run (auto "
        "plans so: decode_extend=false); SGLang's own adaptive arm is priced as without it",
    )
    add_auto_option(ap, "an option of every auto arm (repeatable), e.g. carry=8")
    ap.add_argument("--skip-measured", action="store_true")
    ap.add_argument("--skip-modeled", action="store_true", help="the CPU's tokens/s only")
    ap.add_argument("--out", default="out/auto-bench")
    args = ap.parse_args()
    if args.sglang and not args.skip_measured:
        ap.error("--sglang prices steps as SGLang runs them: use it with --skip-measured")
    if args.skip_decode_extend and not args.sglang:
        ap.error("--skip-decode-extend prices SGLang's switch: use it with --sglang")
    if args.sglang:  # as SGLang's plugin runs auto: no draft gate, every verify ranks
        served = server_options(not args.skip_decode_extend).items()
        args.auto_option = [*served, *args.auto_option]
    if args.skip_decode_extend and args.tree[1] == 1:  # its own adaptive chain is a baseline:
        try:  # fail now, not at the end
            SGLangAdaptiveDepth(args.tree[2])
        except ValueError as exc:
            ap.error(f"--sglang on a chain of {args.tree[2]}: {exc}")
    torch.set_num_threads(args.threads)
    engine = load(args)
    sets = sets_or_exit(ap, args, engine)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cpu = f"{cpu_name()}, {args.threads} torch thread(s)"
    results = {"cpu": cpu, "tree": args.tree, "sglang": args.sglang, "sets": {}}
    results["skip_decode_extend"] = args.skip_decode_extend
    start = time.time()
    for name, prompts in sets.items():
        entry = {} if args.skip_measured else {"measured": measured(engine, prompts, args)}
        if not args.skip_modeled:
            entry["modeled"], entry["overhead"], entry["repeated_5grams"] = modeled(
                engine, prompts, args
            )
        results["sets"][name] = entry
        (out / "results.json").write_text(json.dumps(results, indent=1))
    tree = "/".join(map(str, args.tree))
    priced = "; priced as SGLang runs it (a draft extend after each step)" if args.sglang else ""
    if args.skip_decode_extend:
        priced += ", auto's decodes skipping it but the last of each run"
    lines = [f"CPU: {results['cpu']}; tree {tree}{priced}; {time.time() - start:.0f} s", ""]
    if not args.skip_measured:
        lines += [
            "| prompt set | AR tok/s | none | auto (fresh) | auto (warm) | "
            "auto/AR fresh, warm | AR-step share fresh, warm | per round auto/AR fresh | "
            "per round auto/AR warm |",
            "|" + " --- |" * 9,
        ]
        for name, e in results["sets"].items():
            t, sh = e["measured"]["tokens_per_s"], e["measured"]["autoregressive_step_share"]
            rounds = e["measured"]["per_round"]
            lines.append(
                f"| {name} | {t['autoregressive']:.1f} | {t['none']:.1f} | {t['auto']:.1f} | "
                f"{t['auto warm']:.1f} | {t['auto'] / t['autoregressive']:.3f}, "
                f"{t['auto warm'] / t['autoregressive']:.3f} | "
                f"{sh.get('auto', 0):.0%}, {sh.get('auto warm', 0):.0%} | "
                f"{spread(rounds['auto'])} | {spread(rounds['auto warm'])} |"
            )
        lines.append("")
        for name, e in results["sets"].items():
            for arm, whys in e["measured"]["tree_steps_by_reason"].items():
                counts = ", ".join(f"{why} {n}" for why, n in whys.items()) or "none"
                lines.append(f"- {arm}, set {name}: tree steps: {counts}")
        lines.append("")
    if args.skip_modeled:
        print("\n".join(lines))
        return
    lines += [
        "| prompt set | shape | AR | none | depth-width | best fixed B, repair | auto repair | "
        "x best fixed | x max(AR, none) | auto AR steps | best fixed B lossy (agree) | "
        "auto lossy (agree) | auto warm repair | x best fixed | x max(AR, none) | "
        "auto warm lossy (agree) |",
        "|" + " --- |" * 16,
    ]
    for name, e in results["sets"].items():
        lines += summary(name, e["modeled"])
    lines.append("")
    for name, e in results["sets"].items():
        lines.append(
            f"- set {name}: the unbudgeted completions repeat {e['repeated_5grams']:.0%} of "
            "their 5-grams (moe_spec.models.repetition; near 100%: looping text, whose "
            "figures say little)"
        )
    for name, e in results["sets"].items():
        lines += [against_depth_width(name, shape, row) for shape, row in e["modeled"].items()]
    for name, e in results["sets"].items():
        for shape, row in e["modeled"].items():
            if SGLANG_ADAPTIVE not in row:
                continue
            floor = max(row["autoregressive"], row["none"]["tok_s"])
            theirs = row[SGLANG_ADAPTIVE]["tok_s"]
            warm = auto_arm(row, True, True)
            lines.append(
                f"- SGLang's own adaptive chain (its default depths 1, 3, 5, 7 from "
                f"{args.tree[2]}, one policy across the set), set {name}, {shape}: "
                f"{theirs:.0f} tok/s = {theirs / floor:.3f}x max(AR, chain); auto warm repair "
                f"{warm['tok_s']:.0f} = {warm['tok_s'] / theirs:.3f}x it"
            )
    for name, e in results["sets"].items():
        lines.append(overhead_line(name, e["overhead"], args.tree[0], args.shapes[0]))
    text = "\n".join(lines)
    (out / "summary.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
