"""Does ``auto`` decode as fast as plain decoding? Forward by forward, on this CPU.

Whole-run tokens/s ratios of ``auto`` against autoregressive decoding spread +-10% per
round on a shared VM (BENCHMARKS.md), so a few percent cannot be told from noise. This
times every target forward of both loops instead (a forward pre-hook and hook on the
target module, the same in both loops), the arms alternating per prompt (the order
swapping), and splits each arm's time into

- its one-token forwards (decodes): count, median and sum;
- its longer forwards (the prompt's; ``auto``'s trees and draft catch-ups are not target
  forwards of one token either, so a run where the guard looked at a tree shows here);
- everything else: the loop's own work (sampling, the controller, the draft's catch-up).

``auto`` runs fresh per prompt with ``measure=true`` and repair, as ``make demo`` runs it.
Where its guard decodes every step the two loops run the same decode forwards; the rest
is what ``auto`` adds.

    PYTHONPATH=$PWD .venv/bin/python bench/auto_decode_parity.py [--model NAME |
        --checkpoint DIR] [--set A|B] [--prompts 3] [--max-new 32] [--rounds 10]
        [--threads 2] [--json FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from statistics import median

import torch
from auto_budget import load, prompt_sets

from moe_spec.control.steps import AUTOREGRESSIVE
from moe_spec.costmodel.cpu import cpu_name
from moe_spec.engine.generate import SpecConfig

ARMS = ("autoregressive", "auto")


class ForwardTimer:
    """Wall time of each forward of ``module``, by arm and by one token or more."""

    def __init__(self, module: torch.nn.Module) -> None:
        self.arm, self.start = ARMS[0], 0.0
        self.one = {arm: [] for arm in ARMS}  # seconds of each one-token forward
        self.longer = {arm: [] for arm in ARMS}
        self.tokens = 1
        module.register_forward_pre_hook(self.before, with_kwargs=True)
        module.register_forward_hook(self.after)

    def before(self, _module, args, kwargs) -> None:
        ids = kwargs.get("input_ids", args[0] if args else None)
        self.tokens = int(ids.shape[-1]) if ids is not None else 1
        self.start = time.perf_counter()

    def after(self, _module, _args, _output) -> None:
        seconds = time.perf_counter() - self.start
        (self.one if self.tokens == 1 else self.longer)[self.arm].append(seconds)


def run_arm(engine, arm: str, prompt: list[int], max_new: int, spec: SpecConfig):
    """``(seconds, tokens, decoded steps, tree steps)`` of one arm on one prompt."""
    start = time.perf_counter()
    if arm == "autoregressive":
        result = engine.generate_autoregressive(prompt, max_new)
        return time.perf_counter() - start, len(result.tokens), 0, 0
    result = engine.generate_speculative(prompt, max_new, spec)
    seconds = time.perf_counter() - start
    decoded = sum(s.guard == AUTOREGRESSIVE for s in result.steps)
    return seconds, len(result.tokens), decoded, len(result.steps) - decoded


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--checkpoint", default=None, help="an engine checkpoint folder")
    ap.add_argument("--model", default="smollm2-moe", help="a named model (transformers engine)")
    ap.add_argument("--prompts", type=int, default=3, help="prompts of the set")
    ap.add_argument("--set", choices=("A", "B"), default="A", help="auto_budget.py's sets")
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None, help="write the figures here")
    args = ap.parse_args()
    if args.checkpoint:
        args.model = None
    torch.set_num_threads(args.threads)
    engine = load(args)
    sets = prompt_sets(args.prompts)  # A: file starts, B: the code after them
    name = next(k for k in sets if k.startswith(args.set))
    ids = [engine.encode(p) for p in sets[name]]
    spec = SpecConfig(policy="auto", repair=True, policy_options={"measure": True})
    timer = ForwardTimer(engine.target)
    total = {arm: [0.0, 0, 0, 0] for arm in ARMS}  # seconds, tokens, decoded, tree steps
    ratios = []
    run_arm(engine, "auto", ids[0], 2, spec)  # one-time costs (imports, cost tables)
    timer.one, timer.longer = {a: [] for a in ARMS}, {a: [] for a in ARMS}
    for r in range(args.rounds):
        this_round = {arm: [0.0, 0] for arm in ARMS}
        for i, prompt in enumerate(ids):  # the arms alternate per prompt, order swapping
            for arm in ARMS if (r + i) % 2 == 0 else ARMS[::-1]:
                timer.arm = arm
                ran = run_arm(engine, arm, prompt, args.max_new, spec)
                for k, x in enumerate(ran):
                    total[arm][k] += x
                this_round[arm][0] += ran[0]
                this_round[arm][1] += ran[1]
        rates = {arm: tokens / seconds for arm, (seconds, tokens) in this_round.items()}
        ratios.append(rates["auto"] / rates["autoregressive"])
        print(f"round {r + 1}: auto / autoregressive tokens/s {ratios[-1]:.3f}", flush=True)
    report = {
        "cpu": cpu_name(),
        "threads": args.threads,
        "model": args.model or args.checkpoint,
        "set": name,
        "prompts": len(ids),
        "max_new": args.max_new,
        "rounds": args.rounds,
        "ratio_median": median(ratios),
        "ratio_range": [min(ratios), max(ratios)],
    }
    for arm in ARMS:
        seconds, tokens, decoded, trees = total[arm]
        one, longer = timer.one[arm], timer.longer[arm]
        requests = args.rounds * len(ids)
        report[arm] = {
            "tokens_per_s": tokens / seconds,
            "decode_forwards": len(one),
            "decode_forward_ms_median": 1e3 * median(one) if one else None,
            "decode_forwards_s": sum(one),
            "longer_forwards": len(longer),
            "longer_forward_ms_median": 1e3 * median(longer) if longer else None,
            "longer_forwards_s": sum(longer),
            "rest_ms_per_request": 1e3 * (seconds - sum(one) - sum(longer)) / requests,
            "decoded_steps": decoded,
            "tree_steps": trees,
        }
    print(f"{report['cpu']}, {args.threads} threads; {report['model']}; set {name}")
    print(f"{len(ids)} prompts x {args.max_new} new tokens, {args.rounds} rounds, arms alternating")
    print(
        f"auto / autoregressive tokens/s per round: median {report['ratio_median']:.3f} "
        f"(range {min(ratios):.3f}-{max(ratios):.3f})"
    )
    head = f"{'arm':<16}{'tok/s':>7}{'decodes':>9}{'median ms':>10}{'sum s':>8}"
    print(head + f"{'longer':>8}{'median ms':>10}{'sum s':>8}{'rest ms/req':>12}{'trees':>7}")
    for arm in ARMS:
        a = report[arm]
        print(
            f"{arm:<16}{a['tokens_per_s']:>7.2f}{a['decode_forwards']:>9}"
            f"{a['decode_forward_ms_median'] or 0:>10.2f}{a['decode_forwards_s']:>8.2f}"
            f"{a['longer_forwards']:>8}{a['longer_forward_ms_median'] or 0:>10.1f}"
            f"{a['longer_forwards_s']:>8.2f}{a['rest_ms_per_request']:>12.1f}{a['tree_steps']:>7}"
        )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
