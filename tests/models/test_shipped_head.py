"""The shipped smollm2-moe EAGLE head drafts what its issue asks of it (#13: an acceptance
length of at least 2.5 at a 32-token tree), on held-out prompts, in the transformers engine."""

from __future__ import annotations

from statistics import fmean

import torch

from moe_spec.ab.prompts import held_out_benchmark_prompts
from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.transformers import load_engine
from moe_spec.models import model_path


def test_the_shipped_head_commits_well_over_2_5_tokens_per_32_token_tree():
    path = model_path("smollm2-moe")  # built on first use, as `make demo` does
    engine = load_engine(str(path), str(path / "eagle"), device="cpu", dtype=torch.float32)
    tree = SpecConfig(width=8, depth=6, num_tokens=32)
    accepted = [
        engine.generate_speculative(engine.encode(prompt), 32, tree).acceptance_length
        for prompt in held_out_benchmark_prompts(3)
    ]
    # measured here: 5.17, 4.43, 3.10 (mean 4.23); the previous head, 3.44, 2.21, 2.13 (2.60),
    # would pass the 2.5 on these three prompts, so the bar is the shipped head's level
    assert fmean(accepted) >= 3.5, accepted
