"""Distinct experts per MoE layer in verify passes, before and after the budget.

The counters live on the device and are only added to inside the forward (so
they are captured into CUDA graphs and advance on every replay, with no host
sync). :meth:`ExpertCounters.report` reads and clears them from the host, at
most once per ``interval_s``, after a forward has returned.

Shape legend: T tokens, K top-k, E experts, L MoE layers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger("moe_spec.sglang")


def distinct_experts(ids_TK: torch.Tensor, valid_T: torch.Tensor, num_experts: int) -> torch.Tensor:
    """int64 scalar tensor: distinct experts among the valid rows of ``ids_TK`` (no sync)."""
    E = num_experts
    ids_TK = torch.where(valid_T[:, None], ids_TK.long(), E).clamp(0, E)
    used_E1 = torch.zeros(E + 1, dtype=torch.bool, device=ids_TK.device)
    used_E1 = used_E1.scatter(0, ids_TK.reshape(-1), True)
    return used_E1[:E].sum()


@dataclass
class Snapshot:
    """Counters read at one report: per layer, verify passes and mean distinct experts."""

    passes_L: list[int]
    before_L: list[float]
    after_L: list[float]

    def line(self) -> str:
        """The log line SGLang users see: ``before -> after`` distinct experts per layer."""
        passes = max(self.passes_L, default=0)
        if not passes:
            return "moe-spec: no verify passes since the last report"
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        return (
            f"moe-spec: {passes} verify passes; distinct experts per layer "
            f"{mean(self.before_L):.1f} -> {mean(self.after_L):.1f} (mean over "
            f"{len(self.before_L)} layers; max after {max(self.after_L):.0f})"
        )


class ExpertCounters:
    """Device-side sums of distinct experts per layer, before and after budgeting."""

    def __init__(self, num_layers: int, device: torch.device | str, interval_s: float) -> None:
        self.sums_L3 = torch.zeros(num_layers, 3, dtype=torch.float64, device=device)
        self.interval_s = interval_s
        self.last_report = time.monotonic()
        self.gauges = None

    def add(
        self,
        layer: int,
        before_TK: torch.Tensor,
        after_TK: torch.Tensor,
        valid_T: torch.Tensor,
        num_experts: int,
    ) -> None:
        """Count one verify pass of MoE layer ``layer`` (tensor ops only)."""
        row = torch.stack(
            [
                torch.ones((), dtype=torch.float64, device=before_TK.device),
                distinct_experts(before_TK, valid_T, num_experts).double(),
                distinct_experts(after_TK, valid_T, num_experts).double(),
            ]
        )
        self.sums_L3[layer].add_(row)

    def snapshot(self, reset: bool = True) -> Snapshot:
        """Read the counters (a host sync) and optionally clear them."""
        sums = self.sums_L3.tolist()
        if reset:
            self.sums_L3.zero_()
        passes = [int(n) for n, _, _ in sums]
        return Snapshot(
            passes_L=passes,
            before_L=[b / n if n else 0.0 for n, b, _ in sums],
            after_L=[a / n if n else 0.0 for n, _, a in sums],
        )

    def due(self, now: float | None = None) -> bool:
        """Whether ``interval_s`` has passed since the last report (0 never reports)."""
        now = time.monotonic() if now is None else now
        return self.interval_s > 0 and now - self.last_report >= self.interval_s

    def report(self) -> Snapshot:
        """Log one line, update Prometheus gauges when enabled, clear the counters."""
        self.last_report = time.monotonic()
        snap = self.snapshot()
        if max(snap.passes_L, default=0):
            logger.info(snap.line())
            if self.gauges is not None:
                self.gauges.update(snap)
        return snap


_GAUGES: PrometheusGauges | None = None


def prometheus_gauges() -> PrometheusGauges:
    """The process's gauges (Prometheus refuses to register a metric name twice)."""
    global _GAUGES
    if _GAUGES is None:
        _GAUGES = PrometheusGauges()
    return _GAUGES


class PrometheusGauges:
    """``moe_spec_distinct_experts{layer,stage}`` and ``moe_spec_verify_passes_total``."""

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        self.distinct = Gauge(
            "moe_spec_distinct_experts",
            "Mean distinct experts per verify pass of an MoE layer (stage: before/after budget)",
            ["layer", "stage"],
            multiprocess_mode="mostrecent",
        )
        self.passes = Counter(
            "moe_spec_verify_passes", "Verify passes seen by the moe-spec budget", ["layer"]
        )

    def update(self, snap: Snapshot) -> None:
        for layer, n in enumerate(snap.passes_L):
            if n:
                self.distinct.labels(str(layer), "before").set(snap.before_L[layer])
                self.distinct.labels(str(layer), "after").set(snap.after_L[layer])
                self.passes.labels(str(layer)).inc(n)
