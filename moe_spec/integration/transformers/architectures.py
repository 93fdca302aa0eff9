"""The transformers MoE architectures the adapter serves, registered as plugins.

An :class:`Architecture` names a ``model_type`` and says how its MoE blocks
route: where the router and experts modules sit, the order of what the router
returns, its scoring (softmax, sigmoid with a selection bias, or PhiMoE's
sparsemixer), whether top-k
weights are renormalised, and a scale applied after the top-k. Built-ins are
registered through the ``register_architectures`` hook of the same pluggy
plugin manager and entry-point group (``moe_spec.policies``) as policies, so a
third-party package adds an architecture exactly like a policy::

    from moe_spec import hookimpl
    from moe_spec.integration.transformers import Architecture, RouterConvention

    @hookimpl
    def register_architectures(register):
        register(Architecture("my_moe", lambda config: RouterConvention("gate")))

A registration is checked against the model when it is loaded
(:mod:`moe_spec.integration.transformers.contract`): a wrong convention is
refused, never silently wrong. Models whose layers are not all softmax
attention (linear-attention or state-space hybrids) are refused: the tree
forward needs every layer to attend over the tree with a mask.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

from moe_spec.policies import hookimpl
from moe_spec.policies.registry import PluginError, plugin_line, registry, warn_left_out
from moe_spec.routing import SCORINGS, Scoring

BUILTIN_PLUGIN = "moe_spec.builtin_architectures"
ROUTER_OUTPUTS = ("logits", "weights", "ids")
ATTENTION_LAYER_TYPES = ("full_attention", "sliding_attention", "chunked_attention")
#: model types whose layers are not all attention, with what the tree forward cannot serve
HYBRIDS = {
    "minimax": "lightning (linear) attention layers",
    "qwen3_next": "Gated DeltaNet linear-attention layers",
    "qwen3_5_moe": "Gated DeltaNet linear-attention layers",
    "jamba": "Mamba state-space layers",
    "granitemoehybrid": "Mamba2 state-space layers",
    "lfm2_moe": "short-convolution layers",
    "olmo_hybrid": "linear-attention layers",
}


class UnsupportedModelError(ValueError):
    """The model's architecture has no routing adapter, or its router breaks the contract."""


@dataclass(frozen=True)
class RouterConvention:
    """How an architecture routes: where the router sits and how it weights experts."""

    router_attr: str  # the block's router child: "gate" or "router"
    scoring: Scoring = "softmax"
    renormalize: bool = True  # top-k weights rescaled to sum to 1
    scale: float = 1.0  # DeepSeek's routed_scaling_factor, applied after the top-k
    bias_attr: str | None = None  # sigmoid routers: the router's selection-bias buffer
    returns: tuple[str, str, str] = ROUTER_OUTPUTS  # the router's output order
    experts_attr: str = "experts"  # the block's experts child
    sparsemixer_eps: float = 0.01  # scoring="sparsemixer": the router's jitter epsilon

    def __post_init__(self) -> None:
        if self.scoring not in SCORINGS:
            raise ValueError(f"scoring is {self.scoring!r}; allowed: {', '.join(SCORINGS)}")
        if sorted(self.returns) != sorted(ROUTER_OUTPUTS):
            raise ValueError(
                f"returns is {self.returns!r}; it must order {', '.join(ROUTER_OUTPUTS)}"
            )
        if not self.scale > 0:
            raise ValueError(f"scale is {self.scale!r}; allowed: > 0")

    def split(self, output: tuple) -> tuple:
        """The router's output as ``(logits, weights, ids)``."""
        return tuple(output[self.returns.index(name)] for name in ROUTER_OUTPUTS)

    def join(self, logits, weights, ids) -> tuple:
        """``(logits, weights, ids)`` back in the router's own output order."""
        named = {"logits": logits, "weights": weights, "ids": ids}
        return tuple(named[name] for name in self.returns)


