"""Tree speculative decoding on a transformers MoE target."""

from __future__ import annotations

import copy

import pytest
import torch

from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.transformers import TransformersEngine, find_moe_blocks
from moe_spec.policies import Policy, PolicyError

from .conftest import ExpertAccessCounter

PROMPT = [5, 17, 42, 8, 63, 29, 4]
NEW = 20
SPEC = SpecConfig(width=3, depth=3, num_tokens=8)


class NoTokenizer:
    def encode(self, text):
        return [int(t) for t in text.split()]

    def decode(self, ids):
        return " ".join(map(str, ids))


def greedy_reference(model) -> list[int]:
    out = model.generate(
        torch.tensor([PROMPT]), max_new_tokens=NEW, do_sample=False, eos_token_id=None
    )
    return out[0, len(PROMPT) :].tolist()


@pytest.mark.parametrize("draft_kind", ["dense", "self"])
def test_greedy_speculative_reproduces_generate(moe_model, dense_draft, draft_kind):
    draft = dense_draft if draft_kind == "dense" else moe_model
    engine = TransformersEngine(moe_model, draft, NoTokenizer())
    expected = greedy_reference(moe_model)
    result = engine.generate_speculative(PROMPT, NEW, SPEC)
    assert result.tokens == expected
    assert engine.generate_autoregressive(PROMPT, NEW).tokens == expected
    E, L = engine.n_experts, engine.n_moe_layers
    for step in result.steps:
        assert len(step.distinct_before_L) == L
        assert step.distinct_after_L == step.distinct_before_L  # policy none
        assert all(
            p <= b <= E for p, b in zip(step.distinct_path_L, step.distinct_before_L, strict=True)
        )
    if draft_kind == "self":  # the target drafting for itself: its argmax child is always kept
        assert all(step.committed >= 2 for step in result.steps)
        chain = SpecConfig(width=1, depth=3, num_tokens=4)  # the greedy chain alone
        chained = engine.generate_speculative(PROMPT, NEW, chain)
        assert chained.tokens == expected
        assert all(step.committed == chain.depth + 1 for step in chained.steps)


@pytest.mark.parametrize("draft_kind", ["dense", "self"])
def test_repair_reproduces_generate_at_the_harshest_budget(moe_model, dense_draft, draft_kind):
    """B = top-k changes many path tokens' routing; repair re-runs them, so greedy is exact."""
    engine = TransformersEngine(
        moe_model, dense_draft if draft_kind == "dense" else moe_model, NoTokenizer()
    )
    spec = SpecConfig(3, 3, 8, policy="router-mass", budget=engine.top_k, repair=True)
    result = engine.generate_speculative(PROMPT, NEW, spec)
    assert result.tokens == greedy_reference(moe_model)
    repaired = [s for s in result.steps if s.repair_tokens]
    assert repaired, "B = top-k must change some accepted path"
    cut = SpecConfig(
        3, 3, 8, policy="draft-path", budget=engine.top_k, repair=True, repair_min_tokens=99
    )
    cut_result = engine.generate_speculative(PROMPT, NEW, cut)  # cuts changed tails instead
    assert cut_result.tokens == result.tokens
    assert not any(s.repair_tokens for s in cut_result.steps)  # draft-path keeps the root
    for s in result.steps:
        assert max(s.distinct_after_L) <= engine.top_k  # the verify stayed budgeted
        assert len(s.distinct_repair_L) == (engine.n_moe_layers if s.repair_tokens else 0)
        assert 0 <= s.repair_tokens <= spec.depth + 1


