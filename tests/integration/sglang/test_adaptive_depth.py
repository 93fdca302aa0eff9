"""``auto`` chooses the depth of an SGLang chain under ``--speculative-adaptive``: SGLang's
own ``AdaptiveController`` runs a worker whose states are the guard's candidates, and
switches them where the guard's plan says (a fake worker: its states are just depths)."""

from __future__ import annotations

import os
from types import SimpleNamespace

import pytest
import torch
from sglang.srt.speculative.adaptive_runtime_state import AdaptiveController
from sglang.srt.speculative.adaptive_spec_params import AdaptiveSpeculativeParams

from moe_spec.control import AUTOREGRESSIVE, TREE
from moe_spec.costmodel import decode_seconds, draft_seconds
from moe_spec.integration.sglang.compat import SKIP_EXTEND
from moe_spec.integration.sglang.depth import GuardedDepth, drive_depth
from moe_spec.integration.sglang.feed import AcceptanceFeed, FeedError
from moe_spec.kernels.budget_select_torch import RANK, REST
from moe_spec.policies import get_policy
from moe_spec.routing import RoutingRecord

L, E, K = 2, 16, 2
#: The draft's hot vocabulary (``--speculative-token-map``): its token i is the target's
#: HOT_V[i], never i itself, so a guess compared unmapped is never right.
HOT_V = torch.arange(8) * 7 + 100


class FakeWorker:
    """What ``AdaptiveController`` needs of ``EAGLEWorkerV2``: build and apply states."""

    def __init__(self, steps: int) -> None:
        self.speculative_num_steps = steps
        self.built: list[int] = []
        self.draft_worker = SimpleNamespace(hot_token_id=HOT_V)  # the draft's vocabulary
        self.adaptive_controller = AdaptiveController(self, AdaptiveSpeculativeParams(steps))

    def build_adaptive_runtime_state(self, speculative_num_steps, speculative_num_draft_tokens,
                                     cuda_graph_bs=None):  # fmt: skip
        assert speculative_num_draft_tokens == speculative_num_steps + 1
        self.built.append(speculative_num_steps)
        return SimpleNamespace(speculative_num_steps=speculative_num_steps)

    def apply_runtime_state(self, state) -> None:
        self.speculative_num_steps = state.speculative_num_steps


def served(depth: int, skip_extend: bool = False, guesses: bool = False, **options):
    """``auto`` as the plugin prepares it for an adaptive chain of ``depth``, its feed, and
    a worker whose controller was built by SGLang and then handed to the guard (with
    ``skip_extend``, as under ``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND=1``; with
    ``guesses``, the draft's guesses before decodes are read)."""
    policy = get_policy("auto", **options)
    policy.validate = False
    policy.record_routing = False
    policy.for_server(guard=True, decode_extend=not skip_extend, guesses=guesses)
    policy.prepare(L, E, K, E, torch.device("cpu"))
    feed = AcceptanceFeed(policy, (depth + 1, 1, depth), K, chains=True, skip_extend=skip_extend)
    worker = FakeWorker(depth)
    guarded = drive_depth(worker, feed)
    controller = worker.adaptive_controller
    controller.register(SimpleNamespace(speculative_num_steps=depth))
    controller.init_states(cuda_graph_bs=None)
    return policy, feed, worker, guarded


