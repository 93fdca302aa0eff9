"""bench/auto_overhead.py: a short run drives auto through tree steps and reports each size."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "bench"))
from auto_overhead import step_order  # noqa: E402


def overhead(tmp_path, *flags: str) -> tuple[str, list[dict]]:
    """``bench/auto_overhead.py --distinct 4 FLAGS`` run to its end: stdout and JSON rows."""
    out = tmp_path / "overhead.json"
    cmd = [sys.executable, str(REPO / "bench" / "auto_overhead.py"), "--distinct", "4", *flags]
    done = subprocess.run([*cmd, "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout, json.loads(out.read_text())["rows"]


def test_steps_replay_every_distinct_step_each_pass_shuffled_unless_cycled():
    order = step_order(100, 8)
    passes = [order[i : i + 8] for i in range(0, 96, 8)]
    assert all(sorted(p) == list(range(8)) for p in passes) and len(order) == 100
    assert len({tuple(p) for p in passes}) > 1  # no fixed period a ranking stride can alias
    assert step_order(100, 8) == order  # seeded
    assert step_order(20, 8, cycled=True) == [*range(8), *range(8), *range(4)]


def test_short_run_reports_every_size_with_tree_steps(tmp_path):
    stdout, rows = overhead(tmp_path, "--steps", "40")
    assert "CPU: " in stdout and "of 7.22 ms" in stdout
    assert [(r["L"], r["E"]) for r in rows] == [(16, 64), (30, 32), (48, 128)]
    for r in rows:
        assert r["steps"] == 30 and 0 < r["median_s"] <= r["p90_s"]
        assert len(r["budgets"]) == r["L"] and r["replans"] >= 1
    assert rows[0]["tree_share"] > 0.5  # the synthetic acceptance pays for the tree there


def test_the_sglang_feed_path_folds_every_step_and_plans_budgets(tmp_path):
    stdout, rows = overhead(tmp_path, "--steps", "40", "--sglang")
    assert "SGLang feed (after_verify)" in stdout
    for r in rows:  # SGLang runs its one tree every step; the feed replans after the
        # warm-up and while the window is short (steps 2, 4, 8), then at most every 8 steps
        # but for a surprise (less often while replans change nothing)
        assert r["tree_share"] == 1.0 and 1 <= r["replans"] <= 3 + (40 - 8) // 8
        assert len(r["budgets"]) == r["L"] and 0 < r["median_s"] <= r["p90_s"]


def test_the_sglang_feed_path_starts_a_request_every_request_steps(tmp_path):
    stdout, rows = overhead(tmp_path, "--steps", "40", "--sglang", "--request-steps", "10")
    assert "a new request every 10 steps" in stdout
    assert [r["new_requests"] for r in rows] == [4, 4, 4]


def test_fresh_every_makes_a_policy_per_request_and_times_every_step(tmp_path):
    stdout, rows = overhead(tmp_path, "--steps", "26", "--fresh-every", "13")
    assert "a new policy every 13 steps" in stdout
    for r in rows:  # each request replans after its own warm-up: at least one each
        assert r["steps"] == 26 and r["replans"] >= 2 and 0 < r["replan_share"] < 1
        line = f"- L={r['L']}, E={r['E']}: {r['replans'] / r['requests']:.1f} replans per request"
        assert r["requests"] == 2 and line in stdout
    cmd = [sys.executable, str(REPO / "bench" / "auto_overhead.py"), "--fresh-every", "5"]
    refused = subprocess.run([*cmd, "--sglang"], capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2 and "for SGLang use --request-steps" in refused.stderr
