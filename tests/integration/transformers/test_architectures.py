"""Architectures as plugins: registration, the router contract check, hybrids, overhead."""

from __future__ import annotations

import textwrap
from types import SimpleNamespace

import pytest
import torch
import transformers

from moe_spec import get_policy, hookimpl
from moe_spec.integration.transformers import (
    Architecture,
    RouterConvention,
    UnsupportedModelError,
    architectures,
    budgeted_verify,
    find_moe_blocks,
)
from moe_spec.integration.transformers.adapter import budget_routing, router_convention
from moe_spec.policies import PluginWarning, reset_registry
from moe_spec.policies.registry import registry
from tests.host_sync import HostSyncRecorder
from tests.integration.transformers.conftest import build, tiny_config


@pytest.fixture
def plugin():
    """Register a test plugin object in the process-wide registry; forget it afterwards."""
    reset_registry()

    def add(register_architectures, origin="test-arch 0.1"):
        obj = SimpleNamespace(register_architectures=hookimpl(register_architectures))
        registry().add_plugin(obj, origin, origin)

    yield add
    reset_registry()


def renamed(model, model_type: str):
    model.config.model_type = model_type  # an instance attribute shadows the class's
    return model


def test_builtins_are_registered_through_the_hook_with_their_origin():
    found = architectures()
    assert {"qwen3_moe", "mixtral", "granitemoe", "granitemoeshared"} <= set(found)
    assert {info.origin for info in found.values()} == {"built-in"}


def test_a_plugin_adds_an_architecture_that_then_budgets(plugin):
    plugin(lambda register: register(Architecture("my_moe", lambda c: RouterConvention("gate"))))
    assert architectures()["my_moe"].origin == "test-arch 0.1"
    model = renamed(build(tiny_config("qwen3_moe")), "my_moe")
    blocks = find_moe_blocks(model)
    with budgeted_verify(model, get_policy("router-mass"), blocks[0].top_k) as routing:
        model(input_ids=torch.tensor([[3, 4, 5, 6, 7, 8]]))
    assert max(routing.distinct_computed_L()) <= blocks[0].top_k


def test_a_wrong_output_order_is_refused_at_load(plugin):
    plugin(
        lambda register: register(Architecture("granite_x", lambda c: RouterConvention("router")))
    )
    model = renamed(build(tiny_config("granitemoe")), "granite_x")
    with pytest.raises(UnsupportedModelError, match=r"MoE block 0 .*router returned ids of"):
        find_moe_blocks(model)


def test_a_wrong_weighting_rule_is_refused_naming_block_field_and_values(plugin):
    wrong = RouterConvention("gate", renormalize=False)  # the tiny Qwen3-MoE renormalises
    plugin(lambda register: register(Architecture("qwen_x", lambda c: wrong)))
    model = renamed(build(tiny_config("qwen3_moe")), "qwen_x")
    with pytest.raises(
        UnsupportedModelError,
        match=r"MoE block 0 \(Qwen3MoeTopKRouter\): field weights differs from the registered "
        r"convention \(scoring=softmax, renormalize=False, scale=1.0\): router \[.*\], "
        r"convention \[.*\]",
    ):
        find_moe_blocks(model)


def test_phimoe_registered_with_the_default_convention_is_refused(plugin):
    plugin(lambda register: register(Architecture("phi_x", lambda c: RouterConvention("router"))))
    model = renamed(build(tiny_config("phimoe")), "phi_x")
    with pytest.raises(
        UnsupportedModelError,
        match=r"PhimoeTopKRouter\): field weights differs .* router \[1.0, 1.0\], convention",
    ):
        find_moe_blocks(model)


def test_a_plugin_reusing_a_builtin_name_is_left_out(plugin):
    plugin(lambda register: register(Architecture("mixtral", lambda c: RouterConvention("gate"))))
    with pytest.warns(
        PluginWarning, match=r"'mixtral' is registered twice: by built-in, which keeps it, and by"
    ):
        assert architectures()["mixtral"].origin == "built-in"


def test_registering_something_else_is_left_out_with_a_warning(plugin):
    plugin(lambda register: register("qwen3_moe"))
    with pytest.warns(PluginWarning, match=r"registered 'qwen3_moe'; expected a") as caught:
        architectures()
    # pointed at the plugin's register call (this file), not at moe_spec's registry
    assert [w.filename for w in caught] == [__file__]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: Architecture(42, lambda c: RouterConvention("gate")), "model_type is 42"),
        (lambda: Architecture("x_moe", RouterConvention("gate")), "convention is Router"),
    ],
)
def test_an_architecture_of_the_wrong_types_leaves_its_plugin_out(plugin, make, message):
    """A non-string model_type used to crash `moe-spec architectures` and every model load
    (sorting names); now the plugin is left out with a warning, as other mistakes are."""
    plugin(lambda register: register(make()))
    with pytest.warns(PluginWarning, match=message):
        known = architectures()
    assert "qwen3_moe" in known and all(isinstance(name, str) for name in known)