def verify(
    policy,
    feed: AcceptanceFeed,
    worker: FakeWorker,
    accepted: int,
    seed: int,
    rid: str = "r",
    guessed: bool | None = None,
) -> None:
    """One decode step as SGLang runs it: the depth the controller activates, the verify
    forward's routing through the policy (every MoE layer), then the verify hook's feed.
    At depth 0 with ``guessed`` (True or False), the draft's guess is read first, as the
    plugin reads it while SGLang builds the decode's input, and the decoded token is that
    guess or another."""
    worker.adaptive_controller.activate_step_by_batch(1)
    depth = worker.speculative_num_steps
    T = depth + 1
    batch = SimpleNamespace(reqs=[SimpleNamespace(rid=rid)])
    bonus_b = torch.tensor([1])  # the target's token (never a guess here: HOT_V's are > 99)
    if depth == 0 and guessed is not None:
        hot = seed % len(HOT_V)  # the draft's top token, in its hot vocabulary
        batch.spec_info = SimpleNamespace(topk_index=torch.tensor([[hot]]))
        feed.note_guess(worker, batch)
        bonus_b = HOT_V[hot : hot + 1] + (0 if guessed else 1)
    gen = torch.Generator().manual_seed(seed)
    for layer in range(L):
        logits_TE = torch.randn(T, E, generator=gen)
        weights_TK, ids_TK = logits_TE.softmax(-1).topk(K, dim=-1)
        record = RoutingRecord(logits_TE, ids_TK, weights_TK, depth_T=torch.arange(T),
                               layer_idx=layer, num_layers=L)  # fmt: skip
        policy.apply(record, E)
    n = 1 + min(accepted, depth)  # the root and the accepted drafts
    index = [[*range(n), *[-1] * (T - n)]]
    result = SimpleNamespace(
        accept_lens=torch.tensor([n]),
        accept_index=torch.tensor(index),
        next_draft_input=SimpleNamespace(bonus_tokens=bonus_b),
    )
    feed.after_verify(result, batch)


def test_the_guard_hands_sglang_its_candidates():
    _, feed, worker, guarded = served(7)
    assert isinstance(guarded, GuardedDepth)
    assert worker.adaptive_controller.params is guarded
    # the chain, its halvings down to one draft, decoding
    assert guarded.candidate_steps == [0, 1, 3, 7]
    assert sorted(worker.built) == [0, 1, 3]  # 7 was registered as the running state
    assert worker.speculative_num_steps == 7
    guarded.set_cuda_graph_bs([4, 1, 2])
    assert guarded.cuda_graph_bs_for_step(0) == [1, 2, 4]
    assert guarded.on_verify_complete([0], 1) is None  # the verify hook already learned it


def test_a_chain_that_commits_only_its_root_gives_way_to_decoding_and_is_probed():
    policy, feed, worker, _ = served(3)
    depths = []
    for step in range(118):  # the last a decode
        verify(policy, feed, worker, accepted=0, seed=step)
        depths.append(worker.speculative_num_steps)
    # the warm-up chains, and more while their mean plus one standard error might pay
    # (``hope``: the current chain seen on fewer than 8 steps), then decodes: 1 token loses
    assert depths[:9] == [3] * 8 + [0]
    # back to the chain for a probe once a run of decodes is over (runs lengthen while
    # the chain does not win back: a probe costs more than its chance of winning)
    probes = [i for i in range(9, 118) if depths[i] == 3]
    assert 1 <= len(probes) <= 3 and depths.count(0) >= 95
    # between them, one draft every few decodes (``explore``: at most 0.5% of the time lost),
    # spaced by its mean from the first: the chain's 8 steps showed the one-draft tree's too;
    # from its 4th own step those alone predict it (``AcceptanceEstimates.arrays``), and
    # below 8 of them one standard error of hope brings the next 4 every other step (each
    # explore decides again at once: the 4th shows it)
    explores = [i for i in range(9, 118) if depths[i] == 1]
    every = policy.controller.explore_every
    pairs = [(a, b) for a, b in zip(explores, explores[1:], strict=False) if 3 not in depths[a:b]]
    assert explores[0] == 8 + every and every > 1
    assert len(explores) >= 10 and {b - a - 1 for a, b in pairs} == {1, every}
    assert [b for a, b in pairs if b - a - 1 == 1] == explores[4:8]
    assert sum(feed.by_depth.values()) == feed.steps == 118
    line = feed.line()
    assert f"steps per chain depth {{0: {depths.count(0)}, 1: {len(explores)}, 3: " in line
    assert "plan: keeps autoregressive" in line  # the plan's reason
    assert line.endswith(f"explores with tree 2/1/1 B=2,2 every {every} decodes")
    assert feed.decodes < feed.plan.steps  # the run in progress is not reported yet


