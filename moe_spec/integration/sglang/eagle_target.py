"""The one accessor SGLang 0.5.23's EAGLE workers need that some of its MoE targets lack.

SGLang's EAGLE and EAGLE-3 draft workers share the target's token embedding and LM head
through ``target.get_embed_and_head()`` (``srt/speculative/pp_draft_embedding.py``). In
SGLang 0.5.23, Qwen3-MoE, DeepSeek-V2/V3 and GPT-OSS define it; Qwen2-MoE (the class
that serves ``smollm2-moe``), OLMoE and Mixtral do not, so EAGLE with one of them stops
at start-up, on any device, with ``AttributeError: ... 'get_embed_and_head'``. The
plugin adds it to those classes, exactly as Qwen3-MoE defines it, once the target
model has loaded (before the draft worker asks), and says so in the log. Nothing the
models compute changes; a class that has the accessor (a later SGLang) is left alone.
"""

from __future__ import annotations

from typing import Any

#: SGLang model classes whose EAGLE support lacks only ``get_embed_and_head`` (0.5.23).
LACKS_ACCESSOR = ("Qwen2MoeForCausalLM", "OlmoeForCausalLM", "MixtralForCausalLM")


def get_embed_and_head(self: Any) -> tuple[Any, Any]:
    """``(embedding weight [V, D], LM head weight [V, D])``, as SGLang's Qwen3-MoE returns."""
    return self.model.embed_tokens.weight, self.lm_head.weight


def add_embed_and_head(model: Any) -> str | None:
    """Give ``model``'s class the accessor if it is one of :data:`LACKS_ACCESSOR` and lacks
    it; the class name when added, else None."""
    cls = type(model)
    if cls.__name__ not in LACKS_ACCESSOR or hasattr(cls, "get_embed_and_head"):
        return None
    cls.get_embed_and_head = get_embed_and_head
    return cls.__name__


def notice(class_name: str) -> str:
    return (
        f"moe-spec: added get_embed_and_head() to SGLang's {class_name} (SGLang's EAGLE "
        "workers share the target's embedding and LM head through it; this SGLang's "
        f"{class_name} lacks it)"
    )
