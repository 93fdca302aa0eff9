"""Run a scenario of ``scenarios.py`` in a fresh interpreter with the real SGLang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]


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
