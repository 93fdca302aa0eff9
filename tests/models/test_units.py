"""Pieces without the model: balanced grouping, routing, the repetition metric, configs."""

from __future__ import annotations

import random

import pytest
import torch

from moe_spec.models.gguf_weights import unpermute_rows
from moe_spec.models.grouping import balanced_assign, balanced_kmeans, split_neurons
from moe_spec.models.learn import SplitConfig
from moe_spec.models.repetition import repeated_ngram_share
from moe_spec.models.router import fit_router, recall
from moe_spec.models.simulate import routed_weights


def test_balanced_kmeans_groups_are_equal_and_find_planted_clusters():
    g = torch.Generator().manual_seed(0)
    centers = torch.randn(4, 50, generator=g)
    x = centers.repeat_interleave(6, 0) + 0.05 * torch.randn(24, 50, generator=g)
    group = balanced_kmeans(x, 4, seed=1)
    assert torch.bincount(group, minlength=4).tolist() == [6, 6, 6, 6]
    for c in range(4):  # each planted cluster lands in one group
        assert group[c * 6 : (c + 1) * 6].unique().numel() == 1
    assert torch.equal(group, balanced_kmeans(x, 4, seed=1))


def test_balanced_assign_respects_capacity_and_rejects_bad_sizes():
    sim = torch.zeros(6, 2)
    sim[:, 0] = 1.0  # everyone prefers group 0
    assert torch.bincount(balanced_assign(sim, 3)).tolist() == [3, 3]
    with pytest.raises(ValueError, match="cannot fill"):
        balanced_assign(sim, 4)


def test_split_neurons_is_a_permutation_with_the_most_important_shared():
    g = torch.Generator().manual_seed(0)
    act = torch.randn(64, 20, generator=g)
    act[:, 3] *= 100  # clearly the most important neuron
    perm = split_neurons(act, torch.randn(8, 20, generator=g), shared=4, n_experts=4)
    assert sorted(perm.tolist()) == list(range(20))
    assert 3 in perm[:4].tolist()
    with pytest.raises(ValueError, match="multiple of n_experts=3"):
        split_neurons(act, torch.randn(8, 20), shared=4, n_experts=3)


def test_routed_weights_are_top_k_and_sum_to_k():
    logits = torch.tensor([[3.0, 1.0, 2.0, 0.0], [0.0, 0.0, 5.0, 4.0]])
    ids, w = routed_weights(logits, 2)
    assert ids.tolist() == [[0, 2], [2, 3]]
    assert torch.allclose(w.sum(1), torch.tensor([2.0, 2.0]))


def test_router_fit_recovers_a_linear_ranking():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(400, 16, generator=g)
    true = torch.randn(8, 16, generator=g)
    norms = (x @ true.T).exp()
    router = fit_router(x, norms)
    assert recall((x @ router.T).topk(2, 1).indices, norms.topk(2, 1).indices) > 0.95


def test_unpermute_undoes_llama_cpp_permutation():
    w = torch.arange(2 * 8 * 3, dtype=torch.float32).reshape(16, 3)
    n_head = 2
    permuted = w.reshape(n_head, 2, 4, 3).swapaxes(1, 2).reshape(16, 3)  # convert_hf_to_gguf
    assert torch.equal(unpermute_rows(permuted, n_head), w)


def test_repeated_ngram_share():
    assert repeated_ngram_share([1, 2, 3, 4, 5, 6], 5) == 0.0
    assert repeated_ngram_share([7] * 14, 5) == 9 / 10
    assert repeated_ngram_share([1, 2, 1, 2, 1, 2, 1, 2], 2) == 5 / 7  # 2 new of 7
    assert repeated_ngram_share([1, 2], 5) == 0.0
    with pytest.raises(ValueError, match="positive integer"):
        repeated_ngram_share([1, 2, 3], 0)


def test_split_config_validates():
    with pytest.raises(ValueError, match="top_k=9 <= n_experts=8"):
        SplitConfig(shared=8, n_experts=8, top_k=9)
    with pytest.raises(ValueError, match="router_scale"):
        SplitConfig(shared=8, n_experts=8, top_k=2, router_scale=-1.0)


def test_calibration_files_extend_one_seeded_shuffle_without_held_out_files():
    from moe_spec.engine.data import split_files
    from moe_spec.models.calibration import calibration_files

    train, held_out = split_files()
    first = calibration_files(30, seed=1000)
    assert first == random.Random(1000).sample(train, 30)  # what earlier feature caches used
    more = calibration_files(40, seed=1000, skip=30)
    assert calibration_files(70, seed=1000) == first + more
    assert len(set(first + more)) == 70 and not set(first + more) & set(held_out)
    assert len(calibration_files(10, seed=1000, skip=len(train) - 4)) == 4  # the shuffle ran out
    with pytest.raises(ValueError, match="skip must be an integer >= 0, got -1"):
        calibration_files(3, skip=-1)
