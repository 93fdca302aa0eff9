"""``auto`` inside the forward: per-layer budgets from a device tensor, no host reads."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch

import moe_spec.policies.auto as auto_module
from moe_spec import get_policy
from moe_spec.ab.configs import RunConfig
from moe_spec.ab.records import Step
from moe_spec.ab.stats import Modeled, selection_share
from moe_spec.control.steps import AUTOREGRESSIVE, TREE, StepPlan
from moe_spec.costmodel import draft_seconds
from moe_spec.kernels.budget_select_torch import RANK, REST, REST_SCORED
from moe_spec.policies import PolicyError
from moe_spec.policies.auto import SERVER_AFTER_SHARE, SERVER_REST_SHARE, server_options
from moe_spec.policies.builtin import TokenPriority
from tests.conftest import make_record
from tests.host_sync import HostSyncRecorder


def record(layer: int, T: int = 12, E: int = 16, K: int = 2):
    g = torch.Generator().manual_seed(layer)
    logprob_T = -torch.rand(T, generator=g) * 3
    logprob_T[0] = 0.0
    return make_record(
        torch.randn(T, E, generator=g) * 2,
        K,
        depth_T=torch.cat(
            (torch.zeros(1, dtype=torch.long), torch.randint(1, 4, (T - 1,), generator=g))
        ),
        path_logprob_T=logprob_T,
        layer_idx=layer,
        num_layers=2,
    )


def test_each_layer_keeps_its_own_budget_without_reading_the_device():
    policy = get_policy("auto")
    policy.validate = False
    policy.prepare(2, 16, 2, 16, torch.device("cpu"))
    policy.device_state["budget_L"].copy_(torch.tensor([3, 7]))
    records = [record(layer) for layer in (0, 1)]
    with HostSyncRecorder() as recorder:
        kept = [policy.apply(r, 16).keep_E for r in records]
    assert recorder.syncs == []
    assert [int(k.sum()) for k in kept] == [3, 7]
    assert policy.apply(record(1), 5).keep_E.sum() == 5  # the call's budget caps it


def test_kept_experts_follow_calibrated_acceptance_weighted_mass():
    """With a calibration table, auto ranks like token-priority with those weights."""
    policy = get_policy("auto")
    policy.prepare(2, 16, 2, 16, torch.device("cpu"))
    table = torch.linspace(0.01, 0.99, 10) ** 3
    policy.device_state["accept_B"].copy_(table)
    policy.device_state["budget_L"].fill_(6)
    r = record(0)
    q_T = torch.exp(r.path_logprob_T)
    weight_T = table[(q_T * 10).long().clamp(max=9)]

    class Reference(TokenPriority):
        def accept_T(self, rec):
            return weight_T

    want = Reference().apply(r, 6).keep_E
    assert torch.equal(policy.apply(r, 16).keep_E, want)
    bins = torch.bucketize(
        r.path_logprob_T, torch.tensor([math.log(i / 10) for i in range(1, 10)]), right=True
    )
    assert torch.equal(bins, (q_T * 10).long().clamp(max=9))


def test_records_each_layers_ranking_for_observe():
    policy = get_policy("auto")
    for layer in (0, 1):
        policy.apply(record(layer), 16)
    assert sorted(policy.rank_LE) == [0, 1] and policy.rank_LE[0].shape == (16,)
    assert policy.ids_LNK[1].shape == (12, 2)


@pytest.mark.parametrize(
    ("options", "match"),
    [
        ({"margin": 1.5}, "margin is 1.5"),
        ({"window": 0}, "window is 0"),
        ({"switch_prior": -1}, "switch_prior is -1; allowed: a number >= 0"),
        ({"rank_every": 0}, "rank_every is 0; allowed: an integer >= 1"),
        ({"learn_every": 0}, "learn_every is 0; allowed: an integer >= 1"),
        ({"max_warmup": 0}, "max_warmup is 0; allowed: an integer >= 1"),
        ({"hope": "yes"}, "hope is 'yes'; allowed: true or false"),
        ({"max_warmup": 2.5}, "max_warmup is 2.5; allowed: an integer >= 1"),
        ({"max_replan": 4}, r"max_replan is 4; allowed: None \(the window\) or an integer >= 8"),
        ({"max_probe": 8}, r"max_probe is 8; allowed: an integer >= probe \(16\)"),
        ({"probe": 4, "max_probe": 2.5}, r"max_probe is 2.5; allowed: an integer >= probe \(4\)"),
        ({"probe_cost": 0}, r"probe_cost is 0; allowed: 0 < probe_cost <= 1"),
        ({"probe_cost": 1.5}, r"probe_cost is 1.5; allowed: 0 < probe_cost <= 1"),
        ({"guard": "yes"}, "guard is 'yes'"),
        ({"draft_extend": 1}, "draft_extend is 1; allowed: true or false"),
        ({"explore": 1}, r"explore is 1; allowed: 0 <= explore < 1 \(0: off\)"),
        ({"draft_extend": True, "gate": True}, "draft_extend=True with gate=True, measure=False"),
        ({"gate": 1}, r"gate is 1; allowed: true, false or None \(on a chain, off on a tree\)"),
        ({"draft_extend": True, "gate": False, "measure": True}, "gate=False, measure=True"),
        ({"decode_extend": 0}, "decode_extend is 0; allowed: true or false"),
        ({"rank_after": "yes"}, "rank_after is 'yes'; allowed: true or false"),
        ({"after_share": 2}, r"after_share is 2; allowed: None \(2 / L: the cost"),
        ({"decode_extend": False}, "decode_extend=False without draft_extend"),
        ({"shape": "GPT-5"}, "unknown model shape"),
        ({"cost_model": "magic"}, "unknown cost model"),
    ],
)
def test_bad_options_are_refused_by_name(options, match):
    with pytest.raises(PolicyError, match=match):
        get_policy("auto", **options)


def test_without_draft_scores_a_token_weighs_its_depths_reach():
    """SGLang passes depths, not draft log-probabilities: a token counts P(reach its depth)."""
    policy = get_policy("auto")
    policy.prepare(2, 16, 2, 16, torch.device("cpu"))
    r = dataclasses.replace(record(0), path_logprob_T=None)
    reach_D = policy.estimates().reach_D()  # no step seen yet: the prior 2**-d
    assert reach_D[:4].tolist() == [1.0, 0.5, 0.25, 0.125]
    want_T = torch.tensor(reach_D, dtype=torch.float32)[r.depth_T]
    assert torch.equal(policy.accept_T(r), want_T)


def test_once_the_window_is_full_one_budgeted_step_in_learn_every_enters_it():
    from moe_spec.control import StepOutcome

    policy = get_policy("auto", window=4, learn_every=2, rank_every=4, rank_after=False)
    policy.prepare(2, 8, 2, 8, torch.device("cpu"))
    policy.plan_step((4, 2, 2), False)
    est = policy.controller.est
    rank_LE = torch.arange(8).repeat(2, 1)
    ids_LNK = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]).repeat(2, 1, 1)
    outcome = StepOutcome("tree", [0, 1], torch.tensor([0, 1, 1, 2]), None, (4, 2, 2))

    def entered(steps: int, budget: int) -> int:
        policy.controller.budget_L[:] = budget  # what the step just observed ran with
        seen = est.steps_seen
        for _ in range(steps):
            policy.observe(outcome, rank_LE, ids_LNK)
        return est.steps_seen - seen

    assert entered(4, budget=4) == 4  # until the window is full: every step
    assert entered(6, budget=4) == 3  # then one budgeted step in two
    assert entered(4, budget=8) == 4  # an unbudgeted step that ranked ranked to be learned from
    assert est.tried_D[1] == 14  # the acceptance per depth counts every step


def resting_policy(**options):
    """An ``auto`` policy prepared for 2 layers of 8 experts, budgets all E; a function that
    observes a 4/2/2 tree step with its ranking and top-k, and that step's plan."""
    from moe_spec.control import StepOutcome, StepPlan

    options.setdefault("rank_after", False)  # its ranking comes from the forward, as passed
    policy = get_policy("auto", rank_every=4, **options)
    policy.prepare(2, 8, 2, 8, torch.device("cpu"))
    policy.plan_step((4, 2, 2), False)
    rank_LE = torch.arange(8).repeat(2, 1)
    ids_LNK = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]).repeat(2, 1, 1)
    outcome = StepOutcome("tree", [0, 1], torch.tensor([0, 1, 1, 2]), None, (4, 2, 2))
    return policy, lambda: policy.observe(outcome, rank_LE, ids_LNK), StepPlan("tree", 4, 2, 2)