@pytest.mark.parametrize("explore", [0.005, 0.0])
def test_one_draft_steps_find_text_that_begins_to_repeat(explore):
    # 50 steps whose drafts are all rejected, then text the chain predicts in full: a
    # one-draft step between decodes fills its path and probes the full chain at once;
    # without them, the next probe of the full chain comes many decodes later
    policy, feed, worker, _ = served(3, explore=explore)
    depths = []
    for step in range(130):
        verify(policy, feed, worker, accepted=0 if step < 50 else 3, seed=step)
        depths.append(worker.speculative_num_steps)
        if step == 49:
            every = policy.controller.explore_every  # decodes between one-draft steps
    back = next((i for i in range(50, 130) if depths[i:i + 4] == [3] * 4), 130)  # fmt: skip
    if explore:  # the first one-draft step on the new text fills its path: the chain is
        # probed next, and no step decodes from then on (the window holds the 8 chains of 1
        # token ``hope`` ran at the start: one-draft steps and probes alternate a while)
        found = next(i for i in range(50, 130) if depths[i] == 3)
        assert found <= 50 + every + 2 and 0 not in depths[found:]
        assert back < 80
    else:
        assert back > 80 and 1 not in depths


def test_every_step_is_priced_with_sglangs_draft_extend():
    # SGLang runs a draft forward over the verified tokens after every verify, a depth-0
    # one's included: a plain decode there costs that much more than without speculation
    policy, feed, worker, _ = served(3)
    for step in range(3):
        verify(policy, feed, worker, accepted=0, seed=step)
    guard = policy.controller
    cost, shape = policy.cost, policy.shape
    extend_1 = draft_seconds(cost.gpu, shape, 1, 1, overheads=cost.overheads)
    decode_s = decode_seconds(cost.gpu, shape, overheads=cost.overheads)
    assert guard.predicted[AUTOREGRESSIVE] == pytest.approx(1 / (decode_s + extend_1))
    for c, (n, w, d) in enumerate(guard.trees):  # the chain's d drafts, then its extend
        drafts = draft_seconds(cost.gpu, shape, w, d, overheads=cost.overheads)
        extend = draft_seconds(cost.gpu, shape, n, 1, overheads=cost.overheads)
        assert guard.cost.draft_C[c] == pytest.approx(drafts + extend)
    engines = get_policy("auto")  # the engines catch the draft up lazily: no extend
    assert not engines.draft_extend


def test_with_sglangs_skip_switch_a_decode_skips_the_extend_unless_the_chain_comes_next(
    monkeypatch,
):
    # SGLang reads its switch after each verify: on for a decode another decode follows, off
    # for the last decode of a run (the chain after it drafts from a current state)
    monkeypatch.setenv(SKIP_EXTEND, "1")
    policy, feed, worker, _ = served(3, skip_extend=True)
    steps = []  # (depth, the switch as SGLang reads it after that step's verify)
    for step in range(120):
        verify(policy, feed, worker, accepted=0, seed=step)
        steps.append((worker.speculative_num_steps, os.environ[SKIP_EXTEND]))
    depths = [d for d, _ in steps]
    assert depths.count(0) >= 100 and {1, 3} <= set(depths)  # probes and one-draft steps
    for (depth, switch), (after, _) in zip(steps, steps[1:], strict=False):
        assert switch == ("1" if depth == 0 and after == 0 else "0"), (depth, after)
    skipped = sum(switch == "1" for _, switch in steps)
    assert skipped == feed.extends_skipped and feed.decodes_run == depths.count(0)
    assert f"draft extends skipped on {skipped} of {depths.count(0)} decodes" in feed.line()
    # its decodes are priced as plain ones, its chains with their extend
    cost, shape = policy.cost, policy.shape
    decode_s = decode_seconds(cost.gpu, shape, overheads=cost.overheads)
    assert policy.controller.decode_seconds() == pytest.approx(decode_s)
    chain = draft_seconds(cost.gpu, shape, 1, 3, overheads=cost.overheads)
    extend = draft_seconds(cost.gpu, shape, 4, 1, overheads=cost.overheads)
    assert policy.controller.cost.draft_C[0] == pytest.approx(chain + extend)


