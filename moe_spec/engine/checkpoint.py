"""Checkpoints: a folder with JSON config, safetensors weights and the tokenizer.

Layout::

    config.json          {"format": "moe-spec-checkpoint/1", "model": {...}, "draft": {...}}
    target.safetensors   the MoE target's weights (bf16)
    draft.safetensors    the EAGLE draft head's weights (bf16)
    tokenizer.json       byte-level BPE
    training.json        how it was trained (seeds, steps, losses, times, corpus)

Loading reads JSON and safetensors only, so it never executes pickled code;
a missing, truncated or mismatched file is a ``ValueError`` that names it.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer
from torch import nn

from moe_spec.engine.config import DraftConfig, ModelConfig, config_from_dict
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.model import MoETransformer
from moe_spec.engine.tokenizer import load_tokenizer

CHECKPOINT_FORMAT = "moe-spec-checkpoint/1"
SHIPPED = Path(__file__).resolve().parent.parent / "assets" / "stdlib-moe"
STORE_DTYPE = torch.bfloat16


@dataclass
class Checkpoint:
    target: MoETransformer
    draft: EagleDraft
    tokenizer: Tokenizer
    path: Path


def save_checkpoint(
    path: Path, target: MoETransformer, draft: EagleDraft, tokenizer: Tokenizer, training: dict
) -> None:
    path.mkdir(parents=True, exist_ok=True)
    config = {
        "format": CHECKPOINT_FORMAT,
        "model": asdict(target.config),
        "draft": asdict(draft.config),
    }
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_weights(target, path / "target.safetensors")
    save_weights(draft, path / "draft.safetensors")
    tokenizer.save(str(path / "tokenizer.json"))
    (path / "training.json").write_text(json.dumps(training, indent=2) + "\n")


def save_weights(module: nn.Module, path: Path) -> None:
    tensors = {k: v.detach().to(STORE_DTYPE).contiguous() for k, v in module.state_dict().items()}
    save_file(tensors, str(path), metadata={"format": CHECKPOINT_FORMAT})


def load_checkpoint(
    path: Path | str = SHIPPED,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
) -> Checkpoint:
    """Load target, draft and tokenizer from ``path`` (default: the shipped model)."""
    path = Path(path)
    if not path.is_dir():
        raise ValueError(
            f"checkpoint {path} is not a directory (expected config.json, "
            f"target.safetensors, draft.safetensors, tokenizer.json)"
        )
    config_file = path / "config.json"
    try:
        config = json.loads(config_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ValueError(f"{config_file} is missing or not valid JSON: {exc}") from exc
    if not isinstance(config, dict) or config.get("format") != CHECKPOINT_FORMAT:
        found = config.get("format") if isinstance(config, dict) else config
        raise ValueError(f"{config_file} has format {found!r}; expected {CHECKPOINT_FORMAT!r}")
    model_config = config_from_dict(ModelConfig, config.get("model"), f"{config_file} 'model'")
    draft_config = config_from_dict(DraftConfig, config.get("draft"), f"{config_file} 'draft'")
    if draft_config.dim != model_config.dim:
        raise ValueError(
            f"{config_file}: draft dim {draft_config.dim} != model dim {model_config.dim}"
        )
    target = MoETransformer(model_config)
    draft = EagleDraft(draft_config)
    load_weights(target, path / "target.safetensors")
    load_weights(draft, path / "draft.safetensors")
    tokenizer = load_tokenizer(path / "tokenizer.json")
    if tokenizer.get_vocab_size() != model_config.vocab_size:
        raise ValueError(
            f"{path / 'tokenizer.json'} has {tokenizer.get_vocab_size()} tokens; "
            f"the model expects vocab_size={model_config.vocab_size}"
        )
    for module in (target, draft):
        module.to(device=device, dtype=dtype).eval().requires_grad_(False)
    return Checkpoint(target, draft, tokenizer, path)


def load_weights(module: nn.Module, file: Path) -> None:
    """Copy ``file``'s tensors into ``module``; names and shapes must match exactly."""
    try:
        tensors = load_file(str(file))
    except (SafetensorError, OSError) as exc:
        raise ValueError(f"{file} is missing or not a readable safetensors file: {exc}") from exc
    expected = module.state_dict()
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ValueError(
            f"{file} does not match the config: missing {missing[:5]}, unexpected {unexpected[:5]}"
        )
    for name, want in expected.items():
        if tensors[name].shape != want.shape:
            raise ValueError(
                f"{file}: tensor {name!r} has shape {tuple(tensors[name].shape)}; "
                f"the config needs {tuple(want.shape)}"
            )
        if want.is_floating_point() and not tensors[name].is_floating_point():
            raise ValueError(
                f"{file}: tensor {name!r} is {tensors[name].dtype}; weights must be floating "
                "point (float32, bfloat16 or float16): quantized checkpoints are not supported"
            )
        if not torch.isfinite(tensors[name].float()).all():
            raise ValueError(f"{file}: tensor {name!r} has NaN or inf values")
    module.load_state_dict({k: v.to(expected[k].dtype) for k, v in tensors.items()})
