"""Package fixtures: tiny models built once, and one live SGLang server per configuration.

Every configuration the live tests use is started at once, the first time any of
them is asked for (imports dominate a start, so they overlap), and all of them
are stopped by process group once the live tests are done (package scope: the rest of
the suite does not run beside ten busy SGLang schedulers). A test waits only for
the server it needs.

=============  ===================================================================
``budgeted``   Qwen3-MoE + EAGLE-3, ``failing-router-mass`` B=2 (router-mass until
               its trip file exists), ``--enable-metrics``
``olmoe``      OLMoE (E=16, top-4) + EAGLE, ``token-priority`` B=4, ``--enable-metrics``
               (the plugin adds the ``get_embed_and_head`` accessor EAGLE needs,
               which SGLang 0.5.23's OLMoE lacks)
``full``       Qwen3-MoE + EAGLE, ``router-mass`` B=16 (above E=8: nothing to cut)
``off``        Qwen3-MoE + EAGLE-3, the plugin's off switch: no hooks at all
``auto``       Qwen3-MoE + EAGLE-3, ``auto`` capped at B=8 (= E: it picks each layer's B)
``auto-chain`` Qwen3-MoE + EAGLE, a chain of 3 drafts with ``--speculative-adaptive``:
               ``auto``'s guard (``hope=false``) chooses each step's depth (3, or 0: a decode)
``auto-chain-skip`` the same with ``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND=1``: the guard's
               decodes skip SGLang's draft extend but the last of each run
``plain``      Qwen3-MoE without speculation (``sglang.launch_server``: serve refuses it)
``refused``    Qwen3-MoE + EAGLE-3 with an unknown policy in the environment
``real-full``  smollm2-moe (the real checkpoint, 30 layers, E=32, top-8, float32) + its
               exported EAGLE head (``eagle-sglang/``, drafting from its 8192 hot tokens:
               ``--speculative-token-map``), a tree of 3 steps x top-4 x 8
               tokens, ``router-mass`` B=32 (= E); its reference is transformers' greedy
               decoding of the checkpoint, computed in the test
``real-budget`` the same, ``router-mass`` B=12, ``--enable-metrics``
=============  ===================================================================

The real checkpoint is built into the cache on first use (``model_path``, about 30 s).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from moe_spec.models import model_path
from tests.integration.sglang.live.harness import TREE_ARGS, LiveServer, ServerSpec, stop_all
from tests.integration.sglang.live.models import build_all

#: Seconds a server may take from launch to ``/health`` (two cores, ten servers at once).
START_TIMEOUT_S = float(os.environ.get("MOE_SPEC_LIVE_START_TIMEOUT", "900"))
BUDGET = 2
OLMOE_BUDGET = 4
AUTO_CAP = 8
REAL_BUDGET = 12  # smollm2-moe: top-8 of 32 experts
REAL_LAYERS = 30
LOG_INTERVAL = "0.2"
#: A chain of 3 drafts whose depth SGLang may change between steps (``auto-chain``).
ADAPTIVE_CHAIN = ["--speculative-num-steps", "3", "--speculative-eagle-topk", "1",
                  "--speculative-num-draft-tokens", "4", "--speculative-adaptive"]  # fmt: skip
#: The adaptive-chain servers' guard judges the chain on its two warm-up steps (no ``hope``),
#: whose one token each on this tiny model sends it to decoding: SGLang's switch to depth 0 is
#: what they test. With ``hope`` it runs 8 chains, then the one-draft chain, predicted faster
#: than decoding here (``tests/integration/sglang/test_adaptive_depth.py`` tests that guard).
CHAIN_JUDGED_ON_WARM_UP = ["--policy-option", "hope=false"]


def eagle(draft: Path, algorithm: str = "EAGLE") -> list[str]:
    return [
        "--speculative-algorithm", algorithm, "--speculative-draft-model-path", str(draft),
        *TREE_ARGS,
    ]  # fmt: skip


def real_model_specs(path: Path) -> list[ServerSpec]:
    """smollm2-moe with its exported EAGLE head at B = E and B < E."""
    fp32 = ["--dtype", "float32"]  # bf16 near-ties flip greedy tokens between batch shapes
    head = [
        "--speculative-algorithm", "EAGLE", "--speculative-draft-model-path",
        str(path / "eagle-sglang"), "--speculative-token-map",
        str(path / "eagle-sglang" / "hot_token_map.pt"), "--speculative-num-steps", "3",
        "--speculative-eagle-topk", "4", "--speculative-num-draft-tokens", "8",
    ]  # fmt: skip
    policy = lambda budget: ["--policy", "router-mass", "--budget", str(budget)]  # noqa: E731
    return [
        ServerSpec("real-full", path, [*fp32, *head], policy(32)),
        ServerSpec(
            "real-budget",
            path,
            [*fp32, *head, "--enable-metrics"],
            [*policy(REAL_BUDGET), "--log-interval", LOG_INTERVAL],
        ),
    ]


def server_specs(models: dict[str, Path], trip: Path) -> list[ServerSpec]:
    qwen3, eagle3 = models["qwen3-moe"], eagle(models["qwen3-moe-eagle3"], "EAGLE3")
    serve = lambda policy, budget, *more: [  # noqa: E731
        "--policy", policy, "--budget", str(budget), "--log-interval", LOG_INTERVAL, *more,
    ]  # fmt: skip
    return [
        ServerSpec(
            "budgeted",
            qwen3,
            [*eagle3, "--enable-metrics"],
            serve("failing-router-mass", BUDGET, "--policy-option", f"trip={trip}"),
            env={"MOE_SPEC_PLUGINS": "live-test"},
        ),
        ServerSpec(
            "olmoe",
            models["olmoe"],
            [*eagle(models["olmoe-eagle"]), "--enable-metrics"],
            serve("token-priority", OLMOE_BUDGET),
        ),
        ServerSpec("full", qwen3, eagle(models["qwen3-moe-eagle"]), serve("router-mass", 16)),
        ServerSpec(
            "off",
            qwen3,
            eagle3,
            serve("router-mass", BUDGET),
            env={"MOE_SPEC_SGLANG_DISABLE": "1"},
        ),
        ServerSpec("auto", qwen3, eagle3, serve("auto", AUTO_CAP)),
        ServerSpec(
            "auto-chain",
            qwen3,
            [*eagle(models["qwen3-moe-eagle"])[:4], *ADAPTIVE_CHAIN],
            serve("auto", AUTO_CAP, *CHAIN_JUDGED_ON_WARM_UP),
        ),
        ServerSpec(
            "auto-chain-skip",
            qwen3,
            [*eagle(models["qwen3-moe-eagle"])[:4], *ADAPTIVE_CHAIN],
            serve("auto", AUTO_CAP, *CHAIN_JUDGED_ON_WARM_UP),
            env={"SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND": "1"},
        ),
        ServerSpec("plain", qwen3, []),
        ServerSpec(
            "refused",
            qwen3,
            eagle3,
            env={"MOE_SPEC_POLICY": "no-such-policy", "MOE_SPEC_BUDGET": str(BUDGET)},
        ),
        *real_model_specs(models["smollm2-moe"]),
    ]


class Fleet:
    """The session's servers by name; :meth:`ready` waits for one to answer."""

    def __init__(self, servers: dict[str, LiveServer], trip: Path, models: dict[str, Path]):
        self.servers = servers
        self.trip = trip
        self.models = models
        self.launched = time.monotonic()

    def ready(self, name: str) -> LiveServer:
        server = self.servers[name]
        server.wait_ready(START_TIMEOUT_S)
        return server


@pytest.fixture(scope="package")  # stopped once the live tests are done
def fleet(tmp_path_factory) -> Iterator[Fleet]:
    root = tmp_path_factory.mktemp("live")
    models = {**build_all(root / "models"), "smollm2-moe": model_path("smollm2-moe")}
    trip = root / "trip-the-policy"
    logs = root / "logs"
    logs.mkdir()
    servers = {}
    try:
        for spec in server_specs(models, trip):
            servers[spec.name] = LiveServer(spec, logs)
        fleet = Fleet(servers, trip, models)
        yield fleet
    finally:
        stop_all(servers.values())
    report_start_times(servers)


def report_start_times(servers: dict[str, LiveServer]) -> None:
    """Print how long each server took to answer (seen with ``pytest -s``; not asserted)."""
    for name, server in servers.items():
        if server.ready_after_s is not None:
            print(f"live server {name}: ready after {server.ready_after_s:.0f} s")