def test_prefill_and_decode_are_not_budgeted(moe_model, dense_draft):
    """Count expert reads per target forward: only tree forwards stay within B."""
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    L, K = engine.n_moe_layers, engine.top_k
    budget = K + 1
    counter = ExpertAccessCounter(moe_model)
    query_lengths = []

    def next_window(_module, args, kwargs):
        counter.window += 1
        query_lengths.append(kwargs["input_ids"].shape[1])

    handle = moe_model.register_forward_pre_hook(next_window, with_kwargs=True)
    try:
        with counter:
            spec = SpecConfig(3, 3, 8, policy="router-mass", budget=budget)
            result = engine.generate_speculative(PROMPT, 8, spec)
            first_decode = counter.window + 1
            engine.generate_autoregressive(PROMPT, 3)
    finally:
        handle.remove()
    prefill = counter.distinct(1, L)
    assert query_lengths[0] == len(PROMPT) and max(prefill) > budget  # unbudgeted prefill
    verify_windows = range(2, first_decode)  # the tree forwards (the draft is another model)
    assert len(verify_windows) == len(result.steps) and all(
        query_lengths[w - 1] == SPEC.num_tokens for w in verify_windows
    )
    for w, step in zip(verify_windows, result.steps, strict=True):
        assert all(n <= budget for n in counter.distinct(w, L))
        assert counter.distinct(w, L) == step.distinct_after_L
    assert max(counter.distinct(first_decode, L)) > budget  # the autoregressive prefill
    assert result.tokens[0] == greedy_reference(moe_model)[0]


