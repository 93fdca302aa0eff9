"""CPU benchmark of a budgeted verify MoE layer at real model shapes (bf16, memory-bound).

Shape legend: T tokens, E experts, K top-k, B budget, U distinct experts read.

Runs ``moe_spec.kernels.fused_moe`` (the grouped torch path on CPU) and reports:

1. time versus U, with routing that touches exactly U experts;
2. budgeted (B in --budgets, ``router-mass`` policy) versus unbudgeted time on
   routing with popularity skew, as a ratio measured within each repetition,
   against the ideal ``min(B, U) / U``;
3. the budget selection's cost (each built-in policy's ``apply``) as a share
   of the budgeted MoE layer's time.

Configurations are interleaved within each repetition and cycled over several
layers' weights (cold last-level cache); every figure is a median over
repetitions, with its spread ((p75 - p25) / median) as the noise.

    .venv/bin/python bench/bench_moe_cpu.py [--models olmoe,qwen3] [--tokens 32,64] [--reps 15]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable

import torch
from moe_bench_common import (
    MODEL_SHAPES,
    MoeShape,
    Stats,
    distinct,
    make_layers,
    model_topk,
    skewed_logits,
    uniform_routing,
)

from moe_spec import RoutingRecord, get_policy
from moe_spec.kernels import fused_moe

POLICIES = ("topk-frequency", "router-mass", "token-priority")


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def moe_call(layers, x_TD, ids_TK, weights_TK, counter: list[int]) -> Callable[[], object]:
    """A fused-MoE call on the next layer of ``layers`` (cycled, for a cold cache)."""

    def call():
        w13_EFD, w2_EDF = layers[counter[0] % len(layers)]
        counter[0] += 1
        return fused_moe(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)

    return call


def sweep_distinct(
    shape: MoeShape, layers, T: int, reps: int, out: list[str]
) -> tuple[float, float]:
    """Time versus U: exactly U experts touched, U from K to E; returns the fit ``(a, b)``.

    ``t(U) ~ a * U + b`` (least squares over the medians): ``a`` is the cost of
    reading one expert, ``b`` the part that does not shrink with U.
    """
    grid = sorted({shape.K, 16, 24, 32, 48, 64, 96, 128} & set(range(shape.K, shape.E + 1)))
    grid = [u for u in grid if u <= T * shape.K]
    x_TD = torch.randn(T, shape.D, dtype=torch.bfloat16)
    counter = [0]
    calls = {
        u: moe_call(layers, x_TD, *uniform_routing(T, shape.E, shape.K, u, u), counter)
        for u in grid
    }
    for call in calls.values():
        call()  # warm-up
    samples: dict[int, list[float]] = {u: [] for u in grid}
    for _ in range(reps):
        for u, call in calls.items():
            samples[u].append(timed(call))
    full = Stats.of(samples[grid[-1]]).median
    gb = shape.expert_bytes(torch.bfloat16) / 1e9
    out.append(f"\n{shape.name}, T={T}: time versus distinct experts U (uniform routing over U)\n")
    out.append("| U | median ms | spread | ms per expert | GB/s of weights | t(U)/t(E) | U/E |")
    out.append("| --- | --- | --- | --- | --- | --- | --- |")
    for u in grid:
        s = Stats.of(samples[u])
        out.append(
            f"| {u} | {s.median * 1e3:.1f} | {s.spread:.0%} | {s.median * 1e3 / u:.2f} | "
            f"{u * gb / s.median:.1f} | {s.median / full:.3f} | {u / grid[-1]:.3f} |"
        )
    medians = [Stats.of(samples[u]).median * 1e3 for u in grid]
    a, b = linear_fit([float(u) for u in grid], medians)
    out.append(
        f"\nFit: t(U) = {a:.2f} ms x U + {b:.1f} ms (the {b:.1f} ms does not shrink with U: "
        f"arithmetic on the T*K={T * shape.K} pairs, which one core does not overlap with "
        f"weight reads, plus per-call work)"
    )
    return a, b


def linear_fit(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares slope and intercept."""
    mean_x, mean_y = statistics.mean(xs), statistics.mean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    return slope, mean_y - slope * mean_x