def test_a_new_requests_first_tree_steps_enter_the_window_where_they_would_rest():
    """Budgets all E rest but every ``rank_every``-th step; after a new request the first 4
    steps enter the window (resting: with their tokens and experts, unranked) so that a new
    text is told apart from the carried one; then a resting step stays out."""
    policy, observe, plan = resting_policy(carry=8)
    c = policy.controller
    for _ in range(9):  # past warm-up, budgets all E, a window of 8 steps or more
        observe()
    c.tree_steps = 5  # not a rank_every-th step
    assert policy.rests(plan)
    policy.resting = True
    assert not policy.learns()
    policy.start_request()  # the window keeps 8
    for _ in range(4):
        assert policy.rests(plan) and policy.learns()
        observe_rested(policy)
        c.tree_steps = 5
    assert policy.rests(plan) and not policy.learns()
    assert [s.need_LP is None for s in c.est.window] == [False] * 8 + [True] * 4


@pytest.mark.parametrize("learn_resting", [False, True])
def test_with_learn_resting_every_resting_step_enters_the_window(learn_resting):
    """Past the learning steps a resting step stays out of the window, unless
    ``learn_resting``: then it enters, unranked, with its tokens and experts."""
    policy, observe, plan = resting_policy(learn_resting=learn_resting)
    c = policy.controller
    for _ in range(9):  # past warm-up and learning, a window of 8 ranked steps or more
        observe()
    c.tree_steps = 5  # not a rank_every-th step
    assert policy.rests(plan) and not c.learning()
    policy.resting = True
    assert policy.learns() == learn_resting
    for _ in range(3):
        observe_rested(policy)
        c.tree_steps = 5
    unranked = [s.need_LP is None for s in c.est.window]
    assert unranked == [False] * 9 + [True] * (3 if learn_resting else 0)


