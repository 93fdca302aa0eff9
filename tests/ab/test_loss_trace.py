"""bench/auto_loss_trace.py: each step's loss against decoding adds up to the run's."""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from moe_spec.ab.configs import RunConfig
from moe_spec.ab.records import RunRecord, Step
from moe_spec.ab.report import short_reason  # the report's guard section codes them so
from moe_spec.ab.stats import Modeled, modeled_pair
from moe_spec.costmodel import autoregressive_tokens_per_s, get_cost_model, get_shape

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from auto_loss_trace import priced_run, reason_kind, step_losses  # noqa: E402


def test_step_losses_sum_to_the_runs_time_beyond_decoding():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    tree = "keeps tree 4/1/3 B=8,8: predicted tok/s tree 4/1/3 B=8,8 250.1, autoregressive 232.3"
    steps = [
        Step(3, 4, 1, 3, [6, 6], [6, 6], [4, 4], guard="tree", reason=tree),
        Step(1, 4, 1, 3, [6, 6], [6, 6], [2, 2], guard="tree", reason="warm-up (0/2 steps seen)"),
        Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard="autoregressive", reason="switched to x"),
    ]
    record = RunRecord("auto", 0, 0, [1] * 6, 1.0, steps)  # the prompt's token, then 5
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


def test_budget_lists_are_run_length_coded():
    why = "keeps tree 32/8/6 B=32,32,32: predicted tok/s tree 16/8/6 B=8,8,32 300, tree 4/3/3 B=4"
    assert short_reason(why) == (
        "keeps tree 32/8/6 B=32x3: predicted tok/s tree 16/8/6 B=8x2,32 300, tree 4/3/3 B=4"
    )
    assert short_reason("warm-up (0/2 steps seen)") == "warm-up (0/2 steps seen)"


def test_a_priced_run_is_decodings_time_over_its_own_for_any_config():
    """``priced_run`` (also the unbudgeted reference of ``--reference``): the prompts' tokens
    decoded, over the modeled seconds of the run's steps, as ``modeled_pair`` prices them."""
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    steps = [
        Step(3, 4, 1, 3, [6, 6], [6, 6], [4, 4]),
        Step(1, 4, 1, 3, [6, 6], [6, 6], [2, 2]),
    ]
    record = RunRecord("none", 0, 0, [1] * 5, 1.0, steps)
    runner = SimpleNamespace(model_info=lambda: info, run=lambda *_: record)
    m = Modeled(get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B"))
    decode_s = 1 / autoregressive_tokens_per_s(m.cost.gpu, m.shape, overheads=m.cost.overheads)
    args = SimpleNamespace(max_new=4, steps=False)
    ratio, sums = priced_run(runner, RunConfig("none"), ["a", "b"], args, m, decode_s)
    tokens, seconds = modeled_pair(record, RunConfig("none"), info, m)
    assert ratio == pytest.approx(tokens * decode_s / seconds, rel=1e-9)  # the same per prompt
    # the shares lost per reason add up to the run's time beyond decoding, over decoding's
    assert sum(row[2] for row in sums.values()) == pytest.approx(1 / ratio - 1, rel=1e-9)
    assert sum(row[0] for row in sums.values()) == 4  # two steps, two prompts
