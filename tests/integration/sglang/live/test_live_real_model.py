"""smollm2-moe (the real checkpoint) and its exported EAGLE head in live SGLang servers.

The budget's per-layer bound on this model is checked with the tiny models'
(``test_live_serving.py``, server ``real-budget``); here: with EAGLE at B = E the server
answers exactly transformers' greedy tokens (SGLang's Qwen2-MoE without speculation equals
transformers too: ``test_real_model.py``, in-process), and the head's drafts are accepted.
"""

from __future__ import annotations

import pytest
import torch

from tests.integration.sglang.live.conftest import REAL_LAYERS
from tests.integration.sglang.live.test_live_serving import PROMPTS, outputs

pytestmark = pytest.mark.live


def transformers_greedy(path, prompts) -> list[list[int]]:
    """Greedy tokens of transformers' Qwen2-MoE (fp32), not stopping at EOS (``ignore_eos``)."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(path)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    out = []
    for text, n in prompts:
        ids = tokenizer(text)["input_ids"]
        with torch.no_grad():
            for _ in range(n):
                ids.append(int(model(torch.tensor([ids])).logits[0, -1].argmax()))
        out.append(ids[-n:])
    return out


def test_the_real_model_with_eagle_serves_transformers_greedy_tokens(fleet):
    plain = transformers_greedy(fleet.models["smollm2-moe"], PROMPTS)
    assert all(len(set(tokens)) > 2 for tokens in plain)  # real text, not one repeated id
    full = fleet.ready("real-full")
    assert outputs(full) == plain  # EAGLE with the exported head, router-mass at B = E
    metas = [full.generate(text, n)["meta_info"] for text, n in PROMPTS]
    assert sum(m["spec_num_correct_drafts"] for m in metas) > 0  # the head's drafts are accepted
    log = full.log()
    assert "added get_embed_and_head() to SGLang's Qwen2MoeForCausalLM" in log
    assert f"budgeting {REAL_LAYERS} MoE layers in verify passes: policy router-mass, B=32" in log