@dataclass(frozen=True)
class Architecture:
    """A transformers ``model_type`` and the routing convention of its config."""

    model_type: str
    convention: Callable[[object], RouterConvention]  # config -> convention (may refuse)
    description: str = ""

    def __post_init__(self) -> None:
        if not isinstance(self.model_type, str) or not self.model_type:
            raise ValueError(
                f"Architecture model_type is {self.model_type!r}; allowed: a transformers "
                "model_type string, e.g. 'qwen3_moe'"
            )
        if not callable(self.convention):
            raise ValueError(
                f"Architecture {self.model_type!r}: convention is {self.convention!r}; allowed: "
                "a function of the model config that returns a RouterConvention"
            )


def softmax_topk_convention(config) -> RouterConvention:
    """Qwen2-MoE, Qwen3-MoE, OLMoE: softmax top-k, renormalised iff ``norm_topk_prob``."""
    return RouterConvention("gate", renormalize=bool(config.norm_topk_prob))


def deepseek_v2_convention(config) -> RouterConvention:
    """DeepSeek-V2(-Lite): greedy softmax top-k, raw weights times ``routed_scaling_factor``."""
    if config.topk_method != "greedy":
        raise UnsupportedModelError(
            f"deepseek_v2 with topk_method={config.topk_method!r} is not supported (a re-route "
            "would ignore its group limit); supported: topk_method='greedy' (DeepSeek-V2-Lite)"
        )
    return RouterConvention("gate", renormalize=False, scale=float(config.routed_scaling_factor))


def sigmoid_bias_convention(config) -> RouterConvention:
    """DeepSeek-V3, GLM-4.5: sigmoid gates, top-k chosen by gate + correction bias,
    weights from the gates (renormalised iff ``norm_topk_prob``) times ``routed_scaling_factor``.
    """
    if config.topk_group != config.n_group:
        raise UnsupportedModelError(
            f"{config.model_type} with n_group={config.n_group}, topk_group={config.topk_group} "
            "limits each token to some expert groups, which a re-route would ignore; "
            "supported: topk_group == n_group (e.g. n_group=1, as GLM-4.5)"
        )
    return RouterConvention(
        "gate",
        scoring="sigmoid",
        renormalize=bool(config.norm_topk_prob),
        scale=float(config.routed_scaling_factor),
        bias_attr="e_score_correction_bias",
    )


def phimoe_convention(config) -> RouterConvention:
    """PhiMoE: sparsemixer top-2 (each pick weighted by a softmax over logits near it), raw."""
    return RouterConvention(
        "router",
        scoring="sparsemixer",
        renormalize=False,
        sparsemixer_eps=float(config.router_jitter_noise),
    )


def granite_convention(config) -> RouterConvention:
    """GraniteMoE(-Shared): softmax over the top-k logits (= renormalised softmax top-k);
    the router returns ``(ids, weights, logits)``."""
    return RouterConvention("router", returns=("ids", "weights", "logits"))


BUILTIN_ARCHITECTURES = (
    Architecture("qwen3_moe", softmax_topk_convention, "Qwen3-MoE"),
    Architecture("qwen2_moe", softmax_topk_convention, "Qwen2-MoE (shared expert untouched)"),
    Architecture("olmoe", softmax_topk_convention, "OLMoE"),
    Architecture("mixtral", lambda config: RouterConvention("gate"), "Mixtral"),
    Architecture("deepseek_v2", deepseek_v2_convention, "DeepSeek-V2(-Lite), greedy top-k"),
    # softmax over the top-k logits (router bias included) == renormalised softmax top-k
    Architecture("gpt_oss", lambda config: RouterConvention("router"), "GPT-OSS"),
    Architecture("deepseek_v3", sigmoid_bias_convention, "DeepSeek-V3, one expert group"),
    Architecture("glm4_moe", sigmoid_bias_convention, "GLM-4.5, one expert group"),
    Architecture("granitemoe", granite_convention, "GraniteMoE"),
    Architecture("granitemoeshared", granite_convention, "GraniteMoE with a shared MLP"),
    Architecture("phimoe", phimoe_convention, "PhiMoE (Phi-3.5-MoE), sparsemixer weights"),
)


