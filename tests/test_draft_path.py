"""``draft-path`` on hand-made trees whose right answer is known by hand, and against loops."""

from __future__ import annotations

import math

import pytest
import torch

from moe_spec import PolicyError, get_policy
from tests.conftest import make_record
from tests.test_policies import kept, record_from_probs

# Six experts, top-2. Each token puts 0.45 on its first pick, 0.35 on its second and
# 0.05 on each other expert. Rows: root; r1, the likeliest draft token (0.6); r2, its
# child (0.5); r3 (0.3); r4 (0.05); r5 and r6 (0.25 each) lean hard on expert 5.
PICKS = [(0, 1), (2, 3), (3, 4), (5, 4), (5, 4), (5, 0), (5, 0)]
DEPTH = [0, 1, 2, 1, 1, 1, 1]
ACCEPT = [1.0, 0.6, 0.5, 0.3, 0.05, 0.25, 0.25]


def tree_record(**kwargs):
    rows = [[0.45 if e == a else 0.35 if e == b else 0.05 for e in range(6)] for a, b in PICKS]
    kwargs.setdefault("depth_T", torch.tensor(DEPTH))
    kwargs.setdefault("path_logprob_T", torch.tensor([math.log(a) for a in ACCEPT]))
    return record_from_probs(rows, 2, **kwargs)


def test_experts_of_the_likeliest_tokens_come_first_in_strict_order():
    record = tree_record()
    # Order: root, r1, r2, r3, r5, r6, r4; experts by first appearance: 0, 1, 2, 3, 4, 5.
    assert kept("draft-path", record, 2) == [0, 1]
    assert kept("draft-path", record, 3) == [0, 1, 2]  # r1's preferred expert before its 2nd
    assert kept("draft-path", record, 4) == [0, 1, 2, 3]
    assert kept("draft-path", record, 5) == [0, 1, 2, 3, 4]


def test_token_priority_drops_an_expert_of_the_likeliest_token_draft_path_keeps():
    record = tree_record()
    # Acceptance-weighted mass: e2 0.39, e3 0.53, e4 0.40, e5 0.49: token-priority keeps
    # the root's experts and then 3 and 5, so r1 (accepted 60% of the time) loses expert 2.
    assert kept("token-priority", record, 4) == [0, 1, 3, 5]
    out = get_policy("draft-path").apply(record, 4)
    assert out.keep_E.nonzero().flatten().tolist() == [0, 1, 2, 3]
    # Root and r1 keep all their experts, so their routing is bit-identical.
    assert torch.equal(out.topk_ids_TK[:2], record.topk_ids_TK[:2])
    assert torch.equal(out.topk_weights_TK[:2], record.topk_weights_TK[:2])


def test_tokens_limits_the_strict_order_and_mass_fills_the_rest():
    record = tree_record()
    # Only root and r1 strict: expert 5 (mass 0.49) beats expert 4 (0.40) for the last place.
    assert kept("draft-path", record, 5, tokens=2) == [0, 1, 2, 3, 5]
    assert kept("draft-path", record, 5, tokens=3) == [0, 1, 2, 3, 4]  # r2 brings expert 4


def test_padded_rows_never_take_a_place():
    record = tree_record(valid_T=torch.tensor([True, False, True, True, True, True, True]))
    # Without r1, r3 is depth 1's likeliest: root, r3 (5, 4), r2 (3, 4), ...
    assert kept("draft-path", record, 3) == [0, 1, 5]
    assert kept("draft-path", record, 4) == [0, 1, 4, 5]
    # By log-prob alone r2 (0.5) comes before r3 (0.3).
    assert kept("draft-path", record, 3, order="logprob") == [0, 1, 3]
    assert kept("draft-path", record, 4, order="logprob") == [0, 1, 3, 4]


def test_the_likeliest_token_of_each_depth_comes_before_likelier_siblings():
    accept = [1.0, 0.6, 0.2, 0.3, 0.05, 0.25, 0.25]  # r2, r1's child, now below r3, r5, r6
    record = tree_record(path_logprob_T=torch.tensor([math.log(a) for a in accept]))
    # path: root, r1, r2 (depth 2's likeliest), r3, ...: experts 0, 1, 2, 3, 4, 5.
    assert kept("draft-path", record, 5) == [0, 1, 2, 3, 4]
    # logprob: root, r1, r3 (5, 4), ...: expert 5 before 4.
    assert kept("draft-path", record, 5, order="logprob") == [0, 1, 2, 3, 5]


