"""Attention with a KV cache and an arbitrary (tree) mask.

Shape legend: H heads, Q query tokens, S key positions (cache plus new), C head dim.

CPU: torch's ``scaled_dot_product_attention`` with a boolean mask. CUDA with
FlashInfer installed: FlashInfer's custom-mask prefill kernel, SDPA otherwise.
"""

from __future__ import annotations

import functools
import importlib.util

import torch
import torch.nn.functional as F


@functools.cache
def flashinfer_available() -> bool:
    return importlib.util.find_spec("flashinfer") is not None


def attend(
    q_HQC: torch.Tensor, k_HSC: torch.Tensor, v_HSC: torch.Tensor, mask_QS: torch.Tensor | None
) -> torch.Tensor:
    """Softmax attention; ``mask_QS`` (bool, True = may attend) or causal when None.

    Returns ``[H, Q, C]``.
    """
    if q_HQC.is_cuda and mask_QS is not None and flashinfer_available():
        return attend_flashinfer(q_HQC, k_HSC, v_HSC, mask_QS)
    return attend_sdpa(q_HQC, k_HSC, v_HSC, mask_QS)


def attend_sdpa(q_HQC, k_HSC, v_HSC, mask_QS):
    """torch SDPA: the reference path, and the only one on CPU."""
    if mask_QS is None:
        return F.scaled_dot_product_attention(q_HQC, k_HSC, v_HSC, is_causal=True)
    return F.scaled_dot_product_attention(q_HQC, k_HSC, v_HSC, attn_mask=mask_QS)


def attend_flashinfer(q_HQC, k_HSC, v_HSC, mask_QS):
    """FlashInfer's single-request prefill with a custom mask (tree attention on GPU)."""
    import flashinfer

    out_QHC = flashinfer.single_prefill_with_kv_cache(
        q_HQC.transpose(0, 1).contiguous(),
        k_HSC.transpose(0, 1).contiguous(),
        v_HSC.transpose(0, 1).contiguous(),
        custom_mask=mask_QS.contiguous(),
    )
    return out_QHC.transpose(0, 1)


class KVCache:
    """Keys and values of every layer for one sequence, preallocated to ``max_len``.

    Slots ``[0, length)`` hold committed tokens; a verify pass writes its tree
    tokens after them, and :meth:`commit` moves the accepted path into place.
    """

    def __init__(
        self,
        n_layers: int,
        n_heads: int,
        head_dim: int,
        max_len: int,
        dtype: torch.dtype = torch.float32,
        device: torch.device | str = "cpu",
    ) -> None:
        shape = (n_layers, n_heads, max_len, head_dim)
        self.k_LHSC = torch.zeros(shape, dtype=dtype, device=device)
        self.v_LHSC = torch.zeros(shape, dtype=dtype, device=device)
        self.length = 0
        self.offset = 0  # scratch entries written after `length` by earlier tree steps
        self.max_len = max_len

    def write(
        self, layer: int, k_HQC: torch.Tensor, v_HQC: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Store ``Q`` new keys/values at ``[length + offset, ... + Q)``; return all ``[H, S, C]``.

        ``offset`` places a tree step's tokens after earlier scratch entries.
        """
        start = self.length + self.offset
        stop = start + k_HQC.shape[1]
        if stop > self.max_len:
            raise ValueError(f"KV cache full: {stop} tokens > max_len={self.max_len}")
        self.k_LHSC[layer, :, start:stop] = k_HQC
        self.v_LHSC[layer, :, start:stop] = v_HQC
        return self.k_LHSC[layer, :, :stop], self.v_LHSC[layer, :, :stop]

    def advance(self, n: int) -> None:
        """Commit the ``n`` entries just written after ``length`` (a plain causal step)."""
        self.length += n
        self.offset = 0

    def commit(self, kept_slots: torch.Tensor) -> None:
        """Keep the tokens at scratch slots ``length + kept_slots`` as the next committed ones."""
        n = kept_slots.numel()
        src = self.length + kept_slots.to(self.k_LHSC.device)
        dst = slice(self.length, self.length + n)
        self.k_LHSC[:, :, dst] = self.k_LHSC[:, :, src]
        self.v_LHSC[:, :, dst] = self.v_LHSC[:, :, src]
        self.length += n
        self.offset = 0
