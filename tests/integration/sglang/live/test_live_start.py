"""Starting (or refusing to start) live servers, and ``moe-spec ab`` against two of them."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.integration.sglang.live.harness import CPU_ARGS, ROOT, server_environ

pytestmark = pytest.mark.live


def serve(*argv: str, timeout: float = 600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "moe_spec.cli", "serve", *argv],
        cwd=ROOT,
        env=server_environ({}),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_a_bad_configuration_refuses_the_start_with_one_message(fleet):
    refused = fleet.servers["refused"]  # unknown policy in the environment, raw launcher
    assert refused.wait_exit(900) != 0
    log = refused.log()
    assert log.count("unknown policy 'no-such-policy'") == 1, refused.log_tail()
    assert "UnsupportedSetupError: moe-spec: invalid configuration" in log

    model = str(fleet.models["qwen3-moe"])
    sglang = ["--model-path", model, *CPU_ARGS, "--speculative-algorithm", "EAGLE"]
    for argv, words in [
        (["--policy", "no-such-policy", "--budget", "2"], "unknown policy 'no-such-policy'"),
        (["--policy", "router-mass", "--budget", "1"], "budget B=1 is below top-k=2"),
    ]:
        result = serve(*argv, "--", *sglang)
        assert result.returncode == 2, result.stderr
        assert words in result.stderr and "Traceback" not in result.stderr
    # B above E is fine (nothing to cut); NEXTN (SGLang's alias of EAGLE) is accepted; serve
    # checked SGLang's resolved settings (resolvable on this CPU: the stand-in is on the path).
    nextn = [*sglang[:-1], "NEXTN", "--speculative-draft-model-path", model + "-eagle"]
    above_e = serve("--policy", "router-mass", "--budget", "16", "--dry-run", "--", *nextn)
    assert above_e.returncode == 0, above_e.stderr
    assert "could not resolve" not in above_e.stderr, above_e.stderr


def test_ab_compares_two_live_servers(fleet, tmp_path):
    none, budgeted = fleet.ready("off"), fleet.ready("budgeted")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("def main(\nimport os\nclass Config:\n")
    out = tmp_path / "ab"
    result = subprocess.run(
        [
            sys.executable, "-m", "moe_spec.cli", "ab", "--backend", "sglang",
            "--config", "none", "--config", "router-mass:B=2,label=b2",
            "--server", none.url, "--server", budgeted.url,
            "--prompts", str(prompts), "--max-new-tokens", "8", "--out", str(out),
            "--no-progress",
        ],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    results = json.loads((out / "results.json").read_text())
    assert results["backend"] == "sglang"
    rows = {row["label"]: row for row in results["configs"]}
    assert set(rows) == {"none", "b2"}
    runs = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert len(runs) == 6 and all(run["verify_ct"] >= 1 for run in runs)
    for label, row in rows.items():  # acceptance = tokens / verify passes, as the servers said
        mine = [r for r in runs if r["label"] == label]
        verify_ct = sum(r["verify_ct"] for r in mine)
        assert row["verify_steps"] == verify_ct
        want = sum(len(r["tokens"]) for r in mine) / verify_ct
        assert row["metrics"]["acceptance_length"] == pytest.approx(want)
    assert "b2" in (out / "report.md").read_text()
