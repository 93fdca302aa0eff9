"""Test-only plugins, found through their entry points on the live servers' path.

``failing-router-mass`` budgets exactly as ``router-mass`` until the file named
by its ``trip`` option exists; from then on every call raises, as a buggy
third-party policy would in the middle of serving.
"""

from __future__ import annotations

from pathlib import Path

from moe_spec.policies.builtin import RouterMass
from moe_spec.policies.hookspecs import hookimpl

FAILURE = "failing-router-mass: tripped on purpose"


class FailingRouterMass(RouterMass):
    name = "failing-router-mass"
    description = "router-mass that raises once its trip file exists (tests only)"

    def __init__(self, trip: str = "") -> None:
        super().__init__()
        self.trip = Path(trip) if trip else None

    def apply(self, record, budget, **kwargs):
        if self.trip is not None and self.trip.exists():
            raise RuntimeError(FAILURE)
        return super().apply(record, budget, **kwargs)


@hookimpl
def register_policies(register) -> None:
    register(FailingRouterMass)


def olmoe_eagle_accessor() -> None:
    """SGLang plugin (test servers only): the one accessor EAGLE needs from an OLMoE target.

    SGLang 0.5.23's EAGLE workers share the target's embedding and LM head through
    ``get_embed_and_head()``, which its Qwen3-MoE has and its OLMoE (like Mixtral and
    Qwen2-MoE) lacks. This adds it, as Qwen3-MoE defines it; nothing else of OLMoE
    changes (its attention, gate, TopK and FusedMoE are SGLang's own).
    """
    from sglang.srt.models.olmoe import OlmoeForCausalLM

    def get_embed_and_head(self):
        return self.model.embed_tokens.weight, self.lm_head.weight

    if not hasattr(OlmoeForCausalLM, "get_embed_and_head"):
        OlmoeForCausalLM.get_embed_and_head = get_embed_and_head
