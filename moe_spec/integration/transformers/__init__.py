"""Budgeted tree verification on Hugging Face transformers MoE models (see docs/transformers.md).

``load_engine(target_dir, draft_dir)`` returns a :class:`TransformersEngine` with the
reference engine's interface (the draft: a causal LM, or an engine-format EAGLE head);
:func:`budgeted_verify` budgets any forward of a model.
"""

from moe_spec.integration.transformers.adapter import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedModelError,
    VerifyRouting,
    budgeted_verify,
    find_moe_blocks,
)
from moe_spec.integration.transformers.architectures import (
    Architecture,
    RouterConvention,
    architectures,
)
from moe_spec.integration.transformers.eagle import EagleHeadDraft, EagleHeadError
from moe_spec.integration.transformers.engine import TransformersEngine
from moe_spec.integration.transformers.loading import ModelPathError, load_engine, save_eagle_head

__all__ = [
    "SUPPORTED_MODEL_TYPES",
    "Architecture",
    "RouterConvention",
    "architectures",
    "EagleHeadDraft",
    "EagleHeadError",
    "ModelPathError",
    "TransformersEngine",
    "UnsupportedModelError",
    "VerifyRouting",
    "budgeted_verify",
    "find_moe_blocks",
    "load_engine",
    "save_eagle_head",
]
