"""The moe-spec command line."""

from __future__ import annotations

import subprocess
import sys

from moe_spec.cli import main


def test_policies_lists_every_builtin_with_its_origin(capsys):
    assert main(["policies"]) == 0
    out = capsys.readouterr().out
    for name in ("none", "topk-frequency", "router-mass", "layer-adaptive", "token-priority"):
        line = next(line for line in out.splitlines() if line.startswith(name + " "))
        assert "built-in" in line


def test_trace_demo_prints_one_row_per_policy_and_budget_and_names_its_trace(capsys):
    assert (
        main(["trace-demo", "--tree-size", "12", "--budgets", "10,16", "--mode", "truncation"]) == 0
    )
    out = capsys.readouterr().out
    assert "synthetic routing" in out and "not recorded from a model" in out
    rows = [
        line.split()
        for line in out.splitlines()
        if line.split()[:1]
        and line.split()[0]
        in ("none", "topk-frequency", "router-mass", "layer-adaptive", "token-priority")
    ]
    assert [(r[0], r[1]) for r in rows] == [("none", "-")] + [
        (p, b)
        for p in ("topk-frequency", "router-mass", "layer-adaptive", "token-priority")
        for b in ("10", "16")
    ]
    for r in rows[1:]:
        per_layer = [int(x) for x in r[7:]]
        assert len(per_layer) == 16 and max(per_layer) <= int(r[1])


def test_trace_demo_reads_a_trace_file(tmp_path, capsys):
    path = tmp_path / "trace.safetensors"
    assert (
        main(["trace", "--out", str(path), "--layers", "2", "--experts", "16", "--top-k", "2"]) == 0
    )
    assert main(["trace-demo", "--trace", str(path), "--budgets", "4"]) == 0
    out = capsys.readouterr().out
    assert "2 MoE layers, 16 experts, top-2" in out


def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys):
    assert main(["trace-demo", "--budgets", "4"]) == 2
    assert "budget B=4 is below top-k=8" in capsys.readouterr().err
    assert main(["trace-demo", "--policies", "router-mas"]) == 2
    assert (
        "unknown policy 'router-mas' (did you mean 'router-mass'?); available:"
        in capsys.readouterr().err
    )
    bad = tmp_path / "bad.safetensors"
    bad.write_text("not a trace")
    assert main(["trace-demo", "--trace", str(bad)]) == 2
    assert "is not a readable safetensors file" in capsys.readouterr().err


def test_console_entry_point_runs():
    done = subprocess.run(
        [sys.executable, "-m", "moe_spec.cli", "policies"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "router-mass" in done.stdout
