"""A tiny random-initialised target + draft: fast, and enough to check the mechanics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from moe_spec import budget
from moe_spec.engine.checkpoint import Checkpoint
from moe_spec.engine.config import DraftConfig, ModelConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.generate import Engine
from moe_spec.engine.model import MoETransformer
from moe_spec.engine.tokenizer import train_tokenizer

TINY = ModelConfig(
    vocab_size=300,
    dim=32,
    n_layers=2,
    n_heads=2,
    n_experts=8,
    top_k=2,
    expert_dim=16,
    max_seq_len=1024,
)
TINY_DRAFT = DraftConfig(dim=32, n_heads=2, mlp_dim=64)


@pytest.fixture(scope="session")
def tiny_checkpoint() -> Checkpoint:
    torch.manual_seed(0)
    tokenizer = train_tokenizer([Path(budget.__file__).read_text()], TINY.vocab_size)
    assert tokenizer.get_vocab_size() == TINY.vocab_size
    target = MoETransformer(TINY).eval().requires_grad_(False)
    draft = EagleDraft(TINY_DRAFT).eval().requires_grad_(False)
    return Checkpoint(target, draft, tokenizer, Path("tiny"))


@pytest.fixture(scope="session")
def tiny_engine(tiny_checkpoint) -> Engine:
    return Engine(tiny_checkpoint)