def test_without_the_switch_the_guard_leaves_it_alone(monkeypatch):
    monkeypatch.delenv(SKIP_EXTEND, raising=False)
    policy, feed, worker, _ = served(3)
    for step in range(40):
        verify(policy, feed, worker, accepted=0, seed=step)
    assert SKIP_EXTEND not in os.environ and feed.extends_skipped == 0
    assert "draft extends skipped" not in feed.line()


def test_decodes_are_reported_as_the_planned_run():
    policy, feed, worker, _ = served(3)
    seen = []
    observe = policy.observe
    policy.observe = lambda outcome, *a: (
        seen.append((outcome.kind, outcome.steps)) or observe(outcome, *a)
    )
    for step in range(100):
        verify(policy, feed, worker, accepted=0, seed=step)
    runs = [steps for kind, steps in seen if kind == AUTOREGRESSIVE]
    assert runs and all(r >= 1 for r in runs) and sum(runs) == feed.by_depth[0] - feed.decodes
    assert any(r > 1 for r in runs)  # one outcome for a run of decodes, as the engines send
    assert sum(kind == TREE for kind, _ in seen) == feed.by_depth[1] + feed.by_depth[3]


def test_a_run_of_decodes_ends_with_its_request():
    policy, feed, worker, _ = served(3, explore=0.0)  # no one-draft steps between decodes
    for step in range(16):  # 8 chains (``hope``), then decodes
        verify(policy, feed, worker, accepted=0, seed=step)
    assert feed.plan.kind == AUTOREGRESSIVE and feed.decodes == 8  # a longer run planned
    assert feed.plan.steps > 8
    seen, observe = [], policy.observe
    policy.observe = lambda outcome, *a: seen.append(outcome.steps) or observe(outcome, *a)
    verify(policy, feed, worker, accepted=0, seed=16, rid="next")
    assert seen == [8] and feed.decodes == 1  # reported at once; the new text's run begins
    assert feed.started == 2


def test_a_chain_that_is_accepted_stays():
    policy, feed, worker, _ = served(3)
    for step in range(24):
        verify(policy, feed, worker, accepted=3, seed=step)
        assert worker.speculative_num_steps == 3, (step, feed.plan)
    assert feed.by_depth == {3: 24}


def test_a_depth_the_guard_did_not_offer_is_a_feed_error():
    policy, feed, worker, _ = served(7)
    worker.speculative_num_steps = 5  # as if SGLang's own policy still chose
    index = torch.tensor([[0] + [-1] * 5])
    result = SimpleNamespace(accept_lens=torch.tensor([1]), accept_index=index)
    with pytest.raises(FeedError, match=r"depth 5; auto chooses among depths \[7, 3, 1\] and 0"):
        feed.after_verify(result, None)


def test_a_stopped_feed_runs_the_configured_chain():
    policy, feed, worker, guarded = served(3)
    for step in range(10):  # 8 chains (``hope``), then decodes
        verify(policy, feed, worker, accepted=0, seed=step)
    assert guarded.get_steps_for_batch(1) == 0
    feed.stopped = "FeedError(...)"
    assert guarded.get_steps_for_batch(1) == 3


