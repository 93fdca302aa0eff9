"""`moe-spec ab` end to end on the tiny checkpoint: outputs, resume, errors."""

from __future__ import annotations

import json
import sys

import pytest

from moe_spec.cli import main


@pytest.fixture(scope="module")
def ab_run(tiny_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("ab") / "out"
    prompts = out.parent / "p.jsonl"
    prompts.write_text('{"prompt": "def apply(budget):"}\n{"prompt": "return ids, weights"}\n')
    args = [
        "ab",
        "--checkpoint",
        str(tiny_dir),
        "--prompts",
        str(prompts),
        "--out",
        str(out),
        "--config",
        "autoregressive",
        "--config",
        "depth-width",
        "--config",
        "router-mass:B=3",
        "--config",
        "token-priority:B=3,mode=truncation",
        "--config",
        "router-mass:B=3,repair=true",
        "--num-tokens",
        "8",
        "--width",
        "4",
        "--depth",
        "3",
        "--max-new-tokens",
        "8",
        "--model-shape",
        "OLMoE-1B-7B",
        "--gpu",
        "H200",
        "--no-progress",
    ]
    return args, out


def test_writes_json_report_plots_and_prints_the_table(ab_run, capsys):
    args, out = ab_run
    assert main(args) == 0
    printed = capsys.readouterr().out
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "moe-spec-ab/1" and results["reference"] == "none tree=8/4/3"
    labels = [c["label"] for c in results["configs"]]
    assert labels == [
        "autoregressive",
        "depth-width tree=8/4/3",
        "router-mass B=3 tree=8/4/3",
        "token-priority B=3 truncation tree=8/4/3",
        "router-mass B=3 repair tree=8/4/3",
        "none tree=8/4/3",
    ]
    rows = {c["label"]: c for c in results["configs"]}
    ar, none = rows["autoregressive"], rows["none tree=8/4/3"]
    for row in (ar, none, rows["depth-width tree=8/4/3"]):  # lossless: greedy output unchanged
        assert row["metrics"]["agreement"] == 1.0 and set(row["first_divergence"]) == {None}
    assert ar["metrics"]["mean_logprob"] == pytest.approx(none["metrics"]["mean_logprob"])
    budgeted = rows["router-mass B=3 tree=8/4/3"]
    assert budgeted["distinct_after"]["p99"] <= 3 < none["distinct_before"]["p99"]
    assert budgeted["distinct_before"]["mean"] >= budgeted["distinct_after"]["mean"]
    assert set(budgeted["vs_reference"]) >= {"acceptance_length", "modeled_tokens_per_s"}
    assert none["vs_reference"] == {}
    assert all(c["metrics"]["modeled_tokens_per_s"] > 0 for c in results["configs"])
    assert (out / "tradeoff.png").stat().st_size > 0 and (out / "experts.png").stat().st_size > 0
    assert "Differences against" in (out / "report.md").read_text()
    assert "none tree=8/4/3 (ref)" in printed and "x ref" in printed
    repaired = rows["router-mass B=3 repair tree=8/4/3"]["metrics"]
    assert repaired["agreement"] == 1.0 and repaired["repair_rate"] > 0  # lossless, and it worked
    assert repaired["tokens_per_target_forward"] < repaired["acceptance_length"]
    assert "repaired" in printed and "tok/fwd" in printed


def test_a_finished_run_resumes_without_running_again(ab_run, capsys):
    args, out = ab_run
    before = (out / "runs.jsonl").read_text()
    assert main(args) == 2
    assert "--resume" in capsys.readouterr().err
    assert main([*args, "--resume"]) == 0
    assert (out / "runs.jsonl").read_text() == before


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--prompts", "/nonexistent.jsonl"], "does not exist"),
        (["--config", "no-such-policy:B=4"], "no-such-policy"),
        (["--config", "router-mass:B=1"], "below top-k"),
        (["--target", "t"], "--target and --draft go together"),
        (["--target", "t", "--draft", "d"], "moe_spec.integration.transformers"),
        (["--gpu", "H200"], "--model-shape and --gpu go together"),
        (["--overhead-us", "-1"], "--overhead-us must be a finite number >= 0, got -1"),
        (["--overhead-us", "inf"], "--overhead-us must be a finite number >= 0, got inf"),
        (["--model-shape", "", "--gpu", "H200"], "unknown model shape ''; known: OLMoE-1B-7B"),
        (["--backend", "sglang"], "needs a --config"),
    ],
)
def test_bad_input_is_a_clear_error(tiny_dir, tmp_path, capsys, monkeypatch, extra, message):
    monkeypatch.setitem(sys.modules, "moe_spec.integration.transformers", None)  # not installed
    args = [
        "ab",
        "--checkpoint",
        str(tiny_dir),
        "--out",
        str(tmp_path / "o"),
        "--num-prompts",
        "1",
        "--no-progress",
        *extra,
    ]
    assert main(args) == 2
    assert message in capsys.readouterr().err
