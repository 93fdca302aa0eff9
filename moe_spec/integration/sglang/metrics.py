"""Distinct experts per MoE layer in verify passes, before and after the budget.

The counters live on the device and are only added to inside the forward (so
they are captured into CUDA graphs and advance on every replay, with no host
sync); one update is about a dozen small aten ops per MoE layer
(``tests/integration/sglang/test_hook_cost.py`` counts them) and
``MOE_SPEC_COUNTERS=0`` turns them off. :meth:`ExpertCounters.report` reads and
clears the per-interval sums from the host, at most once per ``interval_s``,
after a forward has returned; the per-pass maxima are kept since start-up (or
since :meth:`ExpertCounters.reset`, called after CUDA-graph capture).

"Distinct experts" counts what the MoE kernel reads: every row's ids that are
not -1 (SGLang's own mask), padded rows included.

Shape legend: T tokens, K top-k, E experts, L MoE layers.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import torch

logger = logging.getLogger("moe_spec.sglang")


def distinct_read(before_TK: torch.Tensor, after_TK: torch.Tensor, num_experts: int):
    """int64 ``[2]``: distinct experts among the ids >= 0 of ``before_TK`` and ``after_TK``.

    Tensor ops only (no host sync); ids of -1 (rows SGLang masked) count for nothing.
    """
    ids_2R = (torch.stack((before_TK, after_TK)).view(2, -1) + 1).long()  # -1 -> slot 0
    used_2E = torch.zeros((2, num_experts + 1), dtype=torch.bool, device=ids_2R.device)
    return used_2E.scatter_(1, ids_2R, True)[:, 1:].sum(1)


@dataclass
class Snapshot:
    """Counters read at one report, per MoE layer."""

    passes_L: list[int]
    before_L: list[float]  # mean distinct experts per verify pass since the last report
    after_L: list[float]
    max_before_L: list[int]  # most distinct experts in one verify pass, since start-up
    max_after_L: list[int]

    def line(self) -> str:
        """The log line SGLang users see: ``before -> after`` distinct experts per layer."""
        passes = max(self.passes_L, default=0)
        if not passes:
            return "moe-spec: no verify passes since the last report"
        counted = [i for i, n in enumerate(self.passes_L) if n]  # a layer left out counts none
        mean = lambda xs: sum(xs[i] for i in counted) / len(counted)  # noqa: E731
        of = f"{len(counted)}" + (f" of {len(self.passes_L)}" if 0 in self.passes_L else "")
        return (
            f"moe-spec: {passes} verify pass{'' if passes == 1 else 'es'}; distinct experts per "
            f"layer "
            f"{mean(self.before_L):.1f} -> {mean(self.after_L):.1f} (mean over "
            f"{of} layers; most in one pass of one layer since start "
            f"{max(self.max_before_L)} -> {max(self.max_after_L)})"
        )


class ExpertCounters:
    """Device-side sums and maxima of distinct experts per layer, before and after budgeting."""

    def __init__(
        self,
        num_layers: int,
        device: torch.device | str,
        interval_s: float,
        tp_rank: int = 0,
        dp_rank: int = 0,
    ) -> None:
        self.sums_L3 = torch.zeros(num_layers, 3, dtype=torch.int64, device=device)
        self.max_L2 = torch.zeros(num_layers, 2, dtype=torch.int64, device=device)
        self.one_1 = torch.ones(1, dtype=torch.int64, device=device)
        self.interval_s = interval_s
        self.tp_rank, self.dp_rank = tp_rank, dp_rank
        self.last_report = time.monotonic()
        self.gauges: PrometheusGauges | None = None

    def add(self, layer: int, before_TK: torch.Tensor, after_TK: torch.Tensor, E: int) -> None:
        """Count one verify pass of MoE layer ``layer`` (tensor ops only)."""
        counts_2 = distinct_read(before_TK, after_TK, E)
        self.sums_L3[layer].add_(torch.cat((self.one_1, counts_2)))
        most_2 = self.max_L2[layer]
        torch.maximum(most_2, counts_2, out=most_2)

    def reset(self) -> None:
        """Forget everything counted so far (warm-up and CUDA-graph capture passes)."""
        self.sums_L3.zero_()
        self.max_L2.zero_()
        self.last_report = time.monotonic()

    def snapshot(self, reset: bool = True) -> Snapshot:
        """Read the counters (a host sync); clear the sums (not the maxima) when ``reset``."""
        sums, most = self.sums_L3.tolist(), self.max_L2.tolist()
        if reset:
            self.sums_L3.zero_()
        return Snapshot(
            passes_L=[n for n, _, _ in sums],
            before_L=[b / n if n else 0.0 for n, b, _ in sums],
            after_L=[a / n if n else 0.0 for n, _, a in sums],
            max_before_L=[b for b, _ in most],
            max_after_L=[a for _, a in most],
        )

    def due(self, now: float | None = None) -> bool:
        """Whether ``interval_s`` has passed since the last report (0 never reports)."""
        now = time.monotonic() if now is None else now
        return self.interval_s > 0 and now - self.last_report >= self.interval_s

    def report(self) -> Snapshot:
        """Log one line (rank 0), update Prometheus when enabled, clear the sums."""
        self.last_report = time.monotonic()
        snap = self.snapshot()
        if max(snap.passes_L, default=0):
            if self.tp_rank == 0:
                logger.info(snap.line())
            if self.gauges is not None:
                self.gauges.update(snap, self.tp_rank, self.dp_rank)
        return snap


_GAUGES: PrometheusGauges | None = None


def prometheus_gauges() -> PrometheusGauges:
    """The process's gauges (Prometheus refuses to register a metric name twice)."""
    global _GAUGES
    if _GAUGES is None:
        _GAUGES = PrometheusGauges()
    return _GAUGES


class PrometheusGauges:
    """``moe_spec_distinct_experts{,_max}{layer,stage,tp_rank,dp_rank}``,
    ``moe_spec_verify_passes{layer,tp_rank,dp_rank}``.

    Every series carries the ranks, as SGLang's own series do: in its Prometheus
    multiprocess mode the processes' counters would otherwise be summed (each TP rank sees
    every verify pass) and their gauges overwrite each other (each data-parallel replica
    serves its own requests, with its own TP rank 0).
    """

    def __init__(self) -> None:
        from prometheus_client import Counter, Gauge

        labels = ["layer", "stage", "tp_rank", "dp_rank"]
        self.distinct = Gauge(
            "moe_spec_distinct_experts",
            "Mean distinct experts read per verify pass of an MoE layer since the last report "
            "(stage: before/after the budget)",
            labels,
            multiprocess_mode="mostrecent",
        )
        self.most = Gauge(
            "moe_spec_distinct_experts_max",
            "Most distinct experts one verify pass of an MoE layer read since start-up",
            labels,
            multiprocess_mode="mostrecent",
        )
        self.passes = Counter(
            "moe_spec_verify_passes",
            "Verify passes seen by the moe-spec budget",
            ["layer", "tp_rank", "dp_rank"],
        )

    def update(self, snap: Snapshot, tp_rank: int = 0, dp_rank: int = 0) -> None:
        rank = str(tp_rank), str(dp_rank)
        for layer, n in enumerate(snap.passes_L):
            if not n:
                continue
            where = str(layer)
            self.distinct.labels(where, "before", *rank).set(snap.before_L[layer])
            self.distinct.labels(where, "after", *rank).set(snap.after_L[layer])
            self.most.labels(where, "before", *rank).set(snap.max_before_L[layer])
            self.most.labels(where, "after", *rank).set(snap.max_after_L[layer])
            self.passes.labels(where, *rank).inc(n)
