"""Train an EAGLE-style head (the engine's ``EagleDraft``) on a transformers target's features.

Shape legend: B batch, S sequence positions, D hidden size, V vocabulary.

The feature is what ``moe_spec.integration.transformers.eagle`` feeds the head at run
time: the target's final normed hidden state (its LM head's input). Features and the
target's greedy next tokens are computed once (:func:`target_features`); the head then
learns, as in EAGLE, to predict ``f_{i+1}`` from ``(f_i, x_{i+1})``: cross-entropy of
its logits (the target's LM head) against the target's greedy token (over the tokens the
target predicts in the data, to keep the LM head's cost down) plus a smooth-L1 pull
towards the feature, with small noise on the input features. Seeded; AdamW.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from moe_spec.engine.config import DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.train import lr_at, optimizer_for, set_lr, step_optimizer
from moe_spec.integration.transformers.eagle import EagleHeadDraft


@dataclass(frozen=True)
class HeadTrainConfig:
    steps: int = 300
    batch: int = 4
    lr: float = 1e-3
    warmup: int = 20
    weight_decay: float = 0.01
    feature_loss: float = 0.5
    feature_noise: float = 0.05
    seed: int = 0
    vocab_subset: bool = True  # cross-entropy over the tokens the target predicts in ``data``

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "warmup"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")


@torch.no_grad()
def target_features(
    model, sequences: list[list[int]], bf16: bool = False
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence: ``(features [S, D] fp32, the target's greedy next tokens [S])``;
    ``bf16``: matmuls under bf16 autocast (AMX on CPUs that have it; features a little noisier)."""
    out = []
    head = model.get_output_embeddings()
    for ids in sequences:
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            hidden_SD = model.get_decoder()(input_ids=torch.tensor([ids])).last_hidden_state[0]
            greedy_S = head(hidden_SD).argmax(-1)
        out.append((hidden_SD.float(), greedy_S))
    return out


def train_head(
    model,
    sequences: list[list[int]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    head_config: DraftConfig,
    cfg: HeadTrainConfig,
    rope_theta: float,
    log: Callable[[dict], None] = print,
) -> EagleDraft:
    """A head trained on ``data`` (from :func:`target_features` over ``sequences``)."""
    torch.manual_seed(cfg.seed)
    head = EagleDraft(head_config)
    driver = EagleHeadDraft(head, model, rope_theta)
    driver.new_cache(max(len(s) for s in sequences))
    head.float().train().requires_grad_(True)
    lm_weight_VD = model.get_output_embeddings().weight.detach()
    # Cross-entropy over the tokens the target ever predicts here (a few thousand, not the
    # whole vocabulary): the LM head dominates a step's cost on a CPU.
    vocab_U = torch.unique(torch.cat([greedy_S for _f, greedy_S in data]))
    lm_weight_UD = lm_weight_VD[vocab_U] if cfg.vocab_subset else lm_weight_VD
    opt = optimizer_for(head, cfg.lr, cfg.weight_decay)
    rng = random.Random(cfg.seed)
    g = torch.Generator().manual_seed(cfg.seed)
    start = time.perf_counter()
    for step in range(cfg.steps):
        set_lr(opt, lr_at(step, cfg.lr, cfg.warmup, cfg.steps))
        picks = [rng.randrange(len(sequences)) for _ in range(cfg.batch)]
        S = min(len(sequences[i]) for i in picks)
        feature_BSD = torch.stack([data[i][0][:S] for i in picks])
        greedy_BS = torch.stack([data[i][1][:S] for i in picks])
        if cfg.vocab_subset:
            greedy_BS = torch.searchsorted(vocab_U, greedy_BS)
        tokens_BS = torch.tensor([sequences[i][:S] for i in picks])
        noisy_BSD = feature_BSD[:, :-1] + cfg.feature_noise * torch.randn(
            feature_BSD[:, :-1].shape, generator=g
        )
        pred_BSD = head(driver, noisy_BSD, tokens_BS[:, 1:])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits_BSV = F.linear(pred_BSD, lm_weight_UD)
        cls = F.cross_entropy(logits_BSV.float().flatten(0, 1), greedy_BS[:, 1:].flatten())
        reg = F.smooth_l1_loss(pred_BSD, feature_BSD[:, 1:])
        step_optimizer(opt, head, cls + cfg.feature_loss * reg)
        if step % 20 == 0 or step == cfg.steps - 1:
            with torch.no_grad():
                top1 = (logits_BSV.argmax(-1) == greedy_BS[:, 1:]).float().mean().item()
            log(
                {
                    "step": step,
                    "cls": round(cls.item(), 4),
                    "reg": round(reg.item(), 4),
                    "top1": round(top1, 4),
                    "s": round(time.perf_counter() - start, 1),
                }
            )
    return head.eval().requires_grad_(False)
