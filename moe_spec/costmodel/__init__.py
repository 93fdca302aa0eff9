"""A roofline cost model of MoE speculative decoding on named GPUs and model shapes."""

from moe_spec.costmodel.gpus import GPU, GPUS, get_gpu
from moe_spec.costmodel.mapping import coverage_fraction, independent_distinct, map_distinct
from moe_spec.costmodel.roofline import (
    DEFAULT_CONTEXT,
    ModeledStep,
    autoregressive_tokens_per_s,
    decode_seconds,
    draft_seconds,
    speculative_tokens_per_s,
    verify_seconds,
)
from moe_spec.costmodel.shapes import SHAPES, ModelShape, get_shape

__all__ = [
    "DEFAULT_CONTEXT",
    "GPU",
    "GPUS",
    "SHAPES",
    "ModelShape",
    "ModeledStep",
    "autoregressive_tokens_per_s",
    "coverage_fraction",
    "decode_seconds",
    "draft_seconds",
    "get_gpu",
    "get_shape",
    "independent_distinct",
    "map_distinct",
    "speculative_tokens_per_s",
    "verify_seconds",
]
