"""Verify-forward time of budgeting on a random transformers Qwen3-MoE on CPU.

One 32-node tree verified after a 128-token prefix, by a random Qwen3-MoE
(4 MoE layers x 64 experts, top-8, hidden 512, fp32, one thread): plain forward,
the hooks with policy ``none`` (their overhead), and router-mass at B=32 and 16
(distinct experts computed per layer, measured inside the experts modules).
Conditions are interleaved in every repetition. Random weights: only the
mechanics and the overhead mean anything here, not acceptance or quality.
Beside the times it counts the aten ops each condition dispatches per verify
forward (a count that does not depend on the machine's load).

    .venv/bin/python bench/bench_hf_verify.py [--experts-impl eager|grouped_mm] [--reps 12]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from transformers import AutoModelForCausalLM, DynamicCache, Qwen3MoeConfig

from moe_spec.engine.tree import DraftTree
from moe_spec.integration.transformers import budgeted_verify
from moe_spec.integration.transformers.tree import crop_to, run_tree
from moe_spec.policies import get_policy

CONDITIONS = [("plain", None, None), ("none", "none", 64), ("router-mass", "router-mass", 32),
              ("router-mass", "router-mass", 16)]  # fmt: skip


def random_tree(n: int, vocab: int, g: torch.Generator) -> DraftTree:
    parent = [-1] + [
        int(torch.randint(0, i, (1,), generator=g)) if i > 1 else 0 for i in range(1, n)
    ]
    depth = [0]
    for p in parent[1:]:
        depth.append(depth[p] + 1)
    return DraftTree(torch.randint(0, vocab, (n,), generator=g), torch.tensor(parent),
                     torch.tensor(depth), -torch.arange(n, dtype=torch.float32))  # fmt: skip


class OpCounter(TorchDispatchMode):
    """Counts aten ops dispatched inside the ``with`` block."""

    def __init__(self) -> None:
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def verify(model, cache, tree, condition):
    """One tree forward under ``condition``; the distinct experts computed per layer (or None)."""
    _, policy, budget = condition
    with torch.no_grad():
        if policy is None:
            run_tree(model, cache, tree)
            return None
        with budgeted_verify(
            model,
            get_policy(policy),
            budget,
            "substitution",
            tree.depth_N,
            tree.logprob_N,
            validate=False,  # the engine's hot path: no host reads per layer
        ) as routing:
            run_tree(model, cache, tree)
        return routing.distinct_computed_L()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experts-impl", default="eager", choices=["eager", "grouped_mm"])
    parser.add_argument("--reps", type=int, default=12)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.manual_seed(0)
    cfg = Qwen3MoeConfig(
        vocab_size=2048, hidden_size=512, num_hidden_layers=4, num_attention_heads=8,
        num_key_value_heads=4, head_dim=64, intermediate_size=1024, moe_intermediate_size=256,
        num_experts=64, num_experts_per_tok=8, norm_topk_prob=False, max_position_embeddings=1024,
    )  # fmt: skip
    model = AutoModelForCausalLM.from_config(cfg, experts_implementation=args.experts_impl)
    model = model.eval().requires_grad_(False)
    g = torch.Generator().manual_seed(1)
    tree = random_tree(32, cfg.vocab_size, g)
    cache = DynamicCache(config=cfg)
    with torch.no_grad():
        prompt = torch.randint(0, cfg.vocab_size, (1, 128), generator=g)
        model(input_ids=prompt, past_key_values=cache, use_cache=True)
    prefix = cache.get_seq_length()
    times = {c: [] for c in CONDITIONS}
    distinct = {}
    ops = {}
    for c in CONDITIONS:  # warm-up: blocks found (and routers probed) once, outside the count
        verify(model, cache, tree, c)
        crop_to(cache, prefix)
    for c in CONDITIONS:
        with OpCounter() as counter:
            verify(model, cache, tree, c)
        ops[c] = counter.ops
        crop_to(cache, prefix)
    for _ in range(args.reps):
        for c in CONDITIONS:
            start = time.perf_counter()
            distinct[c] = verify(model, cache, tree, c)
            times[c].append(time.perf_counter() - start)
            crop_to(cache, prefix)
    print(f"experts_implementation={args.experts_impl}, tree N=32, prefix={prefix}, "
          "4 MoE layers x 64 experts top-8, fp32, 1 thread")  # fmt: skip
    print("| condition | B | median ms | min ms | vs plain (min) | aten ops | distinct experts "
          "computed per layer |")  # fmt: skip
    print("| --- | --- | --- | --- | --- | --- | --- |")
    plain = min(times[CONDITIONS[0]][2:])
    for c in CONDITIONS:
        ts = [1000 * t for t in times[c][2:]]  # the first two repetitions warm up
        print(f"| {c[0]} | {c[2] or '-'} | {statistics.median(ts):.1f} | {min(ts):.1f} | "
              f"{min(ts) / 1000 / plain:.3f}x | {ops[c]} | {distinct.get(c) or '-'} |")  # fmt: skip


if __name__ == "__main__":
    main()
