"""The ``cpu`` device profile: the running machine measured, for the reference engine.

On the GPU the overhead terms are fitted to published points; on this machine they
are measured. A forward of the reference engine on CPU costs

    t = n_ops * dispatch_s + bytes / copy_bandwidth + FLOPs / matmul_rate

- ``dispatch_s``: the time one small aten op takes from Python (dispatcher, allocation,
  the Python call), measured on a loop of tiny element-wise ops. At the shipped model's
  size (30 MB, D=256) this term dominates: a one-token decode is ~600 ops.
- ``n_ops``: how many aten ops the forward issues, a property of the engine's code,
  counted with a ``TorchDispatchMode`` (``count_aten_ops``) and modeled as
  ``a + b * sum over layers of distinct experts`` (the torch MoE path runs a matmul pair,
  with its slicing, per expert that has tokens): the ``layer_s`` and ``expert_s`` terms.
- ``copy_bandwidth``: a copy of a buffer the size of the model's weights (read + write
  bytes / seconds), so the cache level that holds them is what is measured;
  ``matmul_rate``: fp32 FLOP/s of the model's typical small matmul (16 x 256 @ 256 x 256),
  far below a large GEMM's rate on one thread. On CPU memory and compute times add up
  (``GPU.overlap=False``): the engine's small ops do not overlap them.

Only for the reference engine's CPU path; numbers are for the machine they were taken on.
"""

from __future__ import annotations

import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

from moe_spec.costmodel.gpus import GPU
from moe_spec.costmodel.shapes import ModelShape


@dataclass(frozen=True)
class CpuProfile:
    """Measured rates of this machine."""

    name: str
    copy_bandwidth_Bps: float  # copy of a buffer the size of the model's weights
    matmul_flops: float  # fp32 FLOP/s of the model's typical small matmul
    dispatch_s: float  # one tiny aten op called from Python
    threads: int

    def device(self) -> GPU:
        """As a roofline device whose memory and compute times add up (no overlap)."""
        return GPU(
            "cpu", self.copy_bandwidth_Bps, self.matmul_flops, f"measured: {self.name}", False
        )


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def _rate(fn: Callable[[], None], work: float, seconds: float = 0.05) -> float:
    """``work`` per call over the median of 5 timed batches of calls (after a warm-up)."""
    fn()
    start, n = time.perf_counter(), 0
    while time.perf_counter() - start < seconds / 5:
        fn()
        n += 1
    rates = []
    for _ in range(5):
        t = time.perf_counter()
        for _ in range(n):
            fn()
        rates.append(n * work / (time.perf_counter() - t))
    return statistics.median(rates)


def measure_cpu_profile(
    working_set_bytes: int = 64 * 2**20, gemm: tuple[int, int, int] = (16, 256, 256)
) -> CpuProfile:
    """This machine's copy bandwidth, fp32 matmul rate and per-op dispatch time (~0.2 s).

    ``working_set_bytes``: the copy's buffer (use the model's weight bytes: the forward
    reads those, from whichever cache level holds them); ``gemm``: ``(M, K, N)`` of the
    matmul whose rate is measured (use the model's typical one: a few rows times D x D).
    """
    import torch

    src = torch.ones(max(working_set_bytes // 4, 1024))
    dst = torch.empty_like(src)
    M, K, N = gemm
    a, b = torch.randn(M, K), torch.randn(K, N)
    x, y = torch.randn(1, 256), torch.randn(1, 256)
    return CpuProfile(
        cpu_name(),
        _rate(lambda: dst.copy_(src), 2 * src.numel() * 4),
        _rate(lambda: torch.matmul(a, b), 2 * M * K * N),
        1 / _rate(lambda: torch.add(x, y), 1),
        torch.get_num_threads(),
    )


def count_aten_ops(fn: Callable[[], object]) -> int:
    """How many aten ops ``fn()`` dispatches (each counted once, views included)."""
    from torch.utils._python_dispatch import TorchDispatchMode

    class Counter(TorchDispatchMode):
        n = 0

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            Counter.n += 1
            return func(*args, **(kwargs or {}))

    with Counter():
        fn()
    return Counter.n


def engine_shape(config, bytes_per_param: int = 4) -> ModelShape:
    """The reference engine's model as a ``ModelShape`` (fp32 on CPU, tied head, MHA)."""
    D, L = config.dim, config.n_layers
    return ModelShape(
        "stdlib-moe",
        L,
        L,
        D,
        config.n_experts,
        config.top_k,
        config.expert_dim,
        0,
        4 * D * D,
        0,
        config.vocab_size,
        L * 2 * D * bytes_per_param,
        bytes_per_param=bytes_per_param,
    )
