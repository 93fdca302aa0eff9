"""The ``auto`` policy in the reference engine: lossless with repair, and its guard."""

from __future__ import annotations

import numpy as np
import pytest

from moe_spec.control import Guard
from moe_spec.control.steps import StepPlan
from moe_spec.costmodel import CostModel, Overheads
from moe_spec.costmodel.gpus import GPU
from moe_spec.engine.generate import SpecConfig
from moe_spec.policies import get_policy

PROMPTS = [[5, 17, 42, 8, 99, 3], [250, 12, 12, 12, 40, 41, 42, 43, 44]]
TREE = {"width": 4, "depth": 4, "num_tokens": 16}
NEW = 40


def auto_spec(repair: bool = True, **options) -> SpecConfig:
    return SpecConfig(**TREE, policy="auto", repair=repair, policy_options=options)


def test_auto_with_repair_gives_the_unbudgeted_output_while_budgeting(tiny_engine):
    budgeted = False
    for prompt in PROMPTS:
        want = tiny_engine.generate_speculative(prompt, NEW, SpecConfig(**TREE)).tokens
        assert want == tiny_engine.generate_autoregressive(prompt, NEW).tokens
        out = tiny_engine.generate_speculative(prompt, NEW, auto_spec(guard=False))
        assert out.tokens == want
        assert all(s.guard == "tree" and s.reason for s in out.steps)
        assert all(s.ranked for s in out.steps if s.distinct_after_L != s.distinct_before_L)
        budgeted |= any(
            a < b
            for s in out.steps
            for a, b in zip(s.distinct_after_L, s.distinct_before_L, strict=True)
        )
    assert budgeted, "under the H200 cost model auto must read fewer experts somewhere"


def free_experts_policy(select_s: float = 0.0, **options):
    """``auto`` under a cost model where reading experts costs nothing (budgets save no
    time) and each MoE layer's budget selection ``select_s`` seconds."""
    policy = get_policy("auto", guard=False, **options)
    free = GPU("free-experts", 1e30, 1e30, "test: bytes and FLOPs cost nothing")
    policy.cost = CostModel("flat", free, Overheads(forward_s=1e-3, select_s=select_s))
    return policy


@pytest.mark.parametrize("rank_after", [True, False])
def test_auto_keeps_every_expert_when_the_cost_model_says_budgeting_does_not_pay(
    tiny_engine, rank_after
):
    policy = free_experts_policy(rank_after=rank_after)
    spec = auto_spec(repair=False, guard=False)
    plain = tiny_engine.generate_speculative(PROMPTS[0], NEW, SpecConfig(**TREE))
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=policy)
    assert out.tokens == plain.tokens
    assert len(out.steps) > policy.controller.warmup  # it did plan, with budgets E
    assert all(s.distinct_after_L == s.distinct_before_L for s in out.steps)
    assert set(policy.controller.budget_L.tolist()) == {tiny_engine.config.n_experts}
    # unbudgeted, it ranks (and learns) on every step until the window holds 8 (the 2
    # warm-up steps among them: a budget below the cap comes close to paying here, within
    # rank_near, so learning steps rank), then on every 4th tree step; the other steps never
    # call it, and the A/B harness prices them without the selection; with rank_after
    # (the default) those steps rest too and the policy ranks their routing after the forward
    ranked = [s.ranked or s.ranked_after for s in out.steps]
    assert len(out.steps) > 12
    assert ranked == [i < 8 or i % 4 == 0 for i in range(len(out.steps))]
    assert [s.ranked_after for s in out.steps] == (ranked if rank_after else [False] * len(ranked))
    assert policy.controller.est.steps_seen == sum(ranked)  # the window: ranked steps only
    assert policy.controller.est.ranked_W[: sum(ranked)].all()


def test_a_step_ranked_after_its_forward_is_learned_as_one_ranked_inside_it(tiny_engine):
    """Where ranking costs nothing (so both plan alike), ranking the kept routing after the
    forward fills the window with the same tables as ranking inside it: every step, every
    layer, every budget level."""
    runs = {}
    for rank_after in (True, False):
        policy = free_experts_policy(rank_after=rank_after)
        spec = auto_spec(repair=False, guard=False)
        out = tiny_engine.generate_speculative(PROMPTS[1], NEW, spec, policy=policy)
        runs[rank_after] = (out, policy.controller.est)
    (after, est_after), (inside, est_inside) = runs[True], runs[False]
    assert after.tokens == inside.tokens
    assert sum(s.ranked_after for s in after.steps) >= 10
    assert not any(s.ranked_after for s in inside.steps)
    assert est_after.steps_seen == est_inside.steps_seen
    assert np.array_equal(est_after.exact_WLV, est_inside.exact_WLV)
    assert np.array_equal(est_after.need_W, est_inside.need_W)
    assert np.array_equal(est_after.used_WCL, est_inside.used_WCL)


