"""What the acceptance feed logs: where SGLang runs its tree every step (no guard), a
warning the first time the policy predicts that tree slower than decoding without
speculation; its own host time per verify step, since the last report."""

from __future__ import annotations

import logging
from types import SimpleNamespace

import torch

from moe_spec.integration.sglang.feed import AcceptanceFeed
from moe_spec.policies import get_policy

L, E, K, N = 2, 8, 2, 4
ROOT_ONLY = SimpleNamespace(accept_lens=torch.tensor([1]), accept_index=torch.tensor([[0, -1, -1]]))
DEEP = SimpleNamespace(accept_lens=torch.tensor([3]), accept_index=torch.tensor([[0, 1, 3]]))
BATCH = SimpleNamespace(reqs=[SimpleNamespace(rid="a")])


def feed_of(tp_rank: int = 0) -> AcceptanceFeed:
    policy = get_policy("auto")
    policy.validate, policy.record_routing = False, False
    policy.for_server()
    policy.prepare(L, E, K, E, torch.device("cpu"))
    feed = AcceptanceFeed(policy, (N, 2, 2), K, tp_rank=tp_rank)
    # what a verify forward records: each layer's experts ranked 0..E-1, every token's top-k
    # the first two (no forward runs here)
    policy.device_state["rank_LE"][:] = torch.arange(E)
    policy.device_state["ids_LRK"][:] = torch.arange(K)
    return feed


def warnings_of(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


def test_a_tree_that_loses_to_decoding_is_warned_of_once(caplog):
    caplog.set_level(logging.INFO, logger="moe_spec.sglang")
    feed = feed_of()
    for _ in range(40):  # nothing past the root accepted: the tree cannot pay
        feed.after_verify(ROOT_ONLY, BATCH)
    (warning,) = warnings_of(caplog)
    tree_rate, plain = feed.policy.controller.slower
    assert tree_rate < plain
    tree_flags = (
        "--speculative-num-draft-tokens 4 --speculative-eagle-topk 2 --speculative-num-steps 2"
    )
    faster = round(100 * (plain / tree_rate - 1))
    assert f"tree ({tree_flags}) at {tree_rate:.4g} tok/s per request" in warning
    assert f"decoding without speculation at {plain:.4g} ({faster}% faster)" in warning
    assert "priced on OLMoE-1B-7B on H200 (calibrated cost model" in warning
    assert "--speculative-eagle-topk 1 --speculative-adaptive" in warning
    assert f"decoding without speculation {plain:.4g}, {faster}% faster (the tree runs" in (
        feed.line()
    )
    for _ in range(60):  # every draft accepted: the tree wins
        feed.after_verify(DEEP, BATCH)
    assert feed.policy.controller.slower is None
    assert "faster" not in feed.line() and "decoding without speculation" in feed.line()
    for _ in range(60):  # slower again: the periodic line says so, no second warning
        feed.after_verify(ROOT_ONLY, BATCH)
    assert feed.policy.controller.slower is not None and "(the tree runs every step" in feed.line()
    assert len(warnings_of(caplog)) == 1


def test_only_rank_0_logs_it(caplog):
    caplog.set_level(logging.INFO, logger="moe_spec.sglang")
    feed = feed_of(tp_rank=1)
    for _ in range(40):
        feed.after_verify(ROOT_ONLY, BATCH)
    assert feed.warned and feed.policy.controller.slower is not None
    assert not caplog.records


def test_the_host_time_per_step_is_the_last_intervals_once_a_report_was_made(caplog):
    caplog.set_level(logging.INFO, logger="moe_spec.sglang")
    feed = feed_of()
    feed.steps, feed.host_s = 10, 0.010  # the first steps: the controller's tables built
    assert "; host time per step 1.00 ms; " in feed.line()
    feed.report()
    assert "; host time per step 1.00 ms; " in caplog.records[-1].getMessage()
    feed.steps, feed.host_s = 20, 0.012
    assert "; host time per step 0.20 ms since the last report (0.60 since start); " in (
        feed.line()
    )


def test_the_line_names_budgets_planned_below_the_current_ones_since_the_last(monkeypatch):
    """A line showed the latest plan alone: 'budgets per layer [8, 8, 8, 8]' beside a counter
    line of 5.3 -> 4.1 experts from steps planned lower in between (an SGLang walkthrough)."""
    import numpy as np

    feed = feed_of()
    plans = iter([[3, 8], [8, 5], [8, 8]])

    def plan_step(tree, repair):
        feed.policy.budget_host_L = np.array(next(plans))
        return None

    monkeypatch.setattr(feed.policy, "plan_step", plan_step)
    feed.lowest_L = None
    for _ in range(3):
        feed.replan()
    assert "budgets per layer [8, 8] (lowest planned since the last line [3, 5]);" in feed.line()
    feed.report()
    assert "budgets per layer [8, 8];" in feed.line()
