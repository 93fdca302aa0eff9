"""A roofline for batch-1 speculative decoding on a GPU: draft and verify step times.

A forward is split into parts that run one after another; each part takes
``max(bytes / bandwidth, flops / peak)`` (it is bound by memory or by compute):

- ``dense``: attention projections, shared/dense FFNs, routers and the LM head,
  read once per forward whatever the routing;
- ``experts``: the distinct routed experts of every MoE layer, ``d`` per layer,
  each read once (``n_moe_layers * d * expert_bytes``); FLOPs are ``2 * T * K``
  expert matmuls per token (budgeting changes which experts, not how many);
- ``kv``: the KV cache of ``context`` committed tokens plus the new ones, and the
  attention's score and value FLOPs, ``4 * T * (context + T) * hidden`` per layer (``hidden``
  stands for the query width: a shape whose heads are wider or narrower than ``hidden``,
  such as Qwen3-30B-A3B's 4096 against 2048, is priced at ``hidden``).

A speculative step is ``depth`` draft forwards (``depth - 1`` tree expansions
of ``width`` tokens and the catch-up on the accepted path) plus one verify
forward over ``num_tokens`` tree tokens, plus, in a step that needed a repair,
one more target forward over the ``repair_tokens`` re-run tokens. Throughput
is tokens committed over modeled time; prefill is not counted.

``Overheads`` adds what a roofline omits, per forward (see ``moe_spec.costmodel.model``):
``forward_s`` once, ``layer_s`` per layer (kernel launches, framework dispatch,
synchronisation), ``expert_s`` per (MoE layer, distinct expert) read (one
grouped-GEMM tile schedule, one Python loop turn on CPU), ``select_s`` per MoE
layer of a budgeted forward (the budget selection's kernels), and for a forward over
``T > 1`` tokens ``tree_s + T * token_s`` per layer (what a tree forward pays beyond a
decode step: masked attention, sorting more (token, expert) pairs, per-token kernels the
roofline thinks free; measured on an H200 by the GPU check, where a 32-token verify cost
1.8x a decode, not the roofline's 4x, and a 255-token one 2.6x). All 0 in the pure
roofline; fitted to published or measured points in ``moe_spec.costmodel.fit``.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Iterable
from dataclasses import dataclass

from moe_spec.costmodel.gpus import GPU
from moe_spec.costmodel.shapes import ModelShape

DEFAULT_CONTEXT = 1024  # committed tokens the KV cache holds during decoding


@dataclass(frozen=True)
class Overheads:
    """Fixed times of one forward beside bytes and FLOPs (seconds; all >= 0)."""

    forward_s: float = 0.0  # once per forward
    layer_s: float = 0.0  # per layer of the forward
    expert_s: float = 0.0  # per MoE layer per distinct expert read
    select_s: float = 0.0  # per MoE layer of a budgeted forward: the budget selection
    tree_s: float = 0.0  # per layer of a forward over more than one token
    token_s: float = 0.0  # per layer per token of a forward over more than one token

    def __post_init__(self) -> None:
        for name in ("forward_s", "layer_s", "expert_s", "select_s", "tree_s", "token_s"):
            value = getattr(self, name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and 0 <= value < math.inf):
                raise ValueError(
                    f"Overheads.{name} must be a finite number of seconds >= 0, got {value!r}"
                )

    def seconds(
        self, layers: int, expert_reads: float, selections: int = 0, tokens: int = 1
    ) -> float:
        """``forward_s + layers * (layer_s + [tokens > 1] (tree_s + tokens * token_s))
        + expert_reads * expert_s + selections * select_s``."""
        tree = self.tree_s + tokens * self.token_s if tokens > 1 else 0.0
        per_layer = self.layer_s + tree
        fixed = self.forward_s + layers * per_layer
        return fixed + expert_reads * self.expert_s + selections * self.select_s


NO_OVERHEADS = Overheads()


@dataclass(frozen=True)
class Part:
    name: str
    bytes: float
    flops: float

    def seconds(self, gpu: GPU) -> float:
        """``max`` of memory and compute time when they overlap (GPU), else their sum."""
        memory, compute = self.bytes / gpu.bandwidth_Bps, self.flops / gpu.peak_flops
        return max(memory, compute) if gpu.overlap else memory + compute


def check_counts(**counts: float) -> None:
    """Token, tree and context counts are numbers >= 0 (a ``ValueError`` names the first
    that is not)."""
    for name, value in counts.items():
        if isinstance(value, bool) or not isinstance(value, numbers.Real) or not value >= 0:
            raise ValueError(f"{name}={value!r}; allowed: a number >= 0")


def verify_parts(shape: ModelShape, tokens: int, distinct: float, context: int) -> list[Part]:
    """The parts of a target forward over ``tokens`` tokens reading ``distinct`` experts/layer."""
    if not 0 <= distinct <= shape.n_experts:
        raise ValueError(f"distinct={distinct} experts/layer outside [0, E={shape.n_experts}]")
    check_counts(tokens=tokens, context=context)
    expert_params = shape.expert_bytes / shape.bytes_per_param
    expert_flops_per_token = 2 * shape.n_moe_layers * shape.top_k * expert_params
    dense_params = shape.dense_bytes / shape.bytes_per_param
    attn_flops = 4 * tokens * (context + tokens) * shape.hidden * shape.n_layers
    return [
        Part("dense", shape.dense_bytes, 2 * tokens * dense_params),
        Part(
            "experts",
            shape.n_moe_layers * distinct * shape.expert_bytes,
            tokens * expert_flops_per_token,  # 2 FLOPs per weight
        ),
        Part("kv", (context + tokens) * shape.kv_bytes_per_token, attn_flops),
    ]


def forward_seconds(
    gpu: GPU,
    parts: Iterable[Part],
    layers: int,
    expert_reads: float,
    overheads: Overheads,
    selections: int = 0,
    tokens: int = 1,
) -> float:
    """Roofline time of the parts plus the forward's fixed overheads."""
    fixed = overheads.seconds(layers, expert_reads, selections, tokens)
    return sum(p.seconds(gpu) for p in parts) + fixed


