"""Tune the Triton fused MoE's block sizes on this GPU: a sweep timed in CUDA graphs.

Shape legend: T tokens, E experts, K top-k, B budget, D model dim, F expert dim; U distinct
experts a routing touches.

For OLMoE-1B-7B and Qwen3-30B-A3B shapes (bf16) and the step kinds the verify pass
runs (decode T=1; trees of 32 and 64 tokens on routing steered to the paper's distinct
counts; a budgeted tree), times ``fused_moe_triton`` with every block configuration of
a grid, each captured in a CUDA graph (launch overhead out, L2 flushed between runs),
and prints the best per case beside the shipped table's choice
(``moe_spec.kernels.configs``), with the weight bandwidth each reaches. Writes every
measurement as JSON with ``--json``. Stops starting new cases after ``--deadline-s``.

    PYTHON=python3 python3 bench/gpu_tune.py --json out.json
``--interpret`` runs a tiny case and two configurations on CPU (tests this script).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import time
from pathlib import Path

import gpu_check  # noqa: F401  (sets sys.path and TRITON_INTERPRET before Triton loads)
import torch
from gpu_check import bench_fn, capture
from moe_bench_common import MODEL_SHAPES, MoeShape, distinct, make_layers, model_topk

from moe_spec.kernels.configs import MoeBlockConfig, moe_block_config

PAPER_DISTINCT = {"OLMoE-1B-7B": 54, "Qwen3-30B-A3B": 80}  # unbudgeted U the paper reports
BUDGET = {"OLMoE-1B-7B": 16, "Qwen3-30B-A3B": 32}


def grid(interpret: bool) -> list[MoeBlockConfig]:
    if interpret:
        return [MoeBlockConfig(16, 32, 32, 1, 1), MoeBlockConfig(16, 64, 64, 1, 1)]
    configs = []
    for m, n, k, w, s in itertools.product((16, 32), (32, 64, 128), (64, 128, 256), (4, 8), (3, 4)):
        smem = s * (m * k + 2 * k * n) * 2
        if smem <= 200 * 1024:
            configs.append(MoeBlockConfig(m, n, k, w, s))
    return configs


def steered_topk(shape: MoeShape, T: int, device: str) -> tuple[torch.Tensor, ...]:
    """``(logits_TE, ids_TK, weights_TK)``: skewed routing over the paper's U experts."""
    from gpu_model import steered_bias

    U = min(PAPER_DISTINCT.get(shape.name, shape.E // 2), shape.E)
    logits_TE = steered_bias(shape.E, U, 1, T, seed=7)[0].to(device)
    return (logits_TE, *model_topk(logits_TE, shape.K))


def routing(shape: MoeShape, T: int, budget: int | None, device: str):
    """``(ids_TK, weights_TK)`` of :func:`steered_topk`, optionally budgeted."""
    from gpu_model import select_mass

    logits_TE, ids_TK, weights_TK = steered_topk(shape, T, device)
    if budget is None:
        return ids_TK, weights_TK
    return select_mass(logits_TE, ids_TK, weights_TK, budget)


def tune_case(shape, T, budget, configs, device, interpret) -> dict:
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton

    w13_EFD, w2_EDF = make_layers(shape, 1, torch.bfloat16, device)[0]
    x_TD = torch.randn(T, shape.D, device=device).to(torch.bfloat16)
    if T == 1:
        ids_TK, weights_TK = model_topk(torch.randn(1, shape.E), shape.K)
        ids_TK, weights_TK = ids_TK.to(device), weights_TK.to(device)
    else:
        ids_TK, weights_TK = routing(shape, T, budget, device)
    U = distinct(ids_TK)
    shipped = moe_block_config(T * shape.K, shape.E, torch.bfloat16, torch.device(device))
    results = []
    for config in dict.fromkeys([shipped, *configs]):
        try:
            replay, _ = capture(
                lambda c=config: fused_moe_triton(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK, c),
                interpret,
            )
            ms = bench_fn(replay, interpret)
        except Exception as e:  # a config the compiler refuses (shared memory, registers)
            print(f"    {config}: {type(e).__name__}: {str(e)[:80]}", flush=True)
            continue
        results.append({"config": config.__dict__, "ms": ms})
    gb = U * shape.expert_bytes(torch.bfloat16) / 1e9
    best = min(results, key=lambda r: r["ms"])
    base = next(r for r in results if r["config"] == shipped.__dict__)
    return {"shape": shape.name, "T": T, "budget": budget, "U": U, "GB": gb,
            "shipped": base, "best": best, "all": results}  # fmt: skip


def tune_selection(shape: MoeShape, T: int, interpret: bool, device: str) -> dict:
    """Budget selection (router-mass, B = E/4) in a graph: launch sizes and the torch path."""
    from moe_spec.kernels.budget_select_torch import ScoreRule, select_budget_torch
    from moe_spec.kernels.budget_select_triton import SelectLaunch, select_budget_triton
    from moe_spec.routing import RoutingRecord

    logits_TE, ids_TK, weights_TK = steered_topk(shape, T, device)
    valid_T = torch.ones(T, dtype=torch.bool, device=device)
    record = RoutingRecord(logits_TE, ids_TK, weights_TK, valid_T=valid_T)
    B, rule = max(shape.E // 4, shape.K), ScoreRule("mass")
    want, _ = select_budget_triton(record, B, rule)
    if interpret:
        launches = [SelectLaunch(), SelectLaunch(4, 1, 1)]
    else:
        launches = [SelectLaunch()] + [
            SelectLaunch(t, sw, rw)
            for t, sw, rw in itertools.product((1, 2, 4, 8, 16), (1, 2, 4, 8), (1, 2, 4))
        ]
    rows = []
    for launch in launches:
        got, _ = select_budget_triton(record, B, rule, launch=launch)
        same = torch.equal(got.topk_ids_TK, want.topk_ids_TK)
        replay, _ = capture(
            lambda la=launch: select_budget_triton(record, B, rule, launch=la), interpret
        )
        rows.append({"launch": launch.__dict__, "ms": bench_fn(replay, interpret), "same": same})
    replay, _ = capture(lambda: select_budget_torch(record, B, rule), interpret)
    torch_ms = bench_fn(replay, interpret)
    best = min((r for r in rows if r["same"]), key=lambda r: r["ms"])
    same = all(r["same"] for r in rows)
    return {"shape": shape.name, "T": T, "B": B, "default": rows[0], "best": best,
            "torch_ms": torch_ms, "all": rows, "all_same": same}  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interpret", action="store_true", help="CPU smoke run of this script")
    parser.add_argument("--json", help="write every measurement here")
    parser.add_argument("--deadline-s", type=float, default=300.0)
    parser.add_argument("--only-selection", action="store_true", help="skip the MoE sweep")
    args = parser.parse_args()
    device = "cpu" if args.interpret else "cuda"
    if not args.interpret and not torch.cuda.is_available():
        print("gpu_tune: no CUDA GPU is visible; pass --interpret for a CPU smoke run")
        return 2
    name = "Triton interpreter" if args.interpret else torch.cuda.get_device_name()
    configs = grid(args.interpret)
    print(f"# fused MoE block-size sweep on {name}: {len(configs)} configurations, bf16")
    shapes = [MoeShape("tiny", E=16, K=2, D=64, F=48)] if args.interpret else MODEL_SHAPES.values()
    cases = [(s, T, None) for s in shapes for T in ((1, 8) if args.interpret else (1, 32, 64))]
    cases += [(s, 64, BUDGET[s.name]) for s in shapes if s.name in BUDGET]
    print(
        "\n| shape | T | B | U | shipped config | shipped ms | best config | best ms | "
        "shipped / best | best GB/s |\n" + "| --- " * 10 + "|"
    )
    start, report = time.perf_counter(), {"gpu": name, "cases": []}
    for shape, T, budget in [] if args.only_selection else cases:
        if time.perf_counter() - start > args.deadline_s:
            print(f"| {shape.name} | {T} | {budget or 'none'} | skipped: past the deadline |")
            continue
        r = tune_case(shape, T, budget, configs, device, args.interpret)
        report["cases"].append(r)
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        c = lambda d: "{block_m}/{block_n}/{block_k} w{num_warps} s{num_stages}".format(**d)  # noqa: E731
        print(
            f"| {shape.name} | {T} | {budget or 'none'} | {r['U']} | {c(r['shipped']['config'])} | "
            f"{r['shipped']['ms']:.4f} | {c(r['best']['config'])} | {r['best']['ms']:.4f} | "
            f"{r['shipped']['ms'] / r['best']['ms']:.2f} | {r['GB'] / r['best']['ms'] * 1e3:.0f} |",
            flush=True,
        )
    print(
        "\nBudget selection (router-mass, B=E/4, substitution), one call in a CUDA graph\n\n"
        "| shape | T | B | default ms | best ms | best launch (rewrite rows, score warps, "
        "rewrite warps) | torch path ms | ids equal for every launch |\n" + "| --- " * 8 + "|"
    )
    report["selection"] = []
    for shape in shapes:
        for T in (8,) if args.interpret else (32, 64):
            r = tune_selection(shape, T, args.interpret, device)
            report["selection"].append(r)
            if args.json:
                Path(args.json).write_text(json.dumps(report, indent=1))
            la = r["best"]["launch"]
            print(
                f"| {shape.name} | {T} | {r['B']} | {r['default']['ms']:.4f} | "
                f"{r['best']['ms']:.4f} | {la['rewrite_block_t']}, {la['score_warps']}, "
                f"{la['rewrite_warps']} | {r['torch_ms']:.4f} | {r['all_same']} |",
                flush=True,
            )
    print(f"\n{time.perf_counter() - start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
