"""One prepared GPU check of the moe-spec kernels: compile, check against torch, time.

Shape legend: T tokens, E experts, K top-k, B budget, D model dim, F expert dim;
U distinct experts read.

On a machine with an NVIDIA GPU and only PyTorch and Triton installed (run
from a checkout; ``bench/gpu_check.sh`` wraps it with an 8-minute limit):

1. compiles the Triton kernels and checks them on CUDA against the torch
   references: the fused MoE (fp32, fp16, bf16; awkward and real shapes) and
   budget selection (exact ids and kept sets; weights within tolerance);
2. captures budget selection + fused MoE in a CUDA graph and replays it;
3. times the fused MoE at OLMoE-1B-7B and Qwen3-30B-A3B shapes (bf16, T in
   {32, 64}) versus distinct experts U, budgeted (B in {16, 32, 64}) versus
   unbudgeted on skewed routing, and the selection kernel's share of the layer;
4. prints Markdown tables to paste into BENCHMARKS.md, with date and GPU.

Exits 2 with a message when no GPU is visible, 1 when a check fails.
``--interpret`` runs the same code paths on CPU under Triton's interpreter with
tiny shapes (to test this script; its timings mean nothing).
"""

from __future__ import annotations

import argparse
import datetime
import os
import statistics
import sys
import time
import types
from collections.abc import Callable
from pathlib import Path

if "--interpret" in sys.argv:  # before anything imports Triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

from moe_bench_common import (  # noqa: E402
    MODEL_SHAPES,
    MoeShape,
    distinct,
    make_layers,
    model_topk,
    skewed_logits,
    uniform_routing,
)

TINY_SHAPES = {"tiny": MoeShape("tiny E=16", E=16, K=2, D=64, F=48)}
BUDGETS = (4, 8, 16, 32, 64)  # those with K <= B < E are timed
FAILURES: list[str] = []


def import_moe_spec() -> types.ModuleType:
    """moe_spec's kernel modules; without pluggy installed, skip the package ``__init__``.

    The kernels and the budgeting core need only torch (and Triton); the
    package ``__init__`` also loads the policy registry, which needs pluggy.
    """
    try:
        import moe_spec
    except ImportError:
        stub = types.ModuleType("moe_spec")
        stub.__path__ = [str(REPO / "moe_spec")]
        sys.modules["moe_spec"] = stub
        moe_spec = stub
    return moe_spec


def check(name: str, ok: bool, detail: str) -> None:
    print(f"  [{'ok' if ok else 'FAIL'}] {name}: {detail}", flush=True)
    if not ok:
        FAILURES.append(name)


def check_fused_moe(device: str, interpret: bool) -> None:
    from moe_spec.kernels import fused_moe_reference, fused_moe_torch
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton

    tolerance = {torch.float32: 2e-4, torch.float16: 5e-3, torch.bfloat16: 3e-2}
    cases = [(7, 8, 2, 96, 80), (33, 64, 8, 136, 200)]
    if not interpret:
        cases += [(32, 64, 8, 2048, 1024), (64, 128, 8, 2048, 768)]
    for T, E, K, D, F in cases:
        for dtype in tolerance:
            if interpret and D > 100:
                continue
            shape = MoeShape("check", E, K, D, F)
            (w13_EFD, w2_EDF) = make_layers(shape, 1, dtype, device)[0]
            x_TD = torch.randn(T, D, device=device).to(dtype)
            ids_TK, weights_TK = uniform_routing(T, E, K, min(E, T * K, 3 * K), seed=T)
            ids_TK, weights_TK = ids_TK.to(device), weights_TK.to(device)
            got = fused_moe_triton(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK).float()
            want = fused_moe_reference(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK).float()
            grouped = fused_moe_torch(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK).float()
            scale = want.abs().max().item()
            err = (got - want).abs().max().item() / scale
            err_torch = (grouped - want).abs().max().item() / scale
            ok = err <= tolerance[dtype] and bool(torch.isfinite(got).all())
            check(
                f"fused_moe T={T} E={E} K={K} D={D} F={F} {str(dtype)[6:]}",
                ok,
                f"max error / max |ref| = {err:.2e} (torch path {err_torch:.2e}), "
                f"allowed {tolerance[dtype]:.0e}",
            )


