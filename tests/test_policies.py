"""Each built-in policy on hand-made routing whose right answer is known by hand."""

from __future__ import annotations

import math
import re

import pytest
import torch

from moe_spec import PolicyError, RoutingRecord, get_policy
from tests.conftest import make_record

TINY = 1e-9  # a probability that is (almost) zero but keeps logits finite


def record_from_probs(rows: list[list[float]], top_k: int, **kwargs) -> RoutingRecord:
    logits_TE = torch.tensor(rows).clamp_min(TINY).log()
    return make_record(logits_TE, top_k, **kwargs)


def kept(policy: str, record: RoutingRecord, budget: int, **options) -> list[int]:
    out = get_policy(policy, **options).apply(record, budget)
    return out.keep_E.nonzero().flatten().tolist()


# Tokens 0 and 1 narrowly prefer expert 0 over expert 1; token 2 strongly prefers expert 2.
# top-1 frequency: [2, 0, 1, 0]; router mass: [0.85, 0.93, 1.22, ~0].
NARROW = [[0.40, 0.39, 0.21, 0.0], [0.40, 0.39, 0.21, 0.0], [0.05, 0.15, 0.80, 0.0]]


def test_topk_frequency_counts_tokens_per_expert():
    record = record_from_probs(NARROW, 1)
    scores_E = get_policy("topk-frequency").score(record)
    assert scores_E.tolist() == [2.0, 0.0, 1.0, 0.0]
    assert kept("topk-frequency", record, 1) == [0]
    assert kept("topk-frequency", record, 2) == [0, 2]


def test_topk_frequency_ignores_padded_rows():
    record = record_from_probs(NARROW, 1, valid_T=torch.tensor([False, False, True]))
    assert get_policy("topk-frequency").score(record).tolist() == [0.0, 0.0, 1.0, 0.0]
    assert kept("topk-frequency", record, 1) == [2]


def test_router_mass_sums_probability_over_all_experts():
    record = record_from_probs(NARROW, 1)
    torch.testing.assert_close(
        get_policy("router-mass").score(record),
        torch.tensor([0.85, 0.93, 1.22, 0.0]),
        atol=1e-5,
        rtol=0,
    )
    assert kept("router-mass", record, 1) == [2]  # frequency would keep expert 0
    # Expert 1 has more mass than expert 0 but no token picked it: picked experts rank first.
    assert kept("router-mass", record, 2) == [0, 2]
    # a budget past the picked experts keeps only them: expert 1 would be read by nobody
    # but re-routed padded rows
    assert kept("router-mass", record, 3) == [0, 2]


# One token: the layer's mass is exactly its probabilities.
SKEWED = [[0.5, 0.3, 0.1, 0.05, 0.03, 0.02, 0.0, 0.0]]
# Six top-1 tokens, token i picking expert i: mass [2.45, 0.9, 0.8, 0.7, 0.6, 0.55, 0, 0],
# cumulative shares of the total 6: 0.408, 0.558, 0.692, 0.808, 0.908, 1.
SPREAD = [[1.0] + [0.0] * 7] + [
    [1 - a] + [0.0] * (i - 1) + [a] + [0.0] * (7 - i)
    for i, a in enumerate([0.9, 0.8, 0.7, 0.6, 0.55], start=1)
]


@pytest.mark.parametrize(
    "rows, coverage, top_k, budget, want",
    [
        (SPREAD, 0.5, 1, 7, [0, 1]),  # 0.558 >= 0.5
        (SPREAD, 0.75, 1, 7, [0, 1, 2, 3]),  # needs 0.808
        (SPREAD, 0.85, 1, 7, [0, 1, 2, 3, 4]),
        (SPREAD, 0.99, 1, 7, [0, 1, 2, 3, 4, 5]),
        (SPREAD, 0.99, 1, 4, [0, 1, 2, 3]),  # clamped to B
        (SKEWED, 0.4, 2, 7, [0, 1]),  # one expert covers 0.4, clamped up to top-k
        # 6 experts cover 0.99, but only expert 0 is picked: no unpicked expert is kept
        (SKEWED, 0.99, 1, 7, [0]),
    ],
)
def test_layer_adaptive_keeps_fewest_experts_covering_the_share(
    rows, coverage, top_k, budget, want
):
    record = record_from_probs(rows, top_k)
    assert kept("layer-adaptive", record, budget, coverage=coverage) == want


