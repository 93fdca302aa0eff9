"""The grouped torch fused MoE against the loop-over-experts fp32 reference."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as nnf

from moe_spec.kernels import fused_moe, fused_moe_reference, fused_moe_torch
from tests.kernels.moe_cases import (
    assert_close_by_dtype,
    make_layer,
    make_routing,
    make_tokens,
)

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def test_reference_matches_hand_written_token_loop():
    """The reference itself, against the formula written out token by token."""
    E, D, F, T, K = 4, 8, 6, 5, 2
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.float32)
    x_TD = make_tokens(T, D, torch.float32)
    ids_TK, weights_TK = make_routing(T, E, K)
    want_TD = torch.zeros(T, D)
    for t in range(T):
        for k in range(K):
            e = int(ids_TK[t, k])
            h_F = nnf.silu(w13_EFD[e, :F] @ x_TD[t]) * (w13_EFD[e, F:] @ x_TD[t])
            want_TD[t] += weights_TK[t, k] * (w2_EDF[e] @ h_F)
    torch.testing.assert_close(
        fused_moe_reference(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK), want_TD
    )


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize(("T", "E", "K"), [(1, 8, 1), (7, 8, 2), (33, 64, 8), (7, 64, 8)])
def test_torch_path_matches_reference(T, E, K, dtype):
    D, F = 24, 40
    w13_EFD, w2_EDF = make_layer(E, D, F, dtype)
    x_TD = make_tokens(T, D, dtype)
    ids_TK, weights_TK = make_routing(T, E, K)
    got_TD = fused_moe_torch(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    want_TD = fused_moe_reference(x_TD.float(), w13_EFD.float(), w2_EDF.float(), ids_TK, weights_TK)
    assert_close_by_dtype(got_TD, want_TD.to(dtype))


@pytest.mark.parametrize("ids_dtype", [torch.int32, torch.int64])
def test_all_tokens_on_one_expert_and_repeated_ids(ids_dtype):
    """Every token on expert 3; a repeated id with weight 0 (an empty budget slot) adds nothing."""
    E, D, F, T = 8, 16, 12, 9
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.float32)
    x_TD = make_tokens(T, D, torch.float32)
    ids_TK = torch.full((T, 2), 3, dtype=ids_dtype)
    weights_TK = torch.tensor([[1.0, 0.0]]).expand(T, 2)
    got_TD = fused_moe_torch(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    single_TD = fused_moe_reference(x_TD, w13_EFD, w2_EDF, ids_TK[:, :1], weights_TK[:, :1])
    torch.testing.assert_close(got_TD, single_TD, atol=1e-5, rtol=1e-5)


def test_cpu_dispatch_runs_torch_path(monkeypatch):
    monkeypatch.delenv("MOE_SPEC_KERNELS", raising=False)
    E, D, F, T, K = 8, 16, 12, 7, 2
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.bfloat16)
    x_TD = make_tokens(T, D, torch.bfloat16)
    ids_TK, weights_TK = make_routing(T, E, K)
    got_TD = fused_moe(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    assert torch.equal(got_TD, fused_moe_torch(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK))


def test_reads_only_experts_that_have_tokens():
    """Experts no token routes to may hold NaN: the output never touches them."""
    E, D, F, T, K = 8, 16, 12, 7, 2
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.float32)
    ids_TK, weights_TK = make_routing(T, E, K, experts=4)  # ids 0..3 only
    w13_EFD[4:] = float("nan")
    w2_EDF[4:] = float("nan")
    x_TD = make_tokens(T, D, torch.float32)
    got_TD = fused_moe_torch(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    assert torch.isfinite(got_TD).all()
    torch.testing.assert_close(
        got_TD, fused_moe_reference(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK)
    )


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"x_TD": torch.zeros(3, 16, dtype=torch.int32)}, "x_TD has dtype"),
        ({"w13_EFD": torch.zeros(8, 25, 16)}, r"w13_EFD must be \[E, 2F, D=16\]"),
        ({"w2_EDF": torch.zeros(8, 16, 11)}, r"w2_EDF must be \[E=8, D=16, F=12\]"),
        ({"topk_ids_TK": torch.zeros(4, 2, dtype=torch.long)}, r"topk_ids_TK must be \[T=3, K\]"),
        ({"topk_ids_TK": torch.zeros(3, 2)}, "must be an integer tensor"),
        ({"topk_weights_TK": torch.zeros(3, 1)}, "topk_weights_TK must have"),
        ({"topk_ids_TK": torch.full((3, 2), 8)}, r"expert id 8; ids must be in \[0, E=8\)"),
        ({"topk_ids_TK": torch.tensor([[0, -1], [1, 2], [3, 0]])}, r"expert id -1; ids must be in"),
    ],
)
def test_bad_inputs_name_the_value(change, message):
    args = {
        "x_TD": torch.zeros(3, 16),
        "w13_EFD": torch.zeros(8, 24, 16),
        "w2_EDF": torch.zeros(8, 16, 12),
        "topk_ids_TK": torch.zeros(3, 2, dtype=torch.long),
        "topk_weights_TK": torch.zeros(3, 2),
    } | change
    with pytest.raises(ValueError, match=message):
        fused_moe_torch(**args)


def token_loop_moe(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK):
    """The formula written out token by token, differentiable (the training reference)."""
    F = w13_EFD.shape[1] // 2
    rows = []
    for t in range(x_TD.shape[0]):
        out_D = torch.zeros_like(x_TD[t])
        for k in range(ids_TK.shape[1]):
            e = int(ids_TK[t, k])
            h_F = nnf.silu(w13_EFD[e, :F] @ x_TD[t]) * (w13_EFD[e, F:] @ x_TD[t])
            out_D = out_D + weights_TK[t, k] * (w2_EDF[e] @ h_F)
        rows.append(out_D)
    return torch.stack(rows)


@pytest.mark.parametrize("dispatch", [fused_moe_torch, fused_moe])
def test_gradients_match_the_token_loop(dispatch):
    """``moe-spec train`` differentiates through the fused MoE: every input's gradient, as
    autograd gives it through the token loop (fp32; 2 of 6 experts unused: zero gradient)."""
    E, D, F, T, K = 6, 5, 4, 7, 2
    w13_EFD, w2_EDF = make_layer(E, D, F, torch.float32)
    x_TD = make_tokens(T, D, torch.float32)
    ids_TK, weights_TK = make_routing(T, E, K, experts=4)
    inputs = [t.clone().requires_grad_() for t in (x_TD, w13_EFD, w2_EDF, weights_TK)]
    grad_TD = make_tokens(T, D, torch.float32, seed=3)
    got_TD = dispatch(inputs[0], inputs[1], inputs[2], ids_TK, inputs[3])
    got = torch.autograd.grad(got_TD, inputs, grad_TD)
    again = [t.detach().clone().requires_grad_() for t in inputs]
    want_TD = token_loop_moe(again[0], again[1], again[2], ids_TK, again[3])
    want = torch.autograd.grad(want_TD, again, grad_TD)
    torch.testing.assert_close(got_TD, want_TD)
    for name, g, w in zip(("x", "w13", "w2", "weights"), got, want, strict=True):
        torch.testing.assert_close(g, w, msg=lambda m, name=name: f"d{name}: {m}")
    assert not got[1][4:].any() and not got[2][4:].any()  # unused experts
    with torch.no_grad():  # inference keeps the in-place path, and the same values
        torch.testing.assert_close(dispatch(x_TD, w13_EFD, w2_EDF, ids_TK, weights_TK), want_TD)
