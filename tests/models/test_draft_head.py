"""The EAGLE-head trainer (``moe_spec.models.draft_head``) on a tiny transformers target."""

from __future__ import annotations

import pytest
import torch
import transformers

from moe_spec.engine.config import DRAFT_LAYOUTS, DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.integration.transformers.eagle import EagleHeadDraft
from moe_spec.models.draft_head import (
    HeadTrainConfig,
    head_agreement,
    target_features,
    train_head,
)
from tests.tiny_models import VOCAB, tiny_config

THETA = 1e4


@pytest.fixture(scope="module")
def target():
    torch.manual_seed(0)
    config = tiny_config("qwen3_moe")
    model = transformers.AutoModelForCausalLM.from_config(config, experts_implementation="eager")
    return model.float().eval().requires_grad_(False)


@pytest.fixture(scope="module")
def corpus(target):
    """Repetitive sequences (a head can learn them) and the target's features on them."""
    g = torch.Generator().manual_seed(1)
    motifs = [torch.randint(0, VOCAB, (5,), generator=g).tolist() for _ in range(3)]
    sequences = [(motifs[i % 3] * 12)[: 40 + i] for i in range(6)]
    return sequences, target_features(target, sequences)


def head_config(target, layout: str = "moe-spec") -> DraftConfig:
    return DraftConfig(dim=target.config.hidden_size, n_heads=4, mlp_dim=64, layout=layout)


def manual_agreement(driver, ids, feature_SD, greedy_S, u: int) -> tuple[int, int]:
    """Pass ``u`` position by position (a prefix forward each): ``(top-1 hits, positions)``."""
    with torch.no_grad():
        inputs_SD = feature_SD[:-1]
        for step in range(u + 1):
            pred = [
                driver(
                    driver, inputs_SD[None, : j + 1], torch.tensor([ids[1 + step : 2 + step + j]])
                )[0, -1]
                for j in range(len(ids) - 1 - step)
            ]
            pred_SD = torch.stack(pred)
            inputs_SD = pred_SD[:-1]
        best_S = driver.lm_head(pred_SD).argmax(-1)
    labels_S = greedy_S[1 + u :]
    return int((best_S == labels_S).sum()), len(labels_S)


def test_agreement_matches_a_position_by_position_reference(target, corpus):
    sequences, data = corpus
    torch.manual_seed(3)
    driver = EagleHeadDraft(EagleDraft(head_config(target)), target, THETA)
    driver.new_cache(64)
    got = head_agreement(driver, sequences[:2], data[:2], unroll=2, k=4)
    for u in range(2):
        hits = [
            manual_agreement(driver, s, *d, u) for s, d in zip(sequences[:2], data[:2], strict=True)
        ]
        expected = sum(h for h, _ in hits) / sum(n for _, n in hits)
        assert got[f"top1_{u}"] == pytest.approx(expected, abs=1e-4)
    assert all(got[f"top4_{u}"] >= got[f"top1_{u}"] for u in range(2))


@pytest.mark.parametrize("layout", DRAFT_LAYOUTS)
def test_training_with_unroll_learns_the_targets_tokens_on_both_passes(target, corpus, layout):
    sequences, data = corpus
    cfg = HeadTrainConfig(steps=60, batch=2, lr=3e-3, warmup=5, window=24, unroll=2, seed=0)
    log: list[dict] = []
    head = train_head(
        target, sequences, data, head_config(target, layout), cfg, THETA, log.append,
        evaluate=lambda d: head_agreement(d, sequences, data), eval_every=30,
    )  # fmt: skip
    evals = [e["eval"] for e in log if "eval" in e]
    assert len(evals) == 2 and all("cls1" in e for e in log if "cls" in e)  # two passes ran
    driver = EagleHeadDraft(head, target, THETA)
    untrained = EagleHeadDraft(type(head)(head.config), target, THETA)
    before, after = (head_agreement(d, sequences, data) for d in (untrained, driver))
    assert after["top1_0"] > max(0.6, before["top1_0"] + 0.3), (before, after)
    assert after["top1_1"] > before["top1_1"] + 0.2, (before, after)
    assert after == evals[-1]  # the logged evaluation is the returned head's


@pytest.mark.parametrize("field", ["steps", "batch", "warmup", "window", "unroll"])
def test_config_refuses_non_positive_sizes(field):
    with pytest.raises(ValueError, match=f"{field} must be a positive integer, got 0"):
        HeadTrainConfig(**{field: 0})
