"""Repair: a budgeted verify whose changed path tokens are re-run unbudgeted is lossless."""

from __future__ import annotations

import pytest
import torch

from moe_spec.engine import generate
from moe_spec.engine.generate import SpecConfig
from moe_spec.engine.model import VerifyBudget
from moe_spec.engine.tree import DraftTree
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


def oracle_expand_tree(target, sequence: list[int]):
    """An ``expand_tree`` that knows the target's greedy text: at each depth below the root,
    the target's top-3 next tokens, the first (greedy) one expanded further.

    The random tiny draft accepts almost nothing, so without it repairs would start at the
    root; with it paths run several tokens deep and the budget changes them part-way.
    """
    top3_SK = target(torch.tensor([sequence])).logits_BQV[0].topk(3, dim=-1).indices

    def expand(draft, target_, cache, root, root_feature, root_logprobs, width, depth, n):
        start = cache.length  # the root's position: sequence[start] is the root when on track
        tokens, parents, depths, logprobs = [root], [-1], [0], [0.0]
        parent = 0
        on_track = start < len(sequence) and sequence[start] == root
        for d in range(1, depth + 1):
            if not on_track or start + d >= len(sequence) or len(tokens) + 3 > n:
                break
            for j, token in enumerate(top3_SK[start + d - 1].tolist()):
                tokens.append(token), parents.append(parent), depths.append(d)
                logprobs.append(-d - 0.1 * j)
            parent = len(tokens) - 3
        return DraftTree(
            torch.tensor(tokens),
            torch.tensor(parents),
            torch.tensor(depths),
            torch.tensor(logprobs),
        )

    return expand


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
@pytest.mark.parametrize("repair_min", [1, 2])
def test_repair_of_deep_paths_with_an_oracle_draft(tiny_engine, monkeypatch, mode, repair_min):
    chains = []

    def recording_accept_chain(tokens_Q, logits_QV, temperature, g):
        kept, bonus = accept_chain(tokens_Q, logits_QV, temperature, g)
        chains.append((len(tokens_Q), kept))
        return kept, bonus

    monkeypatch.setattr(generate, "accept_chain", recording_accept_chain)
    deep = 0
    for prompt in PROMPTS:
        want = tiny_engine.generate_autoregressive(prompt, 30).tokens
        monkeypatch.setattr(
            generate, "expand_tree", oracle_expand_tree(tiny_engine.target, prompt + want)
        )
        for policy in ("router-mass", "token-priority"):
            spec = SpecConfig(
                policy=policy,
                budget=2,
                depth=5,
                num_tokens=16,
                width=3,
                mode=mode,
                repair=True,
                repair_min_tokens=repair_min,
            )
            out = tiny_engine.generate_speculative(prompt, 30, spec)
            assert out.tokens == want, (policy, prompt)
            deep += sum(s.committed >= 3 for s in out.steps)
    assert deep > 10  # the oracle's paths are deep
    assert any(length >= 3 for length, _ in chains)  # re-run chains past the root
    assert any(kept < length for length, kept in chains)  # and chains cut short by the target


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
        record = VerifyBudget(get_policy("router-mass"), budget, track_exact=True)
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


def second_token_frequencies(engine, prompt, spec, draws):
    counts = torch.zeros(engine.config.vocab_size, dtype=torch.float64)
    for seed in range(draws):
        counts[engine.generate_speculative(prompt, 2, spec, seed=seed).tokens[1]] += 1
    return counts / draws


def test_repair_samples_from_the_target_distribution(tiny_engine):
    """The second token (the first verify step's) against its exact marginal under the target.

    At T=0.02 the tiny model's distributions are peaked enough that the plain B=2 budget is
    far off (total variation about 0.24) while sampling noise alone gives about 0.05-0.06.
    """
    T, draws, prompt = 0.02, 600, PROMPTS[0]
    target, V = tiny_engine.target, tiny_engine.config.vocab_size
    p1_V = torch.softmax(target(torch.tensor([prompt])).logits_BQV[0, -1] / T, -1).double()
    seqs = torch.tensor([prompt + [t] for t in range(V)])
    p2_VV = torch.softmax(target(seqs).logits_BQV[:, -1] / T, -1).double()
    marginal_V = (p1_V[:, None] * p2_VV).sum(0)
    repaired = second_token_frequencies(
        tiny_engine, prompt, SpecConfig(**HARSH, temperature=T, repair=True), draws
    )
    plain = second_token_frequencies(tiny_engine, prompt, SpecConfig(**HARSH, temperature=T), draws)
    assert 0.5 * (repaired - marginal_V).abs().sum() < 0.13
    assert 0.5 * (plain - marginal_V).abs().sum() > 0.15  # the check has the power to fail


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
    with pytest.raises(ValueError, match="repair_min_tokens applies only with repair=True"):
        SpecConfig(repair_min_tokens=2)
    assert SpecConfig(policy="draft-path", budget=8, repair=True).label == "draft-path B=8 repair"
    cut = SpecConfig(policy="draft-path", budget=8, repair=True, repair_min_tokens=3)
    assert cut.label == "draft-path B=8 repair>=3"