def check_budget_select(device: str) -> None:
    from moe_spec.kernels.budget_select_torch import ScoreRule, select_budget_torch
    from moe_spec.kernels.budget_select_triton import select_budget_triton
    from moe_spec.routing import RoutingRecord

    for T, E, K in [(1, 8, 1), (7, 8, 2), (33, 64, 8), (64, 128, 8)]:
        logits_TE = skewed_logits(T, E, seed=T + E).to(device)
        ids_TK, weights_TK = model_topk(logits_TE, K)
        valid_T = torch.arange(T, device=device) < max(1, T - 2)
        record = RoutingRecord(logits_TE, ids_TK, weights_TK, valid_T=valid_T)
        root_T = (torch.arange(T, device=device) == 0) & valid_T
        accept_T = torch.rand(T, device=device)
        rules = {
            "frequency": ScoreRule("frequency"),
            "mass": ScoreRule("mass"),
            "token-priority": ScoreRule("mass", accept_T, root_T),
        }
        mismatches = []
        for (name, rule), mode in [
            (r, m) for r in rules.items() for m in ("substitution", "truncation")
        ]:
            for B in sorted({K, (K + E) // 2, E - 1}):
                got, _ = select_budget_triton(record, B, rule, mode)
                want, _ = select_budget_torch(record, B, rule, mode)
                same = torch.equal(got.keep_E, want.keep_E) and torch.equal(
                    got.topk_ids_TK, want.topk_ids_TK
                )
                close = torch.allclose(got.topk_weights_TK, want.topk_weights_TK, atol=1e-5)
                if not (same and close):
                    mismatches.append(f"{name}/{mode}/B={B}")
        check(
            f"budget selection T={T} E={E} K={K}",
            not mismatches,
            "ids and kept sets equal the torch core, weights within 1e-5"
            if not mismatches
            else f"differs for {', '.join(mismatches)}",
        )


def check_cuda_graph(device: str) -> None:
    """Capture selection + fused MoE once, replay on new routing, compare with eager."""
    from moe_spec.kernels.budget_select_torch import ScoreRule
    from moe_spec.kernels.budget_select_triton import select_budget_triton
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton
    from moe_spec.routing import RoutingRecord

    shape = MoeShape("graph", E=64, K=8, D=256, F=128)
    w13_EFD, w2_EDF = make_layers(shape, 1, torch.bfloat16, device)[0]
    T = 32
    logits_TE = skewed_logits(T, shape.E, seed=1).to(device)
    ids_TK, weights_TK = model_topk(logits_TE, shape.K)
    x_TD = torch.randn(T, shape.D, device=device, dtype=torch.bfloat16)

    def step():
        record = RoutingRecord(logits_TE, ids_TK, weights_TK)
        out, _ = select_budget_triton(record, 16, ScoreRule("mass"))
        return fused_moe_triton(x_TD, w13_EFD, w2_EDF, out.topk_ids_TK, out.topk_weights_TK)

    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        step()  # compile outside capture
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        static_out = step()
    new_logits = skewed_logits(T, shape.E, seed=2).to(device)
    new_ids, new_weights = model_topk(new_logits, shape.K)
    logits_TE.copy_(new_logits)
    ids_TK.copy_(new_ids)
    weights_TK.copy_(new_weights)
    graph.replay()
    torch.cuda.synchronize()
    want = step()
    check(
        "CUDA graph capture of selection + fused MoE",
        torch.equal(static_out, want),
        "replay on new routing equals eager",
    )


def bench_fn(fn: Callable[[], object], interpret: bool) -> float:
    """Median milliseconds of ``fn`` (Triton's do_bench on GPU: L2 flushed between runs)."""
    if interpret:
        fn()
        times = []
        for _ in range(3):
            start = time.perf_counter()
            fn()
            times.append((time.perf_counter() - start) * 1e3)
        return statistics.median(times)
    import triton.testing

    return triton.testing.do_bench(fn, warmup=10, rep=60, return_mode="median")


def time_shapes(
    shapes: dict[str, MoeShape], tokens: list[int], device: str, interpret: bool
) -> list[str]:
    """Timing tables for every shape and T; each table is printed as soon as it is done."""
    out = []
    for shape in shapes.values():
        w13_EFD, w2_EDF = make_layers(shape, 1, torch.bfloat16, device)[0]
        for T in tokens:
            x_TD = torch.randn(T, shape.D, device=device, dtype=torch.bfloat16)
            layer = (x_TD, w13_EFD, w2_EDF)
            tables = time_distinct(shape, layer, device, interpret)
            tables += time_budgets(shape, layer, device, interpret)
            print("\n".join(tables), flush=True)
            out += tables
        del w13_EFD, w2_EDF
    return out


def time_distinct(
    shape: MoeShape, layer: tuple[torch.Tensor, ...], device: str, interpret: bool
) -> list[str]:
    """Triton (and torch grouped) fused-MoE time versus U, routing over exactly U experts."""
    from moe_spec.kernels import fused_moe_torch
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton

    T = layer[0].shape[0]
    gb = shape.expert_bytes(torch.bfloat16) / 1e9
    candidates = {shape.K, 16, 32, 64, 128, shape.E // 4, shape.E // 2, shape.E}
    grid = sorted(candidates & set(range(shape.K, min(shape.E, T * shape.K) + 1)))
    rows = []
    for u in grid:
        ids_TK, weights_TK = (t.to(device) for t in uniform_routing(T, shape.E, shape.K, u, u))
        ms = bench_fn(lambda: fused_moe_triton(*layer, ids_TK, weights_TK), interpret)  # noqa: B023
        ms_torch = bench_fn(lambda: fused_moe_torch(*layer, ids_TK, weights_TK), interpret)  # noqa: B023
        rows.append((u, ms, ms_torch))
    table = [
        f"\n{shape.name}, T={T}, bf16: fused MoE time versus distinct experts U\n",
        "| U | Triton ms | GB/s of weights | t(U)/t(E) | U/E | torch grouped ms |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for u, ms, ms_torch in rows:
        table.append(
            f"| {u} | {ms:.3f} | {u * gb / ms * 1e3:.0f} | {ms / rows[-1][1]:.3f} | "
            f"{u / rows[-1][0]:.3f} | {ms_torch:.3f} |"
        )
    return table


def time_budgets(
    shape: MoeShape, layer: tuple[torch.Tensor, ...], device: str, interpret: bool
) -> list[str]:
    """Budgeted / unbudgeted fused-MoE time on skewed routing, and the selection's share."""
    from moe_spec.kernels.budget_select_torch import ScoreRule
    from moe_spec.kernels.budget_select_triton import select_budget_triton
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton
    from moe_spec.routing import RoutingRecord

    T = layer[0].shape[0]
    logits_TE = skewed_logits(T, shape.E, seed=100 + T).to(device)
    ids_TK, weights_TK = model_topk(logits_TE, shape.K)
    record = RoutingRecord(logits_TE, ids_TK, weights_TK)
    rule = ScoreRule("mass")
    base_ms = bench_fn(lambda: fused_moe_triton(*layer, ids_TK, weights_TK), interpret)
    U = distinct(ids_TK)
    table = [
        f"\n{shape.name}, T={T}, bf16: budgeted (router-mass) / unbudgeted, skewed routing\n",
        "| B | U | experts read | unbudgeted ms | budgeted ms | ratio | ideal | ratio/ideal | "
        "selection ms | selection / budgeted layer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for B in [b for b in BUDGETS if shape.K <= b < shape.E]:
        out, _ = select_budget_triton(record, B, rule)
        ms = bench_fn(
            lambda: fused_moe_triton(*layer, out.topk_ids_TK, out.topk_weights_TK),  # noqa: B023
            interpret,
        )
        sel_ms = bench_fn(lambda: select_budget_triton(record, B, rule), interpret)  # noqa: B023
        read = distinct(out.topk_ids_TK)
        table.append(
            f"| {B} | {U} | {read} | {base_ms:.3f} | {ms:.3f} | {ms / base_ms:.3f} | "
            f"{read / U:.3f} | {ms / base_ms / (read / U):.3f} | {sel_ms:.4f} | {sel_ms / ms:.1%} |"
        )
    return table


def tree_attention_note() -> str:
    from importlib.util import find_spec

    if find_spec("moe_spec.kernels.tree_attention") is not None:
        return (
            "tree attention: moe_spec.kernels.tree_attention exists; this script does not time it"
        )
    flashinfer = "installed" if find_spec("flashinfer") else "not installed"
    return (
        f"tree attention: skipped (no Triton tree-attention kernel in moe_spec; "
        f"FlashInfer {flashinfer})"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--interpret", action="store_true", help="CPU smoke run of this script")
    parser.add_argument("--models", default="olmoe,qwen3", help="comma list of: olmoe, qwen3")
    parser.add_argument("--tokens", default="32,64", help="tree tokens T, comma list")
    args = parser.parse_args()
    if not args.interpret and not torch.cuda.is_available():
        print(
            f"gpu_check: no CUDA GPU is visible to PyTorch (torch {torch.__version__}, CUDA build "
            f"{torch.version.cuda}, "
            f"CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES')!r}). "
            "This script compiles and times the Triton kernels on an NVIDIA GPU: run it on a "
            "machine with one (or pass --interpret for a CPU smoke run of the script itself).",
            file=sys.stderr,
        )
        return 2
    try:
        import triton
    except ImportError:
        print(
            "gpu_check: Triton is not installed; install it (pip install triton) and rerun",
            file=sys.stderr,
        )
        return 2
    import_moe_spec()
    device = "cpu" if args.interpret else "cuda"
    gpu = "Triton interpreter on CPU" if args.interpret else torch.cuda.get_device_name()
    print(f"# moe-spec GPU check: {gpu}")
    print(f"Command: `{' '.join(['bash bench/gpu_check.sh', *sys.argv[1:]])}`")
    print(
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}; "
        f"torch {torch.__version__}, triton {triton.__version__}, CUDA {torch.version.cuda}"
    )
    if args.interpret:
        print("INTERPRETER SMOKE RUN: tiny shapes; the timings below mean nothing.")
    start = time.perf_counter()
    print("\n## Correctness on the device", flush=True)
    check_fused_moe(device, args.interpret)
    check_budget_select(device)
    if not args.interpret:
        check_cuda_graph(device)
    print(f"\n## Timing (bf16){'' if args.interpret else ' with triton.testing.do_bench, median'}")
    shapes = TINY_SHAPES if args.interpret else {k: MODEL_SHAPES[k] for k in args.models.split(",")}
    tokens = [8] if args.interpret else [int(t) for t in args.tokens.split(",")]
    time_shapes(shapes, tokens, device, args.interpret)
    print(f"\n{tree_attention_note()}")
    elapsed = time.perf_counter() - start
    print(f"\nchecks failed: {len(FAILURES)} ({', '.join(FAILURES) or 'none'}); {elapsed:.0f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