def test_sampling_runs_and_is_seeded(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    spec = SpecConfig(3, 3, 8, temperature=1.0, policy="router-mass", budget=engine.top_k)
    first = engine.generate_speculative(PROMPT, 12, spec, seed=3)
    again = engine.generate_speculative(PROMPT, 12, spec, seed=3)
    assert first.tokens == again.tokens and len(first.tokens) == 12
    assert all(0 <= t < moe_model.config.vocab_size for t in first.tokens)


def test_room_and_vocab_are_checked(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    with pytest.raises(ValueError, match="max_len"):
        engine.generate_speculative(PROMPT, engine.max_len, SPEC)
    limit = engine.max_len  # both models' positions: a longer one would run past them
    with pytest.raises(ValueError, match=rf"max_len is {limit + 1}; allowed: 2 to {limit}, the"):
        TransformersEngine(moe_model, dense_draft, NoTokenizer(), max_len=limit + 1)
    assert TransformersEngine(moe_model, dense_draft, NoTokenizer(), max_len=limit).max_len == limit
    with pytest.raises(ValueError, match="budget"):
        engine.generate_speculative(PROMPT, 4, SpecConfig(policy="router-mass", budget=1))
    assert find_moe_blocks(moe_model)


def test_engine_interface_for_the_ab_harness(moe_model, dense_draft):
    """``config`` shape, ``score`` and a per-step ``tree_size``, as the reference Engine has."""
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    shape = engine.config
    blocks = find_moe_blocks(moe_model)
    assert (shape.n_layers, shape.n_experts, shape.top_k) == (
        len(blocks),
        blocks[0].num_experts,
        blocks[0].top_k,
    )
    assert (shape.dim, shape.expert_dim) == (32, 16)  # every tiny config's expert width

    out = moe_model.generate(
        torch.tensor([PROMPT]),
        max_new_tokens=6,
        do_sample=False,
        eos_token_id=None,
        output_logits=True,
        return_dict_in_generate=True,
    )
    tokens = out.sequences[0, len(PROMPT) :].tolist()
    steps = zip(out.logits, tokens, strict=True)
    decoded = [torch.log_softmax(logits[0].float(), -1)[t].item() for logits, t in steps]
    assert engine.score(PROMPT, tokens) == pytest.approx(decoded, abs=1e-6)

    picks = []

    def tree_size(steps):
        picks.append(len(steps))
        return (4, 2, 2)

    result = engine.generate_speculative(PROMPT, NEW, SPEC, tree_size=tree_size)
    assert result.tokens == greedy_reference(moe_model)
    assert picks == list(range(len(result.steps)))
    assert all((s.num_tokens, s.width, s.depth) == (4, 2, 2) for s in result.steps)
    assert all(s.committed <= 3 for s in result.steps)  # depth 2: at most 2 drafts + bonus
    with pytest.raises(ValueError, match="tree_size picked"):
        engine.generate_speculative(PROMPT, NEW, SPEC, tree_size=lambda steps: (64, 2, 2))


def test_stops_where_generate_stops_at_an_end_token(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    reference = greedy_reference(moe_model)
    end = reference[4]
    engine.eos = {end}
    out = moe_model.generate(
        torch.tensor([PROMPT]), max_new_tokens=NEW, do_sample=False, eos_token_id=end
    )
    expected = out[0, len(PROMPT) :].tolist()
    assert expected[-1] == end and len(expected) <= 5
    assert engine.generate_speculative(PROMPT, NEW, SPEC).tokens == expected
    assert engine.generate_autoregressive(PROMPT, NEW).tokens == expected


def test_budget_covering_every_expert_changes_no_token(moe_model, dense_draft):
    engine = TransformersEngine(moe_model, dense_draft, NoTokenizer())
    spec = SpecConfig(3, 3, 8, policy="router-mass", budget=engine.n_experts)
    result = engine.generate_speculative(PROMPT, NEW, spec)
    assert result.tokens == greedy_reference(moe_model)
    assert all(s.distinct_after_L == s.distinct_before_L for s in result.steps)


def test_half_precision_runs_within_budget(moe_model, dense_draft):
    """bf16 weights, logits and masks: no dtype clash anywhere, and the budget holds."""
    target = copy.deepcopy(moe_model).to(torch.bfloat16)
    engine = TransformersEngine(target, copy.deepcopy(dense_draft).to(torch.bfloat16), None)
    budget = engine.top_k + 1
    for mode in ("substitution", "truncation"):
        spec = SpecConfig(3, 3, 8, policy="router-mass", budget=budget, mode=mode)
        result = engine.generate_speculative(PROMPT, 8, spec)
        assert len(result.tokens) == 8
        assert all(max(s.distinct_after_L) <= budget for s in result.steps)


def test_draft_vocabulary_must_fit_the_target(moe_model):
    from transformers import Qwen3Config

    from .conftest import COMMON, build

    big = build(Qwen3Config(**{**COMMON, "vocab_size": 200}, head_dim=8, intermediate_size=32))
    with pytest.raises(ValueError, match="vocab_size=200"):
        TransformersEngine(moe_model, big, None)


class Malformed(Policy):
    """Keeps the top-``kept`` experts by router mass from its ``after``-th layer call on (a
    policy bug that shows only once the hot path's per-layer checks are off), and the
    top-B before; ``nan`` scores every expert NaN from then on instead."""

    name = "malformed"

    def __init__(self, kept: int = 0, after: int = 0, nan: bool = False) -> None:
        self.kept, self.after, self.nan, self.calls = kept, after, nan, 0

    def score(self, record):
        self.calls += 1
        mass_E = record.router_mass_E()
        return torch.full_like(mass_E, float("nan")) if self.bad and self.nan else mass_E

    @property
    def bad(self) -> bool:
        return self.calls > self.after

    def keep(self, record, budget):
        scores_E = self.checked_scores(record)
        kept = self.kept if self.bad and not self.nan else budget
        keep_E = torch.zeros(record.num_experts, dtype=torch.bool)
        keep_E[scores_E.topk(kept).indices] = True
        return keep_E


def malformed_run(model, **options) -> tuple[TransformersEngine, SpecConfig, Policy]:
    """An engine over ``model``, a spec at B = top-k + 2, and a :class:`Malformed` whose
    ``kept`` is ``"more"`` (B + 1) or ``"fewer"`` (top-k - 1) experts."""
    engine = TransformersEngine(model, model, NoTokenizer())
    K, E = engine.top_k, engine.n_experts
    B = K + 2
    assert K >= 2 and B + 1 <= E
    kept = {"more": B + 1, "fewer": K - 1, None: 0}[options.pop("kept", None)]
    spec = SpecConfig(3, 3, 8, policy="malformed", budget=B)
    return engine, spec, Malformed(kept, **options)


@pytest.mark.parametrize("kept, nan", [("more", False), ("fewer", False), (None, True)])
def test_a_malformed_kept_set_is_refused_on_the_first_verify(moe_model, kept, nan):
    """The first verify of a generation runs every per-layer check (host reads)."""
    engine, spec, policy = malformed_run(moe_model, kept=kept, nan=nan)
    K, B = engine.top_k, spec.budget
    found = (
        "NaN or inf values, the first nan at expert"
        if nan
        else f"keep() kept {policy.kept} experts; allowed: top-k={K} to budget B={B}"
    )
    with pytest.raises(PolicyError, match=r"policy 'malformed' \(from unregistered\)") as got:
        engine.generate_speculative(PROMPT, NEW, spec, policy=policy)
    assert found in str(got.value)
    assert policy.calls == 1  # in the first MoE layer


@pytest.mark.parametrize("kept", ["more", "fewer"])
def test_a_kept_set_that_goes_wrong_later_is_refused_after_its_forward(moe_model, kept):
    """Later verifies run without per-layer host reads; each layer's kept-set size is read
    once the forward is done, and a size outside [top-k, B] names the layer."""
    L = len(find_moe_blocks(moe_model))
    engine, spec, policy = malformed_run(moe_model, kept=kept, after=2 * L + 1)  # 3rd verify
    K, B = engine.top_k, spec.budget
    found = f"keep() kept {policy.kept} experts in MoE layer 1; allowed: top-k={K} to budget B={B}"
    with pytest.raises(PolicyError, match=r"policy 'malformed' \(from unregistered\)") as got:
        engine.generate_speculative(PROMPT, NEW, spec, policy=policy)
    assert found in str(got.value)
    assert policy.calls == 3 * L  # the whole third forward ran
    fine = engine.generate_speculative(PROMPT, NEW, spec, policy=Malformed(B))
    assert max(max(s.distinct_after_L) for s in fine.steps) <= B  # B itself is allowed


@pytest.mark.parametrize("kept", ["more", "fewer"])
def test_budgeted_verify_checks_a_policy_by_default(moe_model, kept):
    """Called directly (not by the engine), ``budgeted_verify`` runs the policy's value checks
    unless told not to: a kept set outside [top-k, B] raises instead of running."""
    from moe_spec.integration.transformers import budgeted_verify

    _, spec, policy = malformed_run(moe_model, kept=kept)
    ids = torch.tensor([[5, 17, 42, 8, 63, 29, 11, 70]])
    with pytest.raises(PolicyError, match="keep"), budgeted_verify(moe_model, policy, spec.budget):
        moe_model(input_ids=ids)
    _, _, quiet = malformed_run(moe_model, kept=kept)
    with budgeted_verify(moe_model, quiet, spec.budget, validate=False) as routing:
        moe_model(input_ids=ids)  # the hot path's choice: no host reads, no check
    with pytest.raises(PolicyError, match="allowed: top-k="):
        routing.check_kept(spec.budget - 2, find_moe_blocks(moe_model)[0].num_experts)


@pytest.mark.parametrize(
    ("prompt", "message"),
    [
        (torch.tensor([PROMPT]), r"prompt is 'a tensor of shape \[1, 7\]'; allowed: a list"),
        ([[5, 17], [42, 8]], r"allowed: a list of token ids \(int\), one sequence"),
        ([5, 17, 99999], r"prompt token ids \[99999\] are outside the vocabulary; allowed: 0 to"),
        ([5, -1], r"ids \[-1\] are outside"),
    ],
)
def test_a_prompt_that_is_not_token_ids_of_this_model_is_named(moe_model, prompt, message):
    from moe_spec.integration.transformers import budgeted_verify

    engine = TransformersEngine(moe_model, moe_model, NoTokenizer())
    with pytest.raises(ValueError, match=message):
        engine.generate_autoregressive(prompt, 4)
    with pytest.raises(ValueError, match=message):
        engine.generate_speculative(prompt, 4, SPEC)
    with pytest.raises(ValueError, match="policy is 'router-mass'; allowed: a Policy instance"):
        budgeted_verify(moe_model, "router-mass", 3).__enter__()
