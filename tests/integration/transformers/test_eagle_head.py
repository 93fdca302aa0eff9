"""An engine-format EAGLE head as the draft of a transformers MoE target."""

from __future__ import annotations

import copy
import json
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file, save_file

from moe_spec.engine.config import DRAFT_LAYOUTS, DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.generate import SpecConfig
from moe_spec.engine.model import rope_tables
from moe_spec.integration.transformers import (
    EagleHeadDraft,
    EagleHeadError,
    ModelPathError,
    TransformersEngine,
    load_engine,
    save_eagle_head,
)
from moe_spec.integration.transformers.eagle import capture_features
from moe_spec.policies import get_policy
from tests.engine.test_auto import reporting_prefills

from .conftest import build, tiny_config
from .test_loading import word_tokenizer

PROMPT = [5, 17, 42, 8, 63, 29, 4]
NEW = 20
SPEC = SpecConfig(width=3, depth=3, num_tokens=8)
THETA = 500.0  # not the default, so a head's own rope_theta must reach its attention
CLOSE = dict(rtol=1e-5, atol=1e-5)  # the engine's rotary and norms compute in fp32


def random_head(dim: int = 32, seed: int = 2, layout: str = "moe-spec") -> EagleDraft:
    torch.manual_seed(seed)
    head = EagleDraft(DraftConfig(dim=dim, n_heads=4, mlp_dim=64, layout=layout))
    for p in head.parameters():  # norms too: nothing is left at its neutral initial value
        torch.nn.init.normal_(p, mean=float(p.dim() == 1), std=0.3)
    return head


@pytest.fixture
def target(moe_model):
    """Every supported architecture (conftest's session-wide tiny models)."""
    return moe_model


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """A qwen3_moe target directory and a draft-only head directory (``save_eagle_head``)."""
    root = tmp_path_factory.mktemp("eagle")
    build(tiny_config("qwen3_moe")).to(torch.float32).save_pretrained(root / "target")
    word_tokenizer().save_pretrained(root / "target")
    save_eagle_head(root / "head", random_head(), rope_theta=THETA)
    return root


def greedy_reference(model, prompt=PROMPT, new=NEW) -> list[int]:
    out = model.generate(torch.tensor([prompt]), max_new_tokens=new, do_sample=False)
    return out[0, len(prompt) :].tolist()


def test_the_feature_is_the_final_normed_hidden_state(target):
    """The recorded feature is hidden_states[-1] (after the final norm) and lm_head's input."""
    ids = torch.tensor([PROMPT + [11, 12]])
    with capture_features(target) as features:
        out = target(input_ids=ids, output_hidden_states=True, logits_to_keep=1)
    assert features.last_BSD.shape == (1, ids.shape[1], target.config.hidden_size)
    torch.testing.assert_close(features.last_BSD, out.hidden_states[-1], rtol=0, atol=0)
    logits = target.get_output_embeddings()(features.last_BSD[:, -1])
    logits = logits / getattr(target.config, "logits_scaling", 1.0)  # GraniteMoE's
    torch.testing.assert_close(logits, out.logits[:, -1], rtol=0, atol=0)


def reference_features(model, tokens: list[int]) -> torch.Tensor:
    """Final normed hidden states ``[S, D]`` of a plain forward (no hooks, no cache)."""
    out = model(input_ids=torch.tensor([tokens]), output_hidden_states=True)
    return out.hidden_states[-1][0]


def reference_head(head: EagleDraft, model, feature_SD, next_tokens: list[int]) -> torch.Tensor:
    """The head over the whole sequence at once (causal, no cache): its last output ``[D]``."""
    cos, sin = rope_tables(head.config.head_dim, len(next_tokens), THETA)
    host = SimpleNamespace(
        embed=model.get_input_embeddings(),
        rope_and_mask=lambda tokens, _p, _c, _m: ((cos, sin), None),
    )
    return head(host, feature_SD[None], torch.tensor([next_tokens]))[0, -1]


