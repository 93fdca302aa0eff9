"""How well ``auto``'s shadows predict what a chain commits (``moe_spec.control.shadows``).

Per prompt of ``bench/auto_budget.py``'s held-out sets, on smollm2-moe (the transformers
engine with its EAGLE head): the unbudgeted greedy chain (``--tree N 1 D``) runs and commits
a mean number of tokens a step; then, over the prompt and the text it wrote, one target
forward gives every token's feature and one draft forward over them every teacher-forced
guess (the draft reading the target's features of every token before, as it does when it
catches up on decoded tokens). A shadow at a token is the run of right guesses after it, at
most D; their mean committed tokens is ``chain_mean``'s (runs cut by the text's end count
for the levels they show). Printed: the chain's mean, the shadows' mean at the chain's own
roots and at every generated token (what a guard that decoded the text would have seen), and
the first guesses' hit rate; the same over the prompt's last 200 tokens (human-written text).

    PYTHONPATH=$PWD .venv/bin/python bench/shadow_accuracy.py [--prompts 8] [--max-new 32]
        [--chars 1200] [--tree 4 1 3]
"""

from __future__ import annotations

import argparse
from statistics import fmean

import torch
from auto_budget import prompt_sets

from moe_spec.control.shadows import chain_mean, shadow_run, shadow_runs
from moe_spec.costmodel.cpu import cpu_name
from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.transformers.eagle import capture_features
from moe_spec.models.registry import open_engine


def guesses(engine, seq: list[int]) -> list[bool]:
    """``hit[p]``: whether the draft's teacher-forced guess at token ``p`` was right
    (``p >= 2``; the first two are False: nothing guessed them)."""
    with torch.no_grad(), capture_features(engine.target) as features:
        engine.target(input_ids=torch.tensor([seq]))
        feature_SD = features.last_BSD[0]
        draft = engine.draft
        cache = draft.new_cache(len(seq) + 1)
        out_QD = draft.predicted_features(cache, seq[1:], feature_SD[:-1])
        guess_Q = draft.lm_head(out_QD).argmax(-1).tolist()  # guess_Q[i]: token i + 2
    return [False, False] + [g == t for g, t in zip(guess_Q[:-1], seq[2:], strict=True)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prompts", type=int, default=8)
    ap.add_argument("--max-new", type=int, default=32)
    ap.add_argument("--chars", type=int, default=1200)
    ap.add_argument("--tree", type=int, nargs=3, default=[4, 1, 3], metavar=("N", "W", "D"))
    args = ap.parse_args()
    n, width, depth = args.tree
    if width != 1:
        ap.error(f"--tree width is {width}; shadows are of chains: width 1")
    torch.set_num_threads(2)
    engine = open_engine("smollm2-moe")[0]
    sets = prompt_sets(args.prompts, args.chars)
    print(f"CPU: {cpu_name()}; smollm2-moe, chain {n}/1/{depth}, {args.max_new} new tokens, greedy")
    rows = []
    for name, texts in sets.items():
        print(f"set {name}")
        for text in texts:
            ids = engine.encode(text)
            result = engine.generate_speculative(
                ids, args.max_new, SpecConfig(width=1, depth=depth, num_tokens=n)
            )
            seq = ids + result.tokens
            hit = guesses(engine, seq)
            roots, at = [], len(ids)  # each chain step's root: the last token before it
            for step in result.steps:
                roots.append(at)
                at += step.committed

            decoded = hit[len(ids) + 1 :]  # the guesses a guard decoding it would get
            prompt_hits = hit[max(len(ids) - 200, 2) : len(ids)]
            row = (
                fmean(s.committed for s in result.steps),
                chain_mean([shadow_run(hit, r + 1, depth) for r in roots], depth),
                chain_mean(shadow_runs(decoded, depth), depth),
                fmean(decoded),
                chain_mean(shadow_runs(prompt_hits, depth), depth),
            )
            rows.append(row)
            print(
                "  chain {:.2f} | shadows at its roots {:.2f}, at every token {:.2f}, "
                "first guess {:.2f} | prompt's shadows {:.2f}".format(*row)
            )
    chain, roots, every, _, prompt = (fmean(col) for col in zip(*rows, strict=True))
    worst = max(abs(r[2] - r[0]) for r in rows)
    print(
        f"mean of {len(rows)} prompts: chain {chain:.2f}, shadows at its roots {roots:.2f}, "
        f"at every token {every:.2f} (at most {worst:.2f} from the chain's), prompt {prompt:.2f}"
    )


if __name__ == "__main__":
    main()
