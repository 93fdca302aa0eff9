"""Distinct-expert counters: device-side sums, the log line, Prometheus gauges."""

from __future__ import annotations

import logging

import torch

from moe_spec.integration.sglang.metrics import (
    ExpertCounters,
    distinct_experts,
    prometheus_gauges,
)
from tests.host_sync import HostSyncRecorder


def test_distinct_experts_counts_valid_rows_only():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        ids_TK = torch.randint(0, 16, (9, 3), generator=g)
        valid_T = torch.rand(9, generator=g) > 0.3
        want = len({e for row, ok in zip(ids_TK.tolist(), valid_T.tolist(), strict=True)
                    if ok for e in row})  # fmt: skip
        assert int(distinct_experts(ids_TK, valid_T, 16)) == want


def test_counters_add_without_host_syncs_and_report_means(caplog):
    counters = ExpertCounters(num_layers=2, device="cpu", interval_s=30.0)
    before = torch.tensor([[0, 1], [2, 3], [4, 5]])
    after = torch.tensor([[0, 1], [0, 1], [1, 0]])
    valid = torch.ones(3, dtype=torch.bool)
    with HostSyncRecorder() as recorder:
        counters.add(0, before, after, valid, 8)
        counters.add(0, before[:1], after[:1], valid[:1], 8)
        counters.add(1, before, before, valid, 8)
    assert recorder.syncs == []
    assert not counters.due(now=counters.last_report + 29.0)
    assert counters.due(now=counters.last_report + 30.0)
    with caplog.at_level(logging.INFO, logger="moe_spec.sglang"):
        snap = counters.report()
    assert snap.passes_L == [2, 1]
    assert snap.before_L == [4.0, 6.0] and snap.after_L == [2.0, 6.0]
    assert "2 verify passes; distinct experts per layer 5.0 -> 4.0" in caplog.text
    assert counters.snapshot().passes_L == [0, 0]  # report() cleared them
    assert ExpertCounters(1, "cpu", 0.0).due() is False  # interval 0: never


def test_prometheus_gauges_carry_the_snapshot():
    from prometheus_client import REGISTRY

    counters = ExpertCounters(num_layers=1, device="cpu", interval_s=1.0)
    counters.gauges = prometheus_gauges()
    assert prometheus_gauges() is counters.gauges  # one registration per process
    ids = torch.tensor([[0, 1], [2, 3]])
    counters.add(0, ids, torch.tensor([[0, 1], [1, 0]]), torch.ones(2, dtype=torch.bool), 4)
    counters.report()
    sample = REGISTRY.get_sample_value
    assert sample("moe_spec_distinct_experts", {"layer": "0", "stage": "before"}) == 4.0
    assert sample("moe_spec_distinct_experts", {"layer": "0", "stage": "after"}) == 2.0
    assert sample("moe_spec_verify_passes_total", {"layer": "0"}) >= 1.0
