"""An EAGLE head exported in SGLang's ``LlamaForCausalLMEagle`` layout, and read back.

The reference is transformers' own Llama decoder layer (rotate-half rotary, separate
q/k/v, gate/up/down) loaded from the exported tensors, with layer 0's input norm
skipped and no final norm, as SGLang's ``llama_eagle.py`` computes: it checks the
names, the rotary channel order and the fc input order, not only a round trip.
"""

from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe_spec.engine.config import DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.generate import SpecConfig
from moe_spec.engine.model import rope_tables
from moe_spec.integration.sglang.eagle_draft import (
    ARCHITECTURE,
    SGLangDraftError,
    export_sglang_draft,
    load_sglang_draft,
    sglang_tensors,
)
from moe_spec.integration.transformers import EagleHeadDraft, load_engine
from tests.integration.transformers.conftest import build, tiny_config
from tests.integration.transformers.test_loading import word_tokenizer

THETA = 500.0
D, HEADS, F, S = 32, 4, 64, 9


def random_head(layout: str = "sglang", seed: int = 3) -> EagleDraft:
    torch.manual_seed(seed)
    head = EagleDraft(DraftConfig(dim=D, n_heads=HEADS, mlp_dim=F, layout=layout))
    for p in head.parameters():
        torch.nn.init.normal_(p, mean=float(p.dim() == 1), std=0.3)
    return head.eval().requires_grad_(False)


@pytest.fixture(scope="module")
def target_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("sglang-draft") / "target"
    build(tiny_config("qwen3_moe")).to(torch.float32).save_pretrained(root)
    word_tokenizer().save_pretrained(root)
    return root


def engine_head_output(head, embed_SD, feature_SD) -> torch.Tensor:
    """The engine's head over a whole causal sequence ``[S, D]`` (no cache)."""
    cos, sin = rope_tables(head.config.head_dim, len(embed_SD), THETA)
    host = SimpleNamespace(
        embed=lambda tokens_BQ: embed_SD[None],
        rope_and_mask=lambda tokens, _p, _c, _m: ((cos, sin), None),
    )
    return head(host, feature_SD[None], torch.zeros(1, len(embed_SD), dtype=torch.long))[0]


def llama_reference(out_dir, embed_SD, feature_SD) -> torch.Tensor:
    """SGLang's LlamaForCausalLMEagle math with transformers' LlamaDecoderLayer ``[S, D]``."""
    from transformers import LlamaConfig
    from transformers.models.llama.modeling_llama import LlamaDecoderLayer, LlamaRotaryEmbedding

    config = LlamaConfig(**json.loads((out_dir / "config.json").read_text()))
    config._attn_implementation = "eager"
    tensors = {k: v.float() for k, v in load_file(str(out_dir / "model.safetensors")).items()}
    layer = LlamaDecoderLayer(config, layer_idx=0).float().eval()
    state = {k.removeprefix("layers.0."): v for k, v in tensors.items() if k.startswith("layers.0")}
    state["input_layernorm.weight"] = torch.ones(D)  # replaced below: layer 0 has none
    layer.load_state_dict(state)
    layer.input_layernorm = torch.nn.Identity()
    x = torch.cat((embed_SD, feature_SD), -1) @ tensors["fc.weight"].T + tensors["fc.bias"]
    positions = torch.arange(len(embed_SD))[None]
    rope = LlamaRotaryEmbedding(config)(x[None], positions)
    mask = torch.full((len(x), len(x)), float("-inf")).triu(1)[None, None]
    with torch.no_grad():
        out = layer(x[None], attention_mask=mask, position_ids=positions, position_embeddings=rope)
    return (out[0] if isinstance(out, tuple) else out)[0]  # hidden + residual, no final norm


def test_export_computes_what_a_llama_eagle_layer_computes(target_dir, tmp_path):
    head = random_head()
    out = export_sglang_draft(head, tmp_path / "draft", target_dir, THETA, dtype=torch.float32)
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == [ARCHITECTURE] and config["num_hidden_layers"] == 1
    assert (
        config["vocab_size"] == json.loads((target_dir / "config.json").read_text())["vocab_size"]
    )
    assert (out / "tokenizer.json").is_file()
    names = set(load_file(str(out / "model.safetensors")))
    assert "fc.bias" in names and not any(
        "input_layernorm" in n or n == "norm.weight" for n in names
    )
    g = torch.Generator().manual_seed(0)
    embed_SD, feature_SD = torch.randn(S, D, generator=g), torch.randn(S, D, generator=g)
    want = llama_reference(out, embed_SD, feature_SD)
    got = engine_head_output(head, embed_SD, feature_SD)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)
    # The fc input order matters: swapping embedding and feature changes the output.
    assert not torch.allclose(engine_head_output(head, feature_SD, embed_SD), want, atol=1e-2)


