"""The A/B benchmark: 3 policies x 3 budgets (plain and with repair) and the baselines.

Runs ``moe-spec ab`` (timed) on the shipped model and 20 held-out prompts with the
OLMoE-1B-7B / H200 cost model, then answers, as Markdown: the best policy per
budget; whether a configuration reaches modeled throughput >= 1.3x unbudgeted
tree speculation with acceptance length within 2% and greedy agreement >= 98%;
and how the best such configuration compares with the depth/width baseline at
equal quality. ``--no-repair`` leaves out the ``repair=true`` arms (3x3 only).

    .venv/bin/python bench/ab_policies.py [--out out/ab-bench] [--no-repair] [--summarize-only]
        [--cost-model calibrated|roofline] [--resume]  (--resume on a finished folder re-prices)
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

from moe_spec.cli import main as moe_spec_main

POLICIES = ("token-priority", "draft-path", "router-mass")
BUDGETS = (8, 12, 16)
TARGET_SPEEDUP, ACCEPT_TOL, AGREEMENT = 1.3, 0.02, 0.98


def ab_args(out: str, threads: int, pricing: list[str], repair: bool) -> list[str]:
    configs = ["autoregressive", "none", "depth-width"]
    configs += [f"{p}:B={b}" for p in POLICIES for b in BUDGETS]
    configs += [f"{p}:B={b},repair=true" for p in POLICIES for b in BUDGETS] if repair else []
    args = [
        "ab",
        "--out",
        out,
        "--threads",
        str(threads),
        "--max-new-tokens",
        "64",
        "--model-shape",
        "OLMoE-1B-7B",
        "--gpu",
        "H200",
        *pricing,
    ]
    for c in configs:
        args += ["--config", c]
    return args


def summarize(results: dict) -> str:
    rows = {c["label"]: c for c in results["configs"]}
    ref = rows["none"]["metrics"]
    dw = rows["depth-width"]["metrics"]

    def speed(m):
        return m["modeled_tokens_per_s"] / ref["modeled_tokens_per_s"]

    def accept(m):
        return m["acceptance_length"] / ref["acceptance_length"] - 1

    lines = [
        "| budget | best (agreement, then modeled speed) | accept (vs none) | tok/fwd "
        "| agreement | modeled x none |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for b in BUDGETS:
        cands = [r for r in rows.values() if r["config"]["budget"] == b]
        best = max(cands, key=lambda r: (r["metrics"]["agreement"], speed(r["metrics"])))
        m = best["metrics"]
        lines.append(
            f"| {b} | {best['label']} | {m['acceptance_length']:.2f} "
            f"({accept(m):+.1%}) | {m['tokens_per_target_forward']:.2f} "
            f"| {m['agreement']:.1%} | {speed(m):.2f} |"
        )
    ok = [
        r
        for r in rows.values()
        if r["config"]["budget"] is not None
        and speed(r["metrics"]) >= TARGET_SPEEDUP
        and accept(r["metrics"]) >= -ACCEPT_TOL
        and r["metrics"]["agreement"] >= AGREEMENT
    ]
    lines.append("")
    lines.append(
        f"Target (modeled >= {TARGET_SPEEDUP}x none, acceptance per step within {ACCEPT_TOL:.0%}, "
        f"agreement >= {AGREEMENT:.0%}): "
        + (", ".join(r["label"] for r in ok) if ok else "not reached by any configuration")
    )
    quality = [
        r
        for r in rows.values()
        if r["config"]["budget"] is not None and r["metrics"]["agreement"] >= AGREEMENT
    ]
    lines.append(
        f"depth-width: modeled {speed(dw):.2f}x none, acceptance {dw['acceptance_length']:.2f}, "
        f"agreement {dw['agreement']:.1%} (lossless)."
    )
    if quality:
        best = max(quality, key=lambda r: r["metrics"]["modeled_tokens_per_s"])
        ratio = best["metrics"]["modeled_tokens_per_s"] / dw["modeled_tokens_per_s"]
        lines.append(
            f"Best MoE-Spec configuration with agreement >= {AGREEMENT:.0%}: {best['label']}, "
            f"modeled {speed(best['metrics']):.2f}x none = {ratio:.2f}x depth-width."
        )
    ar = rows["autoregressive"]["metrics"]
    lines.append(f"autoregressive: modeled {speed(ar):.2f}x none.")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="out/ab-bench")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--cost-model", choices=("calibrated", "roofline"), default="calibrated")
    parser.add_argument("--overhead-us", type=float, help="see moe-spec ab (roofline + this)")
    parser.add_argument(
        "--resume", action="store_true", help="re-price / continue the run in --out"
    )
    parser.add_argument("--no-repair", action="store_true", help="leave out the repair arms")
    parser.add_argument("--summarize-only", action="store_true")
    args = parser.parse_args()
    if not args.summarize_only:
        started = time.perf_counter()
        pricing = (
            ["--overhead-us", str(args.overhead_us)]
            if args.overhead_us is not None
            else ["--cost-model", args.cost_model]
        )
        ab = ab_args(args.out, args.threads, pricing, not args.no_repair)
        ab += ["--resume"] if args.resume else []
        assert moe_spec_main(ab) == 0
        print(f"\nwall time {time.perf_counter() - started:.0f} s on {platform.machine()}")
    results = json.loads((Path(args.out) / "results.json").read_text())
    print(summarize(results))


if __name__ == "__main__":
    main()
