"""Re-pricing a finished A/B folder, default arms per model, verdicts, tokens to divergence."""

from __future__ import annotations

import json

import pytest

from moe_spec.ab.cli import default_configs
from moe_spec.ab.configs import RunConfig
from moe_spec.ab.pricing import Controller
from moe_spec.ab.records import RunRecord
from moe_spec.ab.stats import ConfigStats, per_prompt
from moe_spec.ab.verdict import verdicts
from moe_spec.cli import main
from moe_spec.costmodel import NO_OVERHEADS, decode_seconds, get_gpu, get_shape
from moe_spec.costmodel.model import calibrated_overheads


@pytest.fixture(scope="module")
def finished(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("reprice") / "out"
    base = [
        "ab",
        "--checkpoint",
        str(tiny_dir),
        "--num-prompts",
        "2",
        "--out",
        str(out),
        "--config",
        "autoregressive",
        "--config",
        "depth-width",
        "--config",
        "token-priority:B=3",
        "--num-tokens",
        "8",
        "--width",
        "4",
        "--depth",
        "3",
        "--max-new-tokens",
        "6",
        "--no-progress",
    ]
    first = [*base, "--model-shape", "OLMoE-1B-7B", "--gpu", "H200", "--cost-model", "roofline"]
    assert main(first) == 0
    return base, out


def ar_modeled(out) -> float:
    rows = json.loads((out / "results.json").read_text())["configs"]
    return next(r for r in rows if r["label"] == "autoregressive")["metrics"][
        "modeled_tokens_per_s"
    ]


def test_resume_reprices_a_finished_run_with_a_depth_width_arm(finished):
    base, out = finished
    olmoe, qwen = get_shape("OLMoE-1B-7B"), get_shape("Qwen3-30B-A3B")
    assert ar_modeled(out) == pytest.approx(1 / decode_seconds(get_gpu("H200"), olmoe))
    runs, header = (out / "runs.jsonl").read_text(), (out / "run.json").read_text()
    again = [*base, "--resume", "--model-shape", "Qwen3-30B-A3B", "--gpu", "H100"]
    assert main(again) == 0  # calibrated by default
    assert (out / "runs.jsonl").read_text() == runs  # nothing ran again
    assert (out / "run.json").read_text() == header  # the controller stays the stored one
    expected = 1 / decode_seconds(get_gpu("H100"), qwen, overheads=calibrated_overheads())
    assert ar_modeled(out) == pytest.approx(expected)
    results = json.loads((out / "results.json").read_text())
    assert results["cost_model"] == "calibrated"
    assert "Qwen3-30B-A3B, calibrated cost model on H100" in results["modeled_on"]
    assert results["depth_width_controller"].startswith("OLMoE-1B-7B, roofline cost model on H200")
    report = (out / "report.md").read_text()
    assert "## Verdicts" in report and "calibrated cost model on H100" in report


def test_the_stored_controller_reads_back_old_and_new_forms():
    old = Controller.from_json("OLMoE-1B-7B on H200, 101 us/layer")
    assert old.cost.overheads.layer_s == pytest.approx(101e-6) and old.cost.gpu.name == "H200"
    assert Controller.from_json(old.to_json()) == old
    with pytest.raises(ValueError, match="cannot read the stored depth-width controller"):
        Controller.from_json("something else")


@pytest.mark.parametrize(
    ("E", "K", "budgets"), [(32, 4, [8, 16]), (8, 2, [2, 4]), (64, 8, [16, 32]), (8, 8, [])]
)
def test_default_arms_follow_the_model(E, K, budgets):
    arms = default_configs(E, K)
    assert arms[:3] == ["autoregressive", "none", "depth-width"]
    assert [int(a.split("B=")[1]) for a in arms[3:]] == budgets
    assert all(K <= b < E for b in budgets)


def test_tokens_to_divergence_counts_the_agreeing_prefix():
    ref = RunRecord("none", 0, 0, [1, 2, 3, 4, 5], 1.0)
    late = per_prompt(RunRecord("b", 0, 0, [1, 2, 3, 9, 5], 1.0), RunConfig("none"), ref, {}, None)
    same = per_prompt(RunRecord("c", 0, 0, [1, 2, 3, 4, 5], 1.0), RunConfig("none"), ref, {}, None)
    assert late["tokens_to_divergence"] == (3, 1) and same["tokens_to_divergence"] == (5, 1)


def row(label: str, policy: str, speed: float, **metrics) -> ConfigStats:
    m = {"modeled_tokens_per_s": speed, "agreement": None, "tokens_to_divergence": None}
    return ConfigStats(label, {"policy": policy}, 1, 1, 1, {**m, **metrics}, None, None, None,
                       [], [])  # fmt: skip


def test_verdicts_compare_with_both_baselines_and_name_the_cost_model():
    rows = [
        row("autoregressive", "autoregressive", 100.0),
        row("none", "none", 80.0),
        row("tp B=8", "token-priority", 120.0, agreement=0.75, tokens_to_divergence=12.5),
    ]
    lines = verdicts(rows, {"modeled_on": "OLMoE-1B-7B, roofline cost model on H200"})
    assert len(lines) == 2  # autoregressive gets none
    assert "slower than autoregressive (0.80x)" in lines[0]
    assert "faster than autoregressive (1.20x)" in lines[1]
    assert "faster than unbudgeted speculation (1.50x)" in lines[1]
    assert "roofline cost model on H200" in lines[1] and "75.0% greedy agreement" in lines[1]
    assert "12.5 tokens before the first divergence" in lines[1]
    assert NO_OVERHEADS.forward_s == 0
    tie = verdicts([*rows[:2], row("same", "token-priority", 79.9999)], {"modeled_on": "x"})
    assert "level with unbudgeted speculation (1.00x)" in tie[1]  # not "slower than" at 1.00x


def test_plot_series_have_one_style_each_and_legends_name_repair():
    from moe_spec.ab.plots import legend_label, series_name, styles

    rows = [
        row("none", "none", 1.0),
        row("tp B=8", "token-priority", 1.0),
        row("tp B=16", "token-priority", 1.0),
        row("tp B=8 repair", "token-priority", 1.0),
    ]
    for r, b, repair in zip(rows[1:], (8, 16, 8), (False, False, True), strict=True):
        r.config.update(budget=b, repair=repair)
    assert [series_name(r) for r in rows] == [
        "none",
        "tp (no repair)",
        "tp (no repair)",
        "tp repair",
    ]
    style = styles(rows)
    assert len(style) == 3 and len(set(style.values())) == 3
    assert (
        legend_label(rows[1]) == "tp B=8 (no repair)" and legend_label(rows[3]) == "tp B=8 repair"
    )
