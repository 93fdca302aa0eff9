"""Start time and per-request latency of a real SGLang 0.5.23 server on this CPU.

Tiny random Qwen3-MoE (4 layers, 8 experts, top-2) with its bigram EAGLE draft: the
numbers say what the live tests cost and that budgeting adds no visible overhead
here, nothing about GPU speed. Servers start one after another (no contention),
through the live tests' harness, with the same CPU recipe.

    PYTHONPATH=$PWD .venv/bin/python bench/sglang_cpu_server.py [--requests 10] [--tokens 32]
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path

from tests.integration.sglang.live.conftest import eagle
from tests.integration.sglang.live.harness import LiveServer, ServerSpec
from tests.integration.sglang.live.models import build_all

PROMPT = "import os\nimport sys\n\nclass Config:\n    def __init__(self):"


def configurations(models: dict[str, Path]) -> list[ServerSpec]:
    qwen3, draft = models["qwen3-moe"], eagle(models["qwen3-moe-eagle"])
    budget = ["--policy", "router-mass", "--budget", "2"]
    return [
        ServerSpec("no speculation", qwen3, []),
        ServerSpec("EAGLE, plugin off", qwen3, draft, budget, {"MOE_SPEC_SGLANG_DISABLE": "1"}),
        ServerSpec("EAGLE, router-mass B=2", qwen3, draft, budget),
    ]


def measure(spec: ServerSpec, logs: Path, requests: int, tokens: int) -> dict:
    server = LiveServer(spec, logs)
    try:
        server.wait_ready(900)
        server.generate(PROMPT, tokens)  # first request: lazy initialisation
        seconds, accept = [], []
        for _ in range(requests):
            start = time.perf_counter()
            meta = server.generate(PROMPT, tokens)["meta_info"]
            seconds.append(time.perf_counter() - start)
            accept.append(meta.get("spec_accept_length"))
    finally:
        server.stop()
    return {
        "start_s": server.ready_after_s,
        "median_s": statistics.median(seconds),
        "accept": accept[0],
    }


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return f"{line.split(':', 1)[1].strip()}, {os.cpu_count()} cores"
    except OSError:
        pass
    return platform.machine()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10)
    parser.add_argument("--tokens", type=int, default=32)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="moe-spec-bench-"))
    models = build_all(root / "models")
    (root / "logs").mkdir()
    print(f"CPU: {cpu_name()}; logs in {root / 'logs'}")
    print(
        f"| server | start to /health | median latency, {args.tokens} tokens | tokens per verify |"
    )
    print("| --- | ---: | ---: | ---: |")
    for spec in configurations(models):
        r = measure(spec, root / "logs", args.requests, args.tokens)
        accept = "-" if r["accept"] is None else f"{r['accept']:.2f}"
        print(f"| {spec.name} | {r['start_s']:.0f} s | {r['median_s']:.2f} s | {accept} |")


if __name__ == "__main__":
    main()