def test_an_engine_that_keeps_no_routing_makes_auto_rank_inside_and_say_so(
    tiny_engine, monkeypatch
):
    """An engine written before ``rank_after`` (its resting layers pass no ``record``): the
    first step to be ranked after its forward comes back without routing; one warning, and
    the policy ranks inside the forward from then on, learning as it did before."""
    from moe_spec.engine.model import VerifyBudget

    keeps = VerifyBudget.note_unbudgeted
    spec = auto_spec(repair=False, guard=False)
    inside = free_experts_policy(rank_after=False)
    want = tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=inside)
    monkeypatch.setattr(
        VerifyBudget, "note_unbudgeted", lambda self, ids_TK, record=None: keeps(self, ids_TK)
    )
    policy = free_experts_policy()
    with pytest.warns(RuntimeWarning, match="ranks inside the forward from now on") as caught:
        out = tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=policy)
    assert len([w for w in caught if "without the layers' routing" in str(w.message)]) == 1
    assert out.tokens == want.tokens and not policy.rank_after
    assert not any(s.ranked_after for s in out.steps)
    # the first step, planned to be ranked after, rested unranked; every later one as before
    ranked, ranked_inside = [s.ranked for s in out.steps], [s.ranked for s in want.steps]
    assert not ranked[0] and ranked_inside[0] and ranked[1:] == ranked_inside[1:]
    est = policy.controller.est
    assert est.steps_seen == inside.controller.est.steps_seen
    assert est.ranked_W[: est.steps_seen].sum() == sum(ranked) == sum(ranked_inside) - 1
    assert policy.controller.cost.rank_share == 1.0  # priced as a ranking inside


def test_the_routing_kept_to_rank_after_a_forward_is_gone_by_the_next_plan(
    tiny_engine, monkeypatch
):
    """The layers' records (logits, top-k) live from the forward to the policy's ranking:
    none survives into the next step's plan, its draft or a run of decodes."""
    import gc
    import weakref

    from moe_spec.engine.model import VerifyBudget

    keeps, made = VerifyBudget.note_unbudgeted, []

    def note(self, ids_TK, record=None):
        def kept():
            made.append(weakref.ref(out := record()))
            return out

        keeps(self, ids_TK, None if record is None else kept)

    monkeypatch.setattr(VerifyBudget, "note_unbudgeted", note)
    policy = free_experts_policy()
    alive, plan = [], policy.plan_step

    def plan_step(*args):
        gc.collect()
        alive.append(sum(ref() is not None for ref in made))
        return plan(*args)

    policy.plan_step = plan_step
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, auto_spec(repair=False), policy=policy)
    assert sum(s.ranked_after for s in out.steps) >= 5 and len(made) >= 5 * 2  # 2 MoE layers
    assert alive == [0] * len(alive)


def test_the_first_ranking_after_a_forward_is_kept_off_the_measured_step(tiny_engine, monkeypatch):
    """A step's host time is its measured time (``measure``); the first ranking after a
    forward (on CUDA it compiles the kernel) is taken off it, the later ones are not."""
    excluded = []
    monkeypatch.setattr(Guard, "exclude_time", lambda self, seconds: excluded.append(seconds))
    policy = free_experts_policy()
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, auto_spec(repair=False), policy=policy)
    assert sum(s.ranked_after for s in out.steps) >= 2
    assert len(excluded) == 1 and excluded[0] > 0


def test_with_rank_every_1_only_steps_the_window_takes_are_ranked_after(tiny_engine):
    """With ``rank_every=1`` (no step rests) a step at the cap enters the window once it is
    full only one time in ``learn_every``: only those are ranked after the forward (and
    priced so); the others rank inside, as before ``rank_after``."""
    policy = free_experts_policy(rank_every=1)
    calls = []
    rank = policy.rank_routing
    policy.rank_routing = lambda routing_L: calls.append(1) or rank(routing_L)
    spec = auto_spec(repair=False, guard=False, rank_every=1)
    out = tiny_engine.generate_speculative(PROMPTS[0], 80, spec, policy=policy)
    after = [s.ranked_after for s in out.steps]
    assert sum(after) == len(calls) == policy.controller.est.steps_seen
    window = policy.controller.est.window.maxlen
    assert len(out.steps) > window + 2 * policy.learn_every  # the window filled, then more
    assert all(after[:window]) and not all(after[window:])
    assert all(s.ranked or s.ranked_after for s in out.steps)


