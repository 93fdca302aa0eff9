"""The EAGLE-head trainer (``moe_spec.models.draft_head``) on a tiny transformers target."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import transformers

from moe_spec.engine.config import DRAFT_LAYOUTS, DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.integration.transformers import save_eagle_head
from moe_spec.integration.transformers.eagle import EagleHeadDraft
from moe_spec.models.draft_head import (
    HeadTrainConfig,
    head_agreement,
    target_features,
    train_head,
    warm_start_head,
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


@pytest.fixture(scope="module")
def trained(target, corpus):
    """A head trained on ``corpus`` (agrees with the target) and its agreement."""
    sequences, data = corpus
    cfg = HeadTrainConfig(steps=60, batch=2, lr=3e-3, warmup=5, window=24, unroll=2, seed=0)
    head = train_head(target, sequences, data, head_config(target), cfg, THETA, lambda _e: None)
    return head, head_agreement(EagleHeadDraft(head, target, THETA), sequences, data)


def test_warm_start_reads_the_saved_head_and_starts_from_its_weights(
    target, corpus, trained, tmp_path
):
    sequences, data = corpus
    head, agreement = trained
    assert agreement["top1_0"] > 0.6  # a head worth starting from
    save_eagle_head(tmp_path, head, rope_theta=THETA)
    loaded = warm_start_head(tmp_path, head_config(target), THETA)
    stored = {k: v.to(torch.bfloat16).float() for k, v in head.state_dict().items()}
    assert_same_weights(loaded, stored)  # the weights as saved (bf16)
    frozen = HeadTrainConfig(steps=3, batch=2, lr=0.0, warmup=1, window=24, seed=4)
    kept = train_head(
        target, sequences, data, head_config(target), frozen, THETA, lambda _e: None, init=loaded
    )
    assert_same_weights(kept, stored)  # no update: exactly the given weights come back
    assert kept is not loaded
    # a few steps on: the warm start keeps its agreement; from scratch it is far from it
    cfg = HeadTrainConfig(steps=6, batch=2, lr=3e-4, warmup=2, window=24, seed=4)
    logs: dict[str, list[dict]] = {"warm": [], "cold": []}
    warm, cold = (
        train_head(target, sequences, data, head_config(target), cfg, THETA, logs[name].append,
                   init=init)
        for name, init in (("warm", loaded), ("cold", None))
    )  # fmt: skip
    assert_same_weights(loaded, stored)  # ``init`` itself is left as it was
    after = {n: head_agreement(EagleHeadDraft(h, target, THETA), sequences, data)
             for n, h in (("warm", warm), ("cold", cold))}  # fmt: skip
    assert after["warm"]["top1_0"] > agreement["top1_0"] - 0.1, (agreement, after)
    assert after["cold"]["top1_0"] < after["warm"]["top1_0"] - 0.3, after
    assert logs["warm"][0]["cls"] < logs["cold"][0]["cls"] - 1.0  # step 0 scored the init


def assert_same_weights(a: EagleDraft, sb: dict[str, torch.Tensor]) -> None:
    sa = a.state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_a_head_that_does_not_fit_is_refused(target, corpus, trained, tmp_path):
    sequences, data = corpus
    head, _ = trained
    save_eagle_head(tmp_path, head, rope_theta=THETA)
    other = replace(head_config(target), mlp_dim=32)
    with pytest.raises(ValueError, match=r"mlp_dim=64 \(need 32\)"):
        warm_start_head(tmp_path, other, THETA)
    with pytest.raises(ValueError, match="rope_theta=10000.0; the target's is 500.0"):
        warm_start_head(tmp_path, head_config(target), 500.0)
    cfg = HeadTrainConfig(steps=1, batch=2, window=24)
    with pytest.raises(
        ValueError, match=r"init does not match.*layout='moe-spec' \(need 'sglang'\)"
    ):
        train_head(target, sequences, data, head_config(target, "sglang"), cfg, THETA, init=head)
    (tmp_path / "config.json").write_text('{"format": "other"}')
    with pytest.raises(ValueError, match="format 'other'"):
        warm_start_head(tmp_path, head_config(target), THETA)