def test_learn_resting_must_be_a_flag():
    with pytest.raises(PolicyError, match="learn_resting is 'yes'; allowed: true or false"):
        get_policy("auto", learn_resting="yes")


def observe_rested(policy) -> None:
    """A resting step of a 4/2/2 tree: no ranking, its top-k passed with the outcome."""
    from moe_spec.control import StepOutcome

    ids_LNK = torch.tensor([[0, 1], [2, 3], [4, 5], [6, 7]]).repeat(2, 1, 1)
    depth_N = torch.tensor([0, 1, 1, 2])
    outcome = StepOutcome("tree", [0, 1], depth_N, None, (4, 2, 2), ids_LTK=list(ids_LNK))
    policy.observe(outcome)


def test_every_tree_step_enters_while_the_window_holds_fewer_than_8_steps():
    """A plan made from the warm-up's 2 steps is remade from 4 two steps later: a resting
    tree step enters the window unranked (ranking it only to learn was the selection's cost
    on nearly every step of a short request)."""
    policy, observe, plan = resting_policy()
    c = policy.controller
    for _ in range(2):  # the warm-up ranks
        observe()
    c.tree_steps = 5  # past warm-up, not a rank_every-th step
    policy.resting = policy.rests(plan)
    assert policy.resting
    for n in range(3, 11):
        assert policy.learns() == (n <= 8)
        observe_rested(policy)
        c.tree_steps = 5
        assert len(c.est.window) == min(n, 8)
    assert c.est.ranked_S(0).tolist() == [True] * 2 + [False] * 6


def test_the_device_rest_flag_follows_the_plan_and_a_late_fold_says_whether_it_rested():
    """A server's forwards call the policy every step: the flag its selection kernel reads
    is set exactly for the planned steps that rest (uploaded only when it changes), and
    ``observe(rested=...)`` judges the folded step, not the one just planned."""
    policy, observe, plan = resting_policy()
    c = policy.controller
    flag = policy.device_state["rest_1"]
    assert flag.dtype == torch.int32 and flag.tolist() == [0]
    uploads = []
    real = auto_module.upload

    def counted(dst, src):
        uploads.append(dst is flag)
        real(dst, src)

    auto_module.upload = counted
    script = [False, True, True, True, False, True, False, False]  # what rests() answers
    answers = iter(script)
    policy.rests = lambda planned: next(answers)
    try:
        for want in script:
            policy.plan_step((4, 2, 2), False)
            assert policy.resting is want and flag.tolist() == [int(want)]
            observe()
    finally:
        auto_module.upload = real
        del policy.rests
    assert sum(uploads) == 4  # written when it changes, not every step
    for _ in range(8):  # fill the window: past learning, a resting step stays out of it
        observe()
    c.tree_steps = 5
    policy.resting = False  # the step just planned ranks ...
    assert policy.learns() and not policy.learns(rested=True)  # ... the folded one rested