def test_ties_go_to_the_shallower_token_then_the_lower_row():
    same = torch.zeros(7)  # every path equally likely
    depth_T = torch.tensor([0, 2, 1, 1, 1, 1, 1])
    # r2 (depth 1) comes before r1 (depth 2): expert 3, then 4.
    assert kept("draft-path", tree_record(depth_T=depth_T, path_logprob_T=same), 4) == [0, 1, 3, 4]
    # All depth 1 after the root: rows in order, r1 then r2.
    flat_T = torch.tensor([0, 1, 1, 1, 1, 1, 1])
    assert kept("draft-path", tree_record(depth_T=flat_T, path_logprob_T=same), 4) == [0, 1, 2, 3]


def test_without_path_probabilities_depth_orders_the_tokens():
    # decay ** depth: depth-1 rows tie, so r1 (the lower row) is depth 1's likeliest.
    record = tree_record(path_logprob_T=None)
    assert kept("draft-path", record, 5) == [0, 1, 2, 3, 4]  # root, r1, r2, r3, ...
    assert kept("draft-path", record, 5, order="logprob") == [0, 1, 2, 3, 5]  # r3 before r2


def test_without_tree_metadata_it_says_what_it_needs():
    record = tree_record(depth_T=None, path_logprob_T=None)
    with pytest.raises(PolicyError, match=r"draft-path.*needs depth_T or path_logprob_T"):
        get_policy("draft-path").apply(record, 4)


@pytest.mark.parametrize("tokens", [0, -1, 1.5, "3", True])
def test_bad_tokens_option(tokens):
    with pytest.raises(PolicyError, match=r"draft-path: tokens is .*; allowed: an int >= 1"):
        get_policy("draft-path", tokens=tokens)


def test_bad_order_option():
    with pytest.raises(PolicyError, match=r"draft-path: order is 'depth'; allowed: path, logprob"):
        get_policy("draft-path", order="depth")


def loop_kept(ids, choice, depth, logprob, valid, budget, order):
    """The spec as loops: walk tokens in the policy's order; take each one's experts in turn."""
    rows = [t for t in range(len(ids)) if valid[t]]
    rows.sort(key=lambda t: (depth[t] != 0, -logprob[t], depth[t], t))
    if order == "path":  # each depth's first token in that order, shallow first, then the rest
        best = {}
        for t in rows:
            best.setdefault(depth[t], t)
        path = sorted(best.values(), key=lambda t: depth[t])
        rows = path + [t for t in rows if t not in path]
    experts = []
    for t in rows:
        for e in sorted(ids[t], key=lambda e: (-choice[t][e], e)):
            if e not in experts:
                experts.append(e)
    return sorted(experts[:budget])


@pytest.mark.parametrize("order", ["path", "logprob"])
@pytest.mark.parametrize("seed", range(6))
def test_matches_a_loop_reference_on_random_trees(seed, order):
    g = torch.Generator().manual_seed(seed)
    T, E, K = 29, 24, 4
    depth_T = torch.randint(1, 6, (T,), generator=g)
    depth_T[0] = 0
    # Log-probs fall with depth (as a path's do); a few exact ties on purpose.
    logprob_T = -(depth_T.float() + torch.randint(0, 3, (T,), generator=g).float() / 4)
    valid_T = torch.rand(T, generator=g) > 0.15
    valid_T[0] = True
    record = make_record(
        torch.randn(T, E, generator=g) * 2,
        K,
        depth_T=depth_T,
        path_logprob_T=logprob_T,
        valid_T=valid_T,
    )
    used = int(record.used_E().sum())
    for budget in (K, 7, 11, min(used, 16)):
        want = loop_kept(
            record.topk_ids_TK.tolist(),
            record.choice_scores_TE().tolist(),
            depth_T.tolist(),
            logprob_T.tolist(),
            valid_T.tolist(),
            budget,
            order,
        )
        assert kept("draft-path", record, budget, order=order) == want