def test_far_from_paying_ranks_grow_rarer_by_default_and_a_new_request_resets_them(tiny_engine):
    """By default (``max_rank_every`` 32), each replan at the cap far from paying halves how
    often a resting step ranks; a new request on the same policy ranks ``rank_every`` apart
    again."""
    policy = free_experts_policy(select_s=1e-3, rank_after=False)  # ranks show as `ranked`
    spec = auto_spec(repair=False, guard=False)
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=policy)
    c = policy.controller
    ranked = [i for i, s in enumerate(out.steps) if s.ranked]
    assert c.far_from_paying() and c.rank_interval > c.rank_every
    assert ranked[:2] == [0, 1] and len(out.steps) > 24  # the warm-up ranks
    assert len(ranked) - 2 < (len(out.steps) - 2) // c.rank_every  # then rarer than 1 in 4
    again = tiny_engine.generate_speculative(PROMPTS[1], NEW, spec, policy=policy)
    ranked = [i for i, s in enumerate(again.steps) if s.ranked]
    assert ranked[0] < c.rank_every and ranked[1] - ranked[0] == c.rank_every  # reset


def test_far_from_paying_learning_steps_rest_and_enter_the_window_unranked(tiny_engine):
    """A costly selection: budgets below the cap are far from paying, so a step the guard
    learns from rests (no ranking) and enters the window with its tokens and experts. Ranks
    one in ``rank_every`` with their spacing off (``max_rank_every=4``; spaced below)."""
    policy = free_experts_policy(select_s=1e-3, max_rank_every=4, rank_after=False)
    spec = auto_spec(repair=False, guard=False)
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=policy)
    assert set(policy.controller.budget_L.tolist()) == {tiny_engine.config.n_experts}
    assert policy.controller.far_from_paying()
    ranked = [s.ranked for s in out.steps]
    assert len(ranked) > 12 and ranked == [i < 2 or i % 4 == 0 for i in range(len(ranked))]
    entered = [r for i, r in enumerate(ranked) if i < 8 or r]
    window = policy.controller.est.window
    assert [step.need_LP is not None for step in window] == entered


def test_every_tree_step_ranks_when_rank_every_is_one(tiny_engine):
    policy = get_policy("auto", guard=False, rank_every=1, rank_after=False)
    free = GPU("free-experts", 1e30, 1e30, "test: bytes and FLOPs cost nothing")
    policy.cost = CostModel("flat", free, Overheads(forward_s=1e-3))
    spec = auto_spec(repair=False, guard=False, rank_every=1)
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=policy)
    assert all(s.ranked for s in out.steps)


@pytest.mark.parametrize("temperature", [0.0, 0.8])
def test_the_guard_falls_back_to_autoregressive_when_speculation_cannot_win(
    tiny_engine, temperature
):
    """A random draft is almost never accepted: a tree step commits ~1 token at more cost."""
    for prompt in PROMPTS:
        spec = SpecConfig(**TREE, policy="auto", temperature=temperature)
        out = tiny_engine.generate_speculative(prompt, 80, spec, seed=3)
        kinds = [s.guard for s in out.steps]
        assert kinds[:2] == ["tree", "tree"]  # warm-up (the draft gate rests in it)
        assert kinds.count("autoregressive") > len(kinds) / 2
        assert any(s.reason.startswith("switched to autoregressive") for s in out.steps)
        assert any(s.reason.startswith("probe the full tree") for s in out.steps)
        ar_steps = [s for s in out.steps if s.guard == "autoregressive"]
        assert all(s.committed == 1 and s.num_tokens == 1 for s in ar_steps)
        if temperature == 0:
            assert out.tokens == tiny_engine.generate_autoregressive(prompt, 80).tokens


def counting_calls(policy):
    """``policy`` counting its plans, and the decodes its outcomes report."""
    seen = {"plans": 0, "decodes": 0}
    plan_step, observe = policy.plan_step, policy.observe

    def plan(*args):
        seen["plans"] += 1
        return plan_step(*args)

    def outcome(o, *args):
        seen["decodes"] += o.steps if o.kind == "autoregressive" else 0
        return observe(o, *args)

    policy.plan_step, policy.observe = plan, outcome
    return policy, seen


def test_a_decoding_guard_plans_runs_of_decodes(tiny_engine):
    """Once it decodes, one plan covers every decode up to its next probe; each decoded
    token still has its step statistics."""
    policy, seen = counting_calls(get_policy("auto"))
    out = tiny_engine.generate_speculative(PROMPTS[0], 80, auto_spec(repair=False), policy=policy)
    decoded = [s for s in out.steps if s.guard == "autoregressive"]
    assert seen["decodes"] == len(decoded) > len(out.steps) / 2
    assert seen["plans"] < len(out.steps) - len(decoded) / 2  # far fewer than one per step
    assert out.tokens == tiny_engine.generate_autoregressive(PROMPTS[0], 80).tokens


