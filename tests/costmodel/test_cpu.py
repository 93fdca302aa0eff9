"""The ``cpu`` profile: op counting, the engine's shape, additive memory + compute time."""

from __future__ import annotations

import math

import pytest
import torch

from moe_spec.costmodel.cpu import count_aten_ops, engine_shape, measure_cpu_profile
from moe_spec.costmodel.gpus import GPU
from moe_spec.costmodel.roofline import Part
from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint


def test_count_aten_ops_counts_each_dispatched_op():
    x, y = torch.ones(4), torch.ones(4)
    assert count_aten_ops(lambda: (x + y) * 2) == 2
    assert count_aten_ops(lambda: torch.matmul(x[None], y[:, None])) >= 3  # views + mm
    assert count_aten_ops(lambda: None) == 0


def test_engine_shape_holds_the_shipped_models_weights():
    ckpt = load_checkpoint(SHIPPED)
    shape = engine_shape(ckpt.target.config)
    params = sum(p.numel() for p in ckpt.target.parameters())
    modeled = (shape.dense_bytes + 4 * 32 * shape.expert_bytes) / 4
    norms = 2 * 4 * 256 + 256  # RMSNorm weights the shape leaves out
    assert modeled == params - norms
    assert shape.bytes_per_param == 4 and shape.expert_bytes == 3 * 256 * 128 * 4


def test_on_the_cpu_memory_and_compute_time_add_up():
    part = Part("p", bytes=2e9, flops=3e9)
    gpu = GPU("g", 1e9, 1e9, "test")
    cpu = GPU("cpu", 1e9, 1e9, "test", overlap=False)
    assert part.seconds(gpu) == pytest.approx(3.0) and part.seconds(cpu) == pytest.approx(5.0)


def test_measured_profile_is_a_device_with_positive_rates():
    profile = measure_cpu_profile(working_set_bytes=1 << 20, gemm=(4, 64, 64))
    for value in (profile.copy_bandwidth_Bps, profile.matmul_flops, profile.dispatch_s):
        assert value > 0 and math.isfinite(value)
    device = profile.device()
    assert device.name == "cpu" and not device.overlap and profile.name in device.source
