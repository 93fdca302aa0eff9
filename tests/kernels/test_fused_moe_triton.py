"""The Triton fused MoE, run by Triton's interpreter, against the loop-over-experts reference.

bf16 runs with tiles upcast to fp32 after loading (the interpreter's bf16
arithmetic is wrong); fp16 tiles go through ``tl.dot`` as they are.
"""

from __future__ import annotations

import pytest
import torch

from moe_spec.budget import apply_budget
from moe_spec.kernels import KernelBackendError, fused_moe, fused_moe_reference
from moe_spec.kernels.fused_moe_triton import fused_moe_triton
from tests.conftest import make_record
from tests.kernels.moe_cases import (
    assert_close_by_dtype,
    make_layer,
    make_routing,
    make_tokens,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]
D, F = 24, 40  # neither a multiple of the interpreter's 64-wide blocks


def check_against_reference(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK) -> None:
    got_TD = fused_moe_triton(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    want_TD = fused_moe_reference(x_TD.float(), w13_EFD.float(), w2_EDF.float(), ids_TK, weights_TK)
    assert_close_by_dtype(got_TD, want_TD.to(x_TD.dtype))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "E", "K"), [(1, 8, 1), (7, 8, 2), (33, 64, 8)])
def test_matches_reference(T, E, K, dtype):
    w13_EFD, w2_EDF = make_layer(E, D, F, dtype)
    ids_TK, weights_TK = make_routing(T, E, K)
    check_against_reference(make_tokens(T, D, dtype), w13_EFD, w2_EDF, ids_TK, weights_TK)


@pytest.mark.slow
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(
    ("T", "E", "K"), [(1, 64, 8), (7, 64, 1), (7, 64, 8), (33, 8, 1), (33, 8, 2), (33, 64, 2)]
)
def test_matches_reference_more_shapes(T, E, K, dtype):
    w13_EFD, w2_EDF = make_layer(E, D, F, dtype, seed=T + E + K)
    ids_TK, weights_TK = make_routing(T, E, K, seed=T * E * K)
    check_against_reference(make_tokens(T, D, dtype), w13_EFD, w2_EDF, ids_TK, weights_TK)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_all_tokens_on_one_expert_span_several_blocks(dtype):
    """40 pairs on expert 5 fill three 16-row blocks, the last one partly."""
    T, E = 20, 8
    w13_EFD, w2_EDF = make_layer(E, D, F, dtype)
    ids_TK = torch.full((T, 2), 5, dtype=torch.int32)
    weights_TK = torch.rand(T, 2, generator=torch.Generator().manual_seed(3))
    check_against_reference(make_tokens(T, D, dtype), w13_EFD, w2_EDF, ids_TK, weights_TK)


@pytest.mark.parametrize("budget", [8, 12, 64])
def test_budgeted_routing_with_padded_rows(budget):
    """Routing rewritten by the budget (repeated ids, weight-0 slots, padded rows), B = K .. E."""
    T, E, K = 7, 64, 8
    g = torch.Generator().manual_seed(4)
    record = make_record(torch.randn(T, E, generator=g), K, valid_T=torch.arange(T) < 5)
    out = apply_budget(record, budget, mode="truncation")
    assert int(out.topk_ids_TK.unique().numel()) <= budget
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.float32)
    x_TD = make_tokens(T, D, torch.float32)
    check_against_reference(x_TD, w13_EFD, w2_EDF, out.topk_ids_TK, out.topk_weights_TK)


def test_reads_only_experts_that_have_tokens():
    """Experts without tokens hold NaN; a kernel that touched them would return NaN."""
    T, E, K = 7, 64, 2
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.float32)
    ids_TK, weights_TK = make_routing(T, E, K, experts=5)
    w13_EFD[5:] = float("nan")
    w2_EDF[5:] = float("nan")
    x_TD = make_tokens(T, D, torch.float32)
    got_TD = fused_moe_triton(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    assert torch.isfinite(got_TD).all()
    torch.testing.assert_close(
        got_TD, fused_moe_reference(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    )


def test_bad_expert_id_names_the_value():
    w13_EFD, w2_EDF = make_layer(8, D, F, torch.float32)
    ids_TK = torch.tensor([[0, 9]])
    with pytest.raises(ValueError, match=r"expert id 9; ids must be in \[0, E=8\)"):
        fused_moe_triton(
            make_tokens(1, D, torch.float32), w13_EFD, w2_EDF, ids_TK, torch.ones(1, 2)
        )


def small_case():
    w13_EFD, w2_EDF = make_layer(8, D, F, torch.float32)
    ids_TK, weights_TK = make_routing(3, 8, 2)
    return make_tokens(3, D, torch.float32), w13_EFD, w2_EDF, ids_TK, weights_TK


def test_forced_triton_runs_the_triton_path(monkeypatch):
    args = small_case()
    calls = []
    import moe_spec.kernels.fused_moe_triton as module

    def spy(*a):
        calls.append(1)
        return fused_moe_triton(*a)

    monkeypatch.setattr(module, "fused_moe_triton", spy)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    got_TD = fused_moe(*args)
    assert calls == [1]
    torch.testing.assert_close(got_TD, fused_moe_reference(*args))
    monkeypatch.setenv("MOE_SPEC_KERNELS", "torch")
    fused_moe(*args)
    assert calls == [1]


def test_forced_triton_without_cuda_or_interpreter_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    with pytest.raises(KernelBackendError, match="need a CUDA device, or TRITON_INTERPRET=1"):
        fused_moe(*small_case())


def test_unknown_backend_names_the_allowed_ones(monkeypatch):
    monkeypatch.setenv("MOE_SPEC_KERNELS", "cuda")
    with pytest.raises(KernelBackendError, match="MOE_SPEC_KERNELS='cuda'; allowed: triton, torch"):
        fused_moe(*small_case())
