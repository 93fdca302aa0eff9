"""Where ``auto`` loses to plain decoding: each step's modeled seconds against decoding its
committed tokens, summed by the guard's reason for the step.

``auto`` (repair, no draft gate) runs greedy on the prompt sets (``--sets``: A, B, C held
out, D chat requests) of ``bench/auto_budget.py``, fresh (a policy per prompt) and warm (one
across the set); its steps are priced as ``moe-spec ab`` prices them on ``--shape``
(``--cost-model``, measured by default, on an H200; ``auto`` plans with the same).
A step that commits ``a`` tokens in ``t`` modeled seconds loses ``t - a * t_decode``;
the table sums that per (step kind, reason) as a share of the time decoding the same
tokens takes. ``--sglang`` runs and prices the controller as SGLang does (a draft extend
after each step), ``--skip-decode-extend`` with it under SGLang's skip switch.

    PYTHONPATH=$PWD .venv/bin/python bench/auto_loss_trace.py [--model smollm2-moe]
        [--prompts 8] [--max-new 32] [--sets A B] [--shape OLMoE-1B-7B] [--tree 4 1 3]
        [--cost-model measured|calibrated]
        [--sglang [--skip-decode-extend]] [--auto-option KEY=VALUE ...]
        [--steps [--decodes]] [--reference]

``--steps`` prints each tree step's reason whole, its per-layer budgets run-length coded
(``B=32x30``: 30 layers at 32); ``--decodes`` the decodes' too.
"""

from __future__ import annotations

import argparse
import re
from collections import defaultdict

import torch
from auto_budget import (
    LivePolicy,
    add_auto_option,
    auto_priced,
    load,
    option_text,
    sets_or_exit,
    tree_of,
)

from moe_spec.ab.configs import parse_config
from moe_spec.ab.engine_backend import EngineBackend
from moe_spec.ab.report import short_reason
from moe_spec.ab.stats import Modeled, modeled_steps
from moe_spec.control.steps import AUTOREGRESSIVE
from moe_spec.costmodel import (
    autoregressive_tokens_per_s,
    get_cost_model,
    get_shape,
    speculative_tokens_per_s,
)
from moe_spec.costmodel.cpu import cpu_name
from moe_spec.policies import get_policy
from moe_spec.policies.auto import server_options


def reason_kind(reason: str) -> str:
    """A step's reason without its numbers: "probe the full tree", "keeps tree", ..."""
    head = reason.split(":")[0].split("(")[0]
    return re.sub(r"tree \d+/\d+/\d+ B=[\d,]+", "tree", head).strip()


def step_losses(record, config, info, m: Modeled) -> list[tuple[str, str, int, float]]:
    """``(kind, reason, committed, seconds lost against decoding)`` per step of a run."""
    g, o = m.cost.gpu, m.cost.overheads
    decode_s = 1.0 / autoregressive_tokens_per_s(g, m.shape, overheads=o)
    out = []
    for s, priced in zip(record.steps, modeled_steps(record, config, info, m), strict=True):
        seconds = s.committed / speculative_tokens_per_s(g, m.shape, [priced], overheads=o)
        kind = "decode" if s.guard == AUTOREGRESSIVE else f"tree {s.num_tokens}"
        out.append((kind, reason_kind(s.reason), s.committed, seconds - s.committed * decode_s))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default=None, help="smollm2-moe; default: the shipped toy")
    ap.add_argument("--checkpoint", default=None)
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--chars", type=int, default=1200)
    ap.add_argument("--sets", nargs="+", choices=["A", "B", "C", "D"], default=["A", "B"])
    ap.add_argument("--shape", default="OLMoE-1B-7B")
    ap.add_argument("--cost-model", default="measured", choices=["measured", "calibrated"])
    ap.add_argument("--tree", type=int, nargs=3, default=[4, 1, 3])
    ap.add_argument("--sglang", action="store_true")
    ap.add_argument("--skip-decode-extend", action="store_true")
    ap.add_argument("--steps", action="store_true", help="print every tree step and its reason")
    ap.add_argument("--decodes", action="store_true", help="with --steps: the decodes too")
    ap.add_argument("--reference", action="store_true", help="also the unbudgeted tree, every step")
    add_auto_option(ap, "an option of auto (repeatable), e.g. explore=0.002")
    args = ap.parse_args()
    if args.skip_decode_extend and not args.sglang:
        ap.error("--skip-decode-extend prices SGLang's switch: use it with --sglang")
    torch.set_num_threads(1)
    args.threads = 1
    engine = load(args)
    cost, shape = get_cost_model(args.cost_model, "H200"), get_shape(args.shape)
    served = server_options(not args.skip_decode_extend) if args.sglang else {"gate": False}
    options = option_text([*served.items(), *args.auto_option])
    text = f"auto:opt.shape={shape.name},opt.gpu=H200,opt.cost_model={args.cost_model}{options}"
    (config,) = parse_config(text + ",repair=true", tree_of(args))
    m = auto_priced(cost, shape, args, config.options)
    decode_s = 1.0 / autoregressive_tokens_per_s(cost.gpu, shape, overheads=cost.overheads)
    print(f"CPU: {cpu_name()}; {config.label}; tree {args.tree}; priced on {m.describe()}")
    reference = parse_config("none", tree_of(args))[0] if args.reference else None
    for name, prompts in sets_or_exit(ap, args, engine).items():
        if reference is not None:
            runner = EngineBackend(engine, cost, shape)
            ratio, _ = priced_run(runner, reference, prompts, args, m, decode_s)
            print(f"set {name}: unbudgeted tree {ratio:.4f}x decoding on {shape.name}")
        for mode in ("fresh", "warm"):
            if mode == "warm":  # one policy across the set, as a server keeps it
                engine_of = LivePolicy(engine, get_policy("auto", **config.options))
            else:
                engine_of = engine
            runner = EngineBackend(engine_of, cost, shape)
            ratio, sums = priced_run(runner, config, prompts, args, m, decode_s)
            print(f"set {name}, {mode}: auto {ratio:.4f}x decoding on {shape.name}")
            for (kind, why), (n, committed, lost) in sorted(sums.items(), key=lambda kv: -kv[1][2]):
                print(
                    f"  {kind:7} {why[:48]:48} {n:4} steps, {committed / n:.2f} tokens each, "
                    f"loss {lost:+.2%}"
                )


def priced_run(runner, config, prompts, args, m: Modeled, decode_s: float):
    """Run ``config`` on ``prompts``: (x decoding, {(kind, reason): [steps, committed,
    share of decoding's time lost]})."""
    info = runner.model_info()
    sums: dict = defaultdict(lambda: [0, 0, 0.0])
    tokens = 0
    for i, prompt in enumerate(prompts):
        record = runner.run(config, i, prompt, 0, args.max_new)
        for (kind, why, committed, lost), s in zip(
            step_losses(record, config, info, m), record.steps, strict=True
        ):
            row = sums[(kind, why)]
            row[0], row[1], row[2] = row[0] + 1, row[1] + committed, row[2] + lost
            tokens += committed
            if args.steps and (kind != "decode" or args.decodes):
                print(f"  prompt {i} {kind} committed {committed}: {short_reason(s.reason)}")
    base = tokens * decode_s
    lost = sum(row[2] for row in sums.values())
    for row in sums.values():
        row[2] /= base
    return base / (base + lost), sums


if __name__ == "__main__":
    main()
