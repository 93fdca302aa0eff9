"""SGLang's own adaptive chain as a baseline: its policy's depths drive the engines' chains."""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
from sglang.srt.speculative.adaptive_spec_params import AdaptiveSpeculativeParams

from moe_spec.ab.sglang_adaptive import SGLangAdaptiveDepth
from moe_spec.engine.generate import SpecConfig


def drive(depth: SGLangAdaptiveDepth, accepted, steps: list) -> list[int]:
    """Each pick, then a step that accepted ``accepted(d)`` drafts of the chain picked."""
    picked = []
    for _ in range(40):
        n, w, d = depth(steps)
        assert (n, w) == (d + 1, 1)
        picked.append(d)
        steps.append(SimpleNamespace(committed=1 + accepted(d)))
    return picked


def test_its_depths_are_sglangs_own_policys_fed_each_steps_accepted_drafts():
    depth = SGLangAdaptiveDepth(3)
    assert depth.largest == (8, 1, 7)
    accepted = [3] * 20 + [0] * 20  # up, then down
    steps: list = []
    got = drive(depth, lambda d: min(d, accepted[len(steps)]), steps)
    # the same values fed by hand to SGLang's class, as its worker feeds it at batch size 1
    params, want = AdaptiveSpeculativeParams(3), []
    for i in range(40):
        want.append(params.get_steps_for_batch(1))
        params.on_verify_complete([min(want[-1], accepted[i])], batch_size=1)
    assert got == want and len(set(got)) > 1  # it moved


def test_a_draft_that_is_never_accepted_goes_down_to_one_not_to_decoding():
    picked = drive(SGLangAdaptiveDepth(3), lambda d: 0, [])
    assert picked[0] == 3 and picked[-1] == 1 and min(picked) == 1  # batch 1: no depth 0
    picked = drive(SGLangAdaptiveDepth(3), lambda d: d, [])
    assert picked[-1] == 7


def test_one_instance_keeps_learning_across_generations_without_counting_twice():
    depth = SGLangAdaptiveDepth(3)
    drive(depth, lambda d: 0, first := [])
    drive(depth, lambda d: 0, second := [])  # a new generation: its steps list restarts
    # every step of the first generation, its last one too (seen at the second's first pick)
    assert depth.verifies == len(first) + len(second) - 1 == 79


@pytest.mark.parametrize("slots, start", [({"1": [0, 1, 3]}, 3), ({"1": [1, 3], "8": [0, 1]}, 2)])
def test_a_depth_0_or_a_start_sglang_would_refuse_is_refused(tmp_path, slots, start):
    config = tmp_path / "adaptive.json"
    config.write_text(json.dumps({bs: {"candidate_steps": s} for bs, s in slots.items()}))
    with pytest.raises(ValueError, match=rf"runs depths \[.*\], starting from {start}; allowed"):
        SGLangAdaptiveDepth(start, str(config))


def test_a_custom_config_routes_batch_size_1_as_sglang_does(tmp_path):
    config = tmp_path / "adaptive.json"  # batch 1 falls in the slot of 1, not of 4
    slots = {"1": {"candidate_steps": [1, 2]}, "4": {"candidate_steps": [0, 4]}}
    config.write_text(json.dumps({"ema_alpha": 0.5, **slots}))
    depth = SGLangAdaptiveDepth(2, str(config))
    assert depth.largest == (3, 1, 2)
    assert drive(depth, lambda d: d, [])[-1] == 2 and drive(depth, lambda d: 0, [])[-1] == 1


def test_the_engine_runs_its_chains_and_commits_the_unbudgeted_tokens(tiny_engine):
    prompt = tiny_engine.encode("def apply(budget):")
    want = tiny_engine.generate_autoregressive(prompt, 64).tokens
    depth = SGLangAdaptiveDepth(3)
    n, w, d = depth.largest
    spec = SpecConfig(width=w, depth=d, num_tokens=n)
    out = tiny_engine.generate_speculative(prompt, 64, spec, tree_size=depth)
    assert out.tokens == want  # greedy speculation is lossless at every depth
    chains = [(s.num_tokens, s.width, s.depth) for s in out.steps]
    assert set(chains) <= {(d + 1, 1, d) for d in (1, 3, 5, 7)}
    assert len(set(chains)) > 1  # SGLang's policy moved the depth within the generation