def budget_ratios(
    shape: MoeShape,
    layers,
    T: int,
    budgets: list[int],
    reps: int,
    samples: int,
    fit: tuple[float, float],
    out: list[str],
) -> None:
    """Budgeted versus unbudgeted time on skewed routing, and the selection's overhead."""
    x_TD = torch.randn(T, shape.D, dtype=torch.bfloat16)
    counter = [0]
    depth_T = torch.arange(T).clamp(max=1) + torch.arange(T) // 8  # root 0, then a few levels
    records = []
    for seed in range(samples):
        logits_TE = skewed_logits(T, shape.E, seed=1000 + seed)
        ids_TK, weights_TK = model_topk(logits_TE, shape.K)
        records.append(RoutingRecord(logits_TE, ids_TK, weights_TK, depth_T=depth_T))
    router_mass = get_policy("router-mass")
    routings = {}  # (sample, B or None) -> (ids, weights)
    for i, record in enumerate(records):
        routings[i, None] = (record.topk_ids_TK, record.topk_weights_TK)
        for b in budgets:
            out_b = router_mass.apply(record, b)
            routings[i, b] = (out_b.topk_ids_TK, out_b.topk_weights_TK)
    calls = {key: moe_call(layers, x_TD, *r, counter) for key, r in routings.items()}
    policies = {name: get_policy(name) for name in POLICIES}
    for policy in policies.values():
        policy.validate = False  # as a server's hot path runs it: no host-side value checks
    select_calls = {
        (name, b): (lambda p=p, b=b: p.apply(records[0], b))
        for name, p in policies.items()
        for b in budgets
    }
    for call in [*calls.values(), *select_calls.values()]:
        call()
    times: dict[object, list[float]] = {key: [] for key in [*calls, *select_calls]}
    for _ in range(reps):
        for key, call in calls.items():
            times[key].append(timed(call))
        for key, call in select_calls.items():
            times[key].append(min(timed(call) for _ in range(5)))
    out.append(
        f"\n{shape.name}, T={T}: budgeted (router-mass) / unbudgeted fused-MoE time, skewed "
        f"routing, {samples} routing samples x {reps} reps\n"
    )
    out.append(
        "| B | U unbudgeted (mean) | experts read min(B,U) | unbudgeted ms | budgeted ms | "
        "measured ratio | spread | ideal min(B,U)/U | measured/ideal | target <= 1.15 | "
        "ratio the U-fit predicts |"
    )
    out.append("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for b in budgets:
        ratios, ideal, base_ms, budget_ms, used, read = [], [], [], [], [], []
        for i in range(samples):
            u = distinct(routings[i, None][0])
            r = distinct(routings[i, b][0])
            used.append(u)
            read.append(r)
            ideal.append(r / u)
            base_ms.append(Stats.of(times[i, None]).median)
            budget_ms.append(Stats.of(times[i, b]).median)
            ratios.extend(tb / tu for tb, tu in zip(times[i, b], times[i, None], strict=True))
        ratio = Stats.of(ratios)
        ideal_ratio = statistics.mean(ideal)
        verdict = "yes" if ratio.median / ideal_ratio <= 1.15 else "NO"
        a, c = fit
        predicted = statistics.mean(
            (a * r + c) / (a * u + c) for r, u in zip(read, used, strict=True)
        )
        out.append(
            f"| {b} | {statistics.mean(used):.1f} | {statistics.mean(read):.1f} | "
            f"{statistics.mean(base_ms) * 1e3:.1f} | {statistics.mean(budget_ms) * 1e3:.1f} | "
            f"{ratio.median:.3f} | {ratio.spread:.0%} | {ideal_ratio:.3f} | "
            f"{ratio.median / ideal_ratio:.3f} | {verdict} | {predicted:.3f} |"
        )
    out.append(
        f"\n{shape.name}, T={T}: budget selection (policy.apply, torch path) versus the budgeted "
        f"MoE layer (routing sample 0)\n"
    )
    out.append("| policy | B | selection ms | budgeted MoE ms | overhead | target <= 3% |")
    out.append("| --- | --- | --- | --- | --- | --- |")
    for (name, b), _ in select_calls.items():
        sel = Stats.of(times[name, b]).median
        moe = Stats.of(times[0, b]).median
        verdict = "yes" if sel / moe <= 0.03 else "NO"
        out.append(
            f"| {name} | {b} | {sel * 1e3:.3f} | {moe * 1e3:.1f} | {sel / moe:.2%} | {verdict} |"
        )


def header(args: argparse.Namespace) -> list[str]:
    load = os.getloadavg()
    return [
        f"Command: `.venv/bin/python bench/bench_moe_cpu.py {' '.join(sys.argv[1:])}`".replace(
            "py `", "py`"
        ),
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; machine: "
        f"{os.cpu_count()}-core CPU ({platform.processor() or platform.machine()}), "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads; load average at start "
        f"{load[0]:.2f} (another process may share the cores: ratios are measured within each "
        f"repetition).",
        f"Path: moe_spec.kernels.fused_moe -> grouped torch path (bf16 matmuls, fp32 combine); "
        f"{args.layers} layers' weights cycled per model.",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default="olmoe,qwen3", help="comma list of: olmoe, qwen3")
    parser.add_argument("--tokens", default="32,64", help="tree tokens T, comma list")
    parser.add_argument("--budgets", default="16,32,64", help="budgets B, comma list")
    parser.add_argument("--reps", type=int, default=15, help="repetitions per configuration")
    parser.add_argument("--samples", type=int, default=4, help="skewed routing samples per T")
    parser.add_argument("--layers", type=int, default=4, help="layers' weights to cycle")
    parser.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (default 1: on a shared 2-core machine a second thread stalls "
        "every op behind the other process; one core reads weights at 7.5-9 GB/s)",
    )
    parser.add_argument("--out", help="also write the tables to this Markdown file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    out = header(args)
    for line in out:
        print(line, flush=True)
    for key in args.models.split(","):
        if key not in MODEL_SHAPES:
            parser.error(f"--models has {key!r}; allowed: {', '.join(MODEL_SHAPES)}")
        shape = MODEL_SHAPES[key]
        layers = make_layers(shape, args.layers, torch.bfloat16)
        for T in map(int, args.tokens.split(",")):
            start = len(out)
            fit = sweep_distinct(shape, layers, T, args.reps, out)
            budgets = [int(b) for b in args.budgets.split(",") if shape.K <= int(b) < shape.E]
            budget_ratios(shape, layers, T, budgets, args.reps, args.samples, fit, out)
            print("\n".join(out[start:]), flush=True)
        del layers
    if args.out:
        with open(args.out, "w") as f:
            f.write("\n".join(out) + "\n")


if __name__ == "__main__":
    main()