def verify_seconds(
    gpu: GPU,
    shape: ModelShape,
    num_tokens: int,
    distinct: float,
    context: int = DEFAULT_CONTEXT,
    overheads: Overheads = NO_OVERHEADS,
    budgeted: bool | float = False,
) -> float:
    """One target forward over a ``num_tokens`` tree reading ``distinct`` experts per layer.

    ``budgeted``: every MoE layer runs the budget selection (``Overheads.select_s``); a
    number: that share of it (a selection that rests on the device: its launches only).
    """
    parts = verify_parts(shape, num_tokens, distinct, context)
    reads = shape.n_moe_layers * distinct
    selections = shape.n_moe_layers * float(budgeted)
    return forward_seconds(gpu, parts, shape.n_layers, reads, overheads, selections, num_tokens)


def decode_seconds(
    gpu: GPU,
    shape: ModelShape,
    context: int = DEFAULT_CONTEXT,
    overheads: Overheads = NO_OVERHEADS,
) -> float:
    """One autoregressive step: a single token reads its K experts per layer."""
    return verify_seconds(gpu, shape, 1, shape.top_k, context, overheads)


def draft_seconds(
    gpu: GPU,
    shape: ModelShape,
    width: int,
    depth: int,
    context: int = DEFAULT_CONTEXT,
    overheads: Overheads = NO_OVERHEADS,
) -> float:
    """``depth`` EAGLE-3 draft forwards of ``width`` tokens each (one layer, one KV layer)."""
    check_counts(width=width, depth=depth, context=context)
    kv_one_layer = shape.kv_bytes_per_token / shape.n_layers
    part = Part(
        "draft",
        shape.draft_bytes + (context + width) * kv_one_layer,
        2 * width * shape.draft_bytes / shape.bytes_per_param,
    )
    return depth * forward_seconds(gpu, [part], 1, 0.0, overheads)


@dataclass(frozen=True)
class ModeledStep:
    """One speculative step as the cost model sees it (distinct counts in the large model)."""

    committed: int
    num_tokens: int
    width: int
    depth: int
    distinct: float  # experts per MoE layer the verify reads (after any budget)
    repair_tokens: int = 0  # tokens of the unbudgeted repair forward (0: no repair)
    repair_distinct: float = 0.0  # experts per MoE layer that forward reads
    budgeted: bool | float = False  # the verify ran the budget selection in every MoE layer
    # (a number: that share of it, as ``verify_seconds``)
    # a draft forward over the verified tokens after the verify (SGLang's draft extend,
    # run after every step, a depth-0 one included: it keeps the draft's cache current)
    draft_extend: bool = False

    def __post_init__(self) -> None:
        counts = ("committed", "num_tokens", "width", "depth", "distinct", "repair_tokens")
        negative = [f"{n}={getattr(self, n)}" for n in counts if getattr(self, n) < 0]
        if negative or self.repair_distinct < 0 or not 0 <= float(self.budgeted) <= 1:
            raise ValueError(
                f"ModeledStep {', '.join(negative) or self}: counts are >= 0 and budgeted a "
                "bool or a share from 0 to 1"
            )


def speculative_tokens_per_s(
    gpu: GPU,
    shape: ModelShape,
    steps: Iterable[ModeledStep],
    context: int = DEFAULT_CONTEXT,
    overheads: Overheads = NO_OVERHEADS,
) -> float:
    """Modeled throughput: committed tokens over the summed draft (+ draft extend) + verify
    (+ repair) time."""
    tokens = seconds = 0.0
    for s in steps:
        tokens += s.committed
        seconds += draft_seconds(gpu, shape, s.width, s.depth, context, overheads)
        if s.draft_extend:
            seconds += draft_seconds(gpu, shape, s.num_tokens, 1, context, overheads)
        seconds += verify_seconds(
            gpu, shape, s.num_tokens, s.distinct, context, overheads, s.budgeted
        )
        if s.repair_tokens:
            seconds += verify_seconds(
                gpu, shape, s.repair_tokens, s.repair_distinct, context, overheads
            )
    if seconds == 0:
        raise ValueError("no speculative steps to model")
    return tokens / seconds


def autoregressive_tokens_per_s(
    gpu: GPU,
    shape: ModelShape,
    context: int = DEFAULT_CONTEXT,
    overheads: Overheads = NO_OVERHEADS,
) -> float:
    return 1.0 / decode_seconds(gpu, shape, context, overheads)
