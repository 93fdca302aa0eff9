"""The draft's guesses at decoded tokens on an SGLang adaptive chain: read before each plain
decode (``AcceptanceFeed.note_guess``), matched against the verified token and handed to
``auto`` per run of decodes, as the engines hand them (its shadows)."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from moe_spec.control import AUTOREGRESSIVE
from moe_spec.integration.sglang.runtime import BudgetRuntime
from moe_spec.integration.sglang.settings import ServeSettings
from tests.integration.sglang.test_adaptive_depth import served, verify


def spied(policy) -> list[tuple[str, object]]:
    """What reaches the policy, in order: ``("matched", list)``, ``("decodes", steps)``
    for each autoregressive outcome, ``("start", None)`` for each new request."""
    seen: list[tuple[str, object]] = []
    matched, observe, start = policy.draft_matched, policy.observe, policy.start_request

    def draft_matched(m):
        seen.append(("matched", list(m)))
        matched(m)

    def observed(outcome, *args):
        if outcome.kind == AUTOREGRESSIVE:
            seen.append(("decodes", outcome.steps))
        observe(outcome, *args)

    def started():
        seen.append(("start", None))
        start()

    policy.draft_matched, policy.observe, policy.start_request = draft_matched, observed, started
    return seen


def decoding(**options):
    """A served chain of 3 whose first 10 steps commit their root alone: the guard decodes
    from the 9th on (``test_adaptive_depth``); its policy's inputs spied on."""
    policy, feed, worker, _ = served(3, guesses=True, probe=1000, max_probe=1000, **options)
    seen = spied(policy)
    for step in range(10):
        verify(policy, feed, worker, accepted=0, seed=step, guessed=False)
    assert worker.speculative_num_steps == 0
    return policy, feed, worker, seen


def test_each_decodes_guess_reaches_the_policy_in_order_before_its_runs_outcome():
    policy, feed, worker, seen = decoding()
    seen.clear()
    decoded = [False, False]  # whether the draft guessed each decoded token, in order
    assert feed.matched == decoded  # decoding()'s 2 decodes, their run not over
    for step in range(10, 90):
        right = (step * 7) % 5 < 2
        verify(policy, feed, worker, accepted=0, seed=step, guessed=right)
        if worker.speculative_num_steps == 0:  # this step decoded (its guess was read)
            decoded.append(right)
    given = [m for kind, m in seen if kind == "matched"]
    assert len(given) >= 3 and [hit for m in given for hit in m] + feed.matched == decoded
    # every run reported: its matches first, one per decode of the run
    for (kind, m), (next_kind, steps) in zip(seen, seen[1:], strict=False):
        if kind == "matched":
            assert next_kind == "decodes" and steps == len(m)
    assert feed.guessed == len(decoded)
    assert feed.right == sum(decoded)
    assert f"the draft guessed {feed.right} of {feed.guessed} decoded tokens" in feed.line()


def test_a_decode_without_a_guess_ends_the_matched_text_and_a_new_request_its_own():
    policy, feed, worker, seen = decoding()
    seen.clear()
    verify(policy, feed, worker, accepted=0, seed=10, guessed=True)
    verify(policy, feed, worker, accepted=0, seed=11, guessed=None)  # no guess read
    # the text before it, contiguous: decoding()'s 2 decodes and this one
    assert seen == [("matched", [False, False, True])]
    verify(policy, feed, worker, accepted=0, seed=12, guessed=True)
    verify(policy, feed, worker, accepted=0, seed=13, guessed=False, rid="next")
    assert worker.speculative_num_steps == 0  # all decodes of one planned run
    # the last request's decodes, their matches first, then the new request's text
    assert seen[1:4] == [("matched", [True]), ("decodes", 5), ("start", None)]
    assert [hit for kind, m in seen[4:] if kind == "matched" for hit in m] + feed.matched == [False]


def test_right_guesses_bring_the_chain_back_by_the_end_of_the_run_in_progress():
    """The text turns predictable while the guard decodes: with the guesses it runs the
    full chain again once the run ends (the shadows show the chain's 4 tokens a step);
    without them only a one-draft step or a probe would show it."""
    first_chain = {}
    for guesses in (True, False):
        policy, feed, worker, _ = served(3, guesses=guesses, probe=1000, max_probe=1000)
        depths = []
        for step in range(120):
            good = step >= 40
            verify(policy, feed, worker, accepted=3 if good else 0, seed=step, guessed=good)
            depths.append(worker.speculative_num_steps)
        back = next(i for i in range(40, 120) if depths[i : i + 8] == [3] * 8)
        first_chain[guesses] = back
        if guesses:
            every = policy.controller.read_every()
            assert back <= 40 + every and 1 not in depths[40:back]  # no one-draft step
            assert list(policy.controller.shadow) == []  # cleared on the switch back
    assert first_chain[True] < first_chain[False]


def test_the_skip_switch_or_a_policy_without_shadow_reads_no_guesses():
    for options in (dict(skip_extend=True), dict(shadow=False)):
        policy, feed, worker, _ = served(3, guesses=True, **options)
        seen = spied(policy)
        for step in range(40):
            verify(policy, feed, worker, accepted=0, seed=step, guessed=True)
        assert not feed.guesses and feed.guessed == 0
        assert not [kind for kind, _ in seen if kind == "matched"]
        assert "the draft guessed" not in feed.line()


def test_a_guess_that_cannot_be_read_stops_the_guesses_not_the_server(caplog):
    runtime = BudgetRuntime(ServeSettings("auto", 16))
    _, runtime.feed, worker, _ = served(3, guesses=True)
    worker.draft_worker.hot_token_id = torch.arange(2)  # shorter than the draft's vocabulary
    batch = SimpleNamespace(spec_info=SimpleNamespace(topk_index=torch.tensor([[5]])))
    with caplog.at_level(logging.ERROR, logger="moe_spec.sglang"):
        runtime.before_decode(worker, batch)
    assert runtime.feed.guesses is False and runtime.feed.guess_1 is None
    assert "gets no more of the draft's guesses at decoded tokens" in caplog.text
