"""Tree attention: SDPA with a mask against a direct softmax, FlashInfer against SDPA on GPU."""

from __future__ import annotations

import pytest
import torch

from moe_spec.engine.attention import attend_sdpa, flashinfer_available


def direct_attention(q_HQC, k_HSC, v_HSC, mask_QS):
    scores = q_HQC @ k_HSC.transpose(-1, -2) / q_HQC.shape[-1] ** 0.5
    scores = scores.masked_fill(~mask_QS, float("-inf"))
    return torch.softmax(scores, dim=-1) @ v_HSC


def tree_case(device="cpu", dtype=torch.float32):
    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, n, 16, generator=g) for n in (5, 12, 12))
    mask = torch.rand(5, 12, generator=g) < 0.5
    mask[:, 0] = True  # every query sees the first key
    return [t.to(device, dtype) for t in (q, k, v)] + [mask.to(device)]


def test_sdpa_with_a_tree_mask_is_masked_softmax_attention():
    q, k, v, mask = tree_case()
    torch.testing.assert_close(attend_sdpa(q, k, v, mask), direct_attention(q, k, v, mask))


def test_flashinfer_matches_sdpa_on_gpu():
    if not torch.cuda.is_available():
        pytest.skip("FlashInfer tree attention needs a CUDA GPU; none here (SDPA is used on CPU)")
    if not flashinfer_available():
        pytest.skip("flashinfer is not installed; the engine falls back to SDPA on this GPU")
    from moe_spec.engine.attention import attend_flashinfer

    q, k, v, mask = tree_case("cuda", torch.float16)
    torch.testing.assert_close(
        attend_flashinfer(q, k, v, mask), attend_sdpa(q, k, v, mask), atol=2e-3, rtol=2e-3
    )
