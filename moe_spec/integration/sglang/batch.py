"""Which forward is running: the ForwardBatch SGLang publishes around each model forward.

SGLang enters ``forward_context(ctx, forward_batch=...)`` in ``ModelRunner._forward_raw``
and while capturing CUDA graphs, but the context object does not keep the batch.
:func:`track_forward_batch` wraps that context manager (through SGLang's
``HookRegistry``) and remembers the batch for the MoE layers to read.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

# Innermost last: (ForwardBatch, what this forward computed once for all its MoE layers).
_forwards: list[tuple[Any, dict]] = []


def current_batch() -> Any | None:
    """The ForwardBatch of the innermost running forward, or None outside one."""
    return _forwards[-1][0] if _forwards else None


def once_per_forward(key: Hashable, compute: Callable[[], Any]) -> Any:
    """``compute()`` the first time ``key`` is asked for in the running forward, then reused.

    Tree depth and the padding mask are the same for every MoE layer of a forward;
    this keeps them from being rebuilt (and captured) once per layer.
    """
    if not _forwards:
        return compute()
    memo = _forwards[-1][1]
    if key not in memo:
        memo[key] = compute()
    return memo[key]


@contextmanager
def running_batch(forward_batch: Any) -> Iterator[None]:
    """Publish ``forward_batch`` to :func:`current_batch` for the duration of the block."""
    _forwards.append((forward_batch, {}))
    try:
        yield
    finally:
        _forwards.pop()


def track_forward_batch(original: Callable, *args: Any, **kwargs: Any):
    """AROUND hook for ``forward_context``: also publish its ``forward_batch``."""
    forward_batch = kwargs.get("forward_batch")
    if forward_batch is None:  # a nested override: keep the enclosing batch
        return original(*args, **kwargs)
    return _tracked(original(*args, **kwargs), forward_batch)


@contextmanager
def _tracked(inner, forward_batch: Any) -> Iterator[None]:
    with inner, running_batch(forward_batch):
        yield


def is_target_verify(forward_batch: Any | None) -> bool:
    """True for a target model's verification forward of a draft tree."""
    if forward_batch is None:
        return False
    mode = getattr(forward_batch, "forward_mode", None)
    return mode is not None and bool(mode.is_target_verify())


def one_row_per_request(forward_batch: Any, num_rows: int) -> bool:
    """Whether a verify batch holds one row per request (``num_rows`` = its batch size): a
    plain decode, the root verified alone. From shapes only (the same in a captured graph
    and its replays: SGLang captures each draft depth's verify apart)."""
    seq_lens = getattr(forward_batch, "seq_lens", None)
    return seq_lens is not None and seq_lens.dim() == 1 and num_rows == seq_lens.shape[0] > 0


def tree_depth_T(forward_batch: Any, num_rows: int) -> torch.Tensor | None:
    """int64 ``[T]``: each verify token's depth below its request's root, or None.

    SGLang lays out a verify batch as ``bs`` requests x ``N`` draft tokens with the
    root first and ``positions = prefix length + depth``, so depth is a token's
    position minus its root's. Static shapes only (CUDA-graph safe). None when the
    MoE rows do not line up with the batch's positions.
    """
    positions = getattr(forward_batch, "positions", None)
    seq_lens = getattr(forward_batch, "seq_lens", None)
    if positions is None or seq_lens is None or positions.dim() != 1:
        return None
    bs = seq_lens.shape[0]
    if positions.shape[0] != num_rows or bs == 0 or num_rows % bs:
        return None
    pos_bN = positions.view(bs, num_rows // bs).long()
    return (pos_bN - pos_bN[:, :1]).clamp(min=0).reshape(num_rows)


def real_rows_T(forward_batch: Any, num_rows: int, device: torch.device) -> torch.Tensor:
    """bool ``[T]``: rows of real requests in a verify batch, derived on the device.

    A CUDA-graph replay pads the batch to a captured size: padded requests get
    ``seq_lens`` = the backend's fill value and positions 0, while a real request's
    root sits at ``positions == seq_lens`` (> 0). SGLang's ``num_token_non_padded``
    (set under expert parallelism / DP-attention only) is applied on top when known.
    Contiguous; static shapes, no host sync.
    """
    rows_T = non_padded_T(num_rows, device)
    positions = getattr(forward_batch, "positions", None)
    seq_lens = getattr(forward_batch, "seq_lens", None)
    bs = 0 if seq_lens is None else seq_lens.shape[0]
    if (
        positions is None
        or positions.dim() != 1
        or positions.shape[0] != num_rows
        or bs == 0
        or num_rows % bs
    ):
        real_T = torch.ones(num_rows, dtype=torch.bool, device=device)
    else:
        root_b = positions.view(bs, num_rows // bs)[:, 0]
        real_b = (root_b == seq_lens) & (seq_lens > 0)
        real_T = real_b[:, None].expand(bs, num_rows // bs).reshape(num_rows)
    real_T = real_T if rows_T is None else real_T & rows_T
    return real_T.contiguous()  # once per forward, for every layer's kernel (one request: a view)


def non_padded_T(num_rows: int, device: torch.device) -> torch.Tensor | None:
    """bool ``[T]``: rows below SGLang's ``num_token_non_padded``, or None when unknown."""
    from sglang.srt.model_executor.forward_context import get_forward_context, has_forward_context

    if not has_forward_context():
        return None
    get_bound = get_forward_context().moe_num_token_non_padded
    bound = get_bound() if get_bound is not None else None
    if bound is None:
        return None
    return torch.arange(num_rows, device=device) < bound
