"""Write a dense Llama plus a neuron split as a Qwen2-MoE checkpoint (transformers / SGLang).

Shape legend: D hidden size, F dense FFN neurons, S shared neurons, E routed experts,
N = (F - S) / E neurons per routed expert, K top-k.

Per layer, with the neuron permutation ``perm_F`` (shared first, then each expert's):

- ``mlp.shared_expert.{gate,up}_proj = W_{gate,up}[shared]``, ``down_proj = 2 W_down[:, shared]``
  and ``mlp.shared_expert_gate.weight = 0``: Qwen2-MoE multiplies the shared expert by
  ``sigmoid(gate(x)) = 0.5``, so the shared part is exact.
- ``mlp.experts.e.{gate,up}_proj = W_{gate,up}[group_e]``, ``down_proj = K W_down[:, group_e]``:
  with ``norm_topk_prob`` the K weights sum to 1, so equal weights give each chosen expert 1.
- ``mlp.gate.weight = router_scale * router_ED``; q/k/v biases are zeros (Qwen2 has them).
- ``lm_head.weight`` is written out (a copy of the embedding, ``tie_word_embeddings: false``):
  SGLang's ``Qwen2MoeForCausalLM`` ignores ``tie_word_embeddings`` and would leave its LM
  head unloaded (all zeros on CPU: every logit equal, token 0 at every position).

With ``K = E`` and ``router_scale = 0`` every weight is ``1/E`` and the model computes the
dense FFN exactly (up to summation order): the split loses nothing before routing.
"""

from __future__ import annotations

import torch

from moe_spec.models.gguf_weights import LlamaShape


def qwen2_moe_config(
    shape: LlamaShape, shared: int, n_experts: int, top_k: int, max_position_embeddings: int
) -> dict:
    """The ``config.json`` of the MoE (a plain dict, written with sorted keys)."""
    return {
        "architectures": ["Qwen2MoeForCausalLM"],
        "model_type": "qwen2_moe",
        "vocab_size": shape.vocab_size,
        "hidden_size": shape.hidden_size,
        "intermediate_size": shape.intermediate_size,
        "num_hidden_layers": shape.num_hidden_layers,
        "num_attention_heads": shape.num_attention_heads,
        "num_key_value_heads": shape.num_key_value_heads,
        "hidden_act": "silu",
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": shape.rms_norm_eps,
        "rope_theta": shape.rope_theta,
        "rope_parameters": {"rope_type": "default", "rope_theta": shape.rope_theta},
        "tie_word_embeddings": False,  # lm_head.weight is written (see above)
        "use_sliding_window": False,
        "decoder_sparse_step": 1,
        "mlp_only_layers": [],
        "moe_intermediate_size": (shape.intermediate_size - shared) // n_experts,
        "shared_expert_intermediate_size": shared,
        "num_experts": n_experts,
        "num_experts_per_tok": top_k,
        "norm_topk_prob": True,
        "qkv_bias": True,
        "bos_token_id": shape.bos_token_id,
        "eos_token_id": shape.eos_token_id,
        "torch_dtype": "bfloat16",
    }


def moe_state_dict(
    dense: dict[str, torch.Tensor],
    shape: LlamaShape,
    perms_LF: torch.Tensor,
    routers_LED: torch.Tensor,
    shared: int,
    top_k: int,
    router_scale: float,
    dtype: torch.dtype = torch.bfloat16,
) -> dict[str, torch.Tensor]:
    """The Qwen2-MoE tensors (names as Hugging Face / SGLang checkpoints spell them)."""
    L, F = perms_LF.shape
    E = routers_LED.shape[1]
    size = (F - shared) // E
    if shape.num_hidden_layers != L or shape.intermediate_size != F or (F - shared) % E:
        raise ValueError(
            f"split of shape {tuple(perms_LF.shape)} with shared={shared}, E={E} does not fit "
            f"{shape.num_hidden_layers} layers of {shape.intermediate_size} neurons"
        )
    out = {name: w for name, w in dense.items() if ".mlp." not in name}
    if "lm_head.weight" not in out:  # tied in the base model: write the head SGLang loads
        out["lm_head.weight"] = dense["model.embed_tokens.weight"]
    out["lm_head.weight"] = out["lm_head.weight"].clone()  # its own tensor in the file
    for i in range(L):
        p = f"model.layers.{i}."
        wg, wu = dense[p + "mlp.gate_proj.weight"], dense[p + "mlp.up_proj.weight"]
        wd = dense[p + "mlp.down_proj.weight"]
        perm = perms_LF[i]
        if not torch.equal(torch.sort(perm).values, torch.arange(F)):
            raise ValueError(f"layer {i}: the neuron split is not a permutation of 0..{F - 1}")
        ids = perm[:shared]
        out[p + "mlp.shared_expert.gate_proj.weight"] = wg[ids]
        out[p + "mlp.shared_expert.up_proj.weight"] = wu[ids]
        out[p + "mlp.shared_expert.down_proj.weight"] = 2 * wd[:, ids]
        out[p + "mlp.shared_expert_gate.weight"] = torch.zeros(1, shape.hidden_size)
        for e in range(E):
            ids = perm[shared + e * size : shared + (e + 1) * size]
            out[p + f"mlp.experts.{e}.gate_proj.weight"] = wg[ids]
            out[p + f"mlp.experts.{e}.up_proj.weight"] = wu[ids]
            out[p + f"mlp.experts.{e}.down_proj.weight"] = top_k * wd[:, ids]
        out[p + "mlp.gate.weight"] = router_scale * routers_LED[i]
        for proj in ("q", "k", "v"):
            rows = dense[p + f"self_attn.{proj}_proj.weight"].shape[0]
            out[p + f"self_attn.{proj}_proj.bias"] = torch.zeros(rows)
    return {k: v.to(dtype).contiguous() for k, v in sorted(out.items())}
