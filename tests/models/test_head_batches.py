"""How the EAGLE-head trainer batches its text: target features many sequences per forward,
windows padded to the longest pick (``HeadTrainConfig.pad``), a step count fitted to a time."""

from __future__ import annotations

import random

import pytest
import torch
import transformers

from moe_spec.engine.config import DraftConfig
from moe_spec.models import draft_head
from moe_spec.models.draft_head import (
    PAD_LABEL,
    HeadTrainConfig,
    fitted_steps,
    head_agreement,
    target_features,
    train_head,
    training_batch,
)
from tests.tiny_models import VOCAB, tiny_config

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    model = transformers.AutoModelForCausalLM.from_config(
        tiny_config("qwen3_moe"), experts_implementation="eager"
    )
    return model.float().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def corpus(target):
    """Sequences of 40, 40, 40, 23, 40, 31 tokens: runs of one length and odd ones between."""
    g = torch.Generator().manual_seed(1)
    lengths = (40, 40, 40, 23, 40, 31)
    sequences = [torch.randint(0, VOCAB, (n,), generator=g).tolist() for n in lengths]
    return sequences, target_features(target, sequences)


def test_features_of_a_batched_forward_are_those_of_one_sequence_at_a_time(target, corpus):
    sequences, one_by_one = corpus
    batched = target_features(target, sequences, batch=4)
    assert len(batched) == len(sequences)
    for ids, (f_SD, g_S), (ref_SD, ref_S) in zip(sequences, batched, one_by_one, strict=True):
        assert f_SD.shape == (len(ids), target.config.hidden_size) and g_S.shape == (len(ids),)
        torch.testing.assert_close(f_SD, ref_SD, atol=1e-5, rtol=1e-5)
        assert torch.equal(g_S, ref_S)


def test_without_pad_the_windows_are_cut_to_the_shortest_pick(corpus):
    sequences, data = corpus
    cfg = HeadTrainConfig(batch=3, window=32)
    picks = [0, 3, 5]  # 40, 23, 31 tokens
    rng, ref = random.Random(7), random.Random(7)
    feature_BSD, greedy_BS, tokens_BS, valid_BS = training_batch(
        sequences, data, picks, rng, cfg, CPU
    )
    starts = [ref.randrange(len(sequences[i]) - 23 + 1) for i in picks]  # the old rule
    assert valid_BS is None and feature_BSD.shape[:2] == (3, 23)
    for b, (i, a) in enumerate(zip(picks, starts, strict=True)):
        assert torch.equal(feature_BSD[b], data[i][0][a : a + 23])
        assert torch.equal(greedy_BS[b], data[i][1][a : a + 23])
        assert tokens_BS[b].tolist() == sequences[i][a : a + 23]
    assert rng.random() == ref.random()  # the same draws: runs from before repeat


def test_with_pad_short_picks_are_padded_and_masked(corpus):
    sequences, data = corpus
    cfg = HeadTrainConfig(batch=3, window=32, pad=True)
    picks = [0, 3, 5]  # 40, 23, 31 tokens: windows of 32, 23 (whole), 31 (whole)
    feature_BSD, greedy_BS, tokens_BS, valid_BS = training_batch(
        sequences, data, picks, random.Random(7), cfg, CPU
    )
    assert feature_BSD.shape[:2] == (3, 32)
    assert valid_BS.sum(1).tolist() == [32, 23, 31]
    for b, i in ((1, 3), (2, 5)):
        n = len(sequences[i])
        assert torch.equal(feature_BSD[b, :n], data[i][0])  # the whole sequence, from 0
        assert torch.equal(greedy_BS[b, :n], data[i][1])
        assert tokens_BS[b, :n].tolist() == sequences[i]
        assert (greedy_BS[b, n:] == PAD_LABEL).all() and (feature_BSD[b, n:] == 0).all()
        assert not valid_BS[b, n:].any()


class StoppedClock:
    """``time`` for the trainer, standing still: the time since ``start`` is what the test
    says, not what a loaded machine adds before :func:`fitted_steps` reads the clock."""

    @staticmethod
    def perf_counter() -> float:
        return 1000.0


@pytest.fixture
def clock(monkeypatch) -> StoppedClock:
    """The trainer's clock (``draft_head.time``), stopped."""
    stopped = StoppedClock()
    monkeypatch.setattr(draft_head, "time", stopped)
    return stopped


def test_fitted_steps_fill_the_time_at_the_measured_rate(clock):
    cfg = HeadTrainConfig(steps=1000, warmup=10, seconds=5.0)
    start = clock.perf_counter() - 1.0  # 10 steps took 1 s: 0.1 s each, 4 s left
    assert fitted_steps(10, start, cfg, CPU) == 50  # the 10 and 40 more
    assert fitted_steps(10, start, HeadTrainConfig(steps=30, warmup=10, seconds=5.0), CPU) == 30
    late = clock.perf_counter() - 9.0  # over the time already: stop after the warm-up
    assert fitted_steps(10, late, cfg, CPU) == 10


@pytest.mark.parametrize("seconds", [1e-9, 30.0])
def test_a_timed_run_logs_its_step_count_and_evaluates_its_last_step_once(target, corpus, seconds):
    sequences, data = corpus
    cfg = HeadTrainConfig(steps=12, batch=2, warmup=4, window=16, seconds=seconds, pad=True)
    config = DraftConfig(dim=target.config.hidden_size, n_heads=4, mlp_dim=64)
    log: list[dict] = []
    train_head(
        target, sequences, data, config, cfg, 1e4, log.append,
        evaluate=lambda d: head_agreement(d, sequences[:2], data[:2]), eval_every=0,
    )  # fmt: skip
    fitted = [e["steps"] for e in log if "steps" in e]
    steps = 4 if seconds < 1 else 12  # the warm-up alone, or every step asked for
    assert fitted == [steps]
    assert [e["step"] for e in log if "eval" in e] == [steps - 1]


def test_config_refuses_pad_with_a_vocabulary_subset_and_a_time_that_is_not_positive():
    with pytest.raises(ValueError, match="pad and vocab_subset do not combine"):
        HeadTrainConfig(pad=True, vocab_subset=True)
    with pytest.raises(ValueError, match="seconds must be positive"):
        HeadTrainConfig(seconds=0.0)
