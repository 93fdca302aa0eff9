"""Ranking a forward's layers after it (``rank_layers_LE``) against each layer's own ranking.

``auto`` ranks a resting step's routing after the forward, every layer at once; the ranks
must be those each layer's selection would have made (``expert_rank_E`` of
``score_experts_torch``), bit for bit: the budget a path needs is read from them.
"""

from __future__ import annotations

import pytest
import torch

from moe_spec.budget import expert_rank_E, expert_rank_LE
from moe_spec.kernels.budget_select_torch import (
    ScoreRule,
    rank_layers_LE,
    score_experts_torch,
    score_layers_torch,
)
from tests.conftest import make_record


def forward_records(L: int, T: int, E: int, K: int, seed: int, **kwargs):
    """One forward's L layer records: the same valid rows and depths, own logits."""
    g = torch.Generator().manual_seed(seed)
    valid_T = torch.rand(T, generator=g) < 0.8
    valid_T[0] = True
    depth_T = torch.randint(0, 4, (T,), generator=g)
    depth_T[0] = 0
    records = [
        make_record(
            torch.randn(T, E, generator=g) * 3,
            K,
            valid_T=valid_T,
            depth_T=depth_T,
            layer_idx=layer,
            num_layers=L,
            **kwargs,
        )
        for layer in range(L)
    ]
    weight_T = torch.rand(T, generator=g)
    return records, weight_T, (depth_T == 0) & valid_T


def per_layer_ranks(records, rule: ScoreRule) -> torch.Tensor:
    return torch.stack([expert_rank_E(score_experts_torch(r, rule), r.used_E()) for r in records])


@pytest.mark.parametrize(
    "L,T,E,K", [(1, 1, 4, 1), (3, 7, 5, 2), (4, 33, 64, 8), (16, 32, 60, 4), (5, 17, 128, 6)]
)
@pytest.mark.parametrize("weighted,rooted", [(True, True), (False, True), (True, False)])
def test_batched_ranks_equal_each_layers_own(L, T, E, K, weighted, rooted):
    for seed in range(4):
        records, weight_T, root_T = forward_records(L, T, E, K, seed)
        rule = ScoreRule("mass", weight_T if weighted else None, root_T if rooted else None)
        got = rank_layers_LE(records, rule)
        assert got.shape == (L, E) and got.dtype == torch.long
        assert torch.equal(got, per_layer_ranks(records, rule))
        want_scores = torch.stack([score_experts_torch(r, rule) for r in records])
        assert torch.equal(score_layers_torch(records, rule), want_scores)


@pytest.mark.parametrize(
    "kind,kwargs",
    [
        ("frequency", {}),
        ("mass", {"scoring": "sigmoid", "correction_bias_E": torch.linspace(-0.5, 0.5, 12)}),
        ("mass", {"scoring": "sparsemixer"}),
    ],
)
def test_other_rules_and_routers_rank_as_each_layer_does(kind, kwargs):
    """A frequency rule and sigmoid routers go layer by layer; sparsemixer's mass is a
    softmax, batched: the same ranks either way."""
    records, weight_T, root_T = forward_records(3, 9, 12, 2, 0, **kwargs)
    rule = ScoreRule(kind, weight_T, root_T)
    assert torch.equal(rank_layers_LE(records, rule), per_layer_ranks(records, rule))


def test_rank_rows_order_used_experts_first_then_score_then_id():
    scores_LE = torch.tensor([[0.5, 0.5, 0.9, 0.1], [0.0, 0.2, 0.2, 0.3]])
    used_LE = torch.tensor([[True, True, False, True], [False, True, True, True]])
    # row 0: used 0, 1, 3 first (0.5, 0.5 by id, then 0.1), then unused 2
    # row 1: used 1, 2 (0.2, 0.2 by id), 3 (0.3) before them; then unused 0
    assert expert_rank_LE(scores_LE, used_LE).tolist() == [[0, 1, 3, 2], [3, 1, 2, 0]]
    for row in range(2):
        assert torch.equal(
            expert_rank_LE(scores_LE, used_LE)[row], expert_rank_E(scores_LE[row], used_LE[row])
        )


@pytest.mark.parametrize(
    "L,T,E,K,scoring",
    [(1, 1, 4, 1, "softmax"), (3, 19, 5, 2, "sigmoid"), (2, 17, 130, 6, "sparsemixer")],
)
def test_one_launch_for_all_layers_ranks_as_the_torch_path(L, T, E, K, scoring):
    """The Triton kernel (interpreted here), a program per layer, against the torch ranks:
    the auto rule (weights and roots) by mass, and a plain frequency rule."""
    from moe_spec.kernels.budget_select_triton import rank_layers_triton

    records, weight_T, root_T = forward_records(L, T, E, K, 0, scoring=scoring)
    for rule in (ScoreRule("mass", weight_T, root_T), ScoreRule("frequency")):
        got = rank_layers_triton(records, rule)
        assert got.shape == (L, E) and got.dtype == torch.long
        assert torch.equal(got, rank_layers_LE(records, rule)), rule.kind


