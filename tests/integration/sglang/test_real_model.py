"""SGLang 0.5.23's own Qwen2-MoE on the smollm2-moe checkpoint computes what transformers'
does, in-process on CPU (no server); and what the plugin and the test servers add for it.

The checkpoint is the built one (``model_path`` builds it into the cache on first use,
about 30 s). Before it carried its own ``lm_head.weight``, SGLang's Qwen2-MoE (which
ignores ``tie_word_embeddings``) left its LM head at zero and emitted token 0 everywhere.
"""

from __future__ import annotations

import json
import sys
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import save_file

from tests.integration.sglang.conftest import ROOT, run_scenario
from tests.integration.sglang.live.harness import POLICY_PLUGIN_PATH, STUB_PATH

PROMPT = "def fibonacci(n):\n    if n < 2:\n        return n\n"
STEPS = 10


@pytest.fixture(scope="module")
def checkpoint():
    from moe_spec.models import model_path

    return model_path("smollm2-moe")


@pytest.mark.slow
def test_sglangs_qwen2_moe_matches_transformers_on_the_checkpoint(checkpoint, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    config = json.loads((checkpoint / "config.json").read_text())
    assert config["tie_word_embeddings"] is False  # SGLang's Qwen2-MoE reads lm_head.weight
    ids = AutoTokenizer.from_pretrained(checkpoint)(PROMPT)["input_ids"]
    save_file({"ids": torch.tensor(ids)}, str(tmp_path / "ids.safetensors"))
    got = run_scenario(
        "qwen2_moe_greedy",
        MOE_SPEC_TEST_TARGET=str(checkpoint),
        MOE_SPEC_TEST_INPUTS=str(tmp_path / "ids.safetensors"),
        MOE_SPEC_TEST_STEPS=str(STEPS),
        SGLANG_USE_CPU_ENGINE="1",
        PYTHONPATH=f"{ROOT}:{STUB_PATH}:{POLICY_PLUGIN_PATH}",
    )
    model = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).eval()
    with torch.no_grad():
        want_V = model(torch.tensor([ids])).logits[0, -1]
        want = model.generate(
            torch.tensor([ids]), max_new_tokens=STEPS, do_sample=False, min_new_tokens=STEPS
        )[0, len(ids) :].tolist()
    got_V = torch.tensor(got["logits"])
    torch.testing.assert_close(got_V, want_V, rtol=0, atol=1e-3)  # fp32, other summation order
    assert got["tokens"] == want and len(set(want)) > 2  # real text, not one repeated id
    assert got["accessor_added"] == "Qwen2MoeForCausalLM" and got["accessor_is_model_weights"]


def test_the_accessor_is_added_only_where_sglang_lacks_it():
    from moe_spec.integration.sglang.eagle_target import add_embed_and_head, get_embed_and_head

    class Qwen2MoeForCausalLM(torch.nn.Module):  # same name as SGLang's: it lacks the accessor
        def __init__(self):
            super().__init__()
            self.model = SimpleNamespace(embed_tokens=torch.nn.Embedding(5, 3))
            self.lm_head = torch.nn.Linear(3, 5, bias=False)

    class Qwen3MoeForCausalLM(Qwen2MoeForCausalLM):
        def get_embed_and_head(self):
            return "its own"

    class LlamaForCausalLM(torch.nn.Module):
        pass

    model = Qwen2MoeForCausalLM()
    assert add_embed_and_head(model) == "Qwen2MoeForCausalLM"
    embed, head = model.get_embed_and_head()
    assert embed is model.model.embed_tokens.weight and head is model.lm_head.weight
    assert add_embed_and_head(model) is None  # once
    assert Qwen3MoeForCausalLM.get_embed_and_head is not get_embed_and_head  # subclass: own
    assert add_embed_and_head(Qwen3MoeForCausalLM()) is None
    assert add_embed_and_head(LlamaForCausalLM()) is None
    assert not hasattr(LlamaForCausalLM, "get_embed_and_head")


@pytest.mark.parametrize("add", [False, True])
def test_the_test_servers_gate_stand_in_is_sglangs_triton_kernel(add, monkeypatch):
    """The torch stand-in (``policy_plugin``) against SGLang's Triton kernel in the interpreter."""
    from sglang.kernels.ops.elementwise import elementwise

    monkeypatch.setattr(elementwise, "is_arch_support_pdl", lambda: False)  # no CUDA here
    monkeypatch.syspath_prepend(str(POLICY_PLUGIN_PATH))
    sys.modules.pop("moe_spec_live_policies", None)
    from moe_spec_live_policies import gate_sigmoid_mul

    g = torch.Generator().manual_seed(0)
    hidden_TD, shared_TD, out_TD = (torch.randn(5, 48, generator=g) for _ in range(3))
    gate_D = torch.randn(48, generator=g) * 0.3
    if add:
        want_TD = out_TD.clone()
        elementwise.fused_gate_sigmoid_mul_add(hidden_TD, gate_D, shared_TD, want_TD)
        got_TD = out_TD.clone()
        assert gate_sigmoid_mul(hidden_TD, gate_D, shared_TD, got_TD) is None
    else:
        want_TD = elementwise.fused_gate_sigmoid_mul(hidden_TD, gate_D, shared_TD)
        got_TD = gate_sigmoid_mul(hidden_TD, gate_D, shared_TD)
    torch.testing.assert_close(got_TD, want_TD, rtol=1e-5, atol=1e-5)
