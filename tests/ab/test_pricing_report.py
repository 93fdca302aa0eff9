"""Re-pricing a finished A/B folder, default arms per model, verdicts, tokens to divergence."""

from __future__ import annotations

import json

import pytest

from moe_spec.ab.cli import default_configs
from moe_spec.ab.configs import RunConfig
from moe_spec.ab.pricing import Controller
from moe_spec.ab.records import RunRecord
from moe_spec.ab.stats import ConfigStats, paired_bootstrap, per_prompt
from moe_spec.ab.verdict import speed_basis, verdicts
from moe_spec.cli import main
from moe_spec.costmodel import (
    NO_OVERHEADS,
    decode_seconds,
    get_cost_model,
    get_gpu,
    get_shape,
)
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
    three = {"shape": "OLMoE-1B-7B", "gpu": "H200", "cost_model": "calibrated",
             "overheads_s": {"forward": 0.0, "layer": 2e-4, "expert": 1e-6}}  # fmt: skip
    assert Controller.from_json(three).cost.overheads.select_s == 0  # an older run.json


def test_a_measured_controller_keeps_every_overhead_term_through_run_json():
    measured = Controller(get_cost_model("measured", "H200"), get_shape("OLMoE-1B-7B"))
    o = measured.cost.overheads
    assert o.select_s > 0 and o.tree_s > 0 and o.token_s > 0  # what was lost before
    assert Controller.from_json(json.loads(json.dumps(measured.to_json()))) == measured


@pytest.mark.parametrize(
    ("overheads", "why"),
    [
        ({"layer": "abc"}, "Overheads.layer_s must be a finite number of seconds >= 0"),
        ({"layr": 1e-4}, "unknown overhead terms \\['layr'\\]"),
        (None, "no 'overheads_s'"),
    ],
)
def test_a_damaged_stored_controller_is_refused_naming_run_json(overheads, why):
    data = {"shape": "OLMoE-1B-7B", "gpu": "H200", "cost_model": "calibrated"}
    if overheads is not None:
        data["overheads_s"] = overheads
    with pytest.raises(ValueError, match=f"run.json's `controller`.*{why}"):
        Controller.from_json(data)


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


def row(label: str, policy: str, speed: float, prompts: int = 1, **metrics) -> ConfigStats:
    m = {"modeled_tokens_per_s": speed, "agreement": None, "tokens_to_divergence": None}
    return ConfigStats(label, {"policy": policy}, prompts, 1, 1, {**m, **metrics}, None, None,
                       None, [], [])  # fmt: skip


def test_verdicts_compare_with_both_baselines_and_name_the_cost_model_once():
    rows = [
        row("autoregressive", "autoregressive", 100.0),
        row("none", "none", 80.0),
        row("tp B=8", "token-priority", 120.0, agreement=0.75, tokens_to_divergence=12.5),
    ]
    meta = {"modeled_on": "OLMoE-1B-7B, roofline cost model on H200"}
    lines = verdicts(rows, meta)
    assert len(lines) == 2  # autoregressive gets none
    assert "slower than autoregressive (0.80x; one prompt: no CI)" in lines[0]
    assert "faster than autoregressive (1.20x; one prompt: no CI)" in lines[1]
    assert "faster than unbudgeted speculation (1.50x; one prompt: no CI)" in lines[1]
    assert "75.0% greedy agreement" in lines[1]
    assert "12.5 tokens before the first divergence" in lines[1]
    assert speed_basis(rows, meta) == "modeled tokens/s for " + meta["modeled_on"]
    assert "cost model" not in lines[1]  # said once, above the verdicts
    assert NO_OVERHEADS.forward_s == 0
    tie = verdicts([*rows[:2], row("same", "token-priority", 79.9999)], {"modeled_on": "x"})
    assert "level with unbudgeted speculation (1.00x" in tie[1]  # not "slower than" at 1.00x


def prompt_pairs(rates: list[float]) -> list[dict]:
    """One ``modeled_tokens_per_s`` pair per prompt: ``rate`` tokens in one second."""
    return [{"modeled_tokens_per_s": (r, 1.0)} for r in rates]


