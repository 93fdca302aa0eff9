"""A cost model of MoE speculative decoding: roofline plus fitted overheads, per device."""

from moe_spec.costmodel.gpus import GPU, GPUS, get_gpu
from moe_spec.costmodel.mapping import coverage_fraction, independent_distinct, map_distinct
from moe_spec.costmodel.model import COST_MODELS, CostModel, get_cost_model
from moe_spec.costmodel.roofline import (
    DEFAULT_CONTEXT,
    NO_OVERHEADS,
    ModeledStep,
    Overheads,
    autoregressive_tokens_per_s,
    decode_seconds,
    draft_seconds,
    speculative_tokens_per_s,
    verify_seconds,
)
from moe_spec.costmodel.shapes import SHAPES, ModelShape, get_shape

__all__ = [
    "COST_MODELS",
    "DEFAULT_CONTEXT",
    "GPU",
    "GPUS",
    "NO_OVERHEADS",
    "SHAPES",
    "CostModel",
    "ModelShape",
    "ModeledStep",
    "Overheads",
    "autoregressive_tokens_per_s",
    "coverage_fraction",
    "decode_seconds",
    "draft_seconds",
    "get_cost_model",
    "get_gpu",
    "get_shape",
    "independent_distinct",
    "map_distinct",
    "speculative_tokens_per_s",
    "verify_seconds",
]
