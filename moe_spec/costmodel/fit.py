"""Fitting the cost model's overhead terms to published points, and leave-one-out errors.

The free terms are ``Overheads`` (``forward_s``, ``layer_s``, ``expert_s``, all >= 0);
bandwidth and peak stay the data sheet's. The loss is the sum of squared log errors
``log(predicted / published)`` over the points, so a ratio 10% high and one 10% low
weigh alike and the expert slope (seconds) and the ratios (unitless) mix. The
minimiser is a projected Levenberg-Marquardt on microseconds, started from a small
grid: three parameters and a handful of points need no more.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

from moe_spec.costmodel.gpus import get_gpu
from moe_spec.costmodel.published import PublishedPoint
from moe_spec.costmodel.roofline import (
    DEFAULT_CONTEXT,
    NO_OVERHEADS,
    Overheads,
    decode_seconds,
    draft_seconds,
    verify_seconds,
)
from moe_spec.costmodel.shapes import get_shape

FREE = ("forward_s", "layer_s", "expert_s")
# Measured forwards say which ran the selection and span decode and tree steps. The
# per-expert term stays 0: the GPU check's kernel table measured the fused MoE's slope at
# 2.0-2.1 us per expert, what the roofline already charges (bytes / HBM bandwidth), and
# freeing it lets it trade off against the others (14 points; BENCHMARKS.md).
FREE_MEASURED = ("forward_s", "layer_s", "select_s", "tree_s", "token_s")
TERMS = (*FREE, "select_s", "tree_s", "token_s")
P = TypeVar("P")


def predict(point: PublishedPoint, overheads: Overheads = NO_OVERHEADS) -> float:
    """What the cost model says for ``point``'s configuration (same unit as ``point.value``)."""
    gpu, shape = get_gpu(point.gpu), get_shape(point.shape)

    def verify(distinct: float, budgeted: bool = False) -> float:
        return verify_seconds(
            gpu, shape, point.num_tokens, distinct, DEFAULT_CONTEXT, overheads, budgeted
        )

    if point.kind == "forward_seconds":
        return verify(point.distinct, budgeted=point.budget is not None)
    if point.kind == "expert_slope":
        return verify(point.distinct + 1) - verify(point.distinct)
    draft = draft_seconds(gpu, shape, point.width, point.depth, DEFAULT_CONTEXT, overheads)
    full = draft + verify(point.distinct)
    if point.kind == "budget_gain":
        budgeted = draft + verify(min(point.budget, point.distinct), budgeted=True)
        return full / budgeted * point.acceptance_ratio
    return point.acceptance * decode_seconds(gpu, shape, DEFAULT_CONTEXT, overheads) / full


def log_errors(points: Sequence[PublishedPoint], overheads: Overheads) -> np.ndarray:
    return np.array([math.log(predict(p, overheads) / p.value) for p in points])


def _overheads(x_us: np.ndarray, free: Sequence[str]) -> Overheads:
    terms = zip(free, x_us, strict=True)
    return Overheads(**{name: max(float(v), 0.0) * 1e-6 for name, v in terms})


def fit_overheads(
    points: Sequence[PublishedPoint], free: Sequence[str] = FREE, iters: int = 200
) -> Overheads:
    """The ``Overheads`` (only the ``free`` terms non-zero) minimising the squared log errors."""
    unknown = set(free) - set(TERMS)
    if unknown or not free:
        allowed = ", ".join(TERMS)
        raise ValueError(f"free terms {sorted(unknown) or free}; allowed: {allowed}")
    if not points:
        raise ValueError("no points to fit")
    starts = {
        "forward_s": (0.0, 100.0),
        "layer_s": (0.0, 30.0, 200.0),
        "expert_s": (0.0, 1.0),
        "select_s": (0.0, 10.0),
        "tree_s": (0.0, 100.0),
        "token_s": (0.0, 1.0),
    }
    best_x, best_loss = None, math.inf
    for x0 in itertools.product(*(starts[name] for name in free)):
        x, loss = _levenberg_marquardt(points, free, np.array(x0, dtype=float), iters)
        if loss < best_loss:
            best_x, best_loss = x, loss
    return _overheads(best_x, free)


def _levenberg_marquardt(points, free, x: np.ndarray, iters: int) -> tuple[np.ndarray, float]:
    """Projected LM on ``x`` (microseconds, >= 0): the minimiser and its loss."""

    def residuals(x_us):
        return log_errors(points, _overheads(x_us, free))

    r, damping = residuals(x), 1e-3
    for _ in range(iters):
        J = np.empty((len(r), len(x)))  # forward differences, 1e-3 us steps
        for j in range(len(x)):
            step = np.zeros_like(x)
            step[j] = 1e-3
            J[:, j] = (residuals(x + step) - r) / 1e-3
        A = J.T @ J
        g = J.T @ r
        new_x = np.maximum(x - np.linalg.solve(A + damping * np.diag(np.diag(A) + 1e-12), g), 0)
        new_r = residuals(new_x)
        if new_r @ new_r < r @ r:
            if r @ r - new_r @ new_r < 1e-14:
                x, r = new_x, new_r
                break
            x, r, damping = new_x, new_r, damping / 3
        else:
            damping *= 4
            if damping > 1e8:
                break
    return x, float(r @ r)


@dataclass(frozen=True)
class HeldOut:
    """One point predicted by the model fitted without it."""

    point: object
    predicted: float
    fitted: object  # what the fit without the point returned

    @property
    def error(self) -> float:
        """``predicted / published - 1``."""
        return self.predicted / self.point.value - 1


def leave_one_out(
    points: Sequence[P],
    fit: Callable[[list[P]], object],
    predict_fn: Callable[[P, object], float],
) -> list[HeldOut]:
    """For each point: fit on the others, predict it (points need a ``value``)."""
    if len(points) < 2:
        raise ValueError(f"leave-one-out needs at least 2 points, got {len(points)}")
    out = []
    for i, point in enumerate(points):
        fitted = fit([p for j, p in enumerate(points) if j != i])
        out.append(HeldOut(point, predict_fn(point, fitted), fitted))
    return out
