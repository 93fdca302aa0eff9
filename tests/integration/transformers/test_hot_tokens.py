"""A draft vocabulary (hot tokens): the head drafts from N ids, the target still decides."""

from __future__ import annotations

import shutil

import pytest
import torch
from safetensors.torch import save_file

from moe_spec.integration.sglang.eagle_draft import TOKEN_MAP, export_sglang_draft
from moe_spec.integration.transformers import EagleHeadDraft, TransformersEngine, load_engine
from moe_spec.integration.transformers.hot_tokens import (
    HOT_TOKENS_FILE,
    HotTokensError,
    check_hot_tokens,
    frequent_tokens,
    read_hot_tokens,
    save_hot_tokens,
)

from .conftest import VOCAB, build, tiny_config
from .test_eagle_head import PROMPT, SPEC, checkpoints, greedy_reference, random_head  # noqa: F401

HOT = torch.arange(2, VOCAB, 3)  # 32 of the 96 ids


def test_frequent_tokens_ranks_by_count_then_id():
    seqs = [[5, 5, 5, 9, 9, 1], [9, 7, 7, 3, 2]]  # counts: 9:3, 5:3, 7:2, then 1, 2, 3 once
    assert frequent_tokens(seqs, 3).tolist() == [5, 7, 9]
    assert frequent_tokens(seqs, 4).tolist() == [1, 5, 7, 9]  # tie at one: the smallest id
    assert frequent_tokens(seqs, 100).tolist() == [1, 2, 3, 5, 7, 9]
    with pytest.raises(HotTokensError, match="size must be an integer >= 1, got 0"):
        frequent_tokens(seqs, 0)


@pytest.mark.parametrize(
    "ids, match",
    [
        (torch.tensor([1, 3, 3]), "unique and ascending"),
        (torch.tensor([4, 2]), "unique and ascending"),
        (torch.tensor([0, 96]), r"in \[0, 96\) .* got 0..96"),
        (torch.tensor([-1, 5]), r"in \[0, 96\)"),
        (torch.tensor([1.0, 2.0]), "1-D int64"),
        (torch.tensor([[1, 2]]), "1-D int64"),
        (torch.tensor([], dtype=torch.long), "non-empty"),
    ],
)
def test_malformed_hot_tokens_are_refused(ids, match):
    with pytest.raises(HotTokensError, match=match):
        check_hot_tokens(ids, VOCAB)


def test_a_hot_token_file_round_trips_and_bad_files_are_refused(tmp_path):
    save_hot_tokens(tmp_path / "hot.safetensors", HOT)
    assert torch.equal(read_hot_tokens(tmp_path / "hot.safetensors", VOCAB), HOT)
    with pytest.raises(HotTokensError, match=r"in \[0, 40\)"):  # another, smaller vocabulary
        read_hot_tokens(tmp_path / "hot.safetensors", 40)
    save_file({"ids": HOT}, str(tmp_path / "other.safetensors"))
    with pytest.raises(HotTokensError, match="expected one tensor 'hot_token_ids'"):
        read_hot_tokens(tmp_path / "other.safetensors", VOCAB)
    (tmp_path / "junk.safetensors").write_bytes(b"\x80\x04not safetensors")
    with pytest.raises(HotTokensError, match="cannot read hot tokens"):
        read_hot_tokens(tmp_path / "junk.safetensors", VOCAB)


@pytest.fixture(scope="module")
def target():
    return build(tiny_config("qwen3_moe"))


def test_the_draft_scores_only_hot_tokens(target):
    full = EagleHeadDraft(random_head(), target)
    hot = EagleHeadDraft(random_head(), target, hot_tokens=HOT)
    feature_QD = torch.randn(5, 32, dtype=target.dtype, generator=torch.Generator().manual_seed(0))
    want_QV, got_QV = full.lm_head(feature_QD), hot.lm_head(feature_QD)
    torch.testing.assert_close(got_QV[:, HOT], want_QV[:, HOT])
    cold = torch.ones(VOCAB, dtype=torch.bool)
    cold[HOT] = False
    assert bool(torch.isneginf(got_QV[:, cold]).all())
    torch.testing.assert_close(hot.lm_head(feature_QD[0]), want_QV[0].where(~cold, -torch.inf))


def test_speculation_with_hot_tokens_is_lossless_and_drafts_only_them(target):
    draft = EagleHeadDraft(random_head(), target, hot_tokens=HOT)
    trees = []
    grow = draft.grow_tree
    draft.grow_tree = lambda *a: trees.append(grow(*a)) or trees[-1]
    result = TransformersEngine(target, draft, None).generate_speculative(PROMPT, 20, SPEC)
    assert result.tokens == greedy_reference(target)
    drafted = torch.cat([t.tokens_N[1:] for t in trees])
    assert drafted.numel() and bool(torch.isin(drafted, HOT).all())


def test_load_engine_uses_the_heads_hot_tokens_unless_told_not_to(checkpoints, tmp_path):  # noqa: F811
    head = tmp_path / "head"
    shutil.copytree(checkpoints / "head", head)
    save_hot_tokens(head / HOT_TOKENS_FILE, HOT)
    target = str(checkpoints / "target")
    engine = load_engine(target, str(head), device="cpu")
    assert torch.equal(engine.draft.hot_tokens, HOT)
    assert load_engine(target, str(head), device="cpu", hot_tokens=False).draft.hot_tokens is None
    prompt = engine.encode("w5 w17 w42 w8 w63")
    assert engine.generate_speculative(prompt, 12, SPEC).tokens == greedy_reference(
        engine.target, prompt, 12
    )
    save_hot_tokens(head / HOT_TOKENS_FILE, torch.tensor([3, 500]))  # beyond the vocabulary
    with pytest.raises(HotTokensError, match=r"hot_tokens.safetensors: ids must lie in \[0, 96\)"):
        load_engine(target, str(head), device="cpu")


def test_the_sglang_export_carries_the_token_map(checkpoints, tmp_path):  # noqa: F811
    out = export_sglang_draft(
        random_head(layout="sglang"), tmp_path / "sg", checkpoints / "target", 500.0, hot_tokens=HOT
    )
    # SGLang's load_token_map: torch.load(weights_only=True), then torch.tensor(..., int64)
    assert torch.equal(torch.load(out / TOKEN_MAP, weights_only=True), HOT)
    plain = export_sglang_draft(
        random_head(layout="sglang"), tmp_path / "p", checkpoints / "target", 500.0
    )
    assert not (plain / TOKEN_MAP).exists()