@pytest.mark.parametrize(
    ("convention", "message"),
    [
        (lambda config: None, r"\(from test-arch 0.1\) returned None; allowed: a RouterConvention"),
        (
            lambda config: RouterConvention("gate", scale=config.routed_scaling_factor),
            r"\(from test-arch 0.1\) failed on this config: AttributeError\(.*"
            r"routed_scaling_factor",
        ),
    ],
)
def test_a_convention_that_fails_or_returns_nothing_is_named_at_load(plugin, convention, message):
    """A plugin's convention that returns None or raises on the config: a clear refusal
    naming the model type and the plugin, not a raw AttributeError later in the load."""
    plugin(lambda register: register(Architecture("qwen_y", convention)))
    config = SimpleNamespace(model_type="qwen_y")
    with pytest.raises(UnsupportedModelError, match=r"model_type 'qwen_y' " + message):
        router_convention(config)


def test_an_entry_point_plugin_registers_an_architecture(tmp_path, monkeypatch):
    (tmp_path / "my_arch.py").write_text(
        textwrap.dedent(
            """
            from moe_spec import hookimpl
            from moe_spec.integration.transformers import Architecture, RouterConvention

            @hookimpl
            def register_architectures(register):
                register(Architecture("ep_moe", lambda config: RouterConvention("gate")))
            """
        )
    )
    info = tmp_path / "my_arch-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-arch\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text("[moe_spec.policies]\nmy-arch = my_arch\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    reset_registry()
    try:
        assert architectures()["ep_moe"].origin.startswith("my-arch 1.0 (entry point 'my-arch'")
    finally:
        reset_registry()


@pytest.mark.parametrize(
    ("config_class", "kwargs", "reason"),
    [
        ("Qwen3NextConfig", {}, "Gated DeltaNet"),
        ("JambaConfig", {}, "Mamba"),
        ("MiniMaxConfig", {}, "lightning"),
        ("GraniteMoeHybridConfig", {}, "Mamba2"),
    ],
)
def test_hybrids_are_refused_with_the_reason(config_class, kwargs, reason):
    config = getattr(transformers, config_class)(**kwargs)
    with pytest.raises(UnsupportedModelError, match=rf"{reason}.*tree verification needs every"):
        router_convention(config)


def test_any_non_attention_layer_type_is_refused():
    config = tiny_config("qwen3_moe")
    config.layer_types = ["full_attention", "linear_attention"]
    with pytest.raises(UnsupportedModelError, match=r"layers of type linear_attention"):
        router_convention(config)


@pytest.mark.parametrize("model_type", ["qwen3_moe", "granitemoe", "glm4_moe"])
def test_the_budget_hook_reads_nothing_on_the_host(model_type):
    model = build(tiny_config(model_type))
    convention = router_convention(model.config)
    block = find_moe_blocks(model)[0]
    g = torch.Generator().manual_seed(0)
    x_TD = torch.randn(12, model.config.hidden_size, dtype=torch.float64, generator=g)
    output = block.router(x_TD)
    from moe_spec.integration.transformers.adapter import VerifyRouting

    policy = get_policy("token-priority")
    policy.validate = False  # what budgeted_verify hands the hook by default
    for budget in (block.top_k, block.num_experts):
        state = VerifyRouting(policy, budget, depth_T=torch.arange(12) // 3)
        with HostSyncRecorder() as recorder:
            out = budget_routing(state, convention, block, 2, output)
        assert recorder.syncs == [], recorder.syncs
        ids = convention.split(out)[2]
        assert ids.unique().numel() <= budget


def test_no_budget_leaves_the_router_output_untouched():
    model = build(tiny_config("olmoe"))
    convention = router_convention(model.config)
    block = find_moe_blocks(model)[0]
    g = torch.Generator().manual_seed(0)
    output = block.router(
        torch.randn(6, model.config.hidden_size, dtype=torch.float64, generator=g)
    )
    state = __import__(
        "moe_spec.integration.transformers.adapter", fromlist=["VerifyRouting"]
    ).VerifyRouting(get_policy("router-mass"), block.num_experts)
    assert budget_routing(state, convention, block, 2, output) is output
    assert state.ids_after_LTK[0] is convention.split(output)[2]


def test_blocks_are_found_and_checked_once_per_model(monkeypatch):
    import moe_spec.integration.transformers.adapter as adapter

    model = build(tiny_config("mixtral"))
    calls = []
    real = adapter.check_router_contract
    monkeypatch.setattr(adapter, "check_router_contract", lambda *a: calls.append(a) or real(*a))
    first = find_moe_blocks(model)
    assert find_moe_blocks(model) is first and len(calls) == len(first)


def test_architectures_command_lists_them_with_their_origin(capsys):
    from moe_spec.cli import main

    assert main(["architectures"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert any(line.split()[:2] == ["granitemoe", "built-in"] for line in lines)
    assert len(lines) == len(architectures())


def test_a_per_layer_top_k_is_read_from_each_router_and_budgeted():
    fresh_model = build(tiny_config("qwen3_moe"))
    fresh_model.model.layers[1].mlp.gate.top_k = 3  # Qwen3-MoE's router reads this attribute
    blocks = find_moe_blocks(fresh_model)
    assert [b.top_k for b in blocks] == [2, 3]
    with budgeted_verify(fresh_model, get_policy("router-mass"), 3) as routing:
        fresh_model(input_ids=torch.tensor([[3, 4, 5, 6, 7, 8, 9, 10]]))
    assert [ids.shape[1] for ids in routing.ids_after_LTK] == [2, 3]
    assert max(routing.distinct_computed_L()) <= 3
    with pytest.raises(ValueError, match="below top-k=3"):
        budgeted_verify(fresh_model, get_policy("router-mass"), 2).__enter__()
