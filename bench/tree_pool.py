"""How much acceptance the choice of a draft tree's nodes leaves on the table (smollm2-moe).

    PYTHONPATH=$PWD .venv/bin/python bench/tree_pool.py [--prompts 6] [--max-new-tokens 48]

EAGLE-2 expansion (``moe_spec.engine.tree.expand_tree``) grows a pool of candidates (``width``
per expanded node, ``width`` nodes expanded per depth) and keeps the ``num_tokens - 1`` with
the highest draft path log-probability. This runs greedy unbudgeted speculation with the
shipped EAGLE head, records every step's whole pool and, from the greedy output (the
target's own tokens), replays each step with other choices of the same number of nodes:

- ``draft ranking``: the engine's own choice (checks the replay against the run);
- ``calibrated ranking``: path score = sum over its nodes of log P(accepted | parent accepted,
  depth, the node's own draft probability), the table fitted on the *other* prompt set;
- ``oracle``: the target's path itself whenever the pool holds it (no ranking can do better
  with this pool).

The replay is per step (a step that would accept more would also move later steps), so its
means are estimates; the measured column is the run's own acceptance.
"""

from __future__ import annotations

import argparse
import collections
import json
import math
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from real_model_quality import cpu_name, prompt_sets  # noqa: E402

from moe_spec.engine.generate import SpecConfig  # noqa: E402
from moe_spec.models.registry import open_engine  # noqa: E402


def record_pools(engine, prompts, spec: SpecConfig, max_new: int) -> list[dict]:
    """Run each prompt; per step the whole candidate pool and where its root sits."""
    draft, pools = engine.draft, []
    grow = draft.grow_tree

    def grow_and_record(cache, root, feature, w, d, n, root_logprobs_V=None):
        everything = w + (d - 1) * w * w + 1  # every candidate the expansion makes
        pools.append(grow(cache, root, feature, w, d, everything, root_logprobs_V))
        return grow(cache, root, feature, w, d, n, root_logprobs_V)

    draft.grow_tree = grow_and_record
    runs = []
    try:
        for prompt in prompts:
            pools.clear()
            res = engine.generate_speculative(engine.encode(prompt), max_new, spec)
            steps, pos = [], 0
            for stats, pool in zip(res.steps, pools, strict=True):
                steps.append({"root_pos": pos, "pool": pool})
                pos += stats.committed
            runs.append({"out": res.tokens, "steps": steps, "accept": res.acceptance_length})
    finally:
        del draft.grow_tree  # the bound method again
    return runs


def true_path(step: dict, out: list[int]) -> list[int]:
    """Pool nodes along the target's greedy continuation of the step's root."""
    pool = step["pool"]
    kids = collections.defaultdict(dict)
    for i in range(1, pool.size):
        kids[int(pool.parent_N[i])][int(pool.tokens_N[i])] = i
    node, path = 0, []
    for token in out[step["root_pos"] + 1 :]:
        node = kids[node].get(token)
        if node is None:
            break
        path.append(node)
    return path


def own_prob(pool, i: int) -> float:
    parent = int(pool.parent_N[i])
    return math.exp(float(pool.logprob_N[i]) - float(pool.logprob_N[parent]))


def key(pool, i: int) -> tuple[int, int]:
    return min(int(pool.depth_N[i]), 4), min(int(own_prob(pool, i) * 10), 9)


def fit(runs: list[dict]) -> dict:
    """P(node on the path | its parent on it) by (depth up to 4, own probability decile)."""
    counts = collections.defaultdict(lambda: [0, 0])
    for run in runs:
        for step in run["steps"]:
            pool, path = step["pool"], true_path(step, run["out"])
            on = {0, *path}
            for i in range(1, pool.size):
                if int(pool.parent_N[i]) in on:
                    c = counts[key(pool, i)]
                    c[0] += i in on
                    c[1] += 1
    return {k: (a + 0.5) / (n + 1) for k, (a, n) in counts.items()}


def accepted(step: dict, path: list[int], chosen: set[int]) -> int:
    """Tokens committed if the tree were ``chosen`` (the root and a bonus token included)."""
    n = 1
    for node in path:
        if node not in chosen:
            break
        n += 1
    return n


def replay(runs: list[dict], n_nodes: int, table: dict | None) -> float:
    """Mean over prompts of the per-step committed tokens under a ranking of the pool."""
    means = []
    for run in runs:
        got = []
        for step in run["steps"]:
            pool = step["pool"]
            if table is None:
                score = [float(x) for x in pool.logprob_N]
            else:
                score = [0.0] * pool.size
                for i in range(1, pool.size):  # parents come first
                    p = table.get(key(pool, i), own_prob(pool, i))
                    score[i] = score[int(pool.parent_N[i])] + math.log(p)
            order = sorted(range(1, pool.size), key=lambda i: (-score[i], int(pool.depth_N[i]), i))
            got.append(accepted(step, true_path(step, run["out"]), set(order[:n_nodes])))
        means.append(sum(got) / len(got))
    return sum(means) / len(means)


def oracle(runs: list[dict]) -> float:
    means = [
        sum(1 + len(true_path(s, r["out"])) for s in r["steps"]) / len(r["steps"]) for r in runs
    ]
    return sum(means) / len(means)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=6)
    ap.add_argument("--max-new-tokens", type=int, default=48)
    ap.add_argument("--tree-tokens", type=int, default=32)
    ap.add_argument("--width", type=int, default=8)
    ap.add_argument("--depth", type=int, default=6)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", help="write the figures as JSON here")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    engine, _path, description = open_engine("smollm2-moe")
    spec = SpecConfig(width=args.width, depth=args.depth, num_tokens=args.tree_tokens)
    runs = {
        name: record_pools(engine, prompts, spec, args.max_new_tokens)
        for name, prompts in prompt_sets(args.prompts).items()
    }
    tree = [spec.num_tokens, spec.width, spec.depth]
    result = {"cpu": cpu_name(), "model": description, "tree": tree, "sets": {}}
    for name, rs in runs.items():
        other = [r for n, others in runs.items() if n != name for r in others]
        row = {
            "measured": sum(r["accept"] for r in rs) / len(rs),
            "draft ranking": replay(rs, spec.num_tokens - 1, None),
            "calibrated ranking": replay(rs, spec.num_tokens - 1, fit(other)),
            "oracle": oracle(rs),
            "pool": sum(s["pool"].size for r in rs for s in r["steps"])
            / sum(len(r["steps"]) for r in rs),
        }
        result["sets"][name] = row
        print(name, json.dumps({k: round(v, 3) for k, v in row.items()}), flush=True)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
