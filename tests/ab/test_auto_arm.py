"""An ``auto`` arm in ``moe-spec ab``: no budget needed, guard decisions in the report."""

from __future__ import annotations

import json

import pytest

from moe_spec.ab.configs import RunConfig, parse_config
from moe_spec.ab.records import RunRecord, Step
from moe_spec.ab.stats import Modeled, modeled_pair
from moe_spec.cli import main
from moe_spec.costmodel import (
    autoregressive_tokens_per_s,
    decode_seconds,
    draft_seconds,
    get_cost_model,
    get_shape,
)


def test_auto_takes_no_budget_and_labels_its_options():
    (config,) = parse_config("auto:repair=true,opt.shape=Qwen3-30B-A3B")
    assert config.budget is None and config.label == "auto shape=Qwen3-30B-A3B repair"
    with pytest.raises(ValueError, match="a budget is required"):
        RunConfig("router-mass")


@pytest.mark.parametrize("cost_model", ["calibrated", "measured"])  # measured: select_s > 0
def test_a_guard_decoded_step_is_priced_as_an_autoregressive_decode(cost_model):
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    steps = [Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard="autoregressive")] * 5
    record = RunRecord("auto", 0, 0, [1] * 6, 1.0, steps)  # the prompt's token, 5 decoded
    m = Modeled(get_cost_model(cost_model, "H200"), get_shape("OLMoE-1B-7B"))
    tokens, seconds = modeled_pair(record, RunConfig("auto"), info, m)
    ar = autoregressive_tokens_per_s(m.cost.gpu, m.shape, overheads=m.cost.overheads)
    assert tokens / seconds == pytest.approx(ar, rel=1e-12)


def test_a_step_the_draft_gate_decoded_is_priced_as_its_draft_and_a_decode():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    m = Modeled(get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B"))
    gated = Step(1, 1, 8, 6, [2, 2], [2, 2], [2, 2], guard="autoregressive", ranked=False)
    record = RunRecord("auto", 0, 0, [1, 1], 1.0, [gated])
    tokens, seconds = modeled_pair(record, RunConfig("auto"), info, m)
    g, o = m.cost.gpu, m.cost.overheads
    want = draft_seconds(g, m.shape, 8, 6, overheads=o) + decode_seconds(g, m.shape, overheads=o)
    assert tokens == 1 and seconds == pytest.approx(want, rel=1e-12)


def test_priced_as_sglang_runs_it_every_speculative_step_pays_a_draft_extend():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    cost, shape = get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B")
    engine, sglang = Modeled(cost, shape), Modeled(cost, shape, draft_extend=True)
    decoded = Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard="autoregressive")
    chain = Step(3, 4, 1, 3, [5, 5], [5, 5], [5, 5], guard="tree")
    record = RunRecord("auto", 0, 0, [1] * 5, 1.0, [decoded, chain])
    g, o = cost.gpu, cost.overheads
    extend = draft_seconds(g, shape, 1, 1, overheads=o) + draft_seconds(g, shape, 4, 1, overheads=o)
    for config in (RunConfig("auto"), RunConfig("none")):  # a depth-0 step of auto's too
        (tokens, plain), (_, extended) = (
            modeled_pair(record, config, info, m) for m in (engine, sglang)
        )
        assert tokens == 4 and extended - plain == pytest.approx(extend, rel=1e-9)
    ar = RunRecord("autoregressive", 0, 0, [1] * 4, 1.0, [])  # no draft runs at all
    config = RunConfig("autoregressive")
    assert modeled_pair(ar, config, info, sglang) == modeled_pair(ar, config, info, engine)


def test_under_sglangs_skip_switch_only_a_runs_last_decode_pays_the_extend():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    cost, shape = get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B")
    every = Modeled(cost, shape, draft_extend=True)
    skips = Modeled(cost, shape, draft_extend=True, decode_extend=False)
    decoded = Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard="autoregressive")
    chain = Step(3, 4, 1, 3, [5, 5], [5, 5], [5, 5], guard="tree")
    # decodes 0-2 then a chain: only decode 2 extends; the decodes after it end the request
    steps = [decoded] * 3 + [chain] + [decoded] * 2
    record = RunRecord("auto", 0, 0, [1] * 9, 1.0, steps)
    (tokens, extended), (_, skipped) = (
        modeled_pair(record, RunConfig("auto"), info, m) for m in (every, skips)
    )
    extend_1 = draft_seconds(cost.gpu, shape, 1, 1, overheads=cost.overheads)
    assert tokens == 8 and extended - skipped == pytest.approx(4 * extend_1, rel=1e-9)