def test_the_hope_ends_once_the_full_tree_ran_a_windows_steps_resting_ones_included():
    """With ``hope`` the full tree is judged at its mean plus one standard error until its
    steps would fill the window (24): every step it ran counts, resting ones too, which enter
    no window once it holds 8 (counted in the window, a warm guard's hope held a chat
    request's full tree at 1.6 tokens a step for 68 steps)."""
    policy, observe, plan = resting_policy(hope=True)
    c = policy.controller
    assert c.est.window.maxlen == 24
    for _ in range(9):  # past warm-up, budgets all E, 9 steps in the window
        observe()
    policy.resting = True
    for _ in range(14):
        c.tree_steps = 5  # not a rank_every-th step: it rests, and enters no window
        assert policy.rests(plan) and not policy.learns()
        observe_rested(policy)
    c.evidence[0] = (len(c.est.window), 1.5)
    assert len(c.est.window) == 9 and c.hoped_steps() == 9  # 23 steps ran: still hoped
    c.tree_steps = 5
    observe_rested(policy)  # the 24th
    assert len(c.est.window) == 9 and c.hoped_steps() == 0
    assert c.judged(0, 100.0) == 100.0  # as predicted
    policy.start_request()  # a new request keeps the count: the tree was seen on them
    c.evidence[0] = (4, 1.5)
    assert c.hoped_steps() == 0


@pytest.mark.parametrize("look", ["probing", "exploring"])
def test_the_guards_looks_rank_and_enter_a_full_window_whatever_the_step_count(look):
    """With ``hope``, a probe of the full tree or an explore with a smaller one is run to be
    learned from: it ranks where a step would rest, and enters a full window where a budgeted
    step would wait for its turn (probes alternating with explores fell on the same parity
    each time)."""
    policy, observe, plan = resting_policy(window=8, learn_every=2, hope=True)
    c = policy.controller
    for _ in range(9):  # a full window, budgets all E, past warm-up
        observe()
    c.tree_steps = 5  # neither a rank_every-th nor a learn_every-th step
    assert policy.rests(plan)
    c.budget_L[:] = 4  # budgeted: a step enters one time in learn_every
    assert not policy.learns()
    setattr(c, look, True)
    assert policy.learns()
    c.budget_L[:] = 8
    assert not policy.rests(plan)


def test_ranks_grow_rarer_while_budgets_are_far_from_paying():
    policy, observe, plan = resting_policy(max_rank_every=16)
    c = policy.controller
    for _ in range(9):  # past warm-up, budgets all E, the full tree chosen
        observe()
    c.below_cap_C[0] = 0.5  # the best budget below the cap: half the cap's tokens/s
    for interval in (8, 16, 16):  # replans that keep the cap
        c.space_ranks()
        assert c.rank_interval == interval
        assert c.cost.rest_select_s == c.cost.select_s / interval  # how the guard prices it
    c.tree_steps = 8
    assert policy.rests(plan)  # a rank_every-th step, not a rank_interval-th one
    c.tree_steps = 16
    assert not policy.rests(plan)
    c.below_cap_C[0] = 0.9  # budgeting comes close to paying: rank often again
    c.space_ranks()
    assert c.rank_interval == 4 and c.cost.rest_select_s == c.cost.select_s / 4
    c.below_cap_C[0] = 0.5
    c.budgets_C[0][:] = 4  # a budgeted plan ranks every step anyway: the interval starts again
    c.space_ranks()
    assert c.rank_interval == 4
    spaced = []
    c.space_ranks = lambda: spaced.append(c.replans)
    c.replan()  # every replan spaces the ranks, after its prediction
    assert spaced == [c.replans]


