"""Train the shipped model from scratch: tokenizer, MoE target, EAGLE draft.

Shape legend: B batch, S sequence, V vocabulary, D model dim.

Everything is seeded; on a 2-core CPU the whole run takes under 90 minutes
(see BENCHMARKS.md for the measured time). Held-out files (``data.HELD_OUT``)
are never trained on.
"""

from __future__ import annotations

import json
import math
import platform
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from tqdm import tqdm

from moe_spec.engine.checkpoint import save_checkpoint
from moe_spec.engine.config import DraftConfig, ModelConfig
from moe_spec.engine.data import read_text, split_files
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.model import MoETransformer
from moe_spec.engine.tokenizer import EOT, train_tokenizer


@dataclass(frozen=True)
class TrainConfig:
    seed: int = 0
    seq_len: int = 256
    batch_size: int = 8
    target_steps: int = 1800
    target_lr: float = 2e-3
    aux_loss_coef: float = 0.01
    draft_steps: int = 2500
    draft_lr: float = 1e-3
    draft_feature_loss: float = 0.5
    draft_feature_noise: float = 0.05
    warmup_steps: int = 100
    weight_decay: float = 0.1
    eval_batches: int = 16

    def __post_init__(self) -> None:
        for name in ("seq_len", "batch_size", "target_steps", "draft_steps", "eval_batches"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")


def encode_corpus(tokenizer, texts: list[str]) -> torch.Tensor:
    """One long token stream, documents separated by the end-of-text token."""
    eot = tokenizer.token_to_id(EOT)
    ids: list[int] = []
    for encoding in tokenizer.encode_batch(texts):
        ids.extend(encoding.ids)
        ids.append(eot)
    return torch.tensor(ids, dtype=torch.int32)


def sample_batch(
    stream: torch.Tensor, batch: int, seq_len: int, g: torch.Generator
) -> torch.Tensor:
    """``[B, S+1]`` windows at random offsets."""
    starts = torch.randint(0, stream.numel() - seq_len - 1, (batch,), generator=g)
    return torch.stack([stream[s : s + seq_len + 1] for s in starts.tolist()]).long()


def lr_at(step: int, peak: float, warmup: int, total: int) -> float:
    """Linear warm-up, then cosine decay to 10% of the peak."""
    if step < warmup:
        return peak * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return peak * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def optimizer_for(module: torch.nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    decay = [p for n, p in module.named_parameters() if p.requires_grad and p.dim() >= 2]
    no_decay = [p for n, p in module.named_parameters() if p.requires_grad and p.dim() < 2]
    groups = [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95))


def set_lr(opt: torch.optim.Optimizer, lr: float) -> None:
    for group in opt.param_groups:
        group["lr"] = lr


def step_optimizer(opt: torch.optim.Optimizer, module: torch.nn.Module, loss: torch.Tensor) -> None:
    """Backward, clip the gradient norm to 1, step."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(module.parameters(), 1.0)
    opt.step()


@torch.no_grad()
def held_out_loss(target: MoETransformer, stream: torch.Tensor, cfg: TrainConfig) -> float:
    """Mean next-token cross-entropy (nats) over fixed held-out windows."""
    target.eval()
    g = torch.Generator().manual_seed(1234)
    losses = []
    for _ in range(cfg.eval_batches):
        batch = sample_batch(stream, cfg.batch_size, cfg.seq_len, g)
        logits = target(batch[:, :-1]).logits_BQV
        losses.append(F.cross_entropy(logits.flatten(0, 1), batch[:, 1:].flatten()).item())
    target.train()
    return sum(losses) / len(losses)


def train_target(target, stream, cfg: TrainConfig, log) -> None:
    g = torch.Generator().manual_seed(cfg.seed + 1)
    opt = optimizer_for(target, cfg.target_lr, cfg.weight_decay)
    target.train()
    bar = tqdm(range(cfg.target_steps), desc="target", unit="step")
    for step in bar:
        set_lr(opt, lr_at(step, cfg.target_lr, cfg.warmup_steps, cfg.target_steps))
        batch = sample_batch(stream, cfg.batch_size, cfg.seq_len, g)
        out = target(batch[:, :-1])
        ce = F.cross_entropy(out.logits_BQV.flatten(0, 1), batch[:, 1:].flatten())
        loss = ce + cfg.aux_loss_coef * out.aux_loss
        step_optimizer(opt, target, loss)
        bar.set_postfix(ce=f"{ce.item():.3f}", aux=f"{out.aux_loss.item():.3f}")
        if step % 50 == 0 or step == cfg.target_steps - 1:
            log({"phase": "target", "step": step, "ce": ce.item(), "aux": out.aux_loss.item()})


def train_draft(draft, target, stream, cfg: TrainConfig, log) -> None:
    """EAGLE objective: match the target's next-token distribution and its next feature."""
    g = torch.Generator().manual_seed(cfg.seed + 2)
    opt = optimizer_for(draft, cfg.draft_lr, cfg.weight_decay)
    target.eval().requires_grad_(False)
    draft.train()
    bar = tqdm(range(cfg.draft_steps), desc="draft", unit="step")
    for step in bar:
        set_lr(opt, lr_at(step, cfg.draft_lr, cfg.warmup_steps, cfg.draft_steps))
        batch = sample_batch(stream, cfg.batch_size, cfg.seq_len, g)
        with torch.no_grad():
            out = target(batch[:, :-1])
        feature_BSD = out.feature_BQD
        noisy = feature_BSD[:, :-1] + cfg.draft_feature_noise * torch.randn(
            feature_BSD[:, :-1].shape, generator=g
        )
        pred_BSD = draft(target, noisy, batch[:, 1:-1])
        logits_BSV = target.lm_head(pred_BSD)
        want_BSV = torch.softmax(out.logits_BQV[:, 1:], dim=-1)
        cls = F.cross_entropy(logits_BSV.flatten(0, 1), want_BSV.flatten(0, 1))
        reg = F.smooth_l1_loss(pred_BSD, feature_BSD[:, 1:])
        loss = cls + cfg.draft_feature_loss * reg
        step_optimizer(opt, draft, loss)
        with torch.no_grad():
            top1 = (logits_BSV.argmax(-1) == out.logits_BQV[:, 1:].argmax(-1)).float().mean()
        bar.set_postfix(cls=f"{cls.item():.3f}", top1=f"{top1.item():.3f}")
        if step % 50 == 0 or step == cfg.draft_steps - 1:
            log(
                {
                    "phase": "draft",
                    "step": step,
                    "cls": cls.item(),
                    "reg": reg.item(),
                    "top1_agreement": top1.item(),
                }
            )


def train_all(
    out_dir: Path,
    cfg: TrainConfig | None = None,
    model_cfg: ModelConfig | None = None,
    draft_cfg: DraftConfig | None = None,
) -> dict:
    """Train tokenizer, target and draft; write a checkpoint and ``train.log`` to ``out_dir``."""
    cfg, model_cfg, draft_cfg = (
        cfg or TrainConfig(),
        model_cfg or ModelConfig(),
        draft_cfg or DraftConfig(),
    )
    out_dir.mkdir(parents=True, exist_ok=True)
    log_file = (out_dir / "train.log").open("w")

    def log(entry: dict) -> None:
        log_file.write(json.dumps(entry) + "\n")
        log_file.flush()

    torch.manual_seed(cfg.seed)
    times: dict[str, float] = {}
    start = time.perf_counter()
    train_files, held_out_files = split_files()
    train_texts = [read_text(p) for p in train_files]
    tokenizer = train_tokenizer(train_texts, model_cfg.vocab_size)
    train_stream = encode_corpus(tokenizer, train_texts)
    held_stream = encode_corpus(tokenizer, [read_text(p) for p in held_out_files])
    times["tokenizer_and_data_s"] = time.perf_counter() - start
    log(
        {
            "phase": "data",
            "train_files": len(train_files),
            "train_tokens": train_stream.numel(),
            "held_out_tokens": held_stream.numel(),
        }
    )

    target = MoETransformer(model_cfg)
    phase = time.perf_counter()
    train_target(target, train_stream, cfg, log)
    times["target_s"] = time.perf_counter() - phase
    loss = held_out_loss(target, held_stream, cfg)
    log({"phase": "target", "held_out_loss": loss})

    draft = EagleDraft(draft_cfg)
    phase = time.perf_counter()
    train_draft(draft, target, train_stream, cfg, log)
    times["draft_s"] = time.perf_counter() - phase
    times["total_s"] = time.perf_counter() - start
    training = {
        "train_config": asdict(cfg),
        "times": times,
        "held_out_loss_nats": loss,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "train_files": len(train_files),
        "train_tokens": int(train_stream.numel()),
        "held_out_files": [p.name for p in held_out_files],
        "held_out_tokens": int(held_stream.numel()),
        "threads": torch.get_num_threads(),
    }
    save_checkpoint(out_dir, target, draft, tokenizer, training)
    log({"phase": "done", **times})
    log_file.close()
    return training