def test_a_feed_stopped_during_decodes_keeps_the_last_tree_steps_budgets(caplog):
    """A layout the feed cannot read arrives while the guard decodes (its flag at REST):
    the configured chain then runs at the budgets the last tree step ranked with, not with
    every expert, as the log line says."""
    from moe_spec.integration.sglang.runtime import BudgetRuntime
    from moe_spec.integration.sglang.settings import ServeSettings

    runtime = BudgetRuntime(ServeSettings("auto", E))
    runtime.policy, runtime.feed, worker, guarded = served(3)
    policy = runtime.policy
    for step in range(10):  # chains ranked at B=2, then decodes
        verify(policy, runtime.feed, worker, accepted=0, seed=step)
    assert guarded.get_steps_for_batch(1) == 0 and policy.rest_host == REST
    assert policy.budget_host_L.tolist() == [2] * L
    runtime.after_verify(SimpleNamespace(), SimpleNamespace())  # not a verify result
    assert runtime.feed.stopped and "budgets stay as they are" in caplog.text
    assert guarded.get_steps_for_batch(1) == 3 and policy.rest_host == RANK


def test_a_depth_choice_that_fails_runs_the_configured_chain_and_says_so(caplog):
    """SGLang's scheduler calls the depth choice while serving and catches nothing."""
    policy, feed, worker, guarded = served(3)
    verify(policy, feed, worker, accepted=0, seed=0)

    def broken():
        raise RuntimeError("a bug in the plan")

    feed.depth = lambda real=feed.depth: real() if feed.stopped else broken()
    assert guarded.get_steps_for_batch(1) == 3  # the configured chain
    assert "RuntimeError('a bug in the plan')" in feed.stopped
    assert "the depth choice raised" in caplog.text and caplog.text.count("a bug") == 1
    assert guarded.get_steps_for_batch(1) == 3 and caplog.text.count("a bug") == 1


def test_sglangs_line_per_depth_switch_is_thinned():
    """SGLang logs one INFO line per depth switch (every 4-7 verify steps under the guard):
    each transition's first line passes, then one a minute, counting those held back."""
    import logging

    from moe_spec.integration.sglang.depth import SWITCH_LOGGER, SwitchLines

    served(3)
    served(3)  # every worker's drive_depth: one filter on SGLang's logger, not one each
    filters = logging.getLogger(SWITCH_LOGGER).filters
    assert sum(isinstance(f, SwitchLines) for f in filters) == 1

    def line(a: int, b: int) -> logging.LogRecord:
        text = "Switch adaptive runtime state: steps %d -> %d, draft_tokens %d -> %d"
        return logging.LogRecord(
            SWITCH_LOGGER, logging.INFO, "", 0, text, (a, b, a + 1, b + 1), None
        )

    thin = SwitchLines(every_s=60.0)
    records = [line(a, b) for a, b in [(3, 0), (0, 3), (3, 0), (0, 3), (3, 1), (3, 0)]]
    shown = [thin.filter(r) for r in records]
    assert shown == [True, True, False, False, True, False]  # 3 -> 1 is new
    held = "more since the last shown; moe-spec thins these)"
    assert records[4].getMessage().endswith(f"(2 {held}")
    thin.last -= 61.0  # a minute later: a transition seen before passes again
    again = line(3, 0)
    assert thin.filter(again) and again.getMessage().endswith(f"(1 {held}")
    other = logging.LogRecord(SWITCH_LOGGER, logging.INFO, "", 0, "Build state", (), None)
    assert thin.filter(other)  # SGLang's other lines pass untouched


def test_without_sglangs_controller_nothing_is_driven():
    policy = get_policy("auto")
    policy.for_server(guard=True)
    policy.prepare(L, E, K, E, torch.device("cpu"))
    chain = AcceptanceFeed(policy, (4, 1, 3), K, chains=True)
    assert drive_depth(SimpleNamespace(adaptive_controller=None), chain) is None
    fixed = AcceptanceFeed(policy, (4, 1, 3), K)
    assert drive_depth(FakeWorker(3), fixed) is None