@hookimpl
def register_architectures(register):
    for architecture in BUILTIN_ARCHITECTURES:
        register(architecture)


@dataclass(frozen=True)
class ArchitectureInfo:
    """A registered architecture and the plugin it came from."""

    architecture: Architecture
    origin: str


def architectures() -> dict[str, ArchitectureInfo]:
    """Every registered architecture by ``model_type`` (built-ins and entry-point plugins).

    A plugin whose registration fails is left out whole with a :class:`PluginWarning`.
    """
    plugins = registry()
    plugins.policies()  # loads the entry points (and reports their failures) once
    manager = plugins.manager
    if not manager.is_registered(sys.modules[__name__]):  # built-ins: as plugins are
        plugins.add_plugin(sys.modules[__name__], BUILTIN_PLUGIN, "built-in")
    found: dict[str, ArchitectureInfo] = {}
    impls = manager.hook.register_architectures.get_hookimpls()
    # built-ins first, then plugins in registration order: a plugin reusing a name is left out
    for impl in sorted(impls, key=lambda impl: impl.plugin_name != BUILTIN_PLUGIN):
        origin = plugins.origins.get(impl.plugin_name, impl.plugin_name)
        mine: dict[str, ArchitectureInfo] = {}

        def register(architecture, origin=origin, mine=mine) -> None:
            if not isinstance(architecture, Architecture):
                raise PluginError(
                    f"plugin {origin} registered {architecture!r}; expected a "
                    "moe_spec.integration.transformers.Architecture"
                )
            taken = found.get(architecture.model_type) or mine.get(architecture.model_type)
            if taken is not None:
                raise PluginError(
                    f"architecture {architecture.model_type!r} is registered twice: by "
                    f"{taken.origin}, which keeps it, and by {origin}; register it once"
                )
            mine[architecture.model_type] = ArchitectureInfo(architecture, origin)

        try:
            impl.function(register)
        except Exception as exc:
            message = (
                str(exc)
                if isinstance(exc, PluginError)
                else (f"plugin {origin} failed in register_architectures: {exc!r}")
            )
            line = plugin_line(exc, impl.function)
            warn_left_out(f"{message}; its architectures are left out", line)
            continue
        found.update(mine)
    return dict(sorted(found.items()))


def router_convention(config) -> RouterConvention:
    """The routing convention of a model config, or :class:`UnsupportedModelError`."""
    model_type = getattr(config, "model_type", None)
    check_attention_only(config)
    known = architectures()
    if model_type not in known:
        raise UnsupportedModelError(
            f"model_type {model_type!r} has no MoE routing adapter; supported: "
            f"{', '.join(known)} (a plugin can add one: see CONTRIBUTING.md)"
        )
    info = known[model_type]
    try:
        convention = info.architecture.convention(config)
    except UnsupportedModelError:
        raise
    except Exception as exc:  # a plugin's bug, or a config it did not expect
        raise UnsupportedModelError(
            f"the routing convention of model_type {model_type!r} (from {info.origin}) failed "
            f"on this config: {exc!r}"
        ) from exc
    if not isinstance(convention, RouterConvention):
        raise UnsupportedModelError(
            f"the routing convention of model_type {model_type!r} (from {info.origin}) returned "
            f"{convention!r}; allowed: a RouterConvention"
        )
    return convention


def check_attention_only(config) -> None:
    """Refuse linear-attention and state-space hybrids: the tree forward cannot serve them."""
    model_type = getattr(config, "model_type", None)
    layer_types = getattr(config, "layer_types", None) or ()
    other = sorted({t for t in layer_types if t not in ATTENTION_LAYER_TYPES})
    if model_type in HYBRIDS or other:
        what = HYBRIDS.get(model_type) or f"layers of type {', '.join(other)}"
        raise UnsupportedModelError(
            f"model_type {model_type!r} has {what}: tree verification needs every layer to "
            "attend over the draft tree with a mask, which recurrent or linear-attention "
            "layers cannot do (their state would mix sibling branches); not supported"
        )