@pytest.mark.parametrize("layout", DRAFT_LAYOUTS)
def test_tree_and_catch_up_match_a_plain_forward_of_the_head(target, layout):
    """Depth 1 and 2 of the first tree, then a catch-up, against cache-free references."""
    head = random_head(layout=layout)
    draft = EagleHeadDraft(head, target, rope_theta=THETA)
    scaling = getattr(target.config, "logits_scaling", 1.0)  # GraniteMoE divides its logits

    def lm_head(feature):
        return target.get_output_embeddings()(feature) / scaling

    cache = draft.new_cache(64)
    with capture_features(target) as features:
        root = int(target(input_ids=torch.tensor([PROMPT])).logits[0, -1].argmax())
    root_feature = draft.start(cache, PROMPT, root, features.last_BSD[0])
    width = 3
    tree = draft.grow_tree(cache, root, root_feature, width, 2, 1 + width + width * width)
    assert (cache.length, cache.offset) == (len(PROMPT), 0)

    feature_PD = reference_features(target, PROMPT)
    ref_root = reference_head(head, target, feature_PD, PROMPT[1:] + [root])
    torch.testing.assert_close(root_feature, ref_root, **CLOSE)
    kids = tree.children()
    ref_lp, ref_tok = torch.log_softmax(lm_head(ref_root), -1).topk(width)
    assert tree.tokens_N[kids[0]].tolist() == ref_tok.tolist()
    torch.testing.assert_close(tree.logprob_N[kids[0]], ref_lp.float(), **CLOSE)
    for node in kids[0]:  # each depth-1 node reads the root's predicted feature
        child = int(tree.tokens_N[node])
        features_SD = torch.cat((feature_PD, ref_root[None]))
        out = reference_head(head, target, features_SD, PROMPT[1:] + [root, child])
        lp, tok = torch.log_softmax(lm_head(out), -1).topk(width)
        assert tree.tokens_N[kids[node]].tolist() == tok.tolist()
        want = (lp + tree.logprob_N[node]).float()
        torch.testing.assert_close(tree.logprob_N[kids[node]], want, **CLOSE)

    # A step commits [child, bonus]: the head catches up on the target's true features.
    child, bonus = int(tree.tokens_N[kids[0][1]]), 77
    true_SD = reference_features(target, PROMPT + [root, child])
    got = draft.extend(cache, [child, bonus], true_SD[len(PROMPT) :])
    ref = reference_head(head, target, true_SD, PROMPT[1:] + [root, child, bonus])
    torch.testing.assert_close(got, ref, **CLOSE)


@pytest.mark.parametrize("layout", DRAFT_LAYOUTS)
def test_greedy_speculative_with_a_random_head_reproduces_generate(target, layout):
    draft = EagleHeadDraft(random_head(layout=layout), target)
    engine = TransformersEngine(target, draft, None)
    calls = []  # (tokens, the target features the engine paired them with); start -> extend
    extend = draft.extend
    draft.extend = lambda c, tokens, f: calls.append((tokens, f)) or extend(c, tokens, f)
    expected = greedy_reference(target)
    result = engine.generate_speculative(PROMPT, NEW, SPEC)
    assert result.tokens == expected
    # Every token the head caught up on came with the feature of the position before it.
    committed = PROMPT[:1] + [t for tokens, _ in calls for t in tokens]
    assert committed[: len(PROMPT) + NEW] == PROMPT + expected
    paired_SD = torch.cat([f for _, f in calls])
    torch.testing.assert_close(paired_SD, reference_features(target, committed)[:-1], **CLOSE)
    chain = engine.generate_speculative(PROMPT, NEW, SpecConfig(width=1, depth=4, num_tokens=5))
    assert chain.tokens == expected
    assert all(s.distinct_after_L == s.distinct_before_L for s in result.steps)  # policy none


def test_load_engine_reads_a_draft_only_head(checkpoints):
    engine = load_engine(str(checkpoints / "target"), str(checkpoints / "head"), device="cpu")
    assert isinstance(engine.draft, EagleHeadDraft) and engine.draft.rope_theta == THETA
    saved = random_head().to(torch.bfloat16).float().state_dict()  # stored as bf16
    loaded = engine.draft.head.state_dict()
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    prompt = engine.encode("w5 w17 w42 w8 w63")
    expected = greedy_reference(engine.target, prompt, 16)
    assert engine.generate_speculative(prompt, 16, SPEC).tokens == expected

    budget = engine.top_k + 1
    spec = SpecConfig(3, 3, 8, policy="router-mass", budget=budget)
    steps = engine.generate_speculative(prompt, 16, spec).steps
    assert steps and all(max(s.distinct_after_L) <= budget for s in steps)
    assert max(max(s.distinct_before_L) for s in steps) > budget  # the budget did bind


def test_a_head_of_another_dim_is_refused(checkpoints, tmp_path):
    target = build(tiny_config("qwen3_moe"))
    save_eagle_head(tmp_path, random_head(dim=48))
    with pytest.raises(EagleHeadError, match="dim 48 != the target's hidden_size 32"):
        load_engine(str(checkpoints / "target"), str(tmp_path), device="cpu")
    with pytest.raises(EagleHeadError, match="dim 48 != the target's hidden_size 32"):
        EagleHeadDraft(random_head(dim=48), target)
    other = build(tiny_config("olmoe"))
    with pytest.raises(ValueError, match="built for another target"):
        TransformersEngine(target, EagleHeadDraft(random_head(), other), None)


def test_an_sglang_format_head_of_another_dim_is_refused_before_its_weights(
    checkpoints, tmp_path, monkeypatch
):
    from moe_spec.integration.sglang import eagle_draft
    from moe_spec.integration.transformers import loading

    out = eagle_draft.export_sglang_draft(
        random_head(layout="sglang"), tmp_path / "sg", checkpoints / "target", THETA
    )
    config = json.loads((out / "config.json").read_text())
    config.update(hidden_size=48, head_dim=12)  # a head for a wider target
    (out / "config.json").write_text(json.dumps(config))

    def no_weights(*_args, **_kwargs):
        raise AssertionError("the head's weights were read before its size was checked")

    monkeypatch.setattr(eagle_draft, "load_file", no_weights)
    monkeypatch.setattr(loading, "load_causal_lm", no_weights)
    with pytest.raises(EagleHeadError, match="dim 48 != the target's hidden_size 32"):
        load_engine(str(checkpoints / "target"), str(out), device="cpu")


