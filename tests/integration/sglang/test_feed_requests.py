"""The acceptance feed tells the policy when the observed request (the batch's first)
changes: new text, whose window starts again from the last steps of the old one."""

from __future__ import annotations

from types import SimpleNamespace

import torch

from moe_spec.integration.sglang.feed import AcceptanceFeed
from moe_spec.policies import get_policy

L, E, K, N = 2, 8, 2, 4
ROOT_ONLY = SimpleNamespace(accept_lens=torch.tensor([1]), accept_index=torch.tensor([[0, -1, -1]]))


def batch(*rids: str) -> SimpleNamespace:
    return SimpleNamespace(reqs=[SimpleNamespace(rid=rid) for rid in rids])


def test_the_policy_hears_of_a_new_first_request_before_its_first_step():
    policy = get_policy("auto", warmup=1, carry=1)
    policy.validate, policy.record_routing = False, False
    policy.for_server()
    policy.prepare(L, E, K, E, torch.device("cpu"))
    feed = AcceptanceFeed(policy, (N, 2, 2), K)
    events, start, observe = [], policy.start_request, policy.observe
    policy.start_request = lambda: events.append("new") or start()
    policy.observe = lambda *args: events.append("step") or observe(*args)
    # "a" then, while "b" joins behind it, still "a"; then "b"; a batch without ids
    # (SGLang's reqs missing or empty) starts nothing; then "c"
    for b in (batch("a"), batch("a", "b"), batch("b"), batch("b"), batch(), SimpleNamespace()):
        feed.after_verify(ROOT_ONLY, b)
    window = policy.controller.est.window
    assert len(window) == 5  # one step of "a" carried, "b"'s two, the two without ids
    feed.after_verify(ROOT_ONLY, batch("c", "a"))
    assert events == ["new", "step", "step", "new", "step", "step", "step", "step", "new", "step"]
    assert len(window) == 2  # the last step before "c", and "c"'s first
