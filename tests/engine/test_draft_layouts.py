"""The two EAGLE head layouts in the reference engine (``DraftConfig.layout``)."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch

from moe_spec.engine.checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from moe_spec.engine.config import DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.generate import Engine, SpecConfig

from .conftest import TINY_DRAFT

PROMPT = [5, 17, 42, 8, 99, 3]


def test_layout_is_validated_on_construction():
    with pytest.raises(
        ValueError, match="layout must be one of \\['moe-spec', 'sglang'\\], got 'eagle'"
    ):
        DraftConfig(layout="eagle")


def test_the_layouts_hold_the_tensors_their_loaders_expect():
    old = set(EagleDraft(TINY_DRAFT).state_dict())
    new = set(EagleDraft(replace(TINY_DRAFT, layout="sglang")).state_dict())
    assert old - new == {"attn_norm.weight", "out_norm.weight"}  # no input or final norm
    assert new - old == {"fc.bias"}  # SGLang's fc is nn.Linear(2H, H) with its bias


@pytest.fixture(scope="module")
def sglang_engine(tiny_checkpoint, tmp_path_factory) -> Engine:
    """The tiny target with a random SGLang-layout head, saved and loaded as a checkpoint."""
    torch.manual_seed(4)
    draft = EagleDraft(replace(TINY_DRAFT, layout="sglang"))
    for p in draft.parameters():
        torch.nn.init.normal_(p, mean=float(p.dim() == 1), std=0.3)
    path = tmp_path_factory.mktemp("layout") / "ckpt"
    ck = tiny_checkpoint
    save_checkpoint(path, ck.target, draft, ck.tokenizer, {})
    loaded = load_checkpoint(path)
    assert loaded.draft.config.layout == "sglang"
    rounded = {k: v.bfloat16().float() for k, v in draft.state_dict().items()}
    assert all(torch.equal(loaded.draft.state_dict()[k], v) for k, v in rounded.items())
    return Engine(Checkpoint(loaded.target, loaded.draft, loaded.tokenizer, path))


@pytest.mark.parametrize("shape", [(1, 4, 5), (3, 4, 10)])
def test_greedy_speculative_with_an_sglang_head_equals_autoregressive(sglang_engine, shape):
    spec = SpecConfig(*shape)
    want = sglang_engine.generate_autoregressive(PROMPT, 24).tokens
    assert sglang_engine.generate_speculative(PROMPT, 24, spec).tokens == want


def test_the_engine_drafts_with_the_heads_own_forward(sglang_engine):
    """The first depth-1 guesses are the top tokens of the head's cache-free output."""
    eng, head = sglang_engine, sglang_engine.draft
    calls = []
    handle = head.register_forward_hook(lambda _m, args, out: calls.append((args, out)))
    try:
        eng.generate_speculative(PROMPT, 2, SpecConfig(1, 1, 2))
    finally:
        handle.remove()
    assert calls
    args, out = calls[0]
    target, feature, tokens = args[:3]
    with torch.no_grad():
        plain = head(target, feature, tokens)  # whole sequence, no cache: causal by default
    torch.testing.assert_close(out, plain, rtol=1e-5, atol=1e-5)
