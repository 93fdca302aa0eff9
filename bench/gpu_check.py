"""One prepared GPU check of moe-spec: compile, check against torch, time real-shaped steps.

Shape legend: T tokens, E experts, K top-k, B budget, D model dim, F expert dim;
U distinct experts read.

On a machine with an NVIDIA GPU and only PyTorch and Triton installed (run
from a checkout; ``bench/gpu_check.sh`` wraps it with an 8-minute limit; about
50 s on an H200):

1. compiles the Triton kernels and checks them on CUDA against the torch
   references: the fused MoE (fp32, fp16, bf16; awkward and real shapes) and
   budget selection (exact ids and kept sets; weights within tolerance), and
   captures selection + fused MoE in a CUDA graph and replays it;
2. builds OLMoE-1B-7B- and Qwen3-30B-A3B-shaped models with random bf16 weights
   on the GPU (``bench/gpu_model.py``; no download) and times one decode step and
   verify steps of 32 and 64 tree tokens, routing steered to the paper's
   distinct-expert counts, unbudgeted and at two budgets each, eagerly and
   replayed from CUDA graphs (each replay checked against eager); these are the
   points ``moe_spec.costmodel.measured`` fits (``--json`` writes them);
3. splits the budget selection's cost out of a captured verify: the selections
   alone, the routed experts alone, as shares of the MoE and of the verify; and
   ``auto``'s work inside a verify as SGLang's plugin runs it (every layer ranks, keeps
   its budget read from the device and records what ``observe`` reads), on the Triton
   kernel and on its torch path (the ops before the thirty-eighth session), and a step
   that rests (budgets at E, the rest flag set: the kernels keep every expert without
   ranking; what ``moe_spec.policies.auto.SERVER_REST_SHARE`` estimates as a share of
   the selection), and the engines' ranking of such a step after the forward, every layer
   at once (``rank_after``; what ``moe_spec.control.cost.after_share`` estimates at
   ``2 / L`` of the selection), and a server's: the resting selections keep their scores
   and one launch ranks them after the forward (``REST_SCORED``; what
   ``SERVER_REST_SHARE + SERVER_AFTER_SHARE`` estimate), and a rest as the plugin runs it
   (SGLang's masked rows included, which the kernels skip themselves since the
   forty-eighth session) against the selection the cost model's ``select_s`` was fitted on
   (what ``SERVER_REST_SHARE`` estimates, a server's plain decodes included);
4. times SDPA tree attention (FlashInfer's wheel is too large to travel to the
   check's machine) and the fused MoE kernel against U, budgeted and not, each
   call replayed from a CUDA graph;
5. prints it all as Markdown, headed ``moe-spec GPU check: <GPU>``, with the date.

Exits 2 with a message when no GPU is visible, 1 when a check fails.
``--interpret`` runs the same code paths on CPU under Triton's interpreter with
tiny shapes (to test this script; its timings mean nothing, and its "graphs" are
eager re-runs).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import statistics
import sys
import time
import types
from collections.abc import Callable, Iterator
from pathlib import Path

if "--interpret" in sys.argv:  # before anything imports Triton
    os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(REPO), str(REPO / "bench")]

import gpu_model  # noqa: E402
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
CONTEXT = 1024  # committed tokens in the KV cache (the cost model's DEFAULT_CONTEXT)
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
        check_rank_after(record, rules)


def check_rank_after(record, rules: dict) -> None:
    """The one-launch ranking of a forward's layers after it (``rank_after``) against the
    torch ranks: three layers, the record's tokens with each layer's own logits."""
    from moe_spec.kernels.budget_select_torch import rank_layers_LE
    from moe_spec.kernels.budget_select_triton import rank_layers_triton
    from moe_spec.routing import RoutingRecord

    T, E, K = record.num_tokens, record.num_experts, record.top_k
    records = []
    for layer in range(3):
        logits_TE = skewed_logits(T, E, seed=T + E + layer + 1).to(record.router_logits_TE.device)
        ids_TK, weights_TK = model_topk(logits_TE, K)
        records.append(RoutingRecord(logits_TE, ids_TK, weights_TK, valid_T=record.valid_T))
    differ = [
        name
        for name, rule in rules.items()
        if not torch.equal(rank_layers_triton(records, rule), rank_layers_LE(records, rule))
    ]
    check(
        f"ranking after the forward T={T} E={E} K={K}",
        not differ,
        "3 layers in one launch rank as the torch path" if not differ else f"differs: {differ}",
    )
    differ = [name for name, rule in rules.items() if not scored_ranks_agree(records, rule)]
    check(
        f"resting with scores, ranked after T={T} E={E} K={K}",
        not differ,
        "rows copied, scores ranked in one launch as the torch path"
        if not differ
        else f"differs: {differ}",
    )


def scored_ranks_agree(records, rule) -> bool:
    """A server's step ranked after its forward: each layer's selection at ``REST_SCORED``
    (every row copied, scores kept), then one launch ranking them, against the torch ranks."""
    from moe_spec.kernels.budget_select_torch import REST_SCORED, rank_layers_LE
    from moe_spec.kernels.budget_select_triton import rank_scored_triton, select_budget_triton

    first = records[0]
    L, E, device = len(records), first.num_experts, first.router_logits_TE.device
    scores_LE = torch.zeros(L, E, device=device)
    used_LE = torch.zeros(L, E, dtype=torch.int32, device=device)
    rest_1 = torch.tensor([REST_SCORED], dtype=torch.int32, device=device)
    copied = True
    for layer, record in enumerate(records):
        out, _ = select_budget_triton(
            record, E, rule, rest_1=rest_1, scores_E=scores_LE[layer], used_E=used_LE[layer]
        )
        copied &= torch.equal(out.topk_ids_TK, record.topk_ids_TK)
    rank_LE = torch.empty(L, E, dtype=torch.long, device=device)
    rank_scored_triton(scores_LE, used_LE, rank_LE)
    return copied and torch.equal(rank_LE, rank_layers_LE(records, rule))


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


def bench_graph(fn: Callable[[], object], interpret: bool) -> float:
    """Median milliseconds of ``fn`` replayed from a CUDA graph (launch overhead left out)."""
    replay, _ = capture(fn, interpret)
    return bench_fn(replay, interpret)


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
        ms = bench_graph(lambda: fused_moe_triton(*layer, ids_TK, weights_TK), interpret)  # noqa: B023
        ms_torch = bench_fn(lambda: fused_moe_torch(*layer, ids_TK, weights_TK), interpret)  # noqa: B023
        rows.append((u, ms, ms_torch))
    table = [
        f"\n{shape.name}, T={T}, bf16: fused MoE time versus distinct experts U\n",
        "| U | Triton ms | GB/s of weights | t(U)/t(E) | U/E | torch ms (eager, syncs) |",
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
    base_ms = bench_graph(lambda: fused_moe_triton(*layer, ids_TK, weights_TK), interpret)
    U = distinct(ids_TK)
    table = [
        f"\n{shape.name}, T={T}, bf16: budgeted (router-mass) / unbudgeted, skewed routing\n",
        "| B | U | experts read | unbudgeted ms | budgeted ms | ratio | ideal | ratio/ideal | "
        "selection ms | selection / budgeted layer |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for B in [b for b in BUDGETS if shape.K <= b < shape.E]:
        out, _ = select_budget_triton(record, B, rule)
        ms = bench_graph(
            lambda: fused_moe_triton(*layer, out.topk_ids_TK, out.topk_weights_TK),  # noqa: B023
            interpret,
        )
        sel_ms = bench_graph(lambda: select_budget_triton(record, B, rule), interpret)  # noqa: B023
        read = distinct(out.topk_ids_TK)
        table.append(
            f"| {B} | {U} | {read} | {base_ms:.3f} | {ms:.3f} | {ms / base_ms:.3f} | "
            f"{read / U:.3f} | {ms / base_ms / (read / U):.3f} | {sel_ms:.4f} | {sel_ms / ms:.1%} |"
        )
    return table


def capture(fn: Callable[[], object], interpret: bool) -> tuple[Callable[[], object], object]:
    """``fn`` captured in a CUDA graph after two warm-up runs: ``(replay, static output)``.

    Under the interpreter (no CUDA) the "replay" runs ``fn`` eagerly, so the smoke run
    goes through the same code; its timings mean nothing.
    """
    if interpret:
        return fn, fn()
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        fn()
        fn()
    torch.cuda.current_stream().wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        out = fn()
    return graph.replay, out


def mean_distinct(ids_per_layer: list[torch.Tensor]) -> float:
    return statistics.fmean(distinct(ids_TK) for ids_TK in ids_per_layer)


def time_model(
    dims: gpu_model.ModelDims, tokens: list[int], device: str, interpret: bool, gpu: str
) -> tuple[list[str], list[dict]]:
    """Decode and verify steps of a random real-shaped model: eager and CUDA graph.

    Returns the Markdown table and the measured points (``forward_seconds``, the form
    ``moe_spec.costmodel.measured`` reads). Also checks each graph replay against eager,
    and splits the budget selection's cost out of a captured verify.
    """
    model = gpu_model.RandomMoeModel(dims, device, CONTEXT, max(tokens))
    model.steer_routing(max(tokens))
    rows, points, splits = [], [], []
    cases = [(1, None)] + [(T, B) for T in tokens for B in (None, *dims.budgets)]
    for T, B in cases:
        inputs = gpu_model.StepInputs.tree(model, T, seed=T)
        logits_TV, ids = gpu_model.forward(model, inputs, B)
        read = mean_distinct(ids)
        timings = {"eager": bench_fn(lambda: gpu_model.forward(model, inputs, B), interpret)}  # noqa: B023
        replay, (static_logits, _) = capture(lambda: gpu_model.forward(model, inputs, B), interpret)  # noqa: B023
        replay()
        check(
            f"{dims.name} T={T} B={B or 'none'} graph replay",
            torch.equal(static_logits, gpu_model.forward(model, inputs, B)[0]),
            "logits equal eager",
        )
        timings["graph"] = bench_fn(replay, interpret)
        del replay
        rows.append((T, B, read, timings))
        for stack, ms in timings.items():
            points.append(
                {
                    "kind": "forward_seconds",
                    "shape": dims.name,
                    "gpu": gpu,
                    "stack": stack,
                    "num_tokens": T,
                    "distinct": read,
                    "budget": B,
                    "context": CONTEXT,
                    "value": ms / 1e3,
                }  # fmt: skip
            )
        if dims.budgets[0] == B:
            splits.append(selection_split(model, inputs, B, ids, interpret))
        del logits_TV
    table = [
        f"\n{dims.name} ({dims.L} layers, E={dims.E}, K={dims.K}, D={dims.D}, F={dims.F}, "
        f"V={dims.V}), bf16 random weights, context {CONTEXT}: one forward, ms\n",
        "| step | T | B | experts read / layer | eager ms | CUDA graph ms | eager / graph |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for T, B, read, t in rows:
        step = "decode" if T == 1 else "verify"
        graph_ms = t["graph"]
        table.append(
            f"| {step} | {T} | {B or 'none'} | {read:.1f} | {t['eager']:.3f} | {graph_ms:.3f} | "
            f"{t['eager'] / graph_ms:.2f} |"
        )
    if splits:
        table += [
            f"\n{dims.name}: budget selection inside a captured verify (router-mass, "
            f"B={dims.budgets[0]}), per forward\n",
            "| T | selection ms (L calls) | routed-expert MoE ms (L layers) | selection / MoE | "
            "verify ms | selection / verify | `auto` ms (L calls, as SGLang's plugin) | "
            "`auto` / verify | `auto` on its torch path ms | `auto` at rest ms | "
            "at rest / `auto` | ranked after the forward ms (all layers) | after / `auto` | "
            "`auto` at rest, scored, ranked after ms | scored / `auto` | "
            "`auto` at rest as the plugin runs it ms (SGLang's masked rows too) | "
            "plugin at rest / selection |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- "
            "| --- | --- | --- |",
            *splits,
        ]
    return table, points


def selection_split(
    model: gpu_model.RandomMoeModel,
    inputs: gpu_model.StepInputs,
    B: int,
    ids: list[torch.Tensor],
    interpret: bool,
) -> str:
    """Captured: selections alone, the verify on fixed budgeted ids, and without the MoE."""
    T = inputs.tokens_T.shape[0]
    routing = gpu_model.steered_routing(model, T)
    fixed = []
    for (logits_TE, _, _), budgeted_TK in zip(routing, ids, strict=True):
        gathered = torch.gather(logits_TE.softmax(-1), 1, budgeted_TK)
        fixed.append((budgeted_TK.clone(), gathered / gathered.sum(-1, keepdim=True)))
    fns = {
        "select": lambda: gpu_model.selections(routing, B),
        "fixed": lambda: gpu_model.forward(model, inputs, fixed_ids=fixed),
        "no_moe": lambda: gpu_model.forward(model, inputs, moe=False),
        "verify": lambda: gpu_model.forward(model, inputs, B),
    }
    try:  # the policy registry needs pluggy, which a bare GPU machine may lack
        auto = gpu_model.served_auto(model.dims, T, B, inputs.tokens_T.device.type)
        fns["auto"] = fns["auto_torch"] = lambda: gpu_model.auto_selections(auto, routing)
        resting = gpu_model.served_auto(model.dims, T, model.dims.E, inputs.tokens_T.device.type)
        resting.flag_rest(True)  # a step at the cap that rests: launches, no ranking
        fns["auto_rest"] = lambda: gpu_model.auto_selections(resting, routing)
        fns["auto_after"] = lambda: gpu_model.auto_ranked_after(resting, routing)
        from moe_spec.kernels.budget_select_torch import REST_SCORED

        scored = gpu_model.served_auto(model.dims, T, model.dims.E, inputs.tokens_T.device.type)
        scored.flag_rest(REST_SCORED)  # a server's step at the cap ranked after its forward
        fns["auto_scored"] = lambda: gpu_model.auto_scored(scored, routing)
        fns["plugin_rest"] = lambda: gpu_model.plugin_budgets(resting, routing)
    except ImportError as exc:
        print(f"`auto` not timed: {exc}", flush=True)
    # on CUDA auto picks the kernel itself; the interpreter's smoke run must ask for it
    on_kernel = "triton" if interpret else None
    backends = {"auto": on_kernel, "auto_torch": "torch", "auto_rest": on_kernel}
    backends["auto_after"] = on_kernel  # one launch after the forward (engines' rank_after)
    backends["auto_scored"] = on_kernel  # scores kept at rest, one launch after (servers')
    backends["plugin_rest"] = on_kernel  # the rest with the runtime's own ops: the server's
    times = {}
    for name, fn in fns.items():
        try:
            with kernels_forced(backends.get(name)):  # the interpreter's "replay" is eager
                replay, _ = capture(fn, interpret)
                times[name] = bench_fn(replay, interpret)
            del replay
        except Exception as exc:  # auto's columns are extra: the rest of the check goes on
            if name not in backends:
                raise
            print(f"`{name}` not timed: {exc!r}", flush=True)
    moe_ms = times["fixed"] - times["no_moe"]
    verify_ms = times["verify"]

    def col(name: str) -> str:
        return f"{times[name]:.3f}" if name in times else "n/a"

    share = f"{times['auto'] / verify_ms:.1%}" if "auto" in times else "n/a"
    both = "auto_rest" in times and "auto" in times
    rest = f"{times['auto_rest'] / times['auto']:.2f}" if both else "n/a"
    after = "auto_after" in times and "auto" in times
    after_share = f"{times['auto_after'] / times['auto']:.2f}" if after else "n/a"
    scored = "auto_scored" in times and "auto" in times
    scored_share = f"{times['auto_scored'] / times['auto']:.2f}" if scored else "n/a"
    auto = f"| {col('auto')} | {share} | {col('auto_torch')} | {col('auto_rest')} | {rest} |"
    auto += f" {col('auto_after')} | {after_share} | {col('auto_scored')} | {scored_share} |"
    plugin = f"{times['plugin_rest'] / times['select']:.2f}" if "plugin_rest" in times else "n/a"
    auto += f" {col('plugin_rest')} | {plugin} |"
    return (
        f"| {T} | {times['select']:.3f} | {moe_ms:.3f} | {times['select'] / moe_ms:.1%} | "
        f"{verify_ms:.3f} | {times['select'] / verify_ms:.1%} {auto}"
    )


@contextlib.contextmanager
def kernels_forced(backend: str | None) -> Iterator[None]:
    """``MOE_SPEC_KERNELS=backend`` while a graph is captured (None: unchanged)."""
    before = os.environ.get("MOE_SPEC_KERNELS")
    if backend is not None:
        os.environ["MOE_SPEC_KERNELS"] = backend
    try:
        yield
    finally:
        if before is None:
            os.environ.pop("MOE_SPEC_KERNELS", None)
        else:
            os.environ["MOE_SPEC_KERNELS"] = before


def time_sdpa(device: str, interpret: bool) -> list[str]:
    """SDPA tree attention of one layer (FlashInfer cannot travel to the check's machine)."""
    table = [
        f"\nSDPA tree attention, one layer, bf16, context {CONTEXT} (FlashInfer not timed: its "
        "wheel is over 100 MB, beyond what travels to the GPU machine)\n",
        "| model | T | ms |",
        "| --- | --- | --- |",
    ]
    for dims in (gpu_model.TINY,) if interpret else tuple(gpu_model.MODELS.values()):
        for T in (8,) if interpret else (32, 64):
            q = torch.randn(1, dims.H, T, dims.Dh, device=device, dtype=torch.bfloat16)
            kv = torch.randn(
                2, 1, dims.G, CONTEXT + T, dims.Dh, device=device, dtype=torch.bfloat16
            )
            mask_TS = torch.ones(T, CONTEXT + T, device=device, dtype=torch.bool).tril(CONTEXT)
            attend = functools.partial(
                torch.nn.functional.scaled_dot_product_attention,
                q, kv[0], kv[1], attn_mask=mask_TS, enable_gqa=dims.G != dims.H,
            )  # fmt: skip
            ms = bench_fn(attend, interpret)
            table.append(f"| {dims.name} | {T} | {ms:.4f} |")
    return table


def gpu_short_name(device_name: str) -> str:
    """The cost model's GPU name in ``torch.cuda.get_device_name()`` (else the name itself)."""
    from moe_spec.costmodel.gpus import GPUS

    for key in GPUS:
        if key.split("-")[0].lower() in device_name.lower():
            return key
    return device_name


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
    parser.add_argument("--json", help="also write the model steps here (for the cost model)")
    parser.add_argument(
        "--stage-deadline-s", type=float, default=330.0,
        help="start no new timing stage after this many seconds (the script's limit is 470)",
    )  # fmt: skip
    args = parser.parse_args()
    model_keys = args.models.split(",")
    unknown = sorted(set(model_keys) - set(gpu_model.MODELS))
    if unknown:
        parser.error(f"--models {','.join(unknown)}: allowed {', '.join(gpu_model.MODELS)}")
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
    gpu_key = "interpreter" if args.interpret else gpu_short_name(gpu)
    command = " ".join(["bash bench/gpu_check.sh", *sys.argv[1:]])
    report = {"command": command, "gpu": gpu_key, "device_name": gpu,
              "date": f"{datetime.date.today()}", "torch": torch.__version__,
              "triton": triton.__version__, "context": CONTEXT, "points": []}  # fmt: skip
    print("\n## One decode / verify step of a real-shaped model (bf16, random weights)")
    models = [gpu_model.TINY] if args.interpret else [gpu_model.MODELS[k] for k in model_keys]
    tokens = [8] if args.interpret else [int(t) for t in args.tokens.split(",")]
    for dims in models:
        if time.perf_counter() - start > args.stage_deadline_s:
            print(f"\n{dims.name}: skipped, past {args.stage_deadline_s:.0f} s", flush=True)
            continue
        table, points = time_model(dims, tokens, device, args.interpret, gpu_key)
        print("\n".join(table), flush=True)
        report["points"] += points
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=1))
        torch.cuda.empty_cache() if not args.interpret else None
    print("\n".join(time_sdpa(device, args.interpret)), flush=True)
    how = "" if args.interpret else " with triton.testing.do_bench, median"
    print(f"\n## Fused MoE kernel (bf16){how}, each call replayed from a CUDA graph")
    shapes = TINY_SHAPES if args.interpret else {k: MODEL_SHAPES[k] for k in model_keys}
    if time.perf_counter() - start > args.stage_deadline_s:
        print(f"skipped, past {args.stage_deadline_s:.0f} s")
    else:
        time_shapes(shapes, tokens, device, args.interpret)
    print(f"\n{tree_attention_note()}")
    elapsed = time.perf_counter() - start
    print(f"\nchecks failed: {len(FAILURES)} ({', '.join(FAILURES) or 'none'}); {elapsed:.0f} s")
    return 1 if FAILURES else 0


if __name__ == "__main__":
    sys.exit(main())