def test_a_decode_that_read_the_text_pays_its_draft_forward_unless_every_decode_extends():
    # a read (StepPlan.read): the run's last decode also ran the draft over the decoded
    # tokens; where SGLang extends after every decode that forward already ran, one a decode
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    cost, shape = get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B")
    decoded = Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard="autoregressive")
    read = Step(1, 1, 1, 1, [2, 2], [2, 2], [2, 2], guard="autoregressive")
    draft_1 = draft_seconds(cost.gpu, shape, 1, 1, overheads=cost.overheads)
    for m, extra in (
        (Modeled(cost, shape), draft_1),  # the engines: the read's forward
        (Modeled(cost, shape, draft_extend=True, decode_extend=False), draft_1),  # skip switch
        (Modeled(cost, shape, draft_extend=True), 0.0),  # every decode extends: nothing more
    ):
        plain, reading = (
            modeled_pair(
                RunRecord("auto", 0, 0, [1] * 3, 1.0, [decoded, decoded, last]),
                RunConfig("auto"),
                info,
                m,
            )[1]  # fmt: skip
            for last in (decoded, read)
        )
        assert reading - plain == pytest.approx(extra, rel=1e-9, abs=1e-15)


def test_a_tree_step_without_the_policy_is_priced_without_the_selection():
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    m = Modeled(get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B"))

    def seconds(ranked: bool) -> float:
        step = Step(2, 8, 4, 3, [6, 6], [6, 6], [3, 3], guard="tree", ranked=ranked)
        record = RunRecord("auto", 0, 0, [1] * 2, 1.0, [step])
        return modeled_pair(record, RunConfig("auto"), info, m)[1]

    selection = m.shape.n_moe_layers * m.cost.overheads.select_s
    assert selection > 0 and seconds(True) - seconds(False) == pytest.approx(selection)


def test_the_report_shows_the_guards_decisions(tiny_dir, tmp_path, capsys):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text('{"prompt": "def apply(budget):"}\n{"prompt": "return ids, weights"}\n')
    out = tmp_path / "out"
    args = ["ab", "--checkpoint", str(tiny_dir), "--prompts", str(prompts), "--out", str(out)]
    args += ["--config", "autoregressive", "--config", "auto", "--num-tokens", "8"]
    args += ["--width", "4", "--depth", "3", "--max-new-tokens", "40", "--no-progress"]
    args += ["--model-shape", "OLMoE-1B-7B", "--gpu", "H200"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "guard AR" in printed
    results = json.loads((out / "results.json").read_text())
    auto = next(c for c in results["configs"] if c["label"] == "auto tree=8/4/3")
    assert auto["metrics"]["guard_autoregressive"] > 0.5  # a random draft: decoding wins
    # the guard decodes, or its draft gate turned the tree down
    reasons = auto["guard_reasons"]
    assert all("autoregressive" in why or why.startswith("draft gate: ") for why in reasons)
    report = (out / "report.md").read_text()
    assert "The guard's last decision per prompt" in report


def test_a_step_ranked_after_its_forward_pays_two_layers_selection():
    """A tree step the policy ranked after the forward pays ``2 / n_moe_layers`` of the
    selection a step that ranked inside it pays (or ``after_share`` as set); a step that
    rested without ranking pays none."""
    info = {"n_layers": 2, "n_experts": 8, "top_k": 2, "expert_bytes": 1}
    cost, shape = get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B")
    select_s = cost.overheads.select_s * shape.n_moe_layers
    assert select_s > 0

    def seconds(m: Modeled, **flags) -> float:
        step = Step(3, 8, 2, 3, [6, 6], [6, 6], [6, 6], guard="tree", **flags)
        return modeled_pair(
            RunRecord("auto", 0, 0, [1] * 3, 1.0, [step]), RunConfig("auto"), info, m
        )[1]

    m = Modeled(cost, shape)
    rested = seconds(m, ranked=False)
    assert seconds(m) - rested == pytest.approx(select_s, rel=1e-9)
    after = seconds(m, ranked=False, ranked_after=True) - rested
    assert after == pytest.approx(2 * select_s / shape.n_moe_layers, rel=1e-9)
    quarter = seconds(Modeled(cost, shape, after_share=0.25), ranked=False, ranked_after=True)
    assert quarter - rested == pytest.approx(select_s / 4, rel=1e-9)
    # an arm that sets the option is priced as its policy planned
    (config,) = parse_config("auto:opt.after_share=0.5")
    step = Step(3, 8, 2, 3, [6, 6], [6, 6], [6, 6], guard="tree", ranked=False, ranked_after=True)
    record = RunRecord("auto", 0, 0, [1] * 3, 1.0, [step])
    half = modeled_pair(record, config, info, m)[1]
    assert half - rested == pytest.approx(select_s / 2, rel=1e-9)
