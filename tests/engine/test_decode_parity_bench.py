"""bench/auto_decode_parity.py: its timer sees every target forward, by arm and length."""

from __future__ import annotations

import sys
from pathlib import Path

import torch

from moe_spec.engine.generate import SpecConfig

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from auto_decode_parity import ForwardTimer, run_arm  # noqa: E402


def test_the_timer_counts_each_arms_prompt_forward_and_decodes(tiny_engine):
    timer = ForwardTimer(tiny_engine.target)
    prompt = tiny_engine.encode("def f(x):\n    return")
    timer.arm = "autoregressive"
    seconds, tokens, decoded, trees = run_arm(tiny_engine, "autoregressive", prompt, 5, None)
    # the prompt's forward gives the first token; no forward follows the last one
    assert (len(timer.longer["autoregressive"]), len(timer.one["autoregressive"])) == (1, 4)
    assert tokens == 5 and (decoded, trees) == (0, 0) and seconds > 0
    timer.arm = "auto"
    spec = SpecConfig(num_tokens=8, width=2, depth=3, policy="auto", repair=True)
    _, tokens, decoded, trees = run_arm(tiny_engine, "auto", prompt, 5, spec)
    one, longer = len(timer.one["auto"]), len(timer.longer["auto"])
    assert decoded + trees > 0 and tokens == 5
    assert one == decoded  # a decode is one one-token forward; a tree step is longer
    assert longer >= 1 + trees  # the prompt, each tree's verify (and any repair forward)
    assert len(timer.one["autoregressive"]) == 4  # the arms are kept apart


def test_the_timer_reads_input_ids_given_by_keyword():
    class Model(torch.nn.Module):
        def forward(self, input_ids=None):
            return input_ids

    model = Model()
    timer = ForwardTimer(model)
    model(input_ids=torch.zeros(1, 3, dtype=torch.long))
    model(input_ids=torch.zeros(1, 1, dtype=torch.long))
    assert (len(timer.longer["autoregressive"]), len(timer.one["autoregressive"])) == (1, 1)