@pytest.mark.parametrize(
    ("arm", "word"),
    [
        ([120, 130, 110, 125], "faster than unbudgeted speculation (1.21x, 95% CI 1.1"),
        ([90, 70, 95, 85], "slower than unbudgeted speculation (0.85x, 95% CI 0.7"),
        ([150, 60, 140, 55], "level with unbudgeted speculation within the CI (1.01x, 95% CI"),
    ],
)
def test_a_verdict_says_faster_or_slower_only_where_the_ci_of_the_ratio_says_so(arm, word):
    base = [100.0] * 4
    rows = [row("none", "none", 100.0, prompts=4), row("x", "tp", sum(arm) / 400, prompts=4)]
    rows[1].metrics["modeled_tokens_per_s"] = sum(arm) / 4
    rows[1].speed_vs = {
        "unbudgeted speculation": paired_bootstrap(
            prompt_pairs(arm), prompt_pairs(base), "modeled_tokens_per_s"
        )
    }
    line = verdicts(rows, {"modeled_on": "x"})[-1]
    assert line.startswith("**x**:") and word in line


def test_the_report_carries_warnings_and_what_auto_plans_for(tiny_dir, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["ab", "--checkpoint", str(tiny_dir), "--num-prompts", "2", "--out", str(out)]
    args += ["--config", "auto:B=3", "--config", "none", "--num-tokens", "8", "--width", "4"]
    args += ["--depth", "3", "--max-new-tokens", "6", "--no-progress"]
    args += ["--model-shape", "Qwen3-30B-A3B", "--gpu", "H100", "--cost-model", "roofline"]
    assert main(args) == 0
    err = capsys.readouterr().err
    mismatch = "plans for OLMoE-1B-7B on H200 (its opt.shape and opt.gpu, set or default), but"
    assert mismatch in err and "opt.shape=Qwen3-30B-A3B,opt.gpu=H100" in err
    report = (out / "report.md").read_text()
    assert "## Warnings" in report and mismatch in report
    assert "- auto B=3 tree=8/4/3 plans for: OLMoE-1B-7B, calibrated cost model on H200" in report
    assert "Speed: modeled tokens/s for Qwen3-30B-A3B, roofline cost model on H100" in report
    results = json.loads((out / "results.json").read_text())
    assert any(mismatch in w for w in results["warnings"])
    assert all("ratio_ci95" in r["speed_vs"]["unbudgeted speculation"]
               for r in results["configs"] if r["config"]["policy"] != "none")  # fmt: skip
    matched = [*args[:-6], "--model-shape", "OLMoE-1B-7B", "--gpu", "H200", "--resume"]
    assert main(matched) == 0  # re-priced for what auto plans for: no warning
    assert "plans for" not in capsys.readouterr().err
    assert mismatch not in (out / "report.md").read_text()  # (2 prompts: that one remains)


def test_python_warnings_during_a_run_reach_the_report(tiny_dir, tmp_path, monkeypatch):
    import warnings

    from moe_spec.ab import engine_backend

    def run(self, *a, _run=engine_backend.EngineBackend.run, **kw):
        warnings.warn("a policy's own warning", UserWarning, stacklevel=1)
        return _run(self, *a, **kw)

    monkeypatch.setattr(engine_backend.EngineBackend, "run", run)
    out = tmp_path / "out"
    args = ["ab", "--checkpoint", str(tiny_dir), "--num-prompts", "1", "--out", str(out)]
    args += ["--config", "none", "--num-tokens", "4", "--width", "2", "--depth", "2"]
    with pytest.warns(UserWarning, match="a policy's own warning"):
        assert main([*args, "--max-new-tokens", "3", "--no-progress"]) == 0
    assert "- UserWarning: a policy's own warning" in (out / "report.md").read_text()


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


def test_a_fixed_budget_says_what_it_is_priced_as_on_another_shape():
    from moe_spec.ab.pricing import priced_budgets
    from moe_spec.costmodel import map_distinct

    arms = [RunConfig("token-priority", 8), RunConfig("none"), RunConfig("router-mass", 40)]
    qwen3, info = get_shape("Qwen3-30B-A3B"), {"top_k": 4, "n_experts": 32}
    got = priced_budgets(arms, info, qwen3)
    mapped = map_distinct(8, 4, 32, 8, 128, arms[0].num_tokens)
    assert got == {
        "token-priority B=8": f"B=8 of 32 experts, priced as {mapped:.1f} of Qwen3-30B-A3B's 128",
        "router-mass B=40": "B=40 of 32 experts, priced as 128.0 of Qwen3-30B-A3B's 128",
    }
    assert 8 < mapped < 128 * 8 / 32 + 1  # more than 8: the label's B is the small model's
    same = {"top_k": qwen3.top_k, "n_experts": qwen3.n_experts}
    assert priced_budgets(arms, same, qwen3) == {}  # nothing to carry


def test_x_ref_of_a_sampled_arm_is_over_its_own_temperatures_unbudgeted_arm():
    """The verdicts compare a sampled arm with the unbudgeted arm at its temperature; the
    table's `x ref` divided it by greedy `none` (0.60 where the verdict's ratio is 1.20)."""
    from moe_spec.ab.report import table_rows
    from moe_spec.ab.stats import metric_names

    rows = [
        row("none", "none", 100.0),
        row("tp B=8", "token-priority", 120.0),
        row("none T=1", "none", 50.0),
        row("tp B=8 T=1", "token-priority", 60.0),
        row("autoregressive T=1", "autoregressive", 40.0),  # no unbudgeted arm of its own
    ]
    for r in rows:
        r.metrics = {**dict.fromkeys(metric_names()), **r.metrics}
    for r in rows[2:]:
        r.config["temperature"] = 1.0
    rows[3].reference = "none T=1"  # as analyze sets it (report.reference_for)
    cells = table_rows(rows, "none")
    x_ref = {line[0]: line[cells[0].index("x ref")] for line in cells[1:]}
    assert x_ref == {
        "none (ref)": "1.00",
        "tp B=8": "1.20",
        "none T=1": "1.00",  # the sampled arms' own reference
        "tp B=8 T=1": "1.20",
        "autoregressive T=1": "0.40",  # none at its temperature: the reference row
    }


def test_the_tradeoff_plot_says_what_it_leaves_out_and_rings_a_one_point_front(
    tmp_path, monkeypatch
):
    """A mixed run's sampled arms (no greedy agreement) were left out silently while the
    title counted them; a Pareto front of one point had a legend entry but drew nothing."""
    import matplotlib.pyplot as plt

    from moe_spec.ab.plots import plot_tradeoff

    rows = [
        row("autoregressive", "autoregressive", 200.0, agreement=1.0),  # the whole front
        row("none", "none", 100.0, agreement=1.0),
        row("tp B=8", "token-priority", 120.0, agreement=0.8),
        row("none T=1", "none", 50.0),
        row("tp B=8 T=1", "token-priority", 60.0),
    ]
    rows[2].config["budget"] = rows[4].config["budget"] = 8
    for r in rows[3:]:
        r.config["temperature"] = 1.0
    kept = []
    monkeypatch.setattr(plt, "close", kept.append)  # keep the figure to read it back
    path = tmp_path / "tradeoff.png"
    assert plot_tradeoff(rows, path, {"title": "5 configurations on 1 prompt", "modeled_on": "x"})
    assert path.stat().st_size > 0
    (ax,) = kept[0].axes
    assert ax.get_title() == (
        "5 configurations on 1 prompt\n2 sampled arms (T > 0) not plotted: greedy agreement "
        "needs T = 0"
    )
    handles, labels = ax.get_legend_handles_labels()
    front = handles[labels.index("Pareto front")]
    assert front.get_marker() not in (None, "", "None") and list(front.get_xdata()) == [200.0]
    plt.close(kept[0])
