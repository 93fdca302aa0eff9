"""GPU data-sheet figures for the roofline: HBM bandwidth and dense 16-bit tensor peak.

Sources (NVIDIA data sheets; dense figures, i.e. the "with sparsity" numbers halved):
- A100 80GB SXM: "NVIDIA A100 Tensor Core GPU" data sheet (2021): HBM2e 2,039 GB/s;
  BF16/FP16 Tensor Core 312 TFLOPS (624 with sparsity).
- H100 SXM: "NVIDIA H100 Tensor Core GPU" data sheet (2023): HBM3 3.35 TB/s;
  BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.5 dense.
- H200 SXM: "NVIDIA H200 Tensor Core GPU" data sheet (2024): HBM3e 4.8 TB/s;
  BF16/FP16 Tensor Core 1,979 TFLOPS with sparsity -> 989.5 dense.

The ``cpu`` device is not a data sheet: ``moe_spec.costmodel.cpu.measure_cpu_profile``
measures the running machine and returns it as a ``GPU`` with ``overlap=False``.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass


@dataclass(frozen=True)
class GPU:
    name: str
    bandwidth_Bps: float  # HBM bytes per second
    peak_flops: float  # dense bf16/fp16 tensor-core FLOP per second
    source: str
    overlap: bool = True  # memory and compute overlap (GPU); False: they add up (CPU engine)

    def __post_init__(self) -> None:
        for field_name, least in (("bandwidth_Bps", 1e6), ("peak_flops", 1e6)):
            value = getattr(self, field_name)
            real = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if not (real and least <= value < math.inf):
                raise ValueError(
                    f"GPU {self.name!r}: {field_name} is {value!r}; allowed: a finite number "
                    f">= {least:g} (per second: 4.8 TB/s is 4.8e12)"
                )


GPUS: dict[str, GPU] = {
    g.name: g
    for g in (
        GPU("A100-80GB", 2.039e12, 312e12, "A100 80GB SXM data sheet: 2,039 GB/s, 312 TFLOPS"),
        GPU("H100", 3.35e12, 989.5e12, "H100 SXM data sheet: 3.35 TB/s, 1,979/2 TFLOPS"),
        GPU("H200", 4.8e12, 989.5e12, "H200 SXM data sheet: 4.8 TB/s, 1,979/2 TFLOPS"),
    )
}


def get_gpu(name: str) -> GPU:
    """The named GPU (case-insensitive, the full name: ``A100`` alone is refused, as an
    A100-40GB reads 1.55 TB/s, not the 80GB's 2.04); ``ValueError`` lists the known names."""
    if isinstance(name, str):
        for key, gpu in GPUS.items():
            if key.lower() == name.lower():
                return gpu
    raise ValueError(f"unknown GPU {name!r}; known: {', '.join(GPUS)}")