def test_a_live_policy_carries_only_its_last_steps_into_the_next_generation(tiny_engine):
    policy = get_policy("auto", guard=False, rank_every=1, carry=2)
    spec = auto_spec(guard=False, rank_every=1, carry=2)
    tiny_engine.generate_speculative(PROMPTS[0], NEW, spec, policy=policy)
    window = policy.controller.est.window
    carried = list(window)[-2:]
    assert len(window) > 2
    out = tiny_engine.generate_speculative(PROMPTS[1], 12, spec, policy=policy)
    assert len(out.steps) + 2 < window.maxlen  # every step of the new text entered
    assert list(window)[:2] == carried and len(window) == 2 + len(out.steps)
    assert "predicted tok/s" in out.steps[0].reason  # planned again from the carried steps


def test_a_live_policy_must_be_the_spec_policy(tiny_engine):
    with pytest.raises(ValueError, match="spec.policy is 'auto'"):
        tiny_engine.generate_speculative(
            PROMPTS[0], 4, auto_spec(), policy=get_policy("router-mass")
        )


def test_a_planning_policy_takes_no_tree_size(tiny_engine):
    with pytest.raises(ValueError, match="plans its own steps"):
        tiny_engine.generate_speculative(PROMPTS[0], 8, auto_spec(), tree_size=lambda s: (8, 4, 4))


def gate_every_other_step(policy):
    """``policy`` with a gate that sends every second planned tree to a decode."""
    calls = []

    def gate(logprob_W):
        calls.append(logprob_W)
        return "test gate" if len(calls) % 2 == 0 else None

    policy.gate = gate
    return policy, calls


def test_a_gated_step_decodes_the_root_without_growing_the_tree(tiny_engine, monkeypatch):
    """Lossless: the draft catches up on the decoded token as on any decode."""
    import moe_spec.engine.generate as generate

    spec = SpecConfig(**TREE)
    policy, calls = gate_every_other_step(get_policy(spec.policy))
    grown = []
    expand = generate.expand_tree
    monkeypatch.setattr(generate, "expand_tree", lambda *a: grown.append(1) or expand(*a))
    out = tiny_engine.generate_speculative(PROMPTS[1], NEW, spec, policy=policy)
    assert out.tokens == tiny_engine.generate_autoregressive(PROMPTS[1], NEW).tokens
    gated = [s for s in out.steps if s.guard == "autoregressive"]
    assert len(gated) == len(calls) // 2 > 3 and len(grown) == len(out.steps) - len(gated)
    assert all(s.reason == "test gate" and s.committed == s.num_tokens == 1 for s in gated)
    assert all((s.width, s.depth) == (1, 1) for s in gated)  # priced: one draft forward
    assert not any(s.ranked for s in gated)
    # the gate reads the draft's first level: the root's `width` most likely children
    assert all(lp.shape == (TREE["width"],) and bool((lp <= 0).all()) for lp in calls)


def reporting_prefills(policy, slowdown: float = 1.0):
    """``policy`` recording each prompt's forward it is told of (its seconds times
    ``slowdown``) and whether it was prepared by then."""
    seen = []
    prefilled = policy.prefilled

    def report(tokens, seconds):
        seen.append((tokens, seconds, policy.dims is not None))
        prefilled(tokens, seconds * slowdown)

    policy.prefilled = report
    return policy, seen


def test_each_generation_reports_its_prompt_forward_to_a_prepared_policy(tiny_engine):
    policy, seen = reporting_prefills(get_policy("auto"))
    for prompt in PROMPTS:
        tiny_engine.generate_speculative(prompt, 8, auto_spec(), policy=policy)
    assert [(n, ready) for n, _, ready in seen] == [(len(p), True) for p in PROMPTS]


def test_a_measuring_guard_decodes_from_the_start_where_the_prompt_prices_trees_to_lose(
    tiny_engine,
):
    """The prompt's forward reported 10^4 times slower: no tree could pay, so no warm-up."""
    policy, _ = reporting_prefills(get_policy("auto", measure=True), slowdown=1e4)
    out = tiny_engine.generate_speculative(PROMPTS[0], NEW, auto_spec(measure=True), policy=policy)
    assert out.tokens == tiny_engine.generate_autoregressive(PROMPTS[0], NEW).tokens
    assert {s.guard for s in out.steps} == {"autoregressive"}
    assert [s.reason.split(":")[0] for s in out.steps[:3]] == [
        "measuring an autoregressive step's time",
        "measuring an autoregressive step's time",
        "no tree yet",
    ]