def test_layer_adaptive_budget_table_is_per_layer_and_capped_by_the_budget():
    # top-2 picks {0, 1} and {5, 4}; mass [0.52, 0.33, 0.15, 0.15, 0.33, 0.52, 0, 0]
    rows = SKEWED + [SKEWED[0][5::-1] + [0.0, 0.0]]
    policy = get_policy("layer-adaptive", budgets=[2, 5, 3, 8])
    layer = lambda i: record_from_probs(rows, 2, layer_idx=i, num_layers=4)  # noqa: E731
    assert policy.apply(layer(0), 4).keep_E.nonzero().flatten().tolist() == [0, 5]  # top-k
    assert policy.apply(layer(1), 4).keep_E.sum() == 4  # 5 -> B
    assert policy.apply(layer(2), 4).keep_E.nonzero().flatten().tolist() == [0, 1, 5]
    assert policy.apply(layer(3), 7).keep_E.sum() == 4  # E allowed: every used expert


@pytest.mark.parametrize(
    "budgets, message",
    [
        (
            [2, 1, 3],
            "budgets[1] (MoE layer 1) is 1, below top-k=2: a token could not keep its k "
            "experts; allowed: 2 <= budgets[1] <= 8",
        ),
        ([2, 4, 9], "budgets[2] (MoE layer 2) is 9, above the model's E=8 experts; allowed: "),
    ],
)
def test_layer_adaptive_refuses_a_table_entry_outside_top_k_to_e(budgets, message):
    """Refused as a budget below top-k is (``check_budget``), not clamped: before any verify
    by ``model_check``, and by the first call where nothing checked the model first."""
    policy = get_policy("layer-adaptive", budgets=budgets)
    with pytest.raises(
        PolicyError, match=re.escape(f"policy 'layer-adaptive' (from built-in): {message}")
    ):
        policy.model_check(3, 8, 2)
    record = record_from_probs(SKEWED, 2, layer_idx=0, num_layers=3)
    with pytest.raises(PolicyError, match=re.escape(message)):
        policy.apply(record, 4)


def test_layer_adaptive_refuses_a_table_of_the_wrong_length():
    policy = get_policy("layer-adaptive", budgets=[4, 4])
    with pytest.raises(PolicyError, match=r"budgets has 2 entries; the model has 3 MoE layers"):
        policy.apply(record_from_probs(SKEWED, 1, num_layers=3), 4)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"coverage": 0.0}, r"coverage is 0.0; allowed: 0 < coverage <= 1"),
        ({"coverage": 1.5}, r"coverage is 1.5"),
        ({"coverage": "most"}, r"coverage is 'most'; allowed: a number, 0 < coverage <= 1"),
        (
            {"budgets": [4, 0]},
            r"budgets\[1\] \(MoE layer 1\) is 0; allowed: an int from the model's top-k to its",
        ),
        ({"budgets": [4, 2.5]}, r"budgets\[1\] \(MoE layer 1\) is 2.5; allowed: an int from"),
        ({"budgets": [True]}, r"budgets\[0\] \(MoE layer 0\) is True; allowed: an int from"),
        ({"budgets": "4,4"}, r"budgets must be a non-empty list"),
        ({"budgets": []}, r"budgets must be a non-empty list"),
        (
            {"cover": 0.5},
            r"unknown option 'cover'; did you mean 'coverage' for 'cover'\?; allowed: "
            r"coverage, budgets$",
        ),
    ],
)
def test_layer_adaptive_bad_options(options, message):
    with pytest.raises(PolicyError, match=message):
        get_policy("layer-adaptive", **options)


@pytest.mark.parametrize(
    "option, where",
    [
        ("repair", r"`moe-spec generate --repair`.*SGLang's verify path has no repair"),
        ("budget", r"`--budget B`"),
        ("mode", r"`--mode`"),
    ],
)
def test_a_decoding_setting_given_as_a_policy_option_says_where_it_goes(option, where):
    """``--policy-option repair=true`` (a server has no repair) names the setting's place."""
    with pytest.raises(PolicyError) as info:
        get_policy("token-priority", **{option: 1})
    said = str(info.value)
    assert f"unknown option {option!r} ({option} is a setting of the decoding" in said
    assert re.search(where, said) and said.endswith("; allowed: decay")


