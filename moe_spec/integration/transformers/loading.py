"""Load a transformers MoE target and its draft from local checkpoint directories.

Only local directories with ``config.json`` and ``*.safetensors`` weights are
read (``local_files_only=True``, ``use_safetensors=True``, no remote code):
nothing is downloaded and no pickle is unpickled.
"""

from __future__ import annotations

from pathlib import Path

import torch

from moe_spec.integration.transformers.adapter import router_convention
from moe_spec.integration.transformers.engine import TransformersEngine


class ModelPathError(ValueError):
    """A path is not a local transformers checkpoint directory."""


def check_model_dir(path: str | Path, role: str) -> Path:
    """``path`` as a :class:`Path`, or :class:`ModelPathError` saying what is missing."""
    p = Path(path)
    if not p.is_dir():
        raise ModelPathError(
            f"{role} path {str(path)!r} is not a local model directory (hub ids are never "
            "downloaded); pass a directory holding config.json and *.safetensors weights"
        )
    if not (p / "config.json").is_file():
        raise ModelPathError(f"{role} directory {p} has no config.json")
    if not any(p.glob("*.safetensors")):
        raise ModelPathError(
            f"{role} directory {p} holds no *.safetensors weights; only safetensors "
            "checkpoints are loaded (pickled .bin files are not)"
        )
    return p


def load_config(path: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except ValueError as exc:
        raise ModelPathError(f"cannot read {path / 'config.json'}: {exc}") from exc


def load_causal_lm(path: Path, device: str, dtype: torch.dtype | str):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path,
        local_files_only=True,
        use_safetensors=True,
        trust_remote_code=False,
        dtype=dtype,
    )
    return model.to(device).eval().requires_grad_(False)


def load_engine(
    target_path: str,
    draft_path: str,
    *,
    device: str | None = None,
    dtype: torch.dtype | str = "auto",
    max_len: int | None = None,
) -> TransformersEngine:
    """A :class:`TransformersEngine` from two local checkpoint directories.

    The target must be a supported MoE architecture (checked from its config
    before any weight is read); the tokenizer comes from the target directory.
    ``device`` defaults to CUDA when available; ``dtype`` to the checkpoint's.
    """
    from transformers import AutoTokenizer

    target_dir = check_model_dir(target_path, "target")
    draft_dir = check_model_dir(draft_path, "draft")
    router_convention(load_config(target_dir))
    load_config(draft_dir)
    device = device or ("cuda" if torch.cuda.is_available() else "cpu")
    tokenizer = AutoTokenizer.from_pretrained(target_dir, local_files_only=True)
    target = load_causal_lm(target_dir, device, dtype)
    draft = load_causal_lm(draft_dir, device, dtype)
    return TransformersEngine(target, draft, tokenizer, max_len)
