"""How often does a policy keep the accepted path exact? A deterministic, sensitive proxy.

Greedy output is unchanged exactly when every token on a step's accepted path
keeps its own top-k experts in every layer. This runs unbudgeted tree
speculation on the shipped model and the held-out prompts, records every verify
step's routing and accepted path, and replays each policy on that routing: the
share of steps whose accepted path it would have kept whole (and of accepted
tokens). Agreement in ``moe-spec ab`` moves by a few percent per divergence
event; this moves smoothly, so it separates policies that agreement cannot.

    .venv/bin/python bench/path_exactness.py [--budgets 12,16,20] [--num-prompts 20]
        [--config draft-path] [--config draft-path:order=logprob] ...
"""

from __future__ import annotations

import argparse

import torch

from moe_spec import get_policy
from moe_spec.ab.prompts import held_out_benchmark_prompts
from moe_spec.cli import parse_option
from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint
from moe_spec.engine.generate import Engine, SpecConfig
from moe_spec.policies.builtin import NoBudget

DEFAULT_CONFIGS = ("token-priority", "draft-path:order=logprob", "draft-path")


class Recorder(NoBudget):
    """Keeps every expert (unbudgeted) and remembers each layer's routing record."""

    def __init__(self) -> None:
        self.records = []

    def apply(self, record, budget, *, mode="substitution"):
        self.records.append(record)
        return super().apply(record, budget, mode=mode)


class RecordingEngine(Engine):
    """The reference engine; ``steps`` collects ``(records per layer, accepted path)``."""

    steps: list

    def verify(self, tree, cache, budget, spec, g):
        budget.policy = recorder = Recorder()
        out = super().verify(tree, cache, budget, spec, g)
        self.steps.append((recorder.records, torch.tensor(out[0])))
        return out


def parse_config(text: str) -> tuple[str, dict]:
    name, _, rest = text.partition(":")
    return name, dict(parse_option(item) for item in rest.split(",") if item)


def exact(policy, records, path, budget: int) -> tuple[bool, int]:
    """Whether the whole path keeps its experts, and how many path tokens do."""
    ok_P = torch.ones(path.numel(), dtype=torch.bool)
    for record in records:
        keep_E = policy.apply(record, budget).keep_E
        ok_P &= keep_E[record.topk_ids_TK[path].long()].all(dim=1)
    return bool(ok_P.all()), int(ok_P.sum())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--budgets", default="12,16,20")
    p.add_argument("--num-prompts", type=int, default=20)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--config", action="append", help="NAME[:option=value,...]; repeatable")
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    budgets = [int(b) for b in args.budgets.split(",")]
    engine = RecordingEngine(load_checkpoint(SHIPPED))
    engine.steps = []
    for i, prompt in enumerate(held_out_benchmark_prompts(args.num_prompts)):
        ids = engine.encode(prompt)
        engine.generate_speculative(ids, args.max_new_tokens, SpecConfig(policy="none"), seed=i)
    steps = engine.steps
    tokens = sum(path.numel() for _, path in steps)
    print(f"{len(steps)} verify steps, {tokens} accepted-path tokens (root included)\n")
    print("| policy | " + " | ".join(f"B={b} steps / tokens exact" for b in budgets) + " |")
    print("| --- |" + " --- |" * len(budgets))
    for text in args.config or DEFAULT_CONFIGS:
        name, options = parse_config(text)
        policy = get_policy(name, **options)
        cells = []
        for budget in budgets:
            results = [exact(policy, records, path, budget) for records, path in steps]
            whole = sum(ok for ok, _ in results) / len(steps)
            part = sum(n for _, n in results) / tokens
            cells.append(f"{whole:.1%} / {part:.1%}")
        print(f"| {text} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
