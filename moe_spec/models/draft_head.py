"""Train an EAGLE-style head (the engine's ``EagleDraft``) on a transformers target's features.

Shape legend: B batch, S sequence positions, D hidden size, V vocabulary.

The feature is what ``moe_spec.integration.transformers.eagle`` feeds the head at run
time: the target's final normed hidden state (its LM head's input). Features and the
target's greedy next tokens are computed once (:func:`target_features`); the head then
learns, as in EAGLE, to predict ``f_{i+1}`` from ``(f_i, x_{i+1})``: cross-entropy of
its logits (the target's LM head, over the whole vocabulary) against the target's greedy
token plus a smooth-L1 pull towards the feature, with small noise on the input features.
With ``unroll > 1`` the head is also trained on its own predictions, as it runs when it
drafts deeper than one step (EAGLE-3's training-time test, without its tree mask): pass
``u`` feeds pass ``u-1``'s predicted features back in and is scored against the target's
features ``u`` positions further on. Seeded; AdamW.

Restricting the cross-entropy to the tokens the target predicts in the data
(``vocab_subset``) makes a step cheaper but never teaches the head to push the other
tokens down: a head trained that way for 100 steps agreed with the target 72% of the
time on its training batch and 21% on held-out text over the whole vocabulary.

``train_head(init=...)`` warm-starts from a head trained before (:func:`warm_start_head`
reads one saved by ``save_eagle_head``), e.g. to train it further on more text.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F

from moe_spec.engine.config import DraftConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.train import lr_at, optimizer_for, set_lr, step_optimizer
from moe_spec.integration.transformers.eagle import EagleHeadDraft
from moe_spec.integration.transformers.loading import read_eagle_head

PAD_LABEL = -100  # cross_entropy's ignore_index: padding positions


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
    vocab_subset: bool = False  # cross-entropy over the tokens the target predicts in ``data``
    window: int = 256  # tokens per sequence in a batch (a random window of each)
    unroll: int = 1  # passes over the head's own predicted features (training-time test)
    unroll_decay: float = 0.7  # weight of pass u is unroll_decay**u
    seconds: float | None = None  # fit the step count (at most ``steps``) into this time
    pad: bool = False  # windows as long as the longest pick, shorter ones padded (else cut)

    def __post_init__(self) -> None:
        for name in ("steps", "batch", "warmup", "window", "unroll"):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if self.pad and self.vocab_subset:
            raise ValueError("pad and vocab_subset do not combine (padding labels are not ids)")
        if self.seconds is not None and not self.seconds > 0:
            raise ValueError(f"seconds must be positive (or None), got {self.seconds!r}")


def check_same_head(got: DraftConfig, want: DraftConfig, what: str) -> None:
    """ValueError naming each field where ``got`` (``what``) differs from ``want``."""
    wanted = asdict(want)
    diffs = [f"{k}={v!r} (need {wanted[k]!r})" for k, v in asdict(got).items() if v != wanted[k]]
    if diffs:
        raise ValueError(f"{what} does not match the head to train: {', '.join(diffs)}")


def warm_start_head(path: str | Path, head_config: DraftConfig, rope_theta: float) -> EagleDraft:
    """The head saved in ``path`` (``save_eagle_head``'s directory: config.json and
    draft.safetensors; never unpickles), refused unless its config and rope theta are
    ``head_config`` and ``rope_theta``."""
    head, theta = read_eagle_head(Path(path))
    check_same_head(head.config, head_config, f"the head in {path}")
    if theta != rope_theta:
        raise ValueError(
            f"the head in {path} has rope_theta={theta!r}; the target's is {rope_theta!r}"
        )
    return head


@torch.no_grad()
def target_features(
    model, sequences: list[list[int]], bf16: bool = False, batch: int = 1
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per sequence: ``(features [S, D] fp32, the target's greedy next tokens [S])``, on the
    model's device; ``bf16``: matmuls under bf16 autocast (AMX on CPUs that have it; features
    a little noisier); ``batch``: up to that many consecutive sequences of one length per
    forward (causal, unpadded: the same features; a GPU wants many)."""
    out = []
    head, device = model.get_output_embeddings(), model.device
    i = 0
    while i < len(sequences):
        n = 1
        while n < batch and i + n < len(sequences) and len(sequences[i + n]) == len(sequences[i]):
            n += 1
        ids_BS = torch.tensor(sequences[i : i + n], device=device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            hidden_BSD = model.get_decoder()(input_ids=ids_BS).last_hidden_state
            greedy_BS = head(hidden_BSD).argmax(-1)
        out += [(h_SD.float(), g_S) for h_SD, g_S in zip(hidden_BSD, greedy_BS, strict=True)]
        i += n
    return out


def train_head(
    model,
    sequences: list[list[int]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    head_config: DraftConfig,
    cfg: HeadTrainConfig,
    rope_theta: float,
    log: Callable[[dict], None] = print,
    evaluate: Callable[[EagleHeadDraft], dict] | None = None,
    eval_every: int = 0,
    init: EagleDraft | None = None,
) -> EagleDraft:
    """A head trained on ``data`` (from :func:`target_features` over ``sequences``) on the
    model's device; ``evaluate(driver)`` is logged every ``eval_every`` steps and after the
    last. ``init``: start from a copy of its weights (its config must be ``head_config``).
    With ``cfg.seconds``, the step count is fixed once the warm-up steps are timed (logged
    as ``{"steps": N}``; ``--steps N`` repeats it) so that training fits that time."""
    torch.manual_seed(cfg.seed)
    head = EagleDraft(head_config)
    if init is not None:
        check_same_head(init.config, head_config, "init")
        head.load_state_dict(init.state_dict())  # a copy: ``init`` is left as it is
    driver = EagleHeadDraft(head, model, rope_theta)
    device = driver.device
    driver.new_cache(max(len(s) for s in sequences))
    head.float().train().requires_grad_(True)
    lm_weight_VD = model.get_output_embeddings().weight.detach()
    if cfg.vocab_subset:  # only the tokens the target predicts here (see the module doc)
        vocab_U = torch.unique(torch.cat([greedy_S for _f, greedy_S in data]))
        lm_weight_UD = lm_weight_VD[vocab_U]
    else:
        lm_weight_UD = lm_weight_VD
    opt = optimizer_for(head, cfg.lr, cfg.weight_decay)
    rng = random.Random(cfg.seed)
    g = torch.Generator(device).manual_seed(cfg.seed)
    start, steps, step, evaluated = time.perf_counter(), cfg.steps, 0, -1
    while step < steps:
        if cfg.seconds is not None and step == cfg.warmup:
            steps = fitted_steps(step, start, cfg, device)
            log({"steps": steps, "s": round(time.perf_counter() - start, 1)})
        set_lr(opt, lr_at(step, cfg.lr, cfg.warmup, steps))
        picks = [rng.randrange(len(sequences)) for _ in range(cfg.batch)]
        feature_BSD, greedy_BS, tokens_BS, valid_BS = training_batch(
            sequences, data, picks, rng, cfg, device
        )
        S = feature_BSD.shape[1]
        if cfg.vocab_subset:
            greedy_BS = torch.searchsorted(vocab_U, greedy_BS)
        input_BSD = feature_BSD[:, :-1] + cfg.feature_noise * torch.randn(
            feature_BSD[:, :-1].shape, generator=g, device=device
        )
        loss, passes = 0.0, []
        for u in range(min(cfg.unroll, S - 2)):
            # pass u: pred[:, j] is the head's guess of f_{j+1+u}, labelled greedy[j+1+u]
            pred_BSD = head(driver, input_BSD, tokens_BS[:, 1 + u :])
            with torch.autocast(device.type, dtype=torch.bfloat16):
                logits_BSV = F.linear(pred_BSD, lm_weight_UD)
            labels_BS = greedy_BS[:, 1 + u :]
            cls = F.cross_entropy(
                logits_BSV.float().flatten(0, 1), labels_BS.flatten(), ignore_index=PAD_LABEL
            )
            if valid_BS is None:
                reg = F.smooth_l1_loss(pred_BSD, feature_BSD[:, 1 + u :])
            else:  # the mean over real positions only
                reg_BS = F.smooth_l1_loss(pred_BSD, feature_BSD[:, 1 + u :], reduction="none")
                mask_BS = valid_BS[:, 1 + u :]
                reg = (reg_BS.mean(-1) * mask_BS).sum() / mask_BS.sum().clamp(min=1)
            loss = loss + cfg.unroll_decay**u * (cls + cfg.feature_loss * reg)
            passes.append((cls, reg, logits_BSV, labels_BS))
            input_BSD = pred_BSD[:, :-1]
        step_optimizer(opt, head, loss)
        cls, reg, logits_BSV, labels_BS = passes[0]
        if step % 20 == 0 or step == steps - 1:
            with torch.no_grad():
                real_BS = labels_BS != PAD_LABEL
                top1 = ((logits_BSV.argmax(-1) == labels_BS) & real_BS).sum() / real_BS.sum()
                top1 = top1.item()
            log(
                {
                    "step": step,
                    "cls": round(cls.item(), 4),
                    "reg": round(reg.item(), 4),
                    "top1": round(top1, 4),
                    **{f"cls{u}": round(p[0].item(), 4) for u, p in enumerate(passes[1:], 1)},
                    "s": round(time.perf_counter() - start, 1),
                }
            )
        if evaluate is not None and eval_every and (step + 1) % eval_every == 0:
            head.eval()
            log({"step": step, "eval": evaluate(driver)})
            head.train()
            evaluated = step
        step += 1
    head.eval().requires_grad_(False)
    if evaluate is not None and evaluated != steps - 1:  # the last step's, once
        log({"step": steps - 1, "eval": evaluate(driver)})
    return head


def training_batch(
    sequences: list[list[int]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    picks: list[int],
    rng: random.Random,
    cfg: HeadTrainConfig,
    device: torch.device,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """A random window of each picked sequence: ``(features [B, S, D], greedy [B, S], tokens
    [B, S], valid [B, S] or None)``. Windows are ``S = min(window, shortest pick)`` long, or
    with ``cfg.pad`` ``min(window, longest pick)``, shorter ones padded at the end (greedy
    ``PAD_LABEL``, ``valid`` False there; causal, so the padding changes no real position)."""
    lengths = [len(sequences[i]) for i in picks]
    S = min(cfg.window, max(lengths) if cfg.pad else min(lengths))
    sizes = [min(S, n) for n in lengths]
    starts = [rng.randrange(n - m + 1) for n, m in zip(lengths, sizes, strict=True)]
    windows = list(zip(picks, starts, sizes, strict=True))
    pad = lambda x, value: F.pad(x, (0, 0) * (x.dim() - 1) + (0, S - len(x)), value=value)  # noqa: E731
    feature_BSD = torch.stack([pad(data[i][0][a : a + m], 0.0) for i, a, m in windows])
    greedy_BS = torch.stack([pad(data[i][1][a : a + m], PAD_LABEL) for i, a, m in windows])
    tokens_BS = torch.tensor(
        [sequences[i][a : a + m] + [0] * (S - m) for i, a, m in windows], device=device
    )
    valid_BS = None
    if cfg.pad:
        valid_BS = (
            torch.arange(S, device=device)[None] < torch.tensor(sizes, device=device)[:, None]
        )
    return feature_BSD, greedy_BS, tokens_BS, valid_BS


def fitted_steps(done: int, start: float, cfg: HeadTrainConfig, device: torch.device) -> int:
    """How many steps (at most ``cfg.steps``, at least ``done``) fit ``cfg.seconds`` at the
    rate of the ``done`` steps run since ``start`` (``time.perf_counter()``)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elapsed = time.perf_counter() - start
    per_step = elapsed / max(done, 1)
    return max(done, min(cfg.steps, done + int((cfg.seconds - elapsed) / per_step)))


@torch.no_grad()
def head_agreement(
    driver: EagleHeadDraft,
    sequences: list[list[int]],
    data: list[tuple[torch.Tensor, torch.Tensor]],
    unroll: int = 2,
    k: int = 8,
) -> dict[str, float]:
    """Teacher-forced agreement of the head with the target's greedy tokens, per pass.

    ``top1_u``/``topk_u``: the share of positions where pass ``u`` (``u`` of the head's own
    features fed back, as when drafting ``u + 1`` steps deep) ranks the target's greedy
    token first / among its ``k`` best, over the whole vocabulary.
    """
    longest = max(map(len, sequences))
    if driver.rope_cos is None or driver.rope_cos.shape[0] < longest:
        driver.new_cache(longest)  # rotary tables long enough
    hits = torch.zeros(2, unroll)  # [top1 / topk, pass]
    counts = torch.zeros(unroll)
    for ids, (feature_SD, greedy_S) in zip(sequences, data, strict=True):
        input_BSD, tokens_S = feature_SD[None, :-1], torch.tensor(ids)
        for u in range(min(unroll, len(ids) - 2)):
            pred_BSD = driver(driver, input_BSD, tokens_S[None, 1 + u :])
            best_SK = driver.lm_head(pred_BSD[0]).topk(k, dim=-1).indices
            labels_S = greedy_S[1 + u :].cpu()  # lm_head's logits are on the CPU
            hits[0, u] += (best_SK[:, 0] == labels_S).sum()
            hits[1, u] += (best_SK == labels_S[:, None]).any(-1).sum()
            counts[u] += len(labels_S)
            input_BSD = pred_BSD[:, :-1]
    share = (hits / counts.clamp(min=1)).tolist()
    return {
        f"{name}_{u}": round(share[row][u], 4)
        for row, name in enumerate(("top1", f"top{k}"))
        for u in range(unroll)
    }
