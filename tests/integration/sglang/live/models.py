"""Tiny MoE targets and EAGLE / EAGLE-3 drafts saved for a real SGLang server.

The targets are the shared tiny configurations (:mod:`tests.tiny_models`) with the
project's stdlib tokenizer (4096 tokens) and four layers, saved with transformers'
own ``save_pretrained``; SGLang loads them with its own model classes. The drafts
are written tensor by tensor in the layout SGLang's ``LlamaForCausalLMEagle`` (v1:
``fc`` 2H->H and one decoder layer) and ``LlamaForCausalLMEagle3`` (``fc`` 3H->H
over three captured target layers, one ``midlayer`` reading [embedding, hidden])
load. About 3 MB in all, built in a few seconds.

Random weights, arranged so that EAGLE has something to accept: the targets'
embeddings are scaled up (``EMBED_SCALE``), so each layer's contribution is small
beside the current token's embedding and the next token is mostly a function of
the current one (a "bigram" model; routing still varies token by token). The
EAGLE (v1) drafts compute exactly that bigram: ``fc`` passes the embedding of the
newest token through, and their decoder layer adds nothing (zero output
projections); about 60% of their guesses match (float32, 48 greedy tokens). The
EAGLE-3 draft stays random (acceptance about 1): the verify pass is the same.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from tests.tiny_models import tiny_config

TOKENIZER = Path(__file__).resolve().parents[4] / "moe_spec/assets/stdlib-moe/tokenizer.json"
VOCAB = 4096
LAYERS = 4
AUX_LAYERS = [0, 1, 2]  # EAGLE-3 reads the target's hidden states after these layers
EMBED_SCALE = 30.0
SPECIAL = "<|endoftext|>"
#: A chat template so /v1/chat/completions works too (the tokenizer has none).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}assistant:{% endif %}"
)


def save_tokenizer(out: Path) -> None:
    from transformers import PreTrainedTokenizerFast

    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(TOKENIZER),
        eos_token=SPECIAL,
        bos_token=SPECIAL,
        unk_token=SPECIAL,
        pad_token=SPECIAL,
    )
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)


def save_target(model_type: str, out: Path, seed: int = 0) -> Path:
    """A random ``model_type`` MoE (shared tiny shape, 4 layers, 4096 tokens) in ``out``."""
    import transformers

    # SGLang's OLMoE normalises keys over all heads: no grouped-query attention there.
    kv_heads = {"olmoe": {"num_key_value_heads": 4}}.get(model_type, {})
    config = tiny_config(
        model_type,
        **kv_heads,
        vocab_size=VOCAB,
        num_hidden_layers=LAYERS,
        bos_token_id=0,
        eos_token_id=0,
        pad_token_id=0,
        tie_word_embeddings=False,
    )
    config.architectures = [transformers.AutoModelForCausalLM._model_mapping[type(config)].__name__]
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config)
    with torch.no_grad():
        model.get_input_embeddings().weight.mul_(EMBED_SCALE)
    model = model.to(torch.bfloat16)
    model.save_pretrained(out, safe_serialization=True)
    save_tokenizer(out)
    return out


def draft_config(target_dir: Path, architecture: str, extra: dict) -> dict:
    """A Llama config of one decoder layer with the target's width, heads and vocabulary."""
    from transformers import LlamaConfig

    target = json.loads((target_dir / "config.json").read_text())
    H, heads = target["hidden_size"], target["num_attention_heads"]
    kv = target["num_key_value_heads"]
    config = LlamaConfig(
        vocab_size=target["vocab_size"],
        hidden_size=H,
        intermediate_size=2 * H,
        num_hidden_layers=1,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=H // heads,
        max_position_embeddings=target["max_position_embeddings"],
        tie_word_embeddings=False,
        bos_token_id=0,
        eos_token_id=0,
    ).to_dict()
    config.update(architectures=[architecture], torch_dtype="bfloat16", **extra)
    return config