def test_the_export_round_trips_and_drives_a_transformers_target(target_dir, tmp_path):
    head = random_head()
    out = export_sglang_draft(head, tmp_path / "draft", target_dir, THETA)  # bf16 tensors
    loaded, theta = load_sglang_draft(out)
    assert theta == THETA and loaded.config == head.config
    rounded = {k: v.bfloat16().float() for k, v in head.state_dict().items()}
    assert all(torch.equal(loaded.state_dict()[k], rounded[k]) for k in rounded)

    engine = load_engine(str(target_dir), str(out), device="cpu", dtype=torch.float32)
    assert isinstance(engine.draft, EagleHeadDraft) and engine.draft.rope_theta == THETA
    assert engine.draft.head.config.layout == "sglang"
    prompt = engine.encode("w5 w17 w42 w8 w63")
    want = engine.target.generate(torch.tensor([prompt]), max_new_tokens=12, do_sample=False)
    got = engine.generate_speculative(prompt, 12, SpecConfig(width=3, depth=3, num_tokens=8))
    assert got.tokens == want[0, len(prompt) :].tolist()
    # Same logits as the head it came from (bf16-rounded weights) through the same driver.
    other = EagleHeadDraft(rounded_head(head), engine.target, THETA)
    tokens, feature = (
        torch.tensor([prompt[1:]]),
        torch.randn(1, len(prompt) - 1, D, generator=torch.Generator().manual_seed(0)),
    )
    for driver in (engine.draft, other):
        driver.new_cache(16)
    logits = [d.lm_head(d(None, feature, tokens)[0]) for d in (engine.draft, other)]
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0)


def rounded_head(head: EagleDraft) -> EagleDraft:
    copy = EagleDraft(head.config)
    copy.load_state_dict({k: v.bfloat16().float() for k, v in head.state_dict().items()})
    return copy


def test_only_the_sglang_layout_exports(target_dir, tmp_path):
    with pytest.raises(SGLangDraftError, match="layout 'moe-spec'.*layout='sglang'"):
        export_sglang_draft(random_head("moe-spec"), tmp_path, target_dir, THETA)
    wide = EagleDraft(DraftConfig(dim=48, n_heads=4, mlp_dim=F, layout="sglang"))
    with pytest.raises(SGLangDraftError, match="head dim 48 != the target's hidden_size 32"):
        export_sglang_draft(wide, tmp_path, target_dir, THETA)


def test_malformed_exports_are_refused(target_dir, tmp_path):
    out = export_sglang_draft(random_head(), tmp_path / "d", target_dir, THETA)
    config = json.loads((out / "config.json").read_text())
    for key, value, message in [
        ("num_hidden_layers", 2, "num_hidden_layers=2"),
        ("num_key_value_heads", 2, "num_key_value_heads=2"),
        ("architectures", ["LlamaForCausalLM"], "lack LlamaForCausalLMEagle"),
    ]:
        (out / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(SGLangDraftError, match=message):
            load_sglang_draft(out)
    (out / "config.json").write_text(json.dumps(config))
    tensors = load_file(str(out / "model.safetensors"))
    save_file(
        {**tensors, "layers.0.input_layernorm.weight": torch.ones(D)},
        str(out / "model.safetensors"),
    )
    with pytest.raises(SGLangDraftError, match=r"unexpected \['layers.0.input_layernorm.weight'\]"):
        load_sglang_draft(out)
    del tensors["fc.bias"]
    save_file(tensors, str(out / "model.safetensors"))
    with pytest.raises(SGLangDraftError, match=r"missing \['fc.bias'\]"):
        load_sglang_draft(out)


def test_rotary_reordering_is_a_per_head_permutation():
    head = random_head()
    t = sglang_tensors(head)
    q_ours = head.state_dict()["attn.wqkv.weight"][:D].view(HEADS, -1, D)
    q_neox = t["layers.0.self_attn.q_proj.weight"].view(HEADS, -1, D)
    C = D // HEADS
    for i in range(C // 2):  # engine pair (2i, 2i+1) -> rotate-half pair (i, i + C/2)
        torch.testing.assert_close(q_neox[:, i], q_ours[:, 2 * i], rtol=0, atol=0)
        torch.testing.assert_close(q_neox[:, i + C // 2], q_ours[:, 2 * i + 1], rtol=0, atol=0)


def test_sglangs_own_llama_eagle_module_computes_the_same(target_dir, tmp_path):
    """SGLang 0.5.23's LlamaForCausalLMEagle built on CPU (its CPU engine, the live tests'
    sgl_kernel stand-in on the path), load_weights on the export, its model's forward with a
    plain causal attention standing in for the attention backend: the engine head's output."""
    from tests.integration.sglang.conftest import ROOT, run_scenario
    from tests.integration.sglang.live.harness import STUB_PATH

    head = random_head()
    out = export_sglang_draft(head, tmp_path / "draft", target_dir, THETA, dtype=torch.float32)
    g = torch.Generator().manual_seed(1)
    embed_SD, feature_SD = torch.randn(S, D, generator=g), torch.randn(S, D, generator=g)
    save_file({"embed": embed_SD, "feature": feature_SD}, str(tmp_path / "inputs.safetensors"))
    got = run_scenario(
        "eagle_draft",
        MOE_SPEC_TEST_DRAFT=str(out),
        SGLANG_USE_CPU_ENGINE="1",
        PYTHONPATH=f"{ROOT}:{STUB_PATH}",
    )
    assert all(got["loaded"].values()), got["loaded"]  # q,k,v and gate,up stacked as read
    assert not got["has_input_layernorm"]
    assert not any("norm" in p and "post_attention" not in p for p in got["params"])
    want = engine_head_output(head, embed_SD, feature_SD)
    torch.testing.assert_close(torch.tensor(got["out"]), want, rtol=1e-4, atol=1e-4)
