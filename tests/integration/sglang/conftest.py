"""Run a scenario of ``scenarios.py`` in a fresh interpreter with the real SGLang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from moe_spec.integration.sglang.compat import SKIP_EXTEND

ROOT = Path(__file__).resolve().parents[3]


@pytest.fixture(autouse=True)
def no_leaked_skip_switch(monkeypatch):
    """Each test starts without SGLang's skip switch for the draft extend and leaves none
    behind: the plugin's depth driver writes it into this process's environment, which
    every scenario inherits (a test driven with the switch left it on, and a later scenario
    then read no guesses: a failure that depended on the tests' order)."""
    monkeypatch.delenv(SKIP_EXTEND, raising=False)


def run_scenario(name: str, **env: str) -> dict:
    """The JSON a scenario prints, run with ``env`` on top of a clean MOE_SPEC_* environment."""
    base = {
        k: v for k, v in os.environ.items() if not k.startswith(("MOE_SPEC_", "SGLANG_PLUGINS"))
    }
    proc = subprocess.run(
        [sys.executable, "-m", "tests.integration.sglang.scenarios", name],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=600,
    )
    if proc.returncode != 0:
        pytest.fail(f"scenario {name} failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])
