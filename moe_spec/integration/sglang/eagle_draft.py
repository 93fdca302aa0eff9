"""An EAGLE head as the directory SGLang's EAGLE (v1) loader reads, and back.

Shape legend: D hidden size (the head's dim), H heads, C head dim, F MLP dim.

SGLang's ``LlamaForCausalLMEagle`` (``sglang/srt/models/llama_eagle.py``) is a Llama
config of one decoder layer (``architectures: ["LlamaForCausalLMEagle"]``) and
safetensors named like a Llama model without the ``model.`` prefix (its
``load_weights`` adds it): ``fc.weight [D, 2D]`` and ``fc.bias [D]`` over
``[embedding, feature]``, ``layers.0.self_attn.{q,k,v,o}_proj.weight``,
``layers.0.post_attention_layernorm.weight`` and ``layers.0.mlp.{gate,up,down}_proj.weight``.
Layer 0 has no ``input_layernorm`` and the model no final norm; embeddings and the LM
head are the target's (SGLang shares them at run time, so none are written here).
That is :class:`~moe_spec.engine.draft.EagleDraft` with ``layout="sglang"``.

Rotary embeddings: the engine rotates channel pairs ``(2i, 2i+1)``, SGLang's Llama
(``rope_is_neox_style``) pairs ``(i, i + C/2)`` with the same frequency ``i``. Writing
each head's q and k rows in the order ``0, 2, 4, ..., 1, 3, 5, ...`` makes the two
compute the same attention (a dot product does not see a channel order that q and k
share); reading undoes it. The engine's attention has as many key/value heads as
query heads (``num_key_value_heads = num_attention_heads``).

Written: ``config.json``, ``model.safetensors`` (bf16 by default) and, when the target
directory has them, its tokenizer files (SGLang reads the target's; copied so the
directory is complete for tools that open a draft on its own). Nothing is unpickled.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from moe_spec.engine.config import DraftConfig
from moe_spec.engine.draft import EagleDraft

ARCHITECTURE = "LlamaForCausalLMEagle"
WEIGHTS = "model.safetensors"
TOKEN_MAP = "hot_token_map.pt"  # --speculative-token-map
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
#: Tensors some exports carry that the head does not read (it uses the target's).
IGNORED = ("embed_tokens.weight", "lm_head.weight")


class SGLangDraftError(ValueError):
    """A head that has no SGLang layout, or a directory that is not such a draft."""


def neox_order(head_dim: int) -> torch.Tensor:
    """Channel order ``[0, 2, ..., C-2, 1, 3, ..., C-1]`` (engine pairs -> rotate-half pairs)."""
    return torch.cat((torch.arange(0, head_dim, 2), torch.arange(1, head_dim, 2)))


def to_neox_rows(w_RD: torch.Tensor, n_heads: int) -> torch.Tensor:
    """q/k projection rows ``[H*C, D]`` reordered within each head for rotate-half rotary."""
    w_HCD = w_RD.view(n_heads, -1, w_RD.shape[-1])
    return w_HCD[:, neox_order(w_HCD.shape[1])].reshape(w_RD.shape)


def from_neox_rows(w_RD: torch.Tensor, n_heads: int) -> torch.Tensor:
    """The inverse of :func:`to_neox_rows`."""
    w_HCD = w_RD.view(n_heads, -1, w_RD.shape[-1])
    back = torch.argsort(neox_order(w_HCD.shape[1]))
    return w_HCD[:, back].reshape(w_RD.shape)


def sglang_tensors(head: EagleDraft) -> dict[str, torch.Tensor]:
    """The head's weights under SGLang's names (fp32 copies)."""
    if head.config.layout != "sglang":
        raise SGLangDraftError(
            f"the head has layout {head.config.layout!r}; SGLang's {ARCHITECTURE} needs a "
            "head built with DraftConfig(layout='sglang') (the layouts differ in fc's input "
            "order and bias and in the norms, so weights do not carry over)"
        )
    sd = {k: v.detach().float().cpu() for k, v in head.state_dict().items()}
    H = head.config.n_heads
    q_DD, k_DD, v_DD = sd["attn.wqkv.weight"].chunk(3, dim=0)
    gate_FD, up_FD = sd["mlp.w13.weight"].chunk(2, dim=0)
    return {
        "fc.weight": sd["fc.weight"],
        "fc.bias": sd["fc.bias"],
        "layers.0.self_attn.q_proj.weight": to_neox_rows(q_DD, H),
        "layers.0.self_attn.k_proj.weight": to_neox_rows(k_DD, H),
        "layers.0.self_attn.v_proj.weight": v_DD,
        "layers.0.self_attn.o_proj.weight": sd["attn.wo.weight"],
        "layers.0.post_attention_layernorm.weight": sd["mlp_norm.weight"],
        "layers.0.mlp.gate_proj.weight": gate_FD,
        "layers.0.mlp.up_proj.weight": up_FD,
        "layers.0.mlp.down_proj.weight": sd["mlp.w2.weight"],
    }


def sglang_config(head: EagleDraft, rope_theta: float, target_config: dict) -> dict:
    """A Llama ``config.json`` of one decoder layer: ``head`` on ``target_config``'s vocabulary."""
    cfg = head.config
    return {
        "architectures": [ARCHITECTURE],
        "model_type": "llama",
        "hidden_size": cfg.dim,
        "intermediate_size": cfg.mlp_dim,
        "num_hidden_layers": 1,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "rms_norm_eps": cfg.norm_eps,
        "rope_theta": float(rope_theta),
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
        "vocab_size": int(target_config["vocab_size"]),
        "max_position_embeddings": int(target_config.get("max_position_embeddings", 8192)),
        "tie_word_embeddings": False,
        "bos_token_id": target_config.get("bos_token_id"),
        "eos_token_id": target_config.get("eos_token_id"),
        "torch_dtype": "bfloat16",
    }


