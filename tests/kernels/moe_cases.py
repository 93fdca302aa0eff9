"""Random MoE layers and routings for the kernel tests.

Shape legend: T tokens, E experts, K top-k, D model dim, F expert dim.
"""

from __future__ import annotations

import torch

TOLERANCES: dict[torch.dtype, tuple[float, float]] = {  # (atol, rtol) against fp32 maths
    torch.float32: (1e-4, 1e-4),
    torch.float16: (2e-3, 2e-2),
    torch.bfloat16: (1.5e-2, 5e-2),
}


def make_layer(
    E: int, D: int, F: int, dtype: torch.dtype, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(w13_EFD [E, 2F, D], w2_EDF [E, D, F])`` scaled so activations stay near 1."""
    g = torch.Generator().manual_seed(seed)
    w13_EFD = torch.randn(E, 2 * F, D, generator=g) / D**0.5
    w2_EDF = torch.randn(E, D, F, generator=g) / F**0.5
    return w13_EFD.to(dtype), w2_EDF.to(dtype)


def make_tokens(T: int, D: int, dtype: torch.dtype, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, D, generator=g).to(dtype)


def make_routing(
    T: int, E: int, K: int, seed: int = 2, experts: int | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Distinct top-k ids per row (drawn from the first ``experts`` ids) and softmax weights."""
    g = torch.Generator().manual_seed(seed)
    pool = E if experts is None else experts
    ids_TK = torch.stack([torch.randperm(pool, generator=g)[:K] for _ in range(T)])
    weights_TK = torch.rand(T, K, generator=g).softmax(-1)
    return ids_TK, weights_TK


def assert_close_by_dtype(got: torch.Tensor, want: torch.Tensor) -> None:
    atol, rtol = TOLERANCES[want.dtype]
    assert got.dtype == want.dtype
    torch.testing.assert_close(got.float(), want.float(), atol=atol, rtol=rtol)
