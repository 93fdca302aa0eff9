"""The ``auto`` controller's own host time per step, in isolation, at realistic sizes.

Drives an ``auto`` policy (``moe_spec.policies.auto.Auto``) with seeded synthetic verify
steps: a 32-token tree of width 8 and depth 6, skewed top-8 routing over E experts in
L MoE layers, an accepted path of 1-7 tokens. Per step it times what ``auto`` does on
the host between verify forwards: :meth:`Auto.plan_step` (the guard's decision, a
replan of every candidate tree every 8 to 24 tree steps, the budget/calibration
device-tensor updates), :meth:`Auto.gate` after a planned tree's draft (its verdict on
the step's path log-probabilities; a gated step is observed as a decode, counted apart
from tree steps) and :meth:`Auto.observe` (stacking the recorded per-layer
rankings, the estimates' update). The rankings themselves are made in the forward and
are not timed; a step that rests (:attr:`Policy.resting`: every budget at least E, not a
ranking step) records none, as in the engines, which then do not call the policy.
``prepare`` runs once per generation, before the timed steps.

``--fresh-every N`` makes a new policy every N steps, as an engine makes one per generation
(an A/B arm, ``moe-spec generate``): every step is timed (a fresh request's warm-up and first
replans are the point), and the report adds the replans per request and the share of the
controller's time the plans that replanned took.

``--sglang`` times the SGLang plugin's path instead: :class:`AcceptanceFeed`'s
``after_verify`` on a synthetic verify result (one request), which copies the step's
acceptance and the routing ``auto`` recorded off the device, folds it in with
``observe`` and plans the next step (per-layer budgets only: SGLang runs one tree, no
guard). On a CPU the copies are plain copies, made at once. With ``--request-steps N``
the verify batch's request changes every N steps (a new SGLang ``rid``), so each new
request's cost (the window cut to ``carry`` steps, then every step entering it until it
is full again) is in the mean.

Reports median / p90 / mean seconds per step and the mean's share of an H200 verify step
measured in BENCHMARKS.md ("GPU check on an H200", CUDA graphs, T=32, unbudgeted:
OLMoE-1B-7B 7.220 ms, Qwen3-30B-A3B 23.498 ms), and what a new generation's policy costs
before its first step (creation, ``prepare``, the first plan, which builds the controller).

    PYTHONPATH=$PWD .venv/bin/python bench/auto_overhead.py [--steps 400] [--grid]
        [--repeat 1] [--cost-model measured] [--json out.json] [--compare before.json]
        [--fresh-every N | --sglang [--request-steps N]]
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace

import numpy as np
import torch

from moe_spec.control import StepOutcome
from moe_spec.costmodel.cpu import cpu_name
from moe_spec.policies import get_policy

TREE = (32, 8, 6)
K = 8
# measured on the H200 (BENCHMARKS.md, GPU check, CUDA graph, T=32, B=none), seconds
H200_VERIFY_S = {"OLMoE-1B-7B": 7.220e-3, "Qwen3-30B-A3B": 23.498e-3}
SIZES = [(16, 64), (30, 32), (48, 128)]  # OLMoE-, smollm2-moe-, Qwen3-shaped (L, E)


def synthetic_steps(L: int, E: int, n: int, accept: float = 0.85, seed: int = 0) -> list[dict]:
    """``n`` seeded verify steps: tree, path (each level accepted with p ``accept``),
    per-layer ranks and top-k ids."""
    rng = np.random.default_rng(seed)
    N, width, depth = TREE
    pop_E = rng.dirichlet(np.full(E, 0.3))  # skewed expert popularity
    steps = []
    for _ in range(n):
        parent_N = np.full(N, -1)
        depth_N = np.zeros(N, dtype=np.int64)
        logprob_N = np.zeros(N)
        for i in range(1, N):
            p = int(rng.integers(0, i))
            while depth_N[p] >= depth:
                p = int(rng.integers(0, i))
            parent_N[i], depth_N[i] = p, depth_N[p] + 1
            logprob_N[i] = logprob_N[p] + np.log(rng.uniform(0.05, 1.0))
        path = [0]
        while True:
            kids = np.flatnonzero(parent_N == path[-1])
            if kids.size == 0 or rng.random() > accept:
                break
            path.append(int(kids[np.argmax(logprob_N[kids])]))
        ids_LNK = np.stack(
            [
                np.stack([rng.choice(E, K, replace=False, p=pop_E) for _ in range(N)])
                for _ in range(L)
            ]
        )
        score_LE = np.stack([np.bincount(ids.ravel(), minlength=E) for ids in ids_LNK])
        score_LE = score_LE + rng.random((L, E))
        rank_LE = np.argsort(np.argsort(-score_LE, axis=1), axis=1)
        steps.append(
            dict(
                rank=[torch.from_numpy(r) for r in rank_LE],
                ids=[torch.from_numpy(i) for i in ids_LNK],
                outcome=StepOutcome(
                    "tree",
                    path,
                    torch.from_numpy(depth_N),
                    torch.from_numpy(logprob_N).float(),
                    TREE,
                ),
            )
        )
    return steps


def step_order(n_steps: int, distinct: int, cycled: bool = False, seed: int = 1) -> list[int]:
    """Which of the ``distinct`` synthetic steps each of ``n_steps`` steps replays: every
    pass over them in a seeded shuffled order, or, ``cycled``, in the same order each pass.
    A fixed order repeats with period ``distinct``, and a controller that ranks one resting
    step in ``rank_every`` (4) samples the same ``distinct / 4`` of them every pass (48 cycled
    steps: measured 53 replans against 20, BENCHMARKS.md, fortieth section); text has no
    such period."""
    rng = np.random.default_rng(seed)
    order: list[int] = []
    while len(order) < n_steps:
        order += list(range(distinct)) if cycled else rng.permutation(distinct).tolist()
    return order[:n_steps]


def new_policy(L: int, E: int, shape: str, args):
    """An ``auto`` policy prepared for ``L`` layers of ``E`` experts (not timed)."""
    policy = get_policy(
        "auto", shape=shape, gpu="H200", cost_model=args.cost_model, rank_after=False
    )
    policy.prepare(L, E, K, E, torch.device("cpu"))
    return policy


def run(L: int, E: int, shape: str, args) -> dict:
    policy = new_policy(L, E, shape, args)
    steps = synthetic_steps(L, E, args.distinct, args.accept)
    order = step_order(args.steps, args.distinct, args.cycled)
    plan_s, observe_s, kinds = [], [], []
    replanned_s, replans = 0.0, 0  # with --fresh-every: plans that replanned, summed
    done, requests, next_request = 0, 1, args.fresh_every
    while done < args.steps:
        if args.fresh_every and done >= next_request:  # a run of decodes may step past it
            replans += policy.controller.replans  # an engine's next generation: a new policy
            policy = new_policy(L, E, shape, args)
            requests, next_request = requests + 1, done + args.fresh_every
        step = steps[order[done]]
        before = policy.controller.replans if policy.controller else 0
        t0 = time.perf_counter()
        plan = policy.plan_step(TREE, args.repair)
        o, n = step["outcome"], plan.num_tokens  # a smaller tree: its first n nodes
        gated = plan.kind == "tree" and policy.gate(o.logprob_N[:n]) is not None
        t1 = time.perf_counter()
        run = 1  # a plan of decodes covers plan.steps steps (the engines' loops run them)
        if plan.kind == "tree" and not gated:
            if not policy.resting:  # what keep() records inside the forward (a resting
                # step runs unbudgeted without calling the policy: nothing recorded)
                policy.rank_LE = dict(enumerate(step["rank"]))
                policy.ids_LNK = {layer: ids[:n] for layer, ids in enumerate(step["ids"])}
            path = o.path[: next((i for i, p in enumerate(o.path) if p >= n), len(o.path))]
            outcome = StepOutcome("tree", path, o.depth_N[:n], o.logprob_N[:n], plan.tree)
        else:
            run = 1 if gated else min(plan.steps, args.steps - done)
            tree = plan.tree if gated else (1, 0, 0)
            outcome = StepOutcome("autoregressive", [0], tree=tree, steps=run)
        t2 = time.perf_counter()
        policy.observe(outcome)
        t3 = time.perf_counter()
        plan_s += [(t1 - t0) / run] * run  # each step of a run of decodes: its share
        observe_s += [(t3 - t2) / run] * run
        kinds += ["gated" if gated else plan.kind] * run
        if policy.controller.replans > before:
            replanned_s += t1 - t0
        done += run
    per_step = np.array(plan_s) + np.array(observe_s)
    # first steps: warm-up, tables built; with --fresh-every every request's count
    skip = 0 if args.fresh_every else min(16, args.steps // 4)
    tree_share = float(np.mean([k == "tree" for k in kinds[skip:]]))
    parts = {"plan_mean_s": np.mean(plan_s[skip:]), "observe_mean_s": np.mean(observe_s[skip:])}
    row = summary(L, E, shape, per_step[skip:], policy, tree_share, parts)
    if args.fresh_every:  # replans summed over every request's policy
        row["replans"] = replans + policy.controller.replans
        row["requests"] = requests
        row["replan_share"] = replanned_s / float(per_step.sum())
    return row


def summary(
    L: int, E: int, shape: str, per_step: np.ndarray, policy, tree_share: float, parts: dict
) -> dict:
    """One row: the per-step seconds' median / p90 / mean, ``parts`` (mean seconds of each
    timed part, if split) and what the controller decided."""
    c = policy.controller
    return {
        "L": L,
        "E": E,
        "shape": shape,
        "steps": int(per_step.size),
        "tree_share": tree_share,
        "replans": c.replans,
        "median_s": float(np.median(per_step)),
        "p90_s": float(np.percentile(per_step, 90)),
        "mean_s": float(per_step.mean()),
        **{k: float(v) for k, v in parts.items()},
        "budgets": c.budget_L.tolist(),
    }


def run_feed(L: int, E: int, shape: str, args) -> dict:
    """The SGLang path: ``AcceptanceFeed.after_verify`` per synthetic verify step, timed
    whole; the recorded routing is written into the policy's buffers first (what its
    ``keep`` does inside the forward, or ``rank_scored`` after it, not timed)."""
    from moe_spec.integration.sglang.feed import AcceptanceFeed

    policy = get_policy("auto", shape=shape, gpu="H200", cost_model=args.cost_model)
    policy.for_server()
    policy.prepare(L, E, K, E, torch.device("cpu"))
    # a step ranked after its forward: on a GPU one launch (device work, queued), whose
    # ranks the synthetic step's stand for; here no forward wrote the scores it would rank
    policy.rank_scored = lambda: None
    feed = AcceptanceFeed(policy, TREE, K, interval_s=0)
    buffers, depth = feed.buffers, TREE[2]
    steps = synthetic_steps(L, E, args.distinct, args.accept)
    order = step_order(args.steps, args.distinct, args.cycled)
    took = []
    for i in range(args.steps):
        rid = i // args.request_steps if args.request_steps else 0
        batch = SimpleNamespace(forward_mode=None, reqs=[SimpleNamespace(rid=f"r{rid}")])
        step = steps[order[i]]
        buffers["rank_LE"].copy_(torch.stack(step["rank"]))
        buffers["ids_LRK"].copy_(torch.stack(step["ids"]))
        buffers["depth_R"].copy_(step["outcome"].depth_N)
        path = step["outcome"].path
        index = torch.full((1, depth + 1), -1, dtype=torch.long)
        index[0, : len(path)] = torch.tensor(path)
        result = SimpleNamespace(accept_lens=torch.tensor([len(path)]), accept_index=index)
        t0 = time.perf_counter()
        feed.after_verify(result, batch)
        took.append(time.perf_counter() - t0)
    skip = min(16, args.steps // 4)
    return summary(L, E, shape, np.array(took[skip:]), policy, 1.0, {}) | {
        "new_requests": feed.started
    }


def setup_seconds(L: int, E: int, shape: str, args, times: int = 12) -> float:
    """Median seconds a new generation's policy costs before its first step (creation,
    ``prepare``, the first ``plan_step``, which builds the controller), after one warm-up."""
    took = []
    for _ in range(times):
        t0 = time.perf_counter()
        policy = get_policy("auto", shape=shape, gpu="H200", cost_model=args.cost_model)
        policy.prepare(L, E, K, E, torch.device("cpu"))
        policy.plan_step(TREE, args.repair)
        took.append(time.perf_counter() - t0)
    return float(np.median(took[1:]))


def repeated(L: int, E: int, shape: str, args) -> dict:
    """:func:`run` ``--repeat`` times; the median of each time over the runs (a shared
    machine's load spikes hit one run), which must all have decided the same."""
    runs = [(run_feed if args.sglang else run)(L, E, shape, args) for _ in range(args.repeat)]
    for r in runs[1:]:
        if any(r[k] != runs[0][k] for k in ("tree_share", "replans", "budgets")):
            raise SystemExit(f"repeated runs decided differently at L={L}, E={E}")
    times = ("median_s", "p90_s", "mean_s", "plan_mean_s", "observe_mean_s", "replan_share")
    medians = {k: float(np.median([r[k] for r in runs])) for k in times if k in runs[0]}
    return runs[0] | medians | {"setup_s": setup_seconds(L, E, shape, args)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument(
        "--distinct", type=int, default=48, help="distinct synthetic steps, replayed shuffled"
    )
    ap.add_argument("--cycled", action="store_true", help="replay them in one fixed order")
    ap.add_argument("--accept", type=float, default=0.85, help="P(path goes one deeper)")
    ap.add_argument("--grid", action="store_true", help="every L in 16/30/48 x E in 32/64/128")
    ap.add_argument("--cost-model", default="measured")
    ap.add_argument("--repair", action="store_true")
    ap.add_argument("--repeat", type=int, default=1, help="runs per size; medians reported")
    ap.add_argument("--json")
    ap.add_argument("--compare", help="a JSON of an earlier run: print a before/after table")
    ap.add_argument("--sglang", action="store_true", help="time the SGLang feed's after_verify")
    ap.add_argument(
        "--request-steps", type=int, default=0, help="with --sglang: a new request every N steps"
    )
    ap.add_argument(
        "--fresh-every",
        type=int,
        default=0,
        help="a new policy every N steps, as an engine makes one per generation (not --sglang)",
    )
    args = ap.parse_args()
    if args.fresh_every and args.sglang:
        ap.error("--fresh-every times the engines' path; for SGLang use --request-steps")
    if args.fresh_every < 0:
        ap.error(f"--fresh-every is {args.fresh_every}; allowed: 0 (off) or steps >= 1")
    torch.set_num_threads(1)
    sizes = [(L, E) for L in (16, 30, 48) for E in (32, 64, 128)] if args.grid else SIZES
    path = "SGLang feed (after_verify)" if args.sglang else "auto (plan_step + observe)"
    if args.sglang and args.request_steps:
        path += f", a new request every {args.request_steps} steps"
    if args.fresh_every:
        path += f", a new policy every {args.fresh_every} steps (every step timed)"
    print(f"CPU: {cpu_name()}, 1 torch thread; cost model {args.cost_model}, tree {TREE}; {path}")
    print(
        "| L | E | priced as | tree steps | replans | median ms | p90 ms | mean ms "
        "| plan / observe mean ms | mean / H200 verify | setup per generation ms |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    rows = []
    for L, E in sizes:
        shape = "Qwen3-30B-A3B" if (L >= 48 or E >= 128) else "OLMoE-1B-7B"
        r = repeated(L, E, shape, args)
        r["share"] = r["mean_s"] / H200_VERIFY_S[shape]
        rows.append(r)
        print(
            f"| {L} | {E} | {shape} | {r['tree_share']:.0%} | {r['replans']} "
            f"| {r['median_s'] * 1e3:.3f} | {r['p90_s'] * 1e3:.3f} | {r['mean_s'] * 1e3:.3f} "
            f"| {split(r)} "
            f"| {r['share']:.2%} of {H200_VERIFY_S[shape] * 1e3:.2f} ms "
            f"| {r['setup_s'] * 1e3:.2f} |",
            flush=True,
        )
    for r in rows if args.fresh_every else ():
        print(
            f"- L={r['L']}, E={r['E']}: {r['replans'] / r['requests']:.1f} replans per request "
            f"of {args.fresh_every} steps ({r['requests']} requests); the plans that "
            f"replanned take {r['replan_share']:.0%} of the controller's time"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"cpu": cpu_name(), "rows": rows}, f, indent=1)
    if args.compare:
        with open(args.compare) as f:
            compare(json.load(f)["rows"], rows)


def split(row: dict) -> str:
    """``plan / observe`` mean ms, or ``-`` for a path timed whole (the SGLang feed)."""
    if "plan_mean_s" not in row:
        return "-"
    return f"{row['plan_mean_s'] * 1e3:.3f} / {row['observe_mean_s'] * 1e3:.3f}"


def compare(before: list[dict], after: list[dict]) -> None:
    """Before/after table of the same sizes, with what each run decided (tree steps,
    replans, whether the last budgets agree) beside its times."""
    print(
        "\n| L | E | priced as (H200 verify) | tree steps, before / after | replans, before / "
        "after | same last budgets | before: mean (median / p90) ms "
        "| after: mean (median / p90) ms | before / after | after: share of the verify "
        "| setup per generation ms, before / after |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for b, a in zip(before, after, strict=True):
        if (b["L"], b["E"]) != (a["L"], a["E"]):
            raise SystemExit(
                f"before has L={b['L']}, E={b['E']} where after has {a['L']}, {a['E']}"
            )
        ms = [
            f"{r['mean_s'] * 1e3:.3f} ({r['median_s'] * 1e3:.3f} / {r['p90_s'] * 1e3:.3f})"
            for r in (b, a)
        ]
        verify_ms = H200_VERIFY_S[a["shape"]] * 1e3
        print(
            f"| {a['L']} | {a['E']} | {a['shape']} ({verify_ms:.2f} ms) "
            f"| {b['tree_share']:.0%} / {a['tree_share']:.0%} | {b['replans']} / {a['replans']} "
            f"| {'yes' if b['budgets'] == a['budgets'] else 'no'} | {ms[0]} | {ms[1]} "
            f"| {b['mean_s'] / a['mean_s']:.1f}x | {a['share']:.2%} "
            f"| {b['setup_s'] * 1e3:.2f} / {a['setup_s'] * 1e3:.2f} |"
        )


if __name__ == "__main__":
    main()