# A tree: root (depth 0) picks expert 3; one depth-1 token picks expert 1;
# three depth-3 tokens pick expert 2. Each token puts 0.7 on its pick, 0.1 elsewhere.
def tree_record(**kwargs) -> RoutingRecord:
    picks = [3, 1, 2, 2, 2]
    rows = [[0.7 if e == p else 0.1 for e in range(4)] for p in picks]
    return record_from_probs(rows, 1, **kwargs)


def test_token_priority_weights_tokens_by_depth_and_always_keeps_the_root():
    record = tree_record(depth_T=torch.tensor([0, 1, 3, 3, 3]))
    # router-mass favours expert 2 (three tokens) and drops the root's expert 3.
    assert kept("router-mass", record, 1) == [2]
    # decay 0.5: expert 1 scores 0.5*0.7 + ..., expert 2 3*0.125*0.7 + ...: expert 1 wins.
    assert kept("token-priority", record, 1) == [3]  # the root's expert comes first
    assert kept("token-priority", record, 2) == [1, 3]
    assert kept("token-priority", record, 2, decay=1.0) == [2, 3]  # no decay: by mass


def test_token_priority_prefers_draft_path_probabilities():
    logprob_T = torch.tensor([0.0, math.log(0.05), math.log(0.9), math.log(0.9), math.log(0.9)])
    record = tree_record(depth_T=torch.tensor([0, 1, 3, 3, 3]), path_logprob_T=logprob_T)
    assert kept("token-priority", record, 2) == [2, 3]


def test_token_priority_without_depth_takes_row_0_as_root():
    record = tree_record(path_logprob_T=torch.zeros(5))
    assert kept("token-priority", record, 1) == [3]


def test_token_priority_needs_tree_metadata():
    with pytest.raises(PolicyError, match=r"token-priority.*needs depth_T or path_logprob_T"):
        get_policy("token-priority").apply(tree_record(), 2)


def test_token_priority_bad_decay():
    with pytest.raises(PolicyError, match=r"decay is 0; allowed: 0 < decay <= 1"):
        get_policy("token-priority", decay=0)


def test_none_never_changes_routing():
    record = record_from_probs(NARROW, 2)
    out = get_policy("none").apply(record, 2)
    assert out.topk_ids_TK is record.topk_ids_TK and out.topk_weights_TK is record.topk_weights_TK


def test_options_on_a_policy_without_options_are_refused():
    with pytest.raises(PolicyError, match=r"policy 'router-mass' takes no options; got coverage"):
        get_policy("router-mass", coverage=0.5)


@pytest.mark.parametrize(
    "name", ["topk-frequency", "router-mass", "layer-adaptive", "token-priority", "draft-path"]
)
@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_every_policy_respects_the_budget_on_random_routing(name, mode):
    g = torch.Generator().manual_seed(7)
    record = make_record(
        torch.randn(33, 64, generator=g) * 2, 8, depth_T=torch.randint(0, 6, (33,), generator=g)
    )
    for budget in (8, 13, 32):
        out = get_policy(name).apply(record, budget, mode=mode)
        assert out.topk_ids_TK.unique().numel() <= budget
        assert bool(out.keep_E[out.topk_ids_TK].all())


def test_bad_options_name_what_a_policy_takes():
    from moe_spec.policies.base import Policy
    from moe_spec.policies.registry import allowed_options

    class Fixed(Policy):
        def __init__(self, depth_bias: float = 1.0, *, floor: int = 2) -> None:
            super().__init__()

    class Open(Policy):
        def __init__(self, **options) -> None:
            super().__init__()

    class Bare(Policy):
        def __init__(self) -> None:
            super().__init__()

    assert allowed_options(Fixed) == "; allowed: depth_bias, floor"
    assert allowed_options(Open) == ""  # takes anything: nothing to list
    assert allowed_options(Bare) == "; it takes no options"
    said = allowed_options(Fixed, ["depth_bais", "floor", "zzz"])  # a typo, a good one, no match
    assert said == "; did you mean 'depth_bias' for 'depth_bais'?; allowed: depth_bias, floor"
