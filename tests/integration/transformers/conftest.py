"""Tiny random-initialised transformers models (built from transformers' own config classes).

transformers' config and model classes import Triton; they are looked up only when a
test runs, because collecting them earlier would switch Triton on before
``tests/kernels/conftest.py`` can select its interpreter (a whole-suite run breaks).

float64 and a wide initialiser keep routing and argmax decisions far from ties,
so a tree forward and a plain forward agree on every top-k and every token.
"""

from __future__ import annotations

import pytest
import torch
import transformers
from torch.overrides import TorchFunctionMode

from moe_spec.engine.tree import DraftTree

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


def tiny_config(model_type: str):
    """A 2-layer config of ``model_type`` with 8 or 16 experts."""
    class_name, kwargs = ARCH_CONFIGS[model_type]
    return getattr(transformers, class_name)(**{**COMMON, **kwargs})


REQUIRED = ("qwen3_moe", "olmoe", "mixtral")
EXTRA = (
    "qwen2_moe", "deepseek_v2", "gpt_oss", "glm4_moe", "deepseek_v3", "granitemoe",
    "granitemoeshared", "phimoe",
)  # fmt: skip


def build(config, seed: int = 0):
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, experts_implementation="eager")
    for module in model.modules():  # a selection bias that matters (initialised to zero)
        if hasattr(module, "e_score_correction_bias"):
            module.e_score_correction_bias.copy_(torch.randn(module.num_experts) * 0.3)
    return model.to(torch.float64).eval().requires_grad_(False)


@pytest.fixture(scope="session", params=REQUIRED + EXTRA)
def moe_model(request):
    return build(tiny_config(request.param))


@pytest.fixture(scope="session")
def dense_draft():
    config = transformers.Qwen3Config(**COMMON, head_dim=8, intermediate_size=32)
    return build(config, seed=1)


def hand_tree(tokens: list[int], parents: list[int]) -> DraftTree:
    """A DraftTree from tokens and parent indices (topological order)."""
    depth = [0]
    for p in parents[1:]:
        depth.append(depth[p] + 1)
    return DraftTree(
        tokens_N=torch.tensor(tokens),
        parent_N=torch.tensor(parents),
        depth_N=torch.tensor(depth),
        logprob_N=-torch.arange(len(tokens), dtype=torch.float32),
    )


class ExpertAccessCounter(TorchFunctionMode):
    """Which expert weight slices each experts module actually reads (an independent count).

    Any torch call that receives a slice ``param[e]`` of a registered experts
    parameter (``gate_up_proj``, the first weight every expert computation reads)
    records expert ``e`` for that layer, in the current ``window``.
    """

    def __init__(self, model) -> None:
        super().__init__()
        self.params = {}
        experts = [m for m in model.modules() if type(m).__name__.endswith("Experts")]
        for layer, module in enumerate(experts):
            self.params[module.gate_up_proj.untyped_storage().data_ptr()] = (layer, module)
        self.window = 0
        self.seen: dict[tuple[int, int], set[int]] = {}

    def __torch_function__(self, func, types, args=(), kwargs=None):
        for arg in list(args) + list((kwargs or {}).values()):
            if isinstance(arg, torch.Tensor) and arg.dim() == 2:
                hit = self.params.get(arg.untyped_storage().data_ptr())
                if hit is not None:
                    layer, module = hit
                    expert = arg.storage_offset() // module.gate_up_proj.stride(0)
                    self.seen.setdefault((self.window, layer), set()).add(expert)
        return func(*args, **(kwargs or {}))

    def distinct(self, window: int, layers: int) -> list[int]:
        return [len(self.seen.get((window, layer), ())) for layer in range(layers)]


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matmuls gain nothing from threads; on a shared 2-core box they lose a lot."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
