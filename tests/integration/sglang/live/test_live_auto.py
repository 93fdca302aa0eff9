"""``auto`` on a live SGLang server: it learns each verify step's acceptance while serving."""

from __future__ import annotations

import ast
import re
import time

import pytest

from tests.integration.sglang.live.conftest import AUTO_CAP, LOG_INTERVAL
from tests.integration.sglang.live.models import VOCAB
from tests.integration.sglang.live.test_live_serving import PROMPTS

pytestmark = pytest.mark.live

AUTO_LINE = re.compile(
    r"moe-spec: auto observed (\d+) verify steps \((\d+) request steps folded in, from (\d+) "
    r"requests\), mean "
    r"accepted length ([\d.]+); budgets per layer (\[[\d, ]+\])"
    r"(?: \(lowest planned since the last line \[[\d, ]+\]\))?; P\(reach depth 1\.\.(\d+)\) "
    r"(\[[\d., e-]+\])"
)


def test_auto_learns_acceptance_and_sets_each_layers_budget(fleet):
    server = fleet.ready("auto")
    answers = [server.generate(text, n) for text, n in PROMPTS]  # one at a time
    first_tokens = [fleet.ready("plain").generate(text, 1)["output_ids"] for text, _ in PROMPTS]
    assert [len(a["output_ids"]) for a in answers] == [n for _, n in PROMPTS]
    assert all(0 <= t < VOCAB for a in answers for t in a["output_ids"])
    # the first token comes from the prefill, which the budget never touches
    assert [a["output_ids"][:1] for a in answers] == first_tokens
    verify_ct = sum(a["meta_info"]["spec_verify_ct"] for a in answers)
    assert verify_ct >= len(PROMPTS)
    time.sleep(float(LOG_INTERVAL) + 0.1)
    server.generate("flush", 1)  # a prefill: its forward writes the due report, no verify
    log = server.log()
    lines = AUTO_LINE.findall(log)
    assert lines, server.log_tail()
    steps, requests, new, mean, budgets, depth, reach = lines[-1]
    assert int(steps) == int(requests) == verify_ct  # every verify step reached observe
    assert int(new) == len(PROMPTS)  # each request, by its rid, started new text
    assert 1.0 <= float(mean) <= 3.0  # accepted tokens per request and step (tree depth 2)
    budgets = ast.literal_eval(budgets)
    assert len(budgets) == 4 and all(2 <= b <= AUTO_CAP for b in budgets)  # top-k to cap
    reach = ast.literal_eval(reach)
    assert int(depth) == 2 and reach != [0.5, 0.25]  # moved off the prior
    assert "NOT budgeted" not in log and "gets no more acceptance" not in log
    assert "budgeting 4 MoE layers in verify passes: policy auto, B=8" in log
    # its tree runs every step: the reason weighs it against decoding without a draft; this
    # model's draft is never right, so the tree loses, the reports say so and one warning did
    assert "; decoding without speculation " in log
    assert "faster (the tree runs every step here)" in log, server.log_tail()
    assert log.count("auto models this server's tree (") == 1, server.log_tail()


DEPTHS_LINE = re.compile(
    r"moe-spec: auto observed (\d+) verify steps .*steps per chain depth \{([^}]*)\}"
)
#: First a prompt whose first chains commit one token each (seen on this tiny model): the
#: guard turns to decoding; then the other prompts, on which chains are accepted.
CHAIN_PROMPTS = [("def main(", 48), *PROMPTS]


def served_chain(fleet, name: str) -> tuple[list[dict], str, int, dict[int, int]]:
    """``CHAIN_PROMPTS`` on the adaptive-chain server ``name``, checked against the plain
    server's first tokens; its answers, its log after a report, and the report's verify
    steps and steps per chain depth."""
    server = fleet.ready(name)
    answers = [server.generate(text, n) for text, n in CHAIN_PROMPTS]
    plain = fleet.ready("plain")
    first_tokens = [plain.generate(text, 1)["output_ids"] for text, _ in CHAIN_PROMPTS]
    assert [len(a["output_ids"]) for a in answers] == [n for _, n in CHAIN_PROMPTS]
    assert all(0 <= t < VOCAB for a in answers for t in a["output_ids"])
    assert [a["output_ids"][:1] for a in answers] == first_tokens
    time.sleep(float(LOG_INTERVAL) + 0.1)
    server.generate("flush", 1)
    log = server.log()
    steps, depths = DEPTHS_LINE.findall(log)[-1]
    depths = {int(d): int(n) for d, n in (pair.split(": ") for pair in depths.split(", "))}
    assert "NOT budgeted" not in log and "gets no more acceptance" not in log
    return answers, log, int(steps), depths


def test_autos_guard_chooses_the_depth_of_an_adaptive_chain(fleet):
    answers, log, steps, depths = served_chain(fleet, "auto-chain")
    verify_ct = sum(a["meta_info"]["spec_verify_ct"] for a in answers)
    assert "auto chooses the draft's depth among [0, 1, 3] (0: plain decoding)" in log
    assert steps == sum(depths.values()) == verify_ct  # a decode is a verify of the root
    # the first prompt's chains commit about one token: decoding wins, and SGLang switches
    # its runtime state where the guard says (and back to the chain for the guard's probes)
    assert {0, 3} <= set(depths) <= {0, 1, 3} and depths[0] > 0 and depths[3] >= 2
    assert "Switch adaptive runtime state: steps 3 -> 0" in log
    assert "draft extends skipped" not in log
    # every decode extends, so the draft's guess at each decoded token was read before it
    right, guessed = map(int, GUESSED_LINE.findall(log)[-1])
    assert guessed == depths[0] and 0 <= right <= guessed
    # the chain steps at the cap rest on the flag (the torch path reads it on the host);
    # those that rank only to be learned from rest with their scores kept and are ranked
    # after the forward (the warm-up's, the learning steps near paying, one in rank_every)
    rested, chains, after = map(int, RESTED_LINE.findall(log)[-1])
    assert chains == steps - depths[0], (chains, steps, depths)
    assert rested > 0 and after > 0 and rested + after <= chains, (rested, after, chains)


GUESSED_LINE = re.compile(r"the draft guessed (\d+) of (\d+) decoded tokens")
RESTED_LINE = re.compile(
    r"(\d+) of (\d+) tree steps rested \(budgets at E, no ranking\), (\d+) ranked after"
)
SKIPPED_LINE = re.compile(r"draft extends skipped on (\d+) of (\d+) decodes")


def test_with_sglangs_skip_switch_decodes_skip_the_extend_but_a_runs_last(fleet):
    _, log, _, depths = served_chain(fleet, "auto-chain-skip")
    assert "SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND=1 with auto on --speculative-adaptive" in log
    skipped, decodes = map(int, SKIPPED_LINE.findall(log)[-1])
    # every decode but the last of each run skips it; the runs end in the guard's chains
    assert decodes == depths[0] and 0 < skipped < decodes and depths[3] >= 2
    assert "the draft guessed" not in log  # its decodes make no guesses to read