def test_a_new_request_ranks_rank_every_apart_again():
    """Ranks spaced on the last text start again at ``rank_every`` on a new request, priced
    so: spaced, they kept a warm policy at the cap through a text whose budgets paid."""
    policy, observe, plan = resting_policy()
    c = policy.controller
    for _ in range(9):  # past warm-up, budgets all E, the full tree chosen
        observe()
    c.below_cap_C[0] = 0.5  # far from paying: each replan at the cap halves the ranks
    for _ in range(3):
        c.space_ranks()
    assert c.rank_interval == 32 and c.cost.rest_select_s == c.cost.select_s / 32
    c.tree_steps = 16
    assert policy.rests(plan)  # a rank_every-th step, not a 32nd
    policy.start_request()
    assert c.rank_interval == 4 and c.cost.rest_select_s == c.cost.select_s / 4
    c.tree_steps = 16
    assert not policy.rests(plan)


def test_rank_spacing_goes_to_32_by_default_and_bad_values_are_refused():
    policy, observe, plan = resting_policy()
    for _ in range(9):
        observe()
    policy.controller.below_cap_C[0] = 0.1
    for _ in range(5):
        policy.controller.space_ranks()
    assert policy.controller.rank_interval == policy.controller.max_rank_every == 32
    policy, observe, plan = resting_policy(max_rank_every=4)  # equal to rank_every: off
    for _ in range(9):
        observe()
    policy.controller.below_cap_C[0] = 0.1
    policy.controller.space_ranks()
    assert policy.controller.rank_interval == 4
    for bad in (2, 4.0):
        with pytest.raises(PolicyError, match=r"max_rank_every is .*; allowed: None \(32, or"):
            get_policy("auto", rank_every=4, max_rank_every=bad)
    assert get_policy("auto", rank_every=8).options["max_rank_every"] == 32
    assert get_policy("auto", rank_every=64).options["max_rank_every"] == 64
    for bad in (0, 1.5, True):
        with pytest.raises(PolicyError, match=r"rank_near is .*; allowed: 0 < rank_near <= 1"):
            get_policy("auto", rank_near=bad)


def test_learning_steps_rank_where_a_budget_comes_close_to_paying():
    """While the guard learns, a step at the cap rests (entering the window unranked) only
    where the best budget below the cap is far from paying: the ranking could not change
    the plan; near it, the step ranks, as the budgets are what it would learn."""
    policy, observe, plan = resting_policy()
    c = policy.controller
    for _ in range(2):  # the warm-up
        observe()
    c.tree_steps = 5  # past warm-up, not a rank_every-th step
    assert c.learning()
    c.below_cap_C[0] = 0.9  # within rank_near (0.8) of the cap's tokens/s
    assert not c.far_from_paying() and not policy.rests(plan)
    c.below_cap_C[0] = 0.5
    assert c.far_from_paying() and policy.rests(plan)
    for _ in range(6):  # the window holds 8: learning is over
        observe()
    c.below_cap_C[0] = 0.9
    assert not c.learning() and policy.rests(plan)


@pytest.mark.parametrize(
    "tree, options, max_warmup, hoping",
    [
        ((32, 8, 6), {}, 6, True),  # a tree: the warm-up runs on while unclear
        ((4, 1, 3), {}, 2, True),  # a chain: it does not (warmup's 2 steps)
        ((4, 1, 3), {"warmup": 3}, 3, True),
        ((32, 8, 6), {"max_warmup": 2, "hope": False}, 2, False),  # set: as given
        ((4, 1, 3), {"max_warmup": 6}, 6, True),
    ],
)
def test_the_warm_up_runs_on_by_default_on_a_tree_not_on_a_chain(tree, options, max_warmup, hoping):
    policy = get_policy("auto", **options)
    policy.prepare(2, 8, 2, 8, torch.device("cpu"))
    policy.plan_step(tree, False)
    assert (policy.controller.max_warmup, policy.controller.hoping) == (max_warmup, hoping)
    assert policy.options["max_warmup"] == options.get("max_warmup")  # resolved per tree only


@pytest.mark.parametrize(
    "tree, options, gating",
    [
        ((32, 8, 6), {}, False),  # a tree: the gate's first level undersold it
        ((4, 1, 3), {}, True),  # a chain: on
        ((4, 1, 3), {"draft_extend": True}, False),  # SGLang's steps: the gate sees none
        ((32, 8, 6), {"gate": True}, True),  # set: as given
        ((4, 1, 3), {"gate": False}, False),
    ],
)
def test_the_draft_gate_is_on_by_default_on_a_chain_not_on_a_tree(tree, options, gating):
    policy = get_policy("auto", **options)
    policy.prepare(2, 8, 2, 8, torch.device("cpu"))
    policy.plan_step(tree, False)
    assert policy.controller.gating == gating
    assert policy.options["gate"] == options.get("gate")  # resolved per tree only


