"""Predict, then measure, the shipped model's decode and verify forwards on this CPU.

nice -n 0 .venv/bin/python bench/costmodel_cpu_check.py [--threads 1] [--rounds 3]

1. Measure the ``cpu`` profile (copy bandwidth, fp32 matmul rate, per-op dispatch time).
2. Count the aten ops of every forward of the grid (``count_aten_ops``, untimed) and fit
   ``ops = a + b * sum of distinct experts over layers``, separately for decode, unbudgeted
   verify and budgeted verify forwards (the budget policy adds ops per layer).
3. Predict each forward: ``ops_model * per_op + bytes / bandwidth + FLOPs / rate``
   (``moe_spec.costmodel.roofline`` on ``engine_shape``; distinct experts as routed), with
   ``per_op`` either the bare dispatch time of a tiny op, or the engine's own per-op time
   measured on the decode forward alone (then every verify forward is a held-out check).
4. Measure each: the median of ``--repeats`` forwards, in ``--rounds`` interleaved rounds;
   the spread is max/min of the round medians. Print a Markdown table with residuals.

Grid: autoregressive decode (one token after the prompt), and verify forwards over trees
of 8, 16, 32 and 64 tokens, unbudgeted and with token-priority B in {8, 16, 24} (E=32).
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from moe_spec.budget import check_budget
from moe_spec.costmodel.cpu import count_aten_ops, engine_shape, measure_cpu_profile
from moe_spec.costmodel.roofline import verify_parts
from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint
from moe_spec.engine.generate import Engine
from moe_spec.engine.model import VerifyBudget, distinct_per_layer
from moe_spec.engine.tree import expand_tree, verify_mask
from moe_spec.policies import get_policy

PROMPT = "def read_config(path):\n    with open(path) as f:\n"
TREES = ((8, 4, 3), (16, 4, 4), (32, 8, 6), (64, 8, 8))
BUDGETS = (None, 8, 16, 24)


def forwards(engine: Engine):
    """``(name, kind, run)`` for every forward of the grid; ``run()`` returns distinct/layer."""
    cfg = engine.config
    ids = engine.encode(PROMPT)
    tcache = engine.new_cache(cfg.n_layers, cfg.n_heads, cfg.head_dim)
    dcache = engine.new_cache(1, engine.draft.config.n_heads, engine.draft.config.head_dim)
    logits_V, feature_PD = engine.prefill(ids, tcache)
    root = int(logits_V.argmax())
    root_feature = engine.draft_catch_up(feature_PD, ids[1:] + [root], dcache)
    root_logprobs = torch.log_softmax(engine.target.lm_head(root_feature), dim=-1)
    out = []

    def decode():
        result = engine.target(torch.tensor([[root]]), cache=tcache)  # not advanced: repeatable
        _ = result.logits_BQV  # the LM head runs in a decode step (as in decode_one_token)
        return [cfg.top_k] * cfg.n_layers

    out.append(("autoregressive decode", "decode", 1, decode))
    for n, w, d in TREES:
        tree = expand_tree(
            engine.draft, engine.target, dcache, root, root_feature, root_logprobs, w, d, n
        )
        dcache.offset = 0
        mask = verify_mask(tree, tcache.length)
        positions = tcache.length + tree.depth_N
        for budget in BUDGETS:
            E, K = cfg.n_experts, cfg.top_k
            B = E if budget is None else check_budget(budget, K, E)
            policy = get_policy("none" if budget is None else "token-priority")
            kind = "verify unbudgeted" if budget is None else "verify token-priority"

            def verify(tree=tree, mask=mask, positions=positions, B=B, policy=policy):
                vb = VerifyBudget(policy, B, "substitution", tree.depth_N, tree.logprob_N)
                result = engine.target(tree.tokens_N[None], positions, tcache, mask, vb)
                _ = result.logits_BQV  # the LM head over the tree, as accept() reads it
                return distinct_per_layer(vb.ids_after_LTK, cfg.n_experts)

            name = f"verify {tree.size} tokens, " + ("unbudgeted" if budget is None else f"B={B}")
            out.append((name, kind, tree.size, verify))
    return out


def fit_line(xs: list[float], ys: list[float]) -> tuple[float, float]:
    """Least-squares ``y = a + b x``."""
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx if sxx else 0.0
    return my - b * mx, b


def weight_bytes(shape) -> int:
    return shape.dense_bytes + shape.n_moe_layers * shape.n_experts * shape.expert_bytes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=9)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    engine = Engine(load_checkpoint(SHIPPED))
    shape = engine_shape(engine.config)
    context = len(engine.encode(PROMPT))
    grid = forwards(engine)
    with torch.no_grad():
        counted = []
        for name, kind, tokens, run in grid:
            box = {}
            ops = count_aten_ops(lambda run=run, box=box: box.setdefault("d", run()))
            counted.append((name, kind, tokens, run, box["d"], ops))
        lines = {}
        for kind in dict.fromkeys(c[1] for c in counted):
            rows = [c for c in counted if c[1] == kind]
            xs, ys = [float(sum(c[4])) for c in rows], [float(c[5]) for c in rows]
            lines[kind] = fit_line(xs, ys) if len(rows) > 1 else (ys[0], 0.0)
        # Each round measures the profile, then every forward: contention from other jobs
        # on a shared machine changes between rounds, so predictions use their round's rates.
        profiles, times = [], {c[0]: [] for c in counted}
        for _ in range(args.rounds):
            profiles.append(
                measure_cpu_profile(weight_bytes(shape), (16, shape.hidden, shape.hidden))
            )
            for name, _kind, _tokens, run, _d, _ops in counted:
                run()  # warm
                samples = []
                for _ in range(args.repeats):
                    start = time.perf_counter()
                    run()
                    samples.append(time.perf_counter() - start)
                times[name].append(statistics.median(samples))

    def spread(values) -> str:
        return f"{statistics.median(values):.3g} ({min(values):.3g}-{max(values):.3g})"

    print(
        f"CPU: {profiles[0].name}, {args.threads} torch thread(s), {args.rounds} rounds "
        "(median (min-max) over rounds): copy "
        f"{spread([p.copy_bandwidth_Bps / 1e9 for p in profiles])} GB/s "
        f"over {weight_bytes(shape) / 2**20:.0f} MiB, fp32 16x256@256x256 matmul "
        f"{spread([p.matmul_flops / 1e9 for p in profiles])} GFLOP/s, "
        f"dispatch {spread([p.dispatch_s * 1e6 for p in profiles])} us/op"
    )
    for kind, (a, b) in lines.items():
        print(f"op-count model, {kind}: ops = {a:.0f} + {b:.2f} x (distinct experts over layers)")

    def predicted(profile, kind: str, tokens: int, d_L: list[int], op_s: float) -> float:
        a, b = lines[kind]
        parts = verify_parts(shape, tokens, statistics.fmean(d_L), context)
        return (a + b * sum(d_L)) * op_s + sum(p.seconds(profile.device()) for p in parts)

    decode = counted[0]
    # the engine's own per-op time, from the decode forward alone (all verify rows held out)
    op_from_decode = [
        (times[decode[0]][r] - predicted(profiles[r], decode[1], 1, decode[4], 0.0))
        / lines[decode[1]][0]
        for r in range(args.rounds)
    ]
    print(f"per-op time from the decode forward: {spread([t * 1e6 for t in op_from_decode])} us")
    print()
    print(
        "| forward | distinct/layer | ops (counted / model) | measured ms | dispatch model ms "
        "| residual | per-op-from-decode model ms | residual |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    summary = {"dispatch": [], "decode": []}
    for name, kind, tokens, _run, d_L, ops in counted:
        a, b = lines[kind]
        measured = times[name]
        cells = [
            f"{name}",
            f"{statistics.fmean(d_L):.1f}",
            f"{ops} / {a + b * sum(d_L):.0f}",
            spread([t * 1e3 for t in measured]),
        ]
        for label, op_s in (
            ("dispatch", [p.dispatch_s for p in profiles]),
            ("decode", op_from_decode),
        ):
            pred = [predicted(profiles[r], kind, tokens, d_L, op_s[r]) for r in range(args.rounds)]
            res = [pred[r] / measured[r] - 1 for r in range(args.rounds)]
            cells.append(spread([p * 1e3 for p in pred]))
            if label == "decode" and name == decode[0]:
                cells.append("(fitted here)")
                continue
            summary[label].append(statistics.median(res))
            cells.append(f"{statistics.median(res):+.0%} ({min(res):+.0%} to {max(res):+.0%})")
        print("| " + " | ".join(cells) + " |")
    print()
    for label, res in summary.items():
        inside = sum(abs(r) <= 0.25 for r in res)
        print(
            f"{label}: {inside} of {len(res)} median residuals within 25%; worst "
            f"{max(res, key=abs):+.0%}; "
            f"median |residual| {statistics.median(abs(r) for r in res):.0%}"
        )


if __name__ == "__main__":
    main()