def scripted(plans: list[StepPlan]):
    """A ``none`` policy that plans ``plans`` then the configured tree, recording the draft
    catch-ups it is told of (tokens, seconds)."""
    policy, caught = get_policy("none"), []
    script = iter(plans)
    policy.plan_step = lambda tree, repair: next(script, None)
    policy.draft_caught_up = lambda tokens, seconds: caught.append((tokens, seconds))
    return policy, caught


def draft_reads(
    engine, prompt: list[int], wants: bool = True
) -> tuple[list[int], list[list[bool]], list]:
    """A chain step, 5 decodes the draft reads after, 4 decodes, a chain step (then chains),
    for a policy that ``wants`` the draft's guesses: the output, what
    ``Policy.draft_matched`` was told, and the steps."""
    chain, read = StepPlan("tree", 4, 1, 3), StepPlan("autoregressive", steps=5, read=True)
    plans = iter([chain, read, StepPlan("autoregressive", steps=4), chain])
    policy, reports = get_policy("none"), []
    policy.plan_step = lambda _tree, _repair: next(plans, None)
    policy.draft_matched, policy.wants_guesses = reports.append, wants
    spec = SpecConfig(num_tokens=4, width=1, depth=3)
    result = engine.generate_speculative(prompt, 24, spec, policy=policy)
    assert result.tokens == engine.generate_autoregressive(prompt, 24).tokens
    assert [s.depth for s in result.steps[1:10]] == [0, 0, 0, 0, 1, 0, 0, 0, 0]  # the read
    return result.tokens, reports, result.steps


def test_a_policy_that_wants_no_guesses_is_told_none(tiny_engine):
    _, reports, _ = draft_reads(tiny_engine, PROMPTS[0], wants=False)
    assert reports == []


def test_each_tree_step_reports_the_draft_catch_up_before_it(tiny_engine):
    """The prompt's pairs before the first tree; the last path's and the decoded tokens'
    before a tree after decodes (this engine catches up lazily, before every tree)."""
    tree = (TREE["num_tokens"], TREE["width"], TREE["depth"])
    plans = [StepPlan("tree", *tree), StepPlan("autoregressive", steps=3), StepPlan("tree", *tree)]
    policy, caught = scripted(plans)
    spec = SpecConfig(**TREE)
    out = tiny_engine.generate_speculative(PROMPTS[0], 12, spec, policy=policy)
    assert out.tokens == tiny_engine.generate_autoregressive(PROMPTS[0], 12).tokens
    assert [s.guard for s in out.steps[:5]] == [
        "",
        "autoregressive",
        "autoregressive",
        "autoregressive",
        "",
    ]
    tokens = [n for n, _ in caught]
    assert tokens[:2] == [len(PROMPTS[0]), out.steps[0].committed + 3]
    assert len(caught) == len(out.steps) - 3 and all(s > 0 for _, s in caught)


def test_auto_passes_the_draft_catch_up_to_its_guard(tiny_engine, monkeypatch):
    from moe_spec.control import Guard

    seen = []
    monkeypatch.setattr(Guard, "caught_up", lambda self, tokens, seconds: seen.append(tokens))
    tiny_engine.generate_speculative(PROMPTS[0], 8, auto_spec())
    assert seen[0] == len(PROMPTS[0])  # the prompt's pairs, before the first warm-up tree


def test_on_a_chain_the_guard_may_run_one_draft_and_stays_lossless(tiny_engine, monkeypatch):
    """A chain's candidates end at one draft; where it is predicted fastest the engine runs it."""

    def predict(guard):  # the one-draft chain (index 1) predicted fastest, on 8 steps
        guard.evidence.update({0: (8, 1.0), 1: (8, 1.0)})
        return {0: 100.0, 1: 200.0, -1: 50.0}

    monkeypatch.setattr(Guard, "predict", predict)
    chain = {"width": 1, "depth": 3, "num_tokens": 4}
    for prompt in PROMPTS:
        want = tiny_engine.generate_autoregressive(prompt, 32).tokens
        spec = SpecConfig(**chain, policy="auto", repair=True, policy_options={"gate": False})
        out = tiny_engine.generate_speculative(prompt, 32, spec)
        assert out.tokens == want
        trees = [(s.num_tokens, s.width, s.depth) for s in out.steps]
        assert trees[:2] == [(4, 1, 3)] * 2 and set(trees[2:]) == {(2, 1, 1)}  # after warm-up