@pytest.mark.parametrize("decode_extend", [True, False])
def test_benches_price_auto_with_the_options_a_server_gives_it(decode_extend):
    """``server_options`` (what the SGLang-priced benches pass) is what ``for_server`` sets:
    the same plans follow, a step at the cap rests as in the engines but pays
    ``SERVER_REST_SHARE`` of a selection (the kernels still launch), one that is ranked after
    the forward that and ``SERVER_AFTER_SHARE`` more (its resting selections score), and,
    under SGLang's skip switch, no shadows."""
    served = get_policy("auto", cost_model="measured")  # prices the selection
    served.for_server(guard=True, decode_extend=decode_extend, guesses=True)
    benched = get_policy("auto", cost_model="measured", **server_options(decode_extend))
    for policy in (served, benched):
        policy.prepare(2, 8, 2, 8, torch.device("cpu"))
        policy.plan_step((4, 1, 3), False)
    assert benched.options == served.options
    assert (
        (benched.rank_every, benched.draft_extend, benched.decode_extend, benched.rest_share)
        == (served.rank_every, served.draft_extend, served.decode_extend, served.rest_share)
        == (4, True, decode_extend, SERVER_REST_SHARE)
    )
    cost = served.controller.cost
    assert cost.rest_share == SERVER_REST_SHARE
    assert cost.rank_share == pytest.approx(SERVER_REST_SHARE + SERVER_AFTER_SHARE)
    # one step in 4 ranks (after the forward), three rest (SERVER_REST_SHARE of one each)
    want = cost.select_s * (4 * SERVER_REST_SHARE + SERVER_AFTER_SHARE) / 4
    assert cost.rest_select_s == pytest.approx(want) and 0 < want < cost.select_s
    assert benched.controller.cost.rest_select_s == cost.rest_select_s
    assert benched.rank_after is served.rank_after is True
    inside = get_policy("auto", cost_model="measured", rank_after=False)  # as the user asks
    inside.for_server(guard=True)
    inside.prepare(2, 8, 2, 8, torch.device("cpu"))
    inside.plan_step((4, 1, 3), False)
    assert not inside.rank_after and inside.controller.cost.rank_share == 1.0
    assert benched.wants_guesses is served.wants_guesses is decode_extend
    kept = get_policy("auto", rest_share=0.25)  # set by hand (measured): a server keeps it
    kept.for_server(guard=True)
    assert kept.rest_share == 0.25
    for bad in (-0.1, 1.5, True, "half"):
        with pytest.raises(PolicyError, match=r"rest_share is .*; allowed: None \(0; on a"):
            get_policy("auto", rest_share=bad)


def test_a_servers_decodes_run_no_selection_and_are_priced_so():
    """On a server the guard's plain decode is a 1-token verify, which the plugin leaves
    without a selection (``budgets_plain_decodes``; the flag rests anyway, should one come
    that the plan did not foresee), and the step costs and the A/B harness both price it
    without one, as the engines' decode, which skip the policy: SGLang's draft extend is
    all it pays more."""
    served = get_policy("auto", cost_model="measured")
    served.for_server(guard=True)
    served.prepare(2, 8, 2, 8, torch.device("cpu"))
    served.record_to_device(4, 2)
    served.plan_step((4, 1, 3), False)
    assert served.rest_host in (RANK, REST_SCORED)  # the warm-up ranks its tree steps
    plans = iter([StepPlan(AUTOREGRESSIVE, reason="decoding wins", steps=3)])
    real_plan = served.controller.plan
    served.controller.plan = lambda: next(plans, None) or real_plan()
    served.plan_step((4, 1, 3), False)
    assert served.rest_host == REST
    assert int(served.device_state["rest_1"][0]) == REST
    assert served.plan_step((4, 1, 3), False).kind == TREE
    assert served.rest_host in (RANK, REST_SCORED)
    engine = get_policy("auto", cost_model="measured")
    engine.prepare(2, 8, 2, 8, torch.device("cpu"))
    engine.plan_step((4, 1, 3), False)
    cost, plain = served.controller.cost, engine.controller.cost
    assert cost.select_s > 0
    assert not served.budgets_plain_decodes and cost.rest_share == SERVER_REST_SHARE
    extend = cost.decode_s - plain.decode_s  # SGLang's draft extend after the decode
    extend_s = draft_seconds(cost.cost.gpu, cost.shape, 1, 1, overheads=cost.cost.overheads)
    assert extend == pytest.approx(extend_s)
    assert cost.plain_decode_s == plain.plain_decode_s == plain.decode_s
    step = Step(1, 1, 0, 0, [2, 2], [2, 2], [2, 2], guard=AUTOREGRESSIVE)
    modeled = Modeled(cost.cost, cost.shape, rest_share=SERVER_REST_SHARE)
    assert selection_share(RunConfig("auto"), step, modeled) == 0


