"""The shipped checkpoint: what the issue asks of it, and that it decodes."""

from __future__ import annotations

import json

import pytest
import torch

from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint
from moe_spec.engine.data import HELD_OUT, split_files
from moe_spec.engine.demo import held_out_prompts
from moe_spec.engine.generate import Engine, SpecConfig


@pytest.fixture(scope="module")
def engine() -> Engine:
    return Engine(load_checkpoint(SHIPPED))


def test_shipped_files_are_small_and_the_model_has_the_required_shape(engine):
    size = sum(f.stat().st_size for f in SHIPPED.iterdir())
    assert size <= 40 * 2**20
    cfg = engine.config
    assert cfg.n_layers >= 4 and cfg.n_experts >= 32 and cfg.top_k / cfg.n_experts <= 1 / 8
    training = json.loads((SHIPPED / "training.json").read_text())
    assert training["held_out_files"] == [name.split("/")[-1] for name in HELD_OUT]


def test_held_out_files_are_never_in_the_training_set():
    train, held_out = split_files()
    assert len(held_out) == len(HELD_OUT) and not set(train) & set(held_out)


def test_it_decodes_python(engine):
    prompt = held_out_prompts(["textwrap.py"], chars=400)[0]
    out = engine.generate_autoregressive(engine.encode(prompt), 24)
    text = engine.decode(out.tokens)
    assert len(out.tokens) == 24 and text.strip()
    assert engine.decode(engine.encode(prompt)) == prompt  # byte-level: lossless


def test_greedy_speculative_equals_autoregressive(engine):
    spec = SpecConfig(width=4, depth=6, num_tokens=32)
    for prompt in held_out_prompts(chars=600):
        ids = engine.encode(prompt)
        want = engine.generate_autoregressive(ids, 40).tokens
        got = engine.generate_speculative(ids, 40, spec)
        assert got.tokens == want
        assert got.acceptance_length > 1.5  # a trained draft: well above no speculation
        # Routing is neither collapsed nor uniform: a 32-token tree reads well over top-k
        # experts per layer, and fewer than independent routing would (31.7 of 32).
        distinct = [d for step in got.steps for d in step.distinct_before_L]
        assert 2.5 * engine.config.top_k <= sum(distinct) / len(distinct) < 28


def test_the_draft_reads_decoded_tokens_and_reports_its_guesses_at_them(engine):
    """After a run of decodes planned with ``read`` (and before a tree after decodes) the
    draft's guesses at the decoded tokens go to ``Policy.draft_matched``: the same as its
    teacher-forced guesses in one forward over the whole text (the target's features of
    every token before); the read is priced as one draft forward on the run's last decode."""
    from tests.engine.test_auto import draft_reads

    ids = engine.encode(held_out_prompts(chars=600)[0])
    out, reports, steps = draft_reads(engine, ids)
    seq = ids + out
    draft_cfg = engine.draft.config
    with torch.no_grad():
        feature_SD = engine.target(torch.tensor([seq])).feature_BQD[0]
        cache = engine.new_cache(1, draft_cfg.n_heads, draft_cfg.head_dim)
        guess_S = engine.draft(
            engine.target, feature_SD[None, :-1], torch.tensor([seq[1:]]), cache=cache
        )
        guess_S = engine.target.lm_head(guess_S[0]).argmax(-1).tolist()  # guess_S[i]: at i + 2
    first = len(ids) + 1 + steps[0].committed  # the first decoded token's position
    want = [
        [guess_S[p - 2] == seq[p] for p in range(start, start + n)]
        for start, n in ((first, 5), (first + 5, 4))
    ]
    assert reports == want
    assert any(map(any, want)) and not all(map(all, want))  # the draft right and wrong
