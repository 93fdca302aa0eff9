"""Block sizes for the Triton fused MoE: a small table per device, keyed by shape.

Shape legend: E experts, D model dim, F expert dim; N = T*K (token, slot) pairs.

No autotuning at import or at run time: a lookup by device name and the mean
number of pairs per expert (the GEMM's M), with defaults for unknown devices.
Entries are starting points from SGLang's fused-MoE configs for small-M decode
shapes; re-tune with ``bench/gpu_check.sh`` on the target GPU.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class MoeBlockConfig:
    block_m: int  # pair rows per program (one expert per block)
    block_n: int  # output columns per program
    block_k: int  # reduction step
    num_warps: int = 4
    num_stages: int = 3


# (max mean pairs per expert, config) rows, first match wins; fp16/bf16 on GPU.
DEFAULT_TABLE: tuple[tuple[int, MoeBlockConfig], ...] = (
    (16, MoeBlockConfig(16, 64, 128, 4, 3)),
    (64, MoeBlockConfig(32, 64, 128, 4, 3)),
    (1 << 30, MoeBlockConfig(64, 128, 64, 8, 3)),
)
DEVICE_TABLES: dict[str, tuple[tuple[int, MoeBlockConfig], ...]] = {
    "H100": (
        (16, MoeBlockConfig(16, 64, 128, 4, 4)),
        (64, MoeBlockConfig(32, 128, 64, 4, 4)),
        (1 << 30, MoeBlockConfig(64, 128, 64, 8, 4)),
    ),
    "H200": (
        (16, MoeBlockConfig(16, 64, 128, 4, 4)),
        (64, MoeBlockConfig(32, 128, 64, 4, 4)),
        (1 << 30, MoeBlockConfig(64, 128, 64, 8, 4)),
    ),
}
# Triton's interpreter runs programs one by one on CPU (a few ms each): few, large blocks.
INTERPRETER_CONFIG = MoeBlockConfig(16, 64, 64, 1, 1)


def moe_block_config(
    num_pairs: int, num_experts: int, dtype: torch.dtype, device: torch.device
) -> MoeBlockConfig:
    """Block sizes for ``num_pairs`` pairs over ``num_experts`` experts on ``device``."""
    if device.type != "cuda":
        return INTERPRETER_CONFIG
    name = torch.cuda.get_device_name(device)
    table = next((t for key, t in DEVICE_TABLES.items() if key in name), DEFAULT_TABLE)
    per_expert = num_pairs / max(min(num_experts, num_pairs), 1)
    config = next(c for limit, c in table if per_expert <= limit)
    if dtype == torch.float32:  # twice the bytes per element: halve the reduction tile
        config = MoeBlockConfig(
            config.block_m, config.block_n, min(config.block_k, 64), config.num_warps, 2
        )
    return config