@pytest.mark.parametrize("L,E", [(1, 4), (3, 5), (7, 60), (2, 130)])
def test_ranking_scored_layers_after_the_forward_equals_the_torch_ranks(L, E):
    """``rank_scored_triton`` (one launch, a program per layer) against ``expert_rank_LE``:
    used experts first, ties in score broken by id, rows of a wider buffer (strided)."""
    from moe_spec.kernels.budget_select_triton import rank_scored_triton

    g = torch.Generator().manual_seed(E)
    scores_LE = torch.randint(0, 5, (L, E), generator=g).float() / 4  # many ties
    used_LE = (torch.rand(L, E, generator=g) < 0.6).to(torch.int32)
    rank_LE = torch.full((L, E + 3), -1, dtype=torch.long)[:, :E]
    got = rank_scored_triton(scores_LE, used_LE, rank_LE)
    assert got is rank_LE
    assert torch.equal(got, expert_rank_LE(scores_LE, used_LE.bool()))
    with pytest.raises(ValueError, match=r"used_LE must be torch.int32"):
        rank_scored_triton(scores_LE, used_LE.bool(), rank_LE)


def test_auto_ranks_on_the_kernel_where_triton_runs_and_warns_once_where_it_cannot(monkeypatch):
    """``Auto.rank_routing``: the one-launch kernel where Triton runs (forced here, on the
    interpreter), the same ranks as torch; a kernel that fails warns, sets ``fused_error``
    and leaves the torch path to rank, then and after."""
    from moe_spec import get_policy
    from moe_spec.kernels import budget_select_triton

    records, _, _ = forward_records(3, 9, 12, 2, 1)
    policy = get_policy("auto")
    policy.prepare(3, 12, 2, 12, torch.device("cpu"))
    want = rank_layers_LE(records, policy.rule(records[0]))
    launched = []
    kernel = budget_select_triton.rank_layers_triton

    def counted(*args):
        launched.append(1)
        return kernel(*args)

    monkeypatch.setattr(budget_select_triton, "rank_layers_triton", counted)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    assert torch.equal(policy.rank_routing(records), want) and launched == [1]

    def broken(*args):
        raise RuntimeError("no device for this launch")

    monkeypatch.setattr(budget_select_triton, "rank_layers_triton", broken)
    with pytest.warns(RuntimeWarning, match="torch path from now on"):
        assert torch.equal(policy.rank_routing(records), want)
    assert "no device for this launch" in policy.fused_error
    assert torch.equal(policy.rank_routing(records), want)  # no second try, no warning
    monkeypatch.setenv("MOE_SPEC_KERNELS", "torch")
    assert torch.equal(policy.rank_routing(records), want)


def test_auto_ranks_each_layer_on_the_path_its_selection_takes(monkeypatch):
    """``Auto.rank_routing`` batches only layers alike (device, shape, top-k, router); a
    layer with another top-k is ranked on its own instead of failing the batch; sparsemixer
    routers, which the in-forward selection ranks with torch, are never sent to the kernel."""
    from moe_spec import get_policy
    from moe_spec.kernels import budget_select_triton

    records, _, _ = forward_records(3, 9, 12, 2, 1)
    first = records[0]
    shared = {"valid_T": first.valid_T, "depth_T": first.depth_T, "num_layers": 3}
    g = torch.Generator().manual_seed(1)
    records[1] = make_record(torch.randn(9, 12, generator=g) * 3, 3, layer_idx=1, **shared)  # top-3
    policy = get_policy("auto")
    policy.prepare(3, 12, 2, 12, torch.device("cpu"))
    want = per_layer_ranks(records, policy.rule(first))
    launched = []
    kernel = budget_select_triton.rank_layers_triton

    def counted(records, rule):
        launched.append(len(records))
        return kernel(records, rule)

    monkeypatch.setattr(budget_select_triton, "rank_layers_triton", counted)
    monkeypatch.setenv("MOE_SPEC_KERNELS", "triton")
    assert torch.equal(policy.rank_routing(records), want)
    assert launched == [1, 1, 1]  # one by one, each on the kernel
    sparse = [
        make_record(
            torch.randn(9, 12, generator=torch.Generator().manual_seed(i)) * 3,
            2,
            layer_idx=i,
            scoring="sparsemixer",
            **shared,
        )
        for i in range(3)
    ]
    launched.clear()
    got = policy.rank_routing(sparse)
    assert launched == [] and policy.fused_error is None
    assert torch.equal(got, per_layer_ranks(sparse, policy.rule(sparse[0])))
