"""A real SGLang 0.5.23 server with EAGLE / EAGLE-3 and the plugin, checked through HTTP.

Everything here is read from what the servers answer (``/generate``'s
``output_ids`` and ``meta_info``, ``/metrics``) and what they log. Greedy
decoding throughout: speculative decoding is then lossless, so an unbudgeted
server must produce exactly the non-speculative server's tokens.
"""

from __future__ import annotations

import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from tests.integration.sglang.live.conftest import (
    BUDGET,
    LOG_INTERVAL,
    OLMOE_BUDGET,
    REAL_BUDGET,
    REAL_LAYERS,
)
from tests.integration.sglang.live.harness import LiveServer

pytestmark = pytest.mark.live

#: Prompts of different lengths (1 to about 30 tokens), each with its own output length.
PROMPTS = [
    ("x", 9),
    ("def main(", 12),
    ("import os\nimport sys\n\nclass Config:\n    def __init__(self):", 16),
    ("for i in range(10):\n    print(i)\n# sum of squares\ntotal = 0\nwhile True:", 7),
]
LOG_LINE = re.compile(
    r"moe-spec: (\d+) verify pass(?:es)?; distinct experts per layer ([\d.]+) -> ([\d.]+) .*"
    r"since start (\d+) -> (\d+)\)"
)
METRIC = re.compile(r"^(moe_spec_\w+)\{([^}]*)\} ([\d.e+-]+)$", re.M)


def outputs(server: LiveServer) -> list[list[int]]:
    return [server.generate(text, n)["output_ids"] for text, n in PROMPTS]


def metrics(server: LiveServer) -> dict[tuple[str, str, str], float]:
    """``(name, layer, stage)`` -> value of the plugin's series on TP rank 0 (one replica: DP
    rank 0), after a flush.

    The plugin reports after a forward once its interval has passed: wait for it,
    then send a one-token request (a prefill, no verify pass) to trigger it.
    """
    time.sleep(float(LOG_INTERVAL) + 0.1)
    server.generate("flush", 1)
    found = {}
    for name, labels, value in METRIC.findall(server.get_text("/metrics")):
        fields = dict(re.findall(r'(\w+)="([^"]*)"', labels))
        assert (fields["tp_rank"], fields["dp_rank"]) == ("0", "0")
        found[(name, fields["layer"], fields.get("stage", ""))] = float(value)
    return found


def passes(found: dict, layers: int) -> list[float]:
    return [found.get(("moe_spec_verify_passes_total", str(i), ""), 0.0) for i in range(layers)]


def most(found: dict, stage: str, layers: int) -> list[float]:
    return [found[("moe_spec_distinct_experts_max", str(i), stage)] for i in range(layers)]


def test_unbudgeted_servers_answer_exactly_as_plain_decoding(fleet):
    """B >= E, and the plugin switched off: the same tokens as without speculation."""
    plain = outputs(fleet.ready("plain"))
    assert outputs(fleet.ready("full")) == plain  # plugin on, B=16 > E=8, EAGLE draft
    assert outputs(fleet.ready("off")) == plain  # no plugin hooks, EAGLE-3 draft
    meta = fleet.ready("full").generate("def main(", 12)["meta_info"]
    assert meta["spec_verify_ct"] >= 1 and meta["spec_accept_length"] >= 1.0
    assert not fleet.ready("plain").generate("def main(", 12)["meta_info"].get("spec_verify_ct")
    assert "budgeting 4 MoE layers in verify passes: policy router-mass, B=16" in (
        fleet.servers["full"].log()
    )
    assert "plugin loaded but switched off" in fleet.servers["off"].log()


@pytest.mark.parametrize(
    "name, budget, layers",
    [
        ("budgeted", BUDGET, 4),
        ("olmoe", OLMOE_BUDGET, 4),
        ("real-budget", REAL_BUDGET, REAL_LAYERS),
    ],
)
def test_every_verify_pass_reads_at_most_b_experts_per_layer(fleet, name, budget, layers):
    server = fleet.ready(name)
    assert not fleet.trip.exists()
    before = metrics(server)
    metas = [server.generate(text, n)["meta_info"] for text, n in PROMPTS]  # one at a time
    after = metrics(server)
    verify_ct = sum(m["spec_verify_ct"] for m in metas)
    assert all("spec_accept_length" in m and m["completion_tokens"] for m in metas)
    new = [b - a for a, b in zip(passes(before, layers), passes(after, layers), strict=True)]
    assert new == [verify_ct] * layers  # sequential requests: one verify pass per verify step
    assert max(most(after, "after", layers)) <= budget
    assert max(most(after, "before", layers)) > budget  # the budget had something to cut
    lines = LOG_LINE.findall(server.log())
    assert lines, server.log_tail()
    assert all(int(after_max) <= budget for *_, after_max in lines)
    assert all(float(after_mean) <= budget for _, _, after_mean, _, _ in lines)


def test_concurrent_requests_batch_their_verify_passes(fleet):
    """Four requests of different lengths at once: batched verify, budget held, same tokens."""
    full = fleet.ready("full")
    sequential = outputs(full)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        together = list(pool.map(lambda p: full.generate(*p)["output_ids"], PROMPTS))
    assert together == sequential  # unbudgeted: batching changes nothing

    server = fleet.ready("budgeted")
    before = metrics(server)
    with ThreadPoolExecutor(len(PROMPTS)) as pool:
        answers = list(pool.map(lambda p: server.generate(*p), PROMPTS))
    after = metrics(server)
    assert [len(a["output_ids"]) for a in answers] == [n for _, n in PROMPTS]
    verify_ct = sum(a["meta_info"]["spec_verify_ct"] for a in answers)
    new = passes(after, 4)[0] - passes(before, 4)[0]
    assert 0 < new < verify_ct  # some verify passes served several requests at once
    assert max(most(after, "after", 4)) <= BUDGET


def test_a_policy_that_raises_leaves_the_server_serving(fleet):
    """The policy raises in every layer: unbudgeted answers, one log line, then budgeted again."""
    server = fleet.ready("budgeted")
    plain = outputs(fleet.ready("plain"))
    fleet.trip.touch()
    try:
        tripped = outputs(server)
        tripped_again = outputs(server)
    finally:
        fleet.trip.unlink()
    assert tripped == plain and tripped_again == plain  # every layer fell back to unbudgeted
    failures = re.findall(r"verify pass NOT budgeted: (.*)", server.log())
    assert len(failures) == 1, failures
    assert "failing-router-mass: tripped on purpose" in failures[0]
    before = metrics(server)
    server.generate("def main(", 12)
    after = metrics(server)
    assert passes(after, 4)[0] > passes(before, 4)[0]  # budgeting again
    assert max(most(after, "after", 4)) <= BUDGET
