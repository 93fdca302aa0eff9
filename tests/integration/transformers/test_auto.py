"""``auto`` on a transformers MoE target: lossless with repair, and the guard's fallback."""

from __future__ import annotations

import numpy as np
import torch

from moe_spec.control.steps import StepPlan
from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.transformers import TransformersEngine
from moe_spec.policies import get_policy
from tests.engine.test_auto import (
    counting_calls,
    draft_reads,
    free_experts_policy,
    gate_every_other_step,
    reporting_prefills,
)

from .test_engine import NEW, PROMPT, NoTokenizer, greedy_reference


def test_auto_with_repair_is_exact_and_budgets(moe_model):
    """The target drafting for itself is accepted often, so the guard stays on the tree."""
    engine = TransformersEngine(moe_model, moe_model, NoTokenizer())
    spec = SpecConfig(3, 3, 8, policy="auto", repair=True, policy_options={"guard": False})
    result = engine.generate_speculative(PROMPT, NEW, spec)
    assert result.tokens == greedy_reference(moe_model)
    assert all(s.guard == "tree" and s.reason for s in result.steps)
    assert "predicted tok/s" in result.steps[-1].reason  # planned from the estimates


def test_the_guard_falls_back_to_autoregressive_with_a_poor_draft(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    spec = SpecConfig(3, 3, 8, policy="auto", repair=True)  # explores may run budgeted trees
    policy, seen = counting_calls(get_policy("auto"))
    result = engine.generate_speculative(PROMPT, 40, spec, policy=policy)
    kinds = [s.guard for s in result.steps]
    assert seen["decodes"] == kinds.count("autoregressive") > len(kinds) / 2
    decoded = [s.guard == "autoregressive" and s.width == 0 for s in result.steps]
    runs = sum(d and not (i and decoded[i - 1]) for i, d in enumerate(decoded))
    assert seen["plans"] == len(decoded) - sum(decoded) + runs  # runs of decodes, one plan each
    assert result.tokens == engine.generate_autoregressive(PROMPT, 40).tokens


def test_a_gated_step_decodes_the_root(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    spec = SpecConfig(3, 3, 8)
    policy, calls = gate_every_other_step(get_policy(spec.policy))
    result = engine.generate_speculative(PROMPT, 24, spec, policy=policy)
    assert result.tokens == engine.generate_autoregressive(PROMPT, 24).tokens
    gated = [s for s in result.steps if s.guard == "autoregressive"]
    assert len(gated) == len(calls) // 2 > 2
    assert all((s.committed, s.width, s.depth) == (1, 1, 1) for s in gated)
    assert all(lp.shape == (3,) for lp in calls)


def test_each_generation_tells_a_live_policy_that_a_request_starts(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    policy, starts = get_policy("auto"), []
    policy.start_request = lambda: starts.append(len(starts))
    for _ in range(2):
        engine.generate_speculative(PROMPT, 8, SpecConfig(3, 3, 8, policy="auto"), policy=policy)
    assert starts == [0, 1]


def test_each_generation_reports_its_prompt_forward_to_a_prepared_policy(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    policy, seen = get_policy("auto"), []
    policy.prefilled = lambda n, s: seen.append((n, s > 0, policy.dims is not None))
    for _ in range(2):
        engine.generate_speculative(PROMPT, 8, SpecConfig(3, 3, 8, policy="auto"), policy=policy)
    assert seen == [(len(PROMPT), True, True)] * 2


def test_the_draft_reads_the_prompt_only_when_a_tree_comes(moe_model, dense_draft, monkeypatch):
    """A measuring guard told the prompt's forward was 10^4 times slower decodes to the end:
    the draft never runs. With trees, it starts once, before the first."""
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    starts, start = [], engine.draft.start
    monkeypatch.setattr(engine.draft, "start", lambda *a: starts.append(len(a[1])) or start(*a))
    policy, _ = reporting_prefills(get_policy("auto", measure=True), slowdown=1e4)
    spec = SpecConfig(3, 3, 8, policy="auto", policy_options={"measure": True})
    result = engine.generate_speculative(PROMPT, 16, spec, policy=policy)
    assert {s.guard for s in result.steps} == {"autoregressive"} and starts == []
    assert result.tokens == engine.generate_autoregressive(PROMPT, 16).tokens
    result = engine.generate_speculative(PROMPT, 16, SpecConfig(3, 3, 8))
    assert starts == [len(PROMPT)] and result.steps[0].guard == ""


def test_the_draft_catch_up_on_the_prompt_and_on_decodes_is_reported(moe_model, dense_draft):
    """Before the first tree the draft reads the prompt (reported as the prompt's length;
    a causal-LM draft also reads the root then); before a tree after decodes, the decoded
    tokens; a tree after a tree reads nothing new here (the draft caught up on its path at
    the end of that step)."""
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    tree = StepPlan("tree", 8, 3, 3)
    script = iter([tree, StepPlan("autoregressive", steps=2), tree, tree])
    policy, caught = get_policy("none"), []
    policy.plan_step = lambda _tree, _repair: next(script, None)
    policy.draft_caught_up = lambda tokens, seconds: caught.append((tokens, seconds > 0))
    result = engine.generate_speculative(PROMPT, 12, SpecConfig(3, 3, 8), policy=policy)
    assert result.tokens == engine.generate_autoregressive(PROMPT, 12).tokens
    assert [s.guard for s in result.steps[:3]] == ["", "autoregressive", "autoregressive"]
    assert caught == [(len(PROMPT), True), (2, True)]


def test_steps_that_rest_enter_the_window_unranked_while_the_guard_learns(moe_model):
    """Budgets far from paying (a costly selection): after the warm-up a step ranks one
    time in ``rank_every``; the others run without calling the policy and, while the window
    holds fewer than 8 steps, enter it with their tokens and experts (no need: budgets come
    from ranked steps). Ranks' spacing off (``max_rank_every=4``). By default (``rank_after``)
    the steps that rank rest too, and the policy ranks the routing the engine kept after
    the forward; with ``rank_after=False`` they call it inside."""
    for rank_after in (True, False):
        engine = TransformersEngine(moe_model, moe_model, NoTokenizer())
        policy = free_experts_policy(select_s=1e-3, max_rank_every=4, rank_after=rank_after)
        spec = SpecConfig(3, 3, 8, policy="auto", policy_options={"guard": False})
        result = engine.generate_speculative(PROMPT, 40, spec, policy=policy)
        ranked = [s.ranked or s.ranked_after for s in result.steps]
        assert len(ranked) > 8 and ranked == [i < 2 or i % 4 == 0 for i in range(len(ranked))]
        after = [s.ranked_after for s in result.steps]
        assert after == (ranked if rank_after else [False] * len(ranked))
        entered = [r for i, r in enumerate(ranked) if i < 8 or r]
        assert [step.need_LP is not None for step in policy.controller.est.window] == entered


def test_a_step_ranked_after_its_forward_is_learned_as_one_ranked_inside_it(moe_model):
    """Where ranking costs nothing (so both plan alike), the routing records the adapter
    keeps for a step that rests, ranked after the forward, fill the window with the tables
    that ranking inside it gives (every router convention: softmax, sigmoid with its bias,
    sparsemixer)."""
    runs = {}
    for rank_after in (True, False):
        engine = TransformersEngine(moe_model, moe_model, NoTokenizer())
        policy = free_experts_policy(rank_after=rank_after)
        spec = SpecConfig(3, 3, 8, policy="auto", policy_options={"guard": False})
        result = engine.generate_speculative(PROMPT, 30, spec, policy=policy)
        runs[rank_after] = (result, policy.controller.est)
    (after, est_after), (inside, est_inside) = runs[True], runs[False]
    assert after.tokens == inside.tokens
    assert sum(s.ranked_after for s in after.steps) >= 4
    assert est_after.steps_seen == est_inside.steps_seen
    assert np.array_equal(est_after.exact_WLV, est_inside.exact_WLV)
    assert np.array_equal(est_after.need_W, est_inside.need_W)


def test_the_draft_reads_decoded_tokens_and_reports_its_guesses(moe_model, dense_draft):
    """A causal-LM draft's guesses at the decoded tokens are its greedy next tokens over the
    whole text; the target drafting for itself guesses every one."""
    out, reports, steps = draft_reads(
        TransformersEngine(moe_model, dense_draft, NoTokenizer()), PROMPT
    )
    seq = PROMPT + out
    guess_S = dense_draft(input_ids=torch.tensor([seq])).logits[0].argmax(-1).tolist()
    first = len(PROMPT) + 1 + steps[0].committed  # the first decoded token's position
    spans = ((first, 5), (first + 5, 4))
    assert reports == [[guess_S[p - 1] == seq[p] for p in range(a, a + n)] for a, n in spans]
    _, reports, _ = draft_reads(TransformersEngine(moe_model, moe_model, NoTokenizer()), PROMPT)
    assert reports == [[True] * 5, [True] * 4]
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    engine.draft.read = None  # a policy that wants no guesses: no LM head over the decodes
    assert draft_reads(engine, PROMPT, wants=False)[1] == []
