"""Tiny MoE configurations of transformers' own config classes, shared by the tests.

The transformers integration tests build float64 models from them; the live SGLang
tests (``tests/integration/sglang/live``) save bfloat16 checkpoints of the same
shapes for a real server. transformers is imported only when a config is built:
its config modules define Triton kernels, and the kernel tests must choose
Triton's interpreter before that happens.
"""

from __future__ import annotations

VOCAB = 96
COMMON = dict(
    vocab_size=VOCAB,
    hidden_size=32,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=256,
    initializer_range=0.2,
    bos_token_id=1,
    eos_token_id=None,
    pad_token_id=0,
)


ARCH_CONFIGS = {
    "qwen3_moe": (
        "Qwen3MoeConfig",
        dict(head_dim=8, intermediate_size=32, moe_intermediate_size=16, num_experts=8,
             num_experts_per_tok=2, norm_topk_prob=True),
    ),
    "olmoe": (
        "OlmoeConfig",
        dict(intermediate_size=16, num_experts=16, num_experts_per_tok=4, norm_topk_prob=False),
    ),
    "mixtral": (  # every layer slides over 8 tokens: one sliding tree mask
        "MixtralConfig",
        dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2, sliding_window=8),
    ),
    "qwen2_moe": (  # a shared expert; layer 0 slides over 8 tokens, layer 1 does not
        "Qwen2MoeConfig",
        dict(intermediate_size=32, moe_intermediate_size=16, shared_expert_intermediate_size=16,
             num_experts=8, num_experts_per_tok=2, norm_topk_prob=False,
             use_sliding_window=True, sliding_window=8, max_window_layers=2),
    ),
    "deepseek_v2": (  # DeepSeek-V2-Lite style: MLA, greedy top-k, scaled weights, shared expert
        "DeepseekV2Config",
        dict(num_key_value_heads=4, intermediate_size=32, moe_intermediate_size=16,
             n_routed_experts=8, num_experts_per_tok=2, n_shared_experts=1,
             first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
             qk_nope_head_dim=4, v_head_dim=8, topk_method="greedy", n_group=1, topk_group=1,
             routed_scaling_factor=2.0),
    ),
    "gpt_oss": (  # router bias, attention sinks, sliding (8) and full layers, eager attention
        "GptOssConfig",
        dict(head_dim=8, intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
             sliding_window=8),
    ),
    "glm4_moe": (  # sigmoid gates with a selection bias, scaled weights; a dense first layer
        "Glm4MoeConfig",
        dict(head_dim=8, intermediate_size=32, moe_intermediate_size=16, n_routed_experts=16,
             num_experts_per_tok=2, n_shared_experts=1, first_k_dense_replace=1,
             num_hidden_layers=3,
             routed_scaling_factor=2.5, norm_topk_prob=True, num_mtp_layers=0),
    ),
    "deepseek_v3": (  # MLA, sigmoid gates with a selection bias, one expert group
        "DeepseekV3Config",
        dict(num_key_value_heads=4, intermediate_size=32, moe_intermediate_size=16,
             n_routed_experts=16, num_experts_per_tok=2, n_shared_experts=1,
             first_k_dense_replace=0, kv_lora_rank=16, q_lora_rank=None, qk_rope_head_dim=4,
             qk_nope_head_dim=4, v_head_dim=8, n_group=1, topk_group=1,
             routed_scaling_factor=2.5, norm_topk_prob=True),
    ),
    "granitemoe": (  # the router returns (ids, weights, logits); muP-style multipliers
        "GraniteMoeConfig",
        dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
             embedding_multiplier=2.0, logits_scaling=2.0, residual_multiplier=0.5,
             attention_multiplier=0.25),
    ),
    "granitemoeshared": (  # GraniteMoE with a shared MLP beside the experts
        "GraniteMoeSharedConfig",
        dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
             shared_intermediate_size=16),
    ),
    "phimoe": (  # sparsemixer top-2 weights (each pick's softmax over the logits near it)
        "PhimoeConfig",
        dict(intermediate_size=16, num_local_experts=8, num_experts_per_tok=2,
             router_jitter_noise=0.01),
    ),
}  # fmt: skip


def tiny_config(model_type: str, **overrides):
    """A 2-layer config of ``model_type`` with 8 or 16 experts (``overrides`` win)."""
    import transformers

    class_name, kwargs = ARCH_CONFIGS[model_type]
    return getattr(transformers, class_name)(**{**COMMON, **kwargs, **overrides})
