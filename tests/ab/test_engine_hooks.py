"""The engine hooks the harness uses: target log-probs, a per-step tree, the depth-width pick."""

from __future__ import annotations

import pytest
import torch

from moe_spec.ab.depth_width import DepthWidthController, candidate_trees
from moe_spec.costmodel import get_cost_model, get_shape
from moe_spec.engine.generate import SpecConfig, StepStats

PROMPT = [5, 17, 42, 99, 7, 3]


def test_score_matches_one_forward_per_prefix(tiny_engine):
    tokens = tiny_engine.generate_autoregressive(PROMPT, 6).tokens
    got = tiny_engine.score(PROMPT, tokens)
    for i, token in enumerate(tokens):
        logits_V = tiny_engine.target(torch.tensor([PROMPT + tokens[:i]])).logits_BQV[0, -1]
        want = torch.log_softmax(logits_V.float(), -1)[token]
        assert got[i] == pytest.approx(float(want), abs=1e-4)
    assert max(got) <= 0


def test_a_fixed_tree_size_pick_equals_the_spec_tree(tiny_engine):
    spec = SpecConfig(width=4, depth=4, num_tokens=12)
    plain = tiny_engine.generate_speculative(PROMPT, 12, SpecConfig(width=3, depth=2, num_tokens=6))
    picked = tiny_engine.generate_speculative(PROMPT, 12, spec, tree_size=lambda steps: (6, 3, 2))
    assert picked.tokens == plain.tokens
    assert [s.committed for s in picked.steps] == [s.committed for s in plain.steps]
    assert {(s.num_tokens, s.width, s.depth) for s in picked.steps} == {(6, 3, 2)}
    with pytest.raises(ValueError, match="tree_size picked"):
        tiny_engine.generate_speculative(PROMPT, 5, spec, tree_size=lambda steps: (13, 4, 4))


def step(tree, committed, distinct):
    return StepStats(committed, [distinct] * 2, [distinct] * 2, [2, 2], *tree)


def test_depth_width_explores_then_picks_the_best_modeled_utility():
    trees = candidate_trees(32, 8, 6)
    assert trees == [(32, 8, 6), (16, 8, 6), (8, 7, 6), (4, 3, 3)]
    cost = get_cost_model("roofline", "H200")
    pick = DepthWidthController(cost, get_shape("OLMoE-1B-7B"), 2, 8, trees)
    steps = []
    for tree in trees:  # each candidate once, largest first
        assert pick(steps) == tree
        steps.append(
            step(tree, {32: 5, 16: 4, 8: 2, 4: 1}[tree[0]], {32: 8, 16: 7}.get(tree[0], 5))
        )
    steps.append(steps[-1])  # 5 steps: not an exploration step
    best = pick(steps)
    utilities = {t: pick.utility(t, [s for s in steps if s.num_tokens == t[0]]) for t in trees}
    assert best == max(utilities, key=utilities.get)
    steps += [step(best, 3, 6)] * 3  # step 8: explore the least recently tried
    assert pick(steps) == next(t for t in trees if t != best)


def test_depth_width_runs_in_the_engine(tiny_engine):
    trees = candidate_trees(8, 4, 3)
    cost = get_cost_model("roofline", "H100")
    pick = DepthWidthController(cost, get_shape("Mixtral-8x7B"), 2, 8, trees)
    spec = SpecConfig(width=4, depth=3, num_tokens=8)
    out = tiny_engine.generate_speculative(PROMPT, 16, spec, tree_size=pick)
    assert out.tokens == tiny_engine.generate_autoregressive(PROMPT, 16).tokens  # still lossless
    assert {(s.num_tokens, s.width, s.depth) for s in out.steps} <= set(trees)
