"""Model configurations: dataclasses validated on construction, stored as JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path


@dataclass(frozen=True)
class ModelConfig:
    """A decoder-only MoE transformer (the target).

    Experts use SGLang's FusedMoE layout: ``w13 [E, 2F, D]``, ``w2 [E, D, F]``.
    """

    vocab_size: int = 4096
    dim: int = 256  # D
    n_layers: int = 4  # L, every layer is MoE
    n_heads: int = 4
    n_experts: int = 32  # E
    top_k: int = 4  # K
    expert_dim: int = 128  # F
    max_seq_len: int = 1024
    rope_theta: float = 10000.0
    norm_eps: float = 1e-5
    renormalize: bool = False  # OLMoE convention: raw softmax weights of the top-k

    def __post_init__(self) -> None:
        positive = (
            "vocab_size",
            "dim",
            "n_layers",
            "n_heads",
            "n_experts",
            "top_k",
            "expert_dim",
            "max_seq_len",
        )
        for name in positive:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(
                f"dim={self.dim} must split into n_heads={self.n_heads} heads of even size"
            )
        if not self.top_k <= self.n_experts:
            raise ValueError(f"top_k={self.top_k} must be <= n_experts={self.n_experts}")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


DRAFT_LAYOUTS = ("moe-spec", "sglang")


@dataclass(frozen=True)
class DraftConfig:
    """An EAGLE-style draft head: one decoder layer over (target feature, next-token embedding).

    ``layout`` (see ``moe_spec.engine.draft``): ``"moe-spec"``, fc over [feature, embedding]
    without bias, a norm before attention and a final norm; ``"sglang"``, SGLang's
    ``LlamaForCausalLMEagle``: fc with bias over [embedding, feature], no norm before
    attention, no final norm.
    """

    dim: int = 256  # must equal the target's D
    n_heads: int = 4
    mlp_dim: int = 512
    norm_eps: float = 1e-5
    layout: str = "moe-spec"

    def __post_init__(self) -> None:
        for name in ("dim", "n_heads", "mlp_dim"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.layout not in DRAFT_LAYOUTS:
            raise ValueError(f"layout must be one of {list(DRAFT_LAYOUTS)}, got {self.layout!r}")
        if self.dim % self.n_heads or (self.dim // self.n_heads) % 2:
            raise ValueError(f"dim={self.dim} must split into n_heads={self.n_heads} even heads")

    @property
    def head_dim(self) -> int:
        return self.dim // self.n_heads


def config_from_dict(cls, data: dict, source: str):
    """Build ``cls`` from ``data``; unknown or bad keys are a ``ValueError`` naming ``source``."""
    if not isinstance(data, dict):
        raise ValueError(f"{source}: expected a JSON object, got {type(data).__name__}")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; allowed: {sorted(known)}")
    try:
        return cls(**data)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{source}: {exc}") from exc


def save_json(obj, path: Path) -> None:
    path.write_text(
        json.dumps(
            asdict(obj) if hasattr(obj, "__dataclass_fields__") else obj, indent=2, sort_keys=True
        )
        + "\n"
    )
