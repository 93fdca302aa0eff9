"""`moe-spec demo`, `generate` and `train` on a tiny checkpoint."""

from __future__ import annotations

import json

import pytest

from moe_spec.cli import main
from moe_spec.engine.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("ckpt")
    save_checkpoint(
        path,
        tiny_checkpoint.target,
        tiny_checkpoint.draft,
        tiny_checkpoint.tokenizer,
        {"note": "tiny"},
    )
    return path


def test_demo_prints_the_table_and_writes_json_and_png(tiny_dir, tmp_path, capsys):
    out = tmp_path / "demo"
    args = [
        "demo",
        "--checkpoint",
        str(tiny_dir),
        "--max-new-tokens",
        "6",
        "--budgets",
        "3,5",
        "--policies",
        "router-mass,token-priority",
        "--num-tokens",
        "8",
        "--depth",
        "3",
        "--out",
        str(out),
    ]
    assert main(args) == 0
    text = capsys.readouterr().out
    labels = [
        line.split("  ")[0].strip()
        for line in text.splitlines()
        if line.startswith(("autoregressive", "none", "router-mass", "token-priority", "draft"))
    ]
    assert labels == [
        "autoregressive",
        "none",
        "router-mass B=3",
        "router-mass B=5",
        "token-priority B=3",
        "token-priority B=5",
        "draft-path B=3 repair",  # --repair-policies defaults to draft-path
        "draft-path B=5 repair",
    ]
    results = json.loads((out / "results.json").read_text())
    assert results["schema"] == "moe-spec-demo/1" and len(results["results"]) == 8
    by_label = {r["label"]: r for r in results["results"]}
    assert by_label["none"]["agreement"] == 1.0
    assert by_label["draft-path B=3 repair"]["agreement"] == 1.0  # repair is lossless
    assert by_label["autoregressive"]["agreement"] == 1.0  # greedy speculation is exact
    assert max(by_label["router-mass B=3"]["distinct_after_per_layer"]) <= 3
    assert (out / "demo.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"wrote {out / 'results.json'}" in text


def test_demo_refuses_bad_input_before_running(tiny_dir, capsys):
    assert main(["demo", "--checkpoint", str(tiny_dir), "--budgets", "1"]) == 2
    assert "budget B=1 is below top-k=2" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", str(tiny_dir), "--policies", "nope"]) == 2
    assert "unknown policy 'nope'" in capsys.readouterr().err
    assert main(["demo", "--checkpoint", "/nonexistent"]) == 2
    assert "--checkpoint '/nonexistent' is neither a model name" in capsys.readouterr().err


def test_generate_prints_the_completion(tiny_dir, capsys):
    args = [
        "generate",
        "def f(x):",
        "--checkpoint",
        str(tiny_dir),
        "--max-new-tokens",
        "5",
        "--policy",
        "router-mass",
        "--budget",
        "4",
    ]
    assert main(args) == 0
    captured = capsys.readouterr()
    assert captured.out.startswith("def f(x):")
    assert "policy router-mass B=4" in captured.err
    assert main([*args, "--repair"]) == 0
    assert "policy router-mass B=4 repair" in capsys.readouterr().err
    assert main([*args, "--repair-min", "3"]) == 0
    assert "policy router-mass B=4 repair>=3" in capsys.readouterr().err
