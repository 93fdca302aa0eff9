"""Distinct-expert counters: device-side sums and maxima, the log line, Prometheus series."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from moe_spec.integration.sglang.compat import parallel_rank
from moe_spec.integration.sglang.metrics import (
    ExpertCounters,
    distinct_read,
    prometheus_gauges,
)
from tests.host_sync import HostSyncRecorder


def test_distinct_read_counts_every_id_but_sglangs_minus_one():
    g = torch.Generator().manual_seed(0)
    for _ in range(20):
        before_TK = torch.randint(0, 16, (9, 3), generator=g, dtype=torch.int32)
        after_TK = torch.randint(0, 4, (9, 3), generator=g, dtype=torch.int32)
        masked_T = torch.rand(9, generator=g) < 0.3
        before_TK[masked_T], after_TK[masked_T] = -1, -1
        want = [
            len({e for row in ids.tolist() for e in row} - {-1}) for ids in (before_TK, after_TK)
        ]
        assert distinct_read(before_TK, after_TK, 16).tolist() == want


def test_counters_add_without_host_syncs_and_report_means_and_maxima(caplog):
    counters = ExpertCounters(num_layers=2, device="cpu", interval_s=30.0)
    before = torch.tensor([[0, 1], [2, 3], [4, 5]])
    after = torch.tensor([[0, 1], [0, 1], [1, 0]])
    with HostSyncRecorder() as recorder:
        counters.add(0, before, after, 8)
        counters.add(0, before[:1], after[:1], 8)
        counters.add(1, before, before, 8)
    assert recorder.syncs == []
    assert not counters.due(now=counters.last_report + 29.0)
    assert counters.due(now=counters.last_report + 30.0)
    with caplog.at_level(logging.INFO, logger="moe_spec.sglang"):
        snap = counters.report()
    assert snap.passes_L == [2, 1]
    assert snap.before_L == [4.0, 6.0] and snap.after_L == [2.0, 6.0]
    assert snap.max_before_L == [6, 6] and snap.max_after_L == [2, 6]
    assert "2 verify passes; distinct experts per layer 5.0 -> 4.0" in caplog.text
    assert "since start 6 -> 6)" in caplog.text
    again = counters.snapshot()
    assert again.passes_L == [0, 0]  # report() cleared the sums ...
    assert again.max_after_L == [2, 6]  # ... not the maxima since start-up
    counters.reset()  # after CUDA-graph capture: capture passes never count
    assert counters.snapshot().max_after_L == [0, 0]
    assert ExpertCounters(1, "cpu", 0.0).due() is False  # interval 0: never


def test_a_layer_never_counted_is_left_out_of_the_mean_and_said_to_be():
    """A layer whose passes all ran unbudgeted by the plugin's refusal counts none: it is
    not a layer of 0 experts in the mean."""
    counters = ExpertCounters(num_layers=2, device="cpu", interval_s=30.0)
    counters.add(0, torch.tensor([[0, 1], [2, 3], [4, 5]]), torch.tensor([[0, 1]] * 3), 8)
    line = counters.snapshot().line()
    assert "distinct experts per layer 6.0 -> 2.0 (mean over 1 of 2 layers;" in line


def test_only_tp_rank_0_logs(caplog):
    counters = ExpertCounters(num_layers=1, device="cpu", interval_s=1.0, tp_rank=3)
    counters.add(0, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 4)
    with caplog.at_level(logging.INFO, logger="moe_spec.sglang"):
        assert counters.report().passes_L == [1]
    assert "verify passes" not in caplog.text


def test_prometheus_series_carry_the_tp_rank():
    """Multiprocess mode would sum the ranks' series; the rank label keeps them apart."""
    from prometheus_client import REGISTRY

    gauges = prometheus_gauges()
    assert prometheus_gauges() is gauges  # one registration per process
    ids = torch.tensor([[0, 1], [2, 3]])
    for rank in (0, 1):
        counters = ExpertCounters(num_layers=1, device="cpu", interval_s=1.0, tp_rank=rank)
        counters.gauges = gauges
        counters.add(0, ids, torch.tensor([[0, 1], [1, 0]]), 4)
        counters.report()
    sample = REGISTRY.get_sample_value
    for rank in ("0", "1"):
        labels = {"layer": "0", "tp_rank": rank, "dp_rank": "0"}
        assert sample("moe_spec_distinct_experts", {**labels, "stage": "before"}) == 4.0
        assert sample("moe_spec_distinct_experts", {**labels, "stage": "after"}) == 2.0
        assert sample("moe_spec_distinct_experts_max", {**labels, "stage": "after"}) == 2.0
        assert sample("moe_spec_verify_passes_total", labels) >= 1.0


# one data-parallel replica's process: its TP rank 0 reports ``mean`` experts before budgeting
REPLICA = textwrap.dedent(
    """
    import sys, torch
    from moe_spec.integration.sglang.metrics import ExpertCounters, prometheus_gauges
    dp_rank, experts = int(sys.argv[1]), int(sys.argv[2])
    counters = ExpertCounters(1, "cpu", 1.0, tp_rank=0, dp_rank=dp_rank)
    counters.gauges = prometheus_gauges()
    counters.add(0, torch.arange(experts)[:, None], torch.zeros(experts, 1, dtype=torch.long), 8)
    counters.report()
    """
)


def test_data_parallel_replicas_keep_their_own_series_in_multiprocess_mode(tmp_path):
    """SGLang serves ``/metrics`` from its multiprocess files: with ``--dp-size 2`` each
    replica's TP rank 0 writes the same ``tp_rank`` series, and a ``mostrecent`` gauge keeps
    one of them; the ``dp_rank`` label keeps both."""
    from prometheus_client import CollectorRegistry
    from prometheus_client.multiprocess import MultiProcessCollector

    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path)}
    for dp_rank, experts in ((0, 3), (1, 5)):
        subprocess.run(
            [sys.executable, "-c", REPLICA, str(dp_rank), str(experts)], env=env, check=True
        )
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    for dp_rank, experts in (("0", 3.0), ("1", 5.0)):
        labels = {"layer": "0", "tp_rank": "0", "dp_rank": dp_rank}
        sample = registry.get_sample_value
        assert sample("moe_spec_distinct_experts", {**labels, "stage": "before"}) == experts
        assert sample("moe_spec_verify_passes_total", labels) == 1.0


def test_parallel_rank_reads_the_runner_then_sglangs_runtime_context():
    from sglang.srt.runtime_context import get_parallel

    class Runner:
        tp_rank = 3

    assert parallel_rank("tp_rank", Runner()) == 3
    assert parallel_rank("dp_rank", Runner()) == 0  # nothing published: no DP
    try:
        override = get_parallel().override(dp_rank=2)
    except ValueError as exc:  # another SGLang's runtime context
        pytest.fail(f"SGLang's runtime context takes no dp_rank override: {exc}")
    with override:
        assert parallel_rank("dp_rank") == 2


def test_one_pass_is_one_verify_pass():
    counters = ExpertCounters(num_layers=1, device="cpu", interval_s=1.0)
    counters.add(0, torch.tensor([[0, 1]]), torch.tensor([[0, 1]]), 4)
    assert counters.snapshot().line().startswith("moe-spec: 1 verify pass; distinct experts")