def test_an_engine_policy_prices_a_ranking_after_the_forward_at_two_layers_selection():
    """With ``rank_after`` (the engines' default) the step at the cap that ranks pays
    ``2 / n_moe_layers`` of a selection (all layers at once, after the forward), the resting
    ones none; ranking inside the forward pays a whole one."""
    for rank_after, share in ((True, 2 / 16), (False, 1.0)):  # OLMoE-1B-7B: 16 MoE layers
        policy = get_policy("auto", cost_model="measured", rank_after=rank_after)
        policy.prepare(2, 8, 2, 8, torch.device("cpu"))
        policy.plan_step((4, 2, 2), False)
        cost = policy.controller.cost
        assert cost.rank_share == pytest.approx(share)
        assert cost.select_s > 0
        assert cost.rest_select_s == pytest.approx(cost.select_s * share / 4)
    set_by_hand = get_policy("auto", cost_model="measured", after_share=0.5)  # measured
    set_by_hand.prepare(2, 8, 2, 8, torch.device("cpu"))
    set_by_hand.plan_step((4, 2, 2), False)
    assert set_by_hand.controller.cost.rank_share == 0.5
    # a resting forward that pays rest_share, ranked after it: both, as the A/B harness
    # charges it (moe_spec.ab.stats.selection_share)
    resting = get_policy("auto", cost_model="measured", rest_share=0.25, after_share=0.5)
    resting.prepare(2, 8, 2, 8, torch.device("cpu"))
    resting.plan_step((4, 2, 2), False)
    assert resting.controller.cost.rank_share == 0.75
    step = Step(3, 4, 2, 2, [8, 8], [8, 8], [4, 4], guard=TREE, ranked_after=True)
    modeled = Modeled(resting.controller.cost.cost, resting.controller.cost.shape, rest_share=0.25)
    config = RunConfig("auto", options={"after_share": 0.5})
    assert selection_share(config, step, modeled) == resting.controller.cost.rank_share


def test_token_weights_are_made_once_per_forward_and_again_after_a_plan():
    """Every MoE layer of a forward shares the tree's depths: the calibrated weights are
    made at the first layer and reused; a plan (which may rewrite the tables) or another
    forward's depths make them again."""
    policy = get_policy("auto")
    policy.prepare(2, 16, 2, 16, torch.device("cpu"))
    depth_T = torch.tensor([0, 1, 1, 2, 3, 3])
    layers = [
        make_record(torch.randn(6, 16, generator=torch.Generator().manual_seed(i)), 2,
                    depth_T=depth_T, layer_idx=i, num_layers=2)
        for i in (0, 1)
    ]  # fmt: skip
    first, second = (policy.rule(r) for r in layers)
    assert second.weight_T is first.weight_T  # made once for the forward
    reach_D = policy.device_state["reach_D"]
    torch.testing.assert_close(first.weight_T, reach_D[depth_T])
    reach_D.copy_(torch.linspace(1.0, 0.1, reach_D.numel()))  # as a plan's upload does
    policy.plan_step((4, 1, 3), repair=False)
    again = policy.rule(layers[0])
    torch.testing.assert_close(again.weight_T, reach_D[depth_T])  # not the stale weights
    logits_TE = torch.randn(6, 16, generator=torch.Generator().manual_seed(1))
    other = make_record(logits_TE, 2, depth_T=depth_T.clone(), layer_idx=0, num_layers=2)
    assert policy.rule(other).weight_T is not again.weight_T  # another forward's depths
    assert torch.equal(again.root_T, (depth_T == 0) & layers[0].valid_mask_T())