def layer_weights(prefix: str, config: dict, in_dim: int, gen: torch.Generator) -> dict:
    """One Llama decoder layer's tensors (attention input ``in_dim`` wide)."""
    H, F = config["hidden_size"], config["intermediate_size"]
    q = config["num_attention_heads"] * config["head_dim"]
    kv = config["num_key_value_heads"] * config["head_dim"]
    shapes = {
        "self_attn.q_proj.weight": (q, in_dim),
        "self_attn.k_proj.weight": (kv, in_dim),
        "self_attn.v_proj.weight": (kv, in_dim),
        "self_attn.o_proj.weight": (H, q),
        "mlp.gate_proj.weight": (F, H),
        "mlp.up_proj.weight": (F, H),
        "mlp.down_proj.weight": (H, F),
    }
    weights = {f"{prefix}.{k}": torch.randn(s, generator=gen) * 0.2 for k, s in shapes.items()}
    weights[f"{prefix}.post_attention_layernorm.weight"] = torch.ones(H)
    return weights


def save_draft(target_dir: Path, out: Path, eagle3: bool, seed: int = 1) -> Path:
    """An EAGLE (v1) or EAGLE-3 draft for the target in ``target_dir``, written to ``out``."""
    from safetensors import safe_open

    gen = torch.Generator().manual_seed(seed)
    with safe_open(str(target_dir / "model.safetensors"), "pt") as f:
        embed_VH = f.get_tensor("model.embed_tokens.weight")
        head_VH = f.get_tensor("lm_head.weight")
    if eagle3:
        extra = {
            "draft_vocab_size": VOCAB,
            "eagle_config": {"eagle_aux_hidden_state_layer_ids": AUX_LAYERS},
        }
        config = draft_config(target_dir, "LlamaForCausalLMEagle3", extra)
    else:
        config = draft_config(target_dir, "LlamaForCausalLMEagle", {})
    H = config["hidden_size"]
    weights = {"embed_tokens.weight": embed_VH, "lm_head.weight": head_VH}
    weights["norm.weight"] = torch.ones(H)
    if eagle3:  # midlayer: attention reads [input_layernorm(embedding), hidden_norm(hidden)]
        weights |= layer_weights("midlayer", config, 2 * H, gen)
        weights["midlayer.input_layernorm.weight"] = torch.ones(H)
        weights["midlayer.hidden_norm.weight"] = torch.ones(H)
        weights["fc.weight"] = torch.randn(H, len(AUX_LAYERS) * H, generator=gen) * 0.2
    else:  # v1: fc([embedding, hidden]) then a decoder layer without input_layernorm
        weights |= layer_weights("layers.0", config, H, gen)
        for name in ("layers.0.self_attn.o_proj.weight", "layers.0.mlp.down_proj.weight"):
            weights[name].zero_()  # the layer adds nothing: the draft is the target's bigram
        weights["fc.weight"] = torch.cat([torch.eye(H), torch.zeros(H, H)], dim=1)
        weights["fc.bias"] = torch.zeros(H)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2))
    tensors = {k: v.to(torch.bfloat16).contiguous() for k, v in weights.items()}
    save_file(tensors, str(out / "model.safetensors"))
    save_tokenizer(out)
    return out


def build_all(root: Path) -> dict[str, Path]:
    """Every model the live tests serve, under ``root``: name -> directory."""
    qwen3 = save_target("qwen3_moe", root / "qwen3-moe")
    olmoe = save_target("olmoe", root / "olmoe")
    return {
        "qwen3-moe": qwen3,
        "olmoe": olmoe,
        "qwen3-moe-eagle3": save_draft(qwen3, root / "qwen3-moe-eagle3", eagle3=True),
        "olmoe-eagle": save_draft(olmoe, root / "olmoe-eagle", eagle3=False),
        "qwen3-moe-eagle": save_draft(qwen3, root / "qwen3-moe-eagle", eagle3=False),
    }
