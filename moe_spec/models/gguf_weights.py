"""Read a Llama GGUF file into fp32 tensors under Hugging Face Llama names.

Shape legend: V vocabulary, D hidden size, F FFN size, H query heads, G KV heads.

``gguf.GGUFReader`` maps the file; ``gguf.quants.dequantize`` expands Q4_1 / Q8_0
blocks to fp32. llama.cpp's converter permutes the rows of ``q_proj`` / ``k_proj``
(interleaved rotary halves); :func:`unpermute_rows` undoes it, so the tensors are
the Hugging Face checkpoint's up to quantisation and a transformers
``LlamaForCausalLM`` with the returned config computes the model.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
}


@dataclass(frozen=True)
class LlamaShape:
    """What the GGUF header says about the model."""

    vocab_size: int
    hidden_size: int  # D
    intermediate_size: int  # F
    num_hidden_layers: int
    num_attention_heads: int  # H
    num_key_value_heads: int  # G
    rope_theta: float
    rms_norm_eps: float
    max_position_embeddings: int
    bos_token_id: int
    eos_token_id: int

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads


def field(reader, key: str):
    if key not in reader.fields:
        raise ValueError(f"GGUF file has no {key!r} field; is it a Llama model?")
    return reader.fields[key].contents()


def read_shape(reader) -> LlamaShape:
    arch = field(reader, "general.architecture")
    if arch != "llama":
        raise ValueError(f"GGUF architecture is {arch!r}; only 'llama' is supported")
    return LlamaShape(
        vocab_size=int(field(reader, "llama.vocab_size")),
        hidden_size=int(field(reader, "llama.embedding_length")),
        intermediate_size=int(field(reader, "llama.feed_forward_length")),
        num_hidden_layers=int(field(reader, "llama.block_count")),
        num_attention_heads=int(field(reader, "llama.attention.head_count")),
        num_key_value_heads=int(field(reader, "llama.attention.head_count_kv")),
        rope_theta=float(field(reader, "llama.rope.freq_base")),
        rms_norm_eps=float(np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon"))),
        max_position_embeddings=int(field(reader, "llama.context_length")),
        bos_token_id=int(field(reader, "tokenizer.ggml.bos_token_id")),
        eos_token_id=int(field(reader, "tokenizer.ggml.eos_token_id")),
    )


def unpermute_rows(w_OI: torch.Tensor, n_heads: int) -> torch.Tensor:
    """Undo llama.cpp's per-head rotary row permutation of a q/k projection ``[O, I]``."""
    half = w_OI.shape[0] // n_heads // 2
    return w_OI.reshape(n_heads, half, 2, -1).transpose(1, 2).reshape(w_OI.shape)


def hf_name(gguf_name: str) -> str:
    if gguf_name == "token_embd.weight":
        return "model.embed_tokens.weight"
    if gguf_name == "output_norm.weight":
        return "model.norm.weight"
    if gguf_name == "output.weight":
        return "lm_head.weight"
    parts = gguf_name.split(".")
    if len(parts) != 4 or parts[0] != "blk" or parts[2] not in NAMES:
        raise ValueError(f"unexpected GGUF tensor {gguf_name!r}")
    return f"model.layers.{parts[1]}.{NAMES[parts[2]]}.{parts[3]}"


def read_llama(path: Path) -> tuple[LlamaShape, dict[str, torch.Tensor]]:
    """``(shape, fp32 state dict with Hugging Face Llama names)`` of a Llama GGUF file."""
    import gguf

    try:
        reader = gguf.GGUFReader(str(path))
    except (OSError, ValueError, AssertionError, IndexError, KeyError) as exc:
        raise ValueError(f"{path} is not a readable GGUF file: {exc}") from exc
    shape = read_shape(reader)
    state = {}
    for t in reader.tensors:
        array = gguf.quants.dequantize(t.data, t.tensor_type)
        w = torch.from_numpy(np.array(array, dtype=np.float32))  # a writable copy
        name = hf_name(t.name)
        if ".q_proj." in name:
            w = unpermute_rows(w, shape.num_attention_heads)
        elif ".k_proj." in name:
            w = unpermute_rows(w, shape.num_key_value_heads)
        state[name] = w
    return shape, state


def llama_config(shape: LlamaShape):
    """A transformers ``LlamaConfig`` of the GGUF model (tied embeddings when no output.weight)."""
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=shape.vocab_size,
        hidden_size=shape.hidden_size,
        intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_hidden_layers,
        num_attention_heads=shape.num_attention_heads,
        num_key_value_heads=shape.num_key_value_heads,
        rope_parameters={"rope_type": "default", "rope_theta": shape.rope_theta},
        rms_norm_eps=shape.rms_norm_eps,
        max_position_embeddings=shape.max_position_embeddings,
        bos_token_id=shape.bos_token_id,
        eos_token_id=shape.eos_token_id,
        tie_word_embeddings=True,
    )


def dense_llama(shape: LlamaShape, state: dict[str, torch.Tensor]):
    """transformers' ``LlamaForCausalLM`` holding ``state`` (fp32, eval mode): the dense model."""
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)  # the initialiser runs before the weights are replaced
    model = LlamaForCausalLM(llama_config(shape))
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"lm_head.weight"}:
        raise ValueError(
            f"GGUF tensors do not fit Llama: missing {missing}, unexpected {unexpected}"
        )
    return model.eval().requires_grad_(False)


def gguf_tokenizer(path: Path):
    """The GGUF's tokenizer as a transformers fast tokenizer."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
