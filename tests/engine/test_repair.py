"""Repair: a budgeted verify whose changed path tokens are re-run unbudgeted is lossless."""

from __future__ import annotations

import pytest
import torch

from moe_spec.engine.generate import SpecConfig
from moe_spec.engine.model import VerifyBudget
from moe_spec.engine.verify import accept_chain, exact_prefix, rerun_tail
from moe_spec.policies import get_policy

PROMPTS = [[5, 17, 42, 8, 99, 3], [1, 2, 3], [250, 12, 12, 12, 40, 41, 42, 43, 44]]
HARSH = {"policy": "router-mass", "budget": 2, "depth": 4, "num_tokens": 16, "width": 4}


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_repair_gives_the_unbudgeted_greedy_output_at_the_harshest_budget(tiny_engine, mode):
    changed = False
    for prompt in PROMPTS:
        want = tiny_engine.generate_autoregressive(prompt, 24).tokens
        spec = SpecConfig(**HARSH, mode=mode)
        plain = tiny_engine.generate_speculative(prompt, 24, spec)
        fixed = tiny_engine.generate_speculative(
            prompt, 24, SpecConfig(**HARSH, mode=mode, repair=True)
        )
        changed |= plain.tokens != want
        assert fixed.tokens == want
        repaired = [s for s in fixed.steps if s.repair_tokens]
        assert repaired, "B=top-k must change some verified path"
        for s in repaired:
            assert 1 <= s.repair_tokens <= HARSH["depth"] + 1  # a chain of the path, root at most
            assert all(d <= s.repair_tokens * 2 for d in s.distinct_repair_L)  # top-2 each
            assert max(s.distinct_after_L) <= 2  # the verify itself stayed budgeted
        assert all(s.distinct_repair_L == [] for s in fixed.steps if not s.repair_tokens)
    assert changed, "without repair the budget must change some output, or the test proves nothing"


@pytest.mark.parametrize("policy", ["router-mass", "draft-path"])
def test_cutting_short_tails_is_lossless_too(tiny_engine, policy):
    """repair_min_tokens=99: a changed tail is cut, not re-run, unless the root itself changed."""
    for prompt in PROMPTS:
        want = tiny_engine.generate_autoregressive(prompt, 24).tokens
        spec = SpecConfig(**{**HARSH, "policy": policy}, repair=True, repair_min_tokens=99)
        out = tiny_engine.generate_speculative(prompt, 24, spec)
        assert out.tokens == want
        if policy == "draft-path":  # it always keeps the root's experts: nothing is re-run
            assert not any(s.repair_tokens for s in out.steps)


def test_rerun_tail_rule():
    assert rerun_tail(path_len=4, exact=0, min_tokens=99)  # the root changed: must re-run
    assert rerun_tail(path_len=4, exact=2, min_tokens=2)
    assert not rerun_tail(path_len=4, exact=3, min_tokens=2)
    assert not rerun_tail(path_len=4, exact=1, min_tokens=4)


def test_no_repair_when_the_budget_changes_nothing(tiny_engine):
    spec = SpecConfig(policy="router-mass", budget=8, depth=4, num_tokens=12, repair=True)
    out = tiny_engine.generate_speculative(PROMPTS[0], 20, spec)
    plain = tiny_engine.generate_speculative(PROMPTS[0], 20, SpecConfig(depth=4, num_tokens=12))
    assert out.tokens == plain.tokens and not any(s.repair_tokens for s in out.steps)


def test_exact_tokens_have_the_unbudgeted_logits(tiny_engine):
    """The flag ``exact_T`` is what repair trusts: it must hold exactly when rows are unchanged."""
    target = tiny_engine.target
    tokens = torch.tensor([[7, 3, 99, 42, 42, 150, 9, 11, 260, 5]])
    full = target(tokens).logits_BQV[0]
    for budget in (2, 3, 5):
        record = VerifyBudget(get_policy("router-mass"), budget)
        got = target(tokens, verify=record).logits_BQV[0]
        # Causal: token t is exact when it and every earlier token kept their routing.
        exact = exact_prefix(list(range(tokens.shape[1])), record.exact_T())
        torch.testing.assert_close(got[:exact], full[:exact], rtol=0, atol=1e-5)
        if budget == 2:
            assert exact < tokens.shape[1]
            assert not torch.allclose(got[exact:], full[exact:], atol=1e-3)


def test_accept_chain_greedy():
    logits_QV = torch.full((4, 6), -1.0)
    for q, best in enumerate([2, 4, 1, 0]):
        logits_QV[q, best] = 1.0
    g = torch.Generator()
    assert accept_chain(torch.tensor([9, 2, 4, 1]), logits_QV, 0.0, g) == (4, 0)
    assert accept_chain(torch.tensor([9, 2, 5, 1]), logits_QV, 0.0, g) == (2, 4)
    assert accept_chain(torch.tensor([9, 3, 4, 1]), logits_QV, 0.0, g) == (1, 2)
    assert accept_chain(torch.tensor([9]), logits_QV[:1], 0.0, g) == (1, 2)


def test_accept_chain_sampling_emits_the_target_distribution():
    p_V = torch.tensor([0.30, 0.05, 0.25, 0.10, 0.20, 0.10])
    logits_QV = torch.stack([p_V.log(), torch.zeros(6)])
    g = torch.Generator().manual_seed(0)
    draws, counts = 20_000, torch.zeros(6)
    for _ in range(draws):
        kept, bonus = accept_chain(torch.tensor([9, 2]), logits_QV, 1.0, g)
        counts[2 if kept == 2 else bonus] += 1
    # Standard error <= sqrt(0.25 / 20000) = 0.0035; 0.018 is 5 sigma.
    assert (counts / draws - p_V).abs().max() < 0.018


def test_repair_sampling_runs_and_is_reproducible(tiny_engine):
    spec = SpecConfig(**HARSH, temperature=0.8, repair=True)
    a = tiny_engine.generate_speculative(PROMPTS[1], 20, spec, seed=3)
    b = tiny_engine.generate_speculative(PROMPTS[1], 20, spec, seed=3)
    assert a.tokens == b.tokens and any(s.repair_tokens for s in a.steps)


def test_repair_must_be_a_flag():
    with pytest.raises(ValueError, match="repair must be True or False, got 1"):
        SpecConfig(repair=1)
    with pytest.raises(ValueError, match="repair_min_tokens must be an integer >= 1, got 0"):
        SpecConfig(repair=True, repair_min_tokens=0)
    assert SpecConfig(policy="draft-path", budget=8, repair=True).label == "draft-path B=8 repair"
    cut = SpecConfig(policy="draft-path", budget=8, repair=True, repair_min_tokens=3)
    assert cut.label == "draft-path B=8 repair>=3"