def export_sglang_draft(
    head: EagleDraft,
    out: str | Path,
    target_dir: str | Path,
    rope_theta: float,
    dtype: torch.dtype = torch.bfloat16,
    hot_tokens: torch.Tensor | None = None,
) -> Path:
    """Write ``head`` (``layout="sglang"``) for ``--speculative-draft-model-path``; the dir.

    ``hot_tokens`` (int64 ``[N]``) is also written as :data:`TOKEN_MAP` for SGLang's
    ``--speculative-token-map`` (SGLang reads it with ``torch.load(weights_only=True)``;
    moe-spec never loads it).
    """
    target_dir, out = Path(target_dir), Path(out)
    target_file = target_dir / "config.json"
    try:
        target_config = json.loads(target_file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SGLangDraftError(f"target config {target_file} unreadable: {exc}") from exc
    if target_config.get("hidden_size") != head.config.dim:
        raise SGLangDraftError(
            f"head dim {head.config.dim} != the target's hidden_size "
            f"{target_config.get('hidden_size')!r} ({target_file})"
        )
    tensors = {k: v.to(dtype).contiguous() for k, v in sglang_tensors(head).items()}
    config = sglang_config(head, rope_theta, target_config)
    config["torch_dtype"] = str(dtype).removeprefix("torch.")
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")
    save_file(tensors, str(out / WEIGHTS), metadata={"format": "pt"})
    for name in TOKENIZER_FILES:
        if (target_dir / name).is_file():
            shutil.copyfile(target_dir / name, out / name)
    if hot_tokens is not None:
        torch.save(hot_tokens.to(torch.long).contiguous(), out / TOKEN_MAP)
    return out


def is_sglang_draft(config: dict) -> bool:
    return isinstance(config, dict) and ARCHITECTURE in (config.get("architectures") or [])


def read_sglang_config(path: Path) -> tuple[DraftConfig, float]:
    """The :class:`DraftConfig` (``layout="sglang"``) and rope theta of an exported draft."""
    file = path / "config.json"
    try:
        c = json.loads(file.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise SGLangDraftError(f"{file} is missing or not valid JSON: {exc}") from exc
    if not is_sglang_draft(c):
        raise SGLangDraftError(
            f"{file}: architectures {c.get('architectures')!r} lack {ARCHITECTURE}"
        )
    need = {
        "num_hidden_layers": 1,
        "num_key_value_heads": c.get("num_attention_heads"),
        "hidden_act": "silu",
        "rope_scaling": None,
        "attention_bias": False,
        "mlp_bias": False,
    }
    for key, want in need.items():
        if c.get(key, want) != want:
            raise SGLangDraftError(f"{file}: {key}={c.get(key)!r}; this loader reads only {want!r}")
    heads = c.get("num_attention_heads")
    if isinstance(heads, int) and c.get("head_dim", c["hidden_size"] // heads) * heads != c.get(
        "hidden_size"
    ):
        raise SGLangDraftError(f"{file}: head_dim * num_attention_heads must be hidden_size")
    try:
        head_config = DraftConfig(
            dim=c["hidden_size"],
            n_heads=heads,
            mlp_dim=c["intermediate_size"],
            norm_eps=float(c.get("rms_norm_eps", 1e-6)),
            layout="sglang",
        )
    except (KeyError, TypeError, ValueError) as exc:
        raise SGLangDraftError(f"{file}: not a draft this loader reads: {exc}") from exc
    return head_config, float(c.get("rope_theta", 10000.0))


def load_sglang_draft(path: str | Path) -> tuple[EagleDraft, float]:
    """An fp32 :class:`EagleDraft` (``layout="sglang"``) and rope theta from an exported dir."""
    path = Path(path)
    head_config, rope_theta = read_sglang_config(path)
    try:
        tensors = load_file(str(path / WEIGHTS))
    except Exception as exc:  # safetensors raises its own error type; OSError when missing
        raise SGLangDraftError(f"{path / WEIGHTS} is missing or unreadable: {exc}") from exc
    head = EagleDraft(head_config)
    names = set(sglang_tensors(head))
    unknown = sorted(set(tensors) - names - set(IGNORED))
    missing = sorted(names - set(tensors))
    if unknown or missing:
        raise SGLangDraftError(f"{path / WEIGHTS}: missing {missing}, unexpected {unknown}")
    t = {k: v.float() for k, v in tensors.items()}
    H = head_config.n_heads
    q = from_neox_rows(t["layers.0.self_attn.q_proj.weight"], H)
    k = from_neox_rows(t["layers.0.self_attn.k_proj.weight"], H)
    state = {
        "fc.weight": t["fc.weight"],
        "fc.bias": t["fc.bias"],
        "attn.wqkv.weight": torch.cat((q, k, t["layers.0.self_attn.v_proj.weight"])),
        "attn.wo.weight": t["layers.0.self_attn.o_proj.weight"],
        "mlp_norm.weight": t["layers.0.post_attention_layernorm.weight"],
        "mlp.w13.weight": torch.cat(
            (t["layers.0.mlp.gate_proj.weight"], t["layers.0.mlp.up_proj.weight"])
        ),
        "mlp.w2.weight": t["layers.0.mlp.down_proj.weight"],
    }
    expected = head.state_dict()
    for name, tensor in state.items():
        if tensor.shape != expected[name].shape:
            raise SGLangDraftError(
                f"{path / WEIGHTS}: {name} has shape {tuple(tensor.shape)}, the config needs "
                f"{tuple(expected[name].shape)}"
            )
        if not torch.isfinite(tensor).all():
            raise SGLangDraftError(f"{path / WEIGHTS}: {name} has NaN or inf values")
    head.load_state_dict(state)
    return head.eval().requires_grad_(False), rope_theta