def test_malformed_heads_are_refused(checkpoints, tmp_path):
    target = str(checkpoints / "target")
    head = tmp_path / "head"
    save_eagle_head(head, random_head())
    tensors = load_file(str(head / "draft.safetensors"))
    del tensors["fc.weight"]
    save_file(tensors, str(head / "draft.safetensors"))
    with pytest.raises(ValueError, match=r"missing \['fc.weight'\]"):
        load_engine(target, str(head), device="cpu")

    (head / "draft.safetensors").rename(head / "draft.bin")  # a pickle is never read
    with pytest.raises(ModelPathError, match="no \\*.safetensors"):
        load_engine(target, str(head), device="cpu")

    save_eagle_head(head, random_head())
    config = json.loads((head / "config.json").read_text())
    bad = [
        ({**config, "format": "moe-spec-checkpoint/0"}, "moe-spec-checkpoint/1"),
        ({**config, "vocab": 96}, "unknown keys \\['vocab'\\]"),
        ({**config, "rope_theta": -1.0}, "rope_theta must be a positive number"),
        ({**config, "draft": {**config["draft"], "n_heads": 5}}, "'draft'.*n_heads=5"),
    ]
    for broken, message in bad:
        (head / "config.json").write_text(json.dumps(broken))
        with pytest.raises(ValueError, match=message):
            load_engine(target, str(head), device="cpu")


def test_half_precision_head_runs_within_budget(target):
    """A bf16 target: the head follows its dtype; masks, rotary tables and cache fit."""
    half = copy.deepcopy(target).to(torch.bfloat16)
    draft = EagleHeadDraft(random_head(), half)
    assert draft.head.fc.weight.dtype == torch.bfloat16
    engine = TransformersEngine(half, draft, None)
    budget = engine.top_k + 1
    spec = SpecConfig(3, 3, 8, policy="router-mass", budget=budget, mode="truncation")
    result = engine.generate_speculative(PROMPT, 8, spec)
    assert len(result.tokens) == 8
    assert all(max(s.distinct_after_L) <= budget for s in result.steps)


def test_moe_spec_ab_takes_a_head_as_the_draft(checkpoints, tmp_path):
    from moe_spec.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("w5 w17 w42 w8\n")
    out = tmp_path / "out"
    args = ["ab", "--target", str(checkpoints / "target"), "--draft", str(checkpoints / "head")]
    args += ["--prompts", str(prompts), "--out", str(out), "--no-progress"]
    args += ["--config", "autoregressive", "--config", "none", "--config", "router-mass:B=3"]
    args += ["--num-tokens", "6", "--width", "2", "--depth", "3", "--max-new-tokens", "8"]
    assert main(args) == 0
    rows = {c["label"]: c for c in json.loads((out / "results.json").read_text())["configs"]}
    assert rows["none tree=6/2/3"]["metrics"]["agreement"] == 1.0  # lossless
    assert rows["router-mass B=3 tree=6/2/3"]["distinct_after"]["p99"] <= 3


def test_decodes_before_the_first_tree_reach_the_head_with_their_features(target):
    """A measuring guard, told the prompt's forward was slow, decodes first and probes the
    tree 4 steps in: the head then reads prompt and decodes (lazily) with the right features."""
    draft = EagleHeadDraft(random_head(), target)
    engine = TransformersEngine(target, draft, None)
    calls, read = [], draft.predicted_features  # what extend and read (decodes) go through
    draft.predicted_features = lambda c, tokens, f: calls.append((tokens, f)) or read(c, tokens, f)
    options = {"measure": True, "probe": 4, "max_probe": 4}
    policy, _ = reporting_prefills(get_policy("auto", **options), slowdown=1e4)
    spec = SpecConfig(width=3, depth=3, num_tokens=8, policy="auto", policy_options=options)
    result = engine.generate_speculative(PROMPT, NEW, spec, policy=policy)
    kinds = [s.guard for s in result.steps]
    assert kinds[:5] == ["autoregressive"] * 4 + ["tree"]  # 2 timing decodes, 2 more, the probe
    assert result.tokens == greedy_reference(target)
    first = calls[0][0]
    assert first == PROMPT[1:] + result.tokens[:1]  # the start: the prompt, then its root...
    assert calls[1][0] == result.tokens[1:5]  # ...the 4 decoded tokens, at the first tree
    committed = PROMPT[:1] + [t for tokens, _ in calls for t in tokens]
    paired_SD = torch.cat([f for _, f in calls])
    torch.testing.assert_close(paired_SD, reference_features(target, committed)[:-1], **CLOSE)
