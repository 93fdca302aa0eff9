"""Load a transformers MoE target and its draft from local checkpoint directories.

Only local directories with ``config.json`` and ``*.safetensors`` weights are
read (``local_files_only=True``, ``use_safetensors=True``, no remote code):
nothing is downloaded and no pickle is unpickled.

The draft is a transformers causal LM, an EAGLE head exported for SGLang
(``architectures: ["LlamaForCausalLMEagle"]``, :mod:`moe_spec.integration.sglang.eagle_draft`),
or an EAGLE head in the engine's format (``moe_spec.engine.checkpoint``), draft-only:
``config.json`` with ``"format": "moe-spec-checkpoint/1"``, a ``"draft"`` section
(``DraftConfig``) and optionally ``"rope_theta"`` (default 10000), next to
``draft.safetensors``. A full
engine checkpoint also loads as a head (its ``"model"`` section supplies
``rope_theta``; its target weights are not read).
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from moe_spec.engine.checkpoint import CHECKPOINT_FORMAT, load_weights, save_weights
from moe_spec.engine.config import DraftConfig, ModelConfig, config_from_dict
from moe_spec.engine.draft import EagleDraft
from moe_spec.integration.sglang.eagle_draft import (
    is_sglang_draft,
    load_sglang_draft,
    read_sglang_config,
)
from moe_spec.integration.transformers.adapter import router_convention
from moe_spec.integration.transformers.dense_experts import NAME as DENSE
from moe_spec.integration.transformers.dense_experts import register as register_dense
from moe_spec.integration.transformers.eagle import (
    ROPE_THETA,
    EagleHeadDraft,
    EagleHeadError,
    check_head_fits,
)
from moe_spec.integration.transformers.engine import TransformersEngine, check_draft_vocab
from moe_spec.integration.transformers.hot_tokens import HOT_TOKENS_FILE, read_hot_tokens

HEAD_KEYS = ("format", "draft", "rope_theta", "model")


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


def check_device(device: str) -> str:
    """``device`` if torch knows it and this machine has it, checked before any weight is
    read (a wrong one would fail only after a whole target had loaded)."""
    try:
        kind = torch.device(device).type
    except (RuntimeError, TypeError):
        raise ValueError(f"device is {device!r}; allowed: 'cpu', 'cuda' or 'cuda:N'") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device is {device!r}, but torch sees no CUDA GPU here; use 'cpu'")
    if kind not in ("cpu", "cuda"):
        raise ValueError(f"device is {device!r}; allowed: 'cpu', 'cuda' or 'cuda:N'")
    return device


def check_dtype(dtype: torch.dtype | str) -> torch.dtype | str:
    """``dtype`` as transformers takes it: ``"auto"``, a torch dtype, or its name
    (``"bfloat16"``)."""
    if dtype == "auto" or isinstance(dtype, torch.dtype):
        return dtype
    if isinstance(dtype, str) and isinstance(getattr(torch, dtype, None), torch.dtype):
        return getattr(torch, dtype)
    raise ValueError(
        f"dtype is {dtype!r}; allowed: 'auto', a torch.dtype, or a name such as 'bfloat16', "
        "'float16', 'float32'"
    )


def load_config(path: Path):
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(path, local_files_only=True, trust_remote_code=False)
    except ValueError as exc:
        raise ModelPathError(f"cannot read {path / 'config.json'}: {exc}") from exc


EXPERT_DIM_KEYS = ("moe_intermediate_size", "expert_intermediate_size", "intermediate_size")


#: ``experts`` values :func:`load_engine` accepts (transformers' names, and ours: ``dense``).
EXPERTS_CHOICES = ("eager", "grouped_mm", "batched_mm", DENSE)


def experts_implementation(
    config, device: str, dtype: torch.dtype | str, requested: str | None = None
) -> str | None:
    """``requested`` (checked), else ``batched_mm`` where transformers' default ``grouped_mm``
    experts would fail, else None (transformers' default).

    On a CPU, ``grouped_mm`` refuses 16-bit experts whose rows are not a multiple of 16
    bytes ("strides should be multiple of 16 bytes": smollm2-moe's 12-neuron bf16 experts,
    loaded with ``dtype="auto"``); ``batched_mm`` computes the same product without it.
    """
    if requested is not None:
        if requested not in EXPERTS_CHOICES:
            raise ValueError(
                f"experts implementation {requested!r} is not one of {', '.join(EXPERTS_CHOICES)}"
            )
        if requested == DENSE:
            register_dense()
        return requested
    if dtype == "auto":
        dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    if isinstance(dtype, str):
        dtype = getattr(torch, dtype, None)
    if dtype == torch.float64:
        return "eager"  # grouped_mm has no double kernel ("Expected mat_a to be Float32 ...")
    if not str(device).startswith("cpu"):
        return None
    if not isinstance(dtype, torch.dtype) or dtype.itemsize >= 4:
        return None
    dims = [getattr(config, key, None) for key in EXPERT_DIM_KEYS]
    odd = any(isinstance(d, int) and d * dtype.itemsize % 16 for d in dims)
    return "batched_mm" if odd else None


def load_causal_lm(path: Path, device: str, dtype: torch.dtype | str, experts: str | None = None):
    from safetensors import SafetensorError
    from transformers import AutoModelForCausalLM

    experts = experts_implementation(load_config(path), device, dtype, experts)
    try:
        model = AutoModelForCausalLM.from_pretrained(
            path,
            local_files_only=True,
            use_safetensors=True,
            trust_remote_code=False,
            dtype=dtype,
            **({"experts_implementation": experts} if experts else {}),
        )
    except SafetensorError as exc:  # cut short or not safetensors at all
        raise ModelPathError(f"{path}: a weight file is damaged ({exc})") from exc
    return model.to(device).eval().requires_grad_(False)


def read_json(file: Path):
    try:
        return json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise ModelPathError(f"{file} is missing or not valid JSON: {exc}") from exc


def is_eagle_head(path: Path) -> bool:
    """Whether ``path/config.json`` is an engine-format config (rather than a transformers one)."""
    config = read_json(path / "config.json")
    if not isinstance(config, dict):
        return False
    return "draft" in config or str(config.get("format", "")).startswith("moe-spec-checkpoint")


def read_head_config(path: Path) -> tuple[DraftConfig, float]:
    """The head's ``DraftConfig`` and ``rope_theta`` from ``path/config.json``."""
    file = path / "config.json"
    config = read_json(file)
    if config.get("format") != CHECKPOINT_FORMAT:
        raise EagleHeadError(
            f"{file} has format {config.get('format')!r}; an EAGLE head needs {CHECKPOINT_FORMAT!r}"
        )
    unknown = sorted(set(config) - set(HEAD_KEYS))
    if unknown:
        raise EagleHeadError(f"{file}: unknown keys {unknown}; allowed: {list(HEAD_KEYS)}")
    head_config = config_from_dict(DraftConfig, config.get("draft"), f"{file} 'draft'")
    if "model" in config:
        rope_theta = config_from_dict(ModelConfig, config["model"], f"{file} 'model'").rope_theta
    else:
        rope_theta = config.get("rope_theta", ROPE_THETA)
    if isinstance(rope_theta, bool) or not isinstance(rope_theta, int | float) or rope_theta <= 0:
        raise EagleHeadError(f"{file}: rope_theta must be a positive number, got {rope_theta!r}")
    return head_config, float(rope_theta)


def read_eagle_head(path: Path, target_config=None) -> tuple[EagleDraft, float]:
    """An :class:`EagleDraft` (fp32, CPU) and its rope theta from a head directory
    (safetensors; never unpickles); checked against ``target_config`` when given."""
    head_config, rope_theta = read_head_config(path)
    if target_config is not None:
        check_head_fits(head_config, target_config)
    head = EagleDraft(head_config)
    load_weights(head, path / "draft.safetensors")  # names, shapes, finite values
    return head, rope_theta


def save_eagle_head(path: str | Path, head: EagleDraft, rope_theta: float = ROPE_THETA) -> None:
    """Write ``head`` as a draft-only engine checkpoint that ``load_engine`` reads."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    config = {"format": CHECKPOINT_FORMAT, "draft": asdict(head.config), "rope_theta": rope_theta}
    (path / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_weights(head, path / "draft.safetensors")


def load_engine(
    target_path: str,
    draft_path: str,
    *,
    device: str | None = None,
    dtype: torch.dtype | str | None = None,
    max_len: int | None = None,
    experts: str | None = None,
    hot_tokens: bool = True,
) -> TransformersEngine:
    """A :class:`TransformersEngine` from two local checkpoint directories.

    The target must be a supported MoE architecture (checked from its config
    before any weight is read); the tokenizer comes from the target directory.
    ``draft_path`` holds a causal LM or an EAGLE head (the engine's or SGLang's format; see
    the module docstring; its dim must be the target's hidden size, also checked before any
    weight is read). ``device`` defaults to CUDA when available; ``dtype`` to float32 on a
    CPU (bf16 is slow on CPUs without AMX, and near-tied bf16 logits flip greedy choices, so
    repair's output would leave the unbudgeted one within a few tokens) and to the
    checkpoint's (``"auto"``) elsewhere (the head takes the target's). ``experts`` picks the
    target's experts implementation (:data:`EXPERTS_CHOICES`; ``dense`` runs every expert in
    two matmuls, a faster verify on a CPU for small experts,
    :mod:`~moe_spec.integration.transformers.dense_experts`); default: transformers' choice.
    ``hot_tokens``: an engine-format head whose folder holds ``hot_tokens.safetensors`` drafts
    from those ids only (:mod:`~moe_spec.integration.transformers.hot_tokens`); False drafts
    from the whole vocabulary.
    """
    from transformers import AutoTokenizer

    device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if dtype is None:
        dtype = torch.float32 if str(device).startswith("cpu") else "auto"
    dtype = check_dtype(dtype)
    if max_len is not None and (type(max_len) is not int or max_len < 2):
        raise ValueError(f"max_len is {max_len!r}; allowed: None (the model's) or an int >= 2")
    target_dir = check_model_dir(target_path, "target")
    draft_dir = check_model_dir(draft_path, "draft")
    target_config = load_config(target_dir)
    router_convention(target_config)
    head = None
    if is_sglang_draft(read_json(draft_dir / "config.json")):
        check_head_fits(read_sglang_config(draft_dir)[0], target_config)  # before its weights
        head, rope_theta = load_sglang_draft(draft_dir)
    elif is_eagle_head(draft_dir):
        head, rope_theta = read_eagle_head(draft_dir, target_config)
    else:
        check_draft_vocab(load_config(draft_dir), target_config)
    tokenizer = AutoTokenizer.from_pretrained(target_dir, local_files_only=True)
    if not tokenizer("a b", add_special_tokens=False)["input_ids"]:  # none found: an empty one
        raise ModelPathError(
            f"target directory {target_dir} has no usable tokenizer (tokenizer.json, or "
            "vocab.json with merges.txt, or tokenizer.model): text would encode to nothing"
        )
    target = load_causal_lm(target_dir, device, dtype, experts)
    if head is not None:
        hot_file = draft_dir / HOT_TOKENS_FILE
        hot = None
        if hot_tokens and hot_file.is_file():
            hot = read_hot_tokens(hot_file, target.get_output_embeddings().weight.shape[0])
        draft = EagleHeadDraft(head, target, rope_theta, hot)
    else:  # an MoE draft gets the same experts choice as a target would (float64: eager)
        draft = load_causal_lm(draft_dir, device, dtype)
    return TransformersEngine(target, draft, tokenizer, max_len)
