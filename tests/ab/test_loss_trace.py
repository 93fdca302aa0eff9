"""bench/auto_loss_trace.py: each step's loss against decoding adds up to the run's."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.records import RunRecord, Step
from moe_spec.ab.stats import Modeled, modeled_pair
from moe_spec.costmodel import autoregressive_tokens_per_s, get_cost_model, get_shape

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from auto_loss_trace import reason_kind, step_losses  # noqa: E402


def test_step_losses_sum_to_the_runs_time_beyond_decoding():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    tree = "keeps tree 4/1/3 B=8,8: predicted tok/s tree 4/1/3 B=8,8 250.1, autoregressive 232.3"
    steps = [
        Step(3, 4, 1, 3, [6, 6], [6, 6], [4, 4], guard="tree", reason=tree),
        Step(1, 4, 1, 3, [6, 6], [6, 6], [2, 2], guard="tree", reason="warm-up (0/2 steps seen)"),
        Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard="autoregressive", reason="switched to x"),
    ]
    record = RunRecord("auto", 0, 0, [1] * 5, 1.0, steps)
    m = Modeled(get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B"), draft_extend=True)
    got = step_losses(record, RunConfig("auto"), info, m)
    assert [(kind, why) for kind, why, _, _ in got] == [
        ("tree 4", "keeps tree"),
        ("tree 4", "warm-up"),
        ("decode", "switched to x"),
    ]
    tokens, seconds = modeled_pair(record, RunConfig("auto"), info, m)
    decode_s = 1 / autoregressive_tokens_per_s(m.cost.gpu, m.shape, overheads=m.cost.overheads)
    assert sum(lost for *_, lost in got) == pytest.approx(seconds - tokens * decode_s, rel=1e-9)
    assert got[1][3] > 0 > got[0][3]  # a 1-token chain loses; a 3-token one wins


def test_reasons_lose_their_numbers():
    assert reason_kind("probe the full tree (every 16 steps)") == "probe the full tree"
    explores = "explores with tree 2/1/1 B=4,4 (every 9 decodes: x)"
    assert reason_kind(explores) == "explores with tree"
