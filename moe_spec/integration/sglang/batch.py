"""Which forward is running: the ForwardBatch SGLang publishes around each model forward.

SGLang enters ``forward_context(ctx, forward_batch=...)`` in ``ModelRunner._forward_raw``
and while capturing CUDA graphs, but the context object does not keep the batch.
:func:`track_forward_batch` wraps that context manager (through SGLang's
``HookRegistry``) and remembers the batch for the MoE layers to read.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch

_batches: list[Any] = []


def current_batch() -> Any | None:
    """The ForwardBatch of the innermost running forward, or None outside one."""
    return _batches[-1] if _batches else None


@contextmanager
def running_batch(forward_batch: Any) -> Iterator[None]:
    """Publish ``forward_batch`` to :func:`current_batch` for the duration of the block."""
    _batches.append(forward_batch)
    try:
        yield
    finally:
        _batches.pop()


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
