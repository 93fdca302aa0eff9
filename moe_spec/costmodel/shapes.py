"""Model shapes of the large MoE models the paper and its peers evaluate.

Parameter counts are derived from each model's public ``config.json`` on the
Hugging Face hub (values copied here; nothing is downloaded):

- OLMoE-1B-7B-0924 (allenai): 16 layers, hidden 2048, 16 heads x 128 (MHA),
  64 experts top-8 of intermediate 1024, vocab 50304, untied head.
- Qwen3-30B-A3B (Qwen): 48 layers, hidden 2048, 32 query / 4 KV heads x 128,
  128 experts top-8 of intermediate 768, vocab 151936, untied head.
- Mixtral-8x7B-v0.1 (mistralai): 32 layers, hidden 4096, 32 query / 8 KV heads x 128,
  8 experts top-2 of intermediate 14336, vocab 32000, untied head.
- DeepSeek-V2-Lite (deepseek-ai): 27 layers (the first dense, intermediate 10944),
  hidden 2048, MLA (16 heads, q 2048->16x192, kv_lora 512 + rope 64, v 128),
  64 routed experts top-6 plus 2 shared, all of intermediate 1408, vocab 102400.

The EAGLE-3 draft is modeled as one decoder layer of the target's attention
shape with a dense SwiGLU of ``3 * hidden``, the 3D->D feature fusion and a
32000-token draft vocabulary head (an assumption: draft shapes vary by release).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass, fields

BYTES_PER_PARAM = 2  # bf16 / fp16 weights
#: fields of a shape that may be 0 (every other count is at least 1)
MAY_BE_ZERO = ("n_shared_experts", "attention_params", "dense_ffn_params", "kv_bytes_per_token")


@dataclass(frozen=True)
class ModelShape:
    name: str
    n_layers: int  # all layers
    n_moe_layers: int  # layers whose FFN is a routed MoE
    hidden: int  # D
    n_experts: int  # E routed experts per MoE layer
    top_k: int  # K
    expert_dim: int  # F, SwiGLU intermediate of one routed expert
    n_shared_experts: int  # always-active experts per MoE layer (same F)
    attention_params: int  # per layer: q, k, v, o projections (and MLA's low-rank parts)
    dense_ffn_params: int  # all non-MoE FFN parameters (dense layers), summed over layers
    vocab: int
    kv_bytes_per_token: int  # all layers, bf16
    draft_vocab: int = 32000
    bytes_per_param: int = BYTES_PER_PARAM  # 2: bf16/fp16 weights; 4: fp32 (the CPU engine)

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name == "name":
                continue
            least = 0 if f.name in MAY_BE_ZERO else 1
            if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < least:
                raise ValueError(
                    f"model shape {self.name!r}: {f.name} is {value!r}; allowed: an integer "
                    f">= {least}"
                )
        if not self.top_k <= self.n_experts:
            raise ValueError(
                f"model shape {self.name!r}: top_k is {self.top_k}; allowed: 1 to n_experts "
                f"({self.n_experts})"
            )
        if not self.n_moe_layers <= self.n_layers:
            raise ValueError(
                f"model shape {self.name!r}: n_moe_layers is {self.n_moe_layers}; allowed: 1 "
                f"to n_layers ({self.n_layers})"
            )

    @property
    def expert_bytes(self) -> int:
        """Bytes of one routed expert (gate, up and down projections)."""
        return 3 * self.hidden * self.expert_dim * self.bytes_per_param

    @property
    def dense_bytes(self) -> int:
        """Bytes every forward reads whatever the routing: attention, shared/dense FFNs, head."""
        shared = self.n_moe_layers * self.n_shared_experts * 3 * self.hidden * self.expert_dim
        router = self.n_moe_layers * self.hidden * self.n_experts
        params = self.n_layers * self.attention_params + self.dense_ffn_params + shared + router
        return (params + self.vocab * self.hidden) * self.bytes_per_param

    @property
    def active_params_per_token(self) -> int:
        """Parameters one token multiplies with (for FLOPs): dense part plus its K experts."""
        routed = self.n_moe_layers * self.top_k * 3 * self.hidden * self.expert_dim
        return self.dense_bytes // self.bytes_per_param + routed

    @property
    def draft_bytes(self) -> int:
        """One EAGLE-3 draft forward: a decoder layer, the 3D->D fusion and the draft head."""
        D = self.hidden
        params = self.attention_params + 3 * D * 3 * D + 3 * D * D + self.draft_vocab * D
        return params * self.bytes_per_param


def _mha(D: int, q_heads: int, kv_heads: int, head_dim: int) -> int:
    return 2 * D * q_heads * head_dim + 2 * D * kv_heads * head_dim


def _kv(layers: int, kv_heads: int, head_dim: int) -> int:
    return layers * 2 * kv_heads * head_dim * BYTES_PER_PARAM


MLA_LITE_ATTN = 2048 * 16 * 192 + 2048 * (512 + 64) + 512 * 16 * 256 + 16 * 128 * 2048

SHAPES: dict[str, ModelShape] = {
    s.name: s
    for s in (
        ModelShape("OLMoE-1B-7B", 16, 16, 2048, 64, 8, 1024, 0, _mha(2048, 16, 16, 128), 0,
                   50304, _kv(16, 16, 128)),
        ModelShape("Qwen3-30B-A3B", 48, 48, 2048, 128, 8, 768, 0, _mha(2048, 32, 4, 128), 0,
                   151936, _kv(48, 4, 128)),
        ModelShape("Mixtral-8x7B", 32, 32, 4096, 8, 2, 14336, 0, _mha(4096, 32, 8, 128), 0,
                   32000, _kv(32, 8, 128)),
        ModelShape("DeepSeek-V2-Lite", 27, 26, 2048, 64, 6, 1408, 2, MLA_LITE_ATTN,
                   3 * 2048 * 10944, 102400, 27 * (512 + 64) * BYTES_PER_PARAM),
    )
}  # fmt: skip


def get_shape(name: str) -> ModelShape:
    """The named model shape (case-insensitive); ``ValueError`` lists the known names."""
    for key, shape in SHAPES.items():
        if isinstance(name, str) and key.lower() == name.lower():
            return shape
    raise ValueError(f"unknown model shape {name!r}; known: {', '.join(SHAPES)}")
