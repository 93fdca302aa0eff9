"""Speculative decoding against autoregressive decoding, and where the budget applies."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

import moe_spec.policies.registry as registry_module
from moe_spec import Policy, hookimpl
from moe_spec.engine.generate import SpecConfig
from moe_spec.policies import PolicyError, get_policy, reset_registry

PROMPTS = [[5, 17, 42, 8, 99, 3], [1, 2, 3], [250, 12, 12, 12, 40, 41, 42, 43, 44]]


@pytest.mark.parametrize("shape", [(1, 1, 2), (3, 4, 10), (4, 6, 32), (2, 8, 16)])
def test_greedy_speculative_equals_autoregressive(tiny_engine, shape):
    width, depth, num_tokens = shape
    spec = SpecConfig(width=width, depth=depth, num_tokens=num_tokens)
    for prompt in PROMPTS:
        want = tiny_engine.generate_autoregressive(prompt, 24).tokens
        got = tiny_engine.generate_speculative(prompt, 24, spec)
        assert got.tokens == want
        assert sum(s.committed for s in got.steps) >= len(got.tokens) - 1  # root comes from prefill


def test_autoregressive_decoding_runs_one_forward_per_token_after_the_first(
    tiny_engine, monkeypatch
):
    """The baseline does no work past its last token: its speed is not understated."""
    forwards = []
    decode = type(tiny_engine).decode_one_token
    monkeypatch.setattr(
        type(tiny_engine), "decode_one_token", lambda *a: forwards.append(1) or decode(*a)
    )
    for new in (0, 1, 9):
        forwards.clear()
        out = tiny_engine.generate_autoregressive(PROMPTS[0], new)
        assert len(out.tokens) == new and len(forwards) == max(new - 1, 0)


def test_budget_of_e_or_more_is_exactly_unbudgeted(tiny_engine):
    plain = tiny_engine.generate_speculative(PROMPTS[0], 30, SpecConfig(depth=4, num_tokens=12))
    for budget in (8, 12):
        spec = SpecConfig(depth=4, num_tokens=12, policy="router-mass", budget=budget)
        out = tiny_engine.generate_speculative(PROMPTS[0], 30, spec)
        assert out.tokens == plain.tokens
        assert [s.distinct_after_L for s in out.steps] == [s.distinct_before_L for s in plain.steps]


def test_a_budget_caps_distinct_experts_in_every_verify_layer(tiny_engine):
    spec = SpecConfig(depth=4, num_tokens=16, policy="router-mass", budget=3, mode="truncation")
    out = tiny_engine.generate_speculative(PROMPTS[0], 30, spec)
    assert out.steps
    for step in out.steps:
        assert max(step.distinct_after_L) <= 3
        assert all(
            p <= b for p, b in zip(step.distinct_path_L, step.distinct_before_L, strict=True)
        )
    assert any(max(s.distinct_before_L) > 3 for s in out.steps)  # the budget did bind


class Spy(Policy):
    """Records every call; keeps the experts of row 0."""

    name = "spy"
    calls: list = []

    def keep(self, record, budget):
        Spy.calls.append(
            SimpleNamespace(
                tokens=record.num_tokens,
                layer=record.layer_idx,
                depth=record.depth_T,
                logprob=record.path_logprob_T,
            )
        )
        return None


@pytest.fixture
def spy_policy(monkeypatch):
    plugin = SimpleNamespace(register_policies=hookimpl(lambda register: register(Spy)))
    registry = registry_module.default_registry({})
    registry.add_plugin(plugin, "spy", "spy-plugin")
    monkeypatch.setattr(registry_module, "_registry", registry)
    Spy.calls = []
    yield Spy
    reset_registry()


def test_policy_runs_only_in_verify_forwards_with_tree_metadata(tiny_engine, spy_policy):
    tiny_engine.generate_autoregressive(PROMPTS[0], 10)
    assert spy_policy.calls == []  # prefill and decode are never budgeted
    spec = SpecConfig(width=3, depth=3, num_tokens=9, policy="spy", budget=4)
    out = tiny_engine.generate_speculative(PROMPTS[0], 10, spec)
    n_layers = tiny_engine.config.n_layers
    assert len(spy_policy.calls) == len(out.steps) * n_layers  # draft never calls it either
    for i, call in enumerate(spy_policy.calls):
        assert call.tokens == 9 and call.layer == i % n_layers
        assert call.depth is not None and int(call.depth[0]) == 0 and int(call.depth.max()) <= 3
        assert call.logprob is not None and float(call.logprob[0]) == 0.0


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"width": 0}, r"width must be an integer >= 1, got 0"),
        ({"num_tokens": 1}, r"num_tokens must be an integer >= 2"),
        ({"temperature": -1.0}, r"temperature is -1.0; allowed: 0 \(greedy\) or a finite"),
        ({"temperature": 1e-300}, r"temperature is 1e-300; allowed"),
        ({"mode": "drop"}, r"mode is 'drop'; allowed: substitution, truncation"),
    ],
)
def test_bad_spec_configs_are_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        SpecConfig(**kwargs)


def test_bad_budget_and_policy_are_refused(tiny_engine):
    with pytest.raises(ValueError, match=r"budget B=1 is below top-k=2"):
        tiny_engine.generate_speculative([1, 2], 5, SpecConfig(policy="router-mass", budget=1))
    with pytest.raises(ValueError, match=r"unknown policy 'nope'"):
        tiny_engine.generate_speculative([1, 2], 5, SpecConfig(policy="nope", budget=4))
    with pytest.raises(ValueError, match=r"must be non-empty and fit max_len=1024"):
        tiny_engine.generate_autoregressive([1] * 1020, 10)
    # a budgeting policy with no budget would keep every expert under its own name
    with pytest.raises(ValueError, match=r"policy 'router-mass' needs a budget: SpecConfig"):
        tiny_engine.generate_speculative([1, 2], 5, SpecConfig(policy="router-mass"))
    for unbudgeted in ("none", "auto"):  # keeps every expert, picks its own: no budget needed
        tiny_engine.generate_speculative([1, 2], 3, SpecConfig(policy=unbudgeted))


def test_a_policy_checks_the_model_before_any_forward(tiny_engine, monkeypatch):
    """``Policy.check_model`` gets the target's (MoE layers, experts, top-k) first: a
    per-layer budget table for another model is refused before the prompt is read."""
    cfg = tiny_engine.config
    prefills = []

    class PrefillReachedError(Exception):
        """The stand-in prefill's: the generation got as far as reading the prompt."""

    def prefill(*args):
        prefills.append(args)
        raise PrefillReachedError

    monkeypatch.setattr(tiny_engine, "prefill", prefill)
    table = get_policy("layer-adaptive", budgets=[4] * (cfg.n_layers + 1))
    with pytest.raises(PolicyError, match=rf"has {cfg.n_layers + 1} entries; the model has "
                       rf"{cfg.n_layers} MoE layers: give one budget per MoE layer"):  # fmt: skip
        tiny_engine.generate_speculative(
            [1, 2], 3, SpecConfig(policy="layer-adaptive", budget=4), policy=table
        )
    assert prefills == []
    seen = []
    mass = get_policy("router-mass")
    monkeypatch.setattr(mass, "check_model", lambda *dims: seen.append(dims))
    with pytest.raises(PrefillReachedError):  # the check came first, once
        tiny_engine.generate_speculative(
            [1, 2], 3, SpecConfig(policy="router-mass", budget=4), policy=mass
        )
    assert seen == [(cfg.n_layers, cfg.n_experts, cfg.top_k)] and len(prefills) == 1


def test_sampling_is_reproducible_per_seed(tiny_engine):
    spec = SpecConfig(width=3, depth=3, num_tokens=9, temperature=0.8)
    a = tiny_engine.generate_speculative(PROMPTS[1], 20, spec, seed=3).tokens
    b = tiny_engine.generate_speculative(PROMPTS[1], 20, spec, seed=3).tokens
    c = tiny_engine.generate_speculative(PROMPTS[1], 20, spec, seed=4).tokens
    assert a == b and a != c
    assert torch.tensor(a).max() < tiny_engine.config.vocab_size
