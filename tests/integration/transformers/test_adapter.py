"""Budgeted tree verification inside real transformers MoE blocks."""

from __future__ import annotations

import pytest
import torch
from transformers import DynamicCache

from moe_spec.integration.transformers import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedModelError,
    budgeted_verify,
    find_moe_blocks,
)
from moe_spec.integration.transformers.adapter import router_convention
from moe_spec.integration.transformers.tree import run_tree
from moe_spec.policies import get_policy

from .conftest import ExpertAccessCounter, hand_tree, tiny_config

PROMPT = [5, 17, 42, 8, 63, 29]
# root, two children, grandchildren under both, one great-grandchild: 9 nodes, 4 leaves
PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 5]
TOKENS = [11, 70, 3, 44, 91, 12, 7, 58, 33]


def verify_logits(model, policy="none", budget=None, mode="substitution", counter=None):
    """Prefill PROMPT, then one (budgeted) tree forward: ``(logits_NV, routing)``."""
    tree = hand_tree(TOKENS, PARENTS)
    cache = DynamicCache(config=model.config)
    model(input_ids=torch.tensor([PROMPT]), past_key_values=cache, use_cache=True)
    E = find_moe_blocks(model)[0].num_experts
    with budgeted_verify(
        model, get_policy(policy), budget or E, mode, tree.depth_N, tree.logprob_N
    ) as routing:
        if counter is not None:
            with counter:
                logits_NV = run_tree(model, cache, tree)
        else:
            logits_NV = run_tree(model, cache, tree)
    return logits_NV, routing, tree


def path_to(tree, node: int) -> list[int]:
    path = [node]
    while tree.parent_N[path[-1]] >= 0:
        path.append(int(tree.parent_N[path[-1]]))
    return [int(tree.tokens_N[i]) for i in reversed(path)]


def test_unbudgeted_tree_logits_equal_plain_forward_of_each_path(moe_model):
    logits_NV, _, tree = verify_logits(moe_model)
    for node in range(tree.size):
        ids = torch.tensor([PROMPT + path_to(tree, node)])
        expected_V = moe_model(input_ids=ids).logits[0, -1]
        torch.testing.assert_close(logits_NV[node], expected_V.float(), rtol=0, atol=1e-6)


def test_budget_at_or_above_num_experts_changes_nothing(moe_model):
    E = find_moe_blocks(moe_model)[0].num_experts
    reference_NV, _, _ = verify_logits(moe_model)
    for budget in (E, E + 3):
        logits_NV, routing, _ = verify_logits(moe_model, "router-mass", budget)
        assert torch.equal(logits_NV, reference_NV)
        for before, after in zip(routing.ids_before_LTK, routing.ids_after_LTK, strict=True):
            assert torch.equal(before, after)


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_budget_caps_experts_computed_inside_each_block(moe_model, mode):
    blocks = find_moe_blocks(moe_model)
    K = blocks[0].top_k
    counter = ExpertAccessCounter(moe_model)
    _, free, _ = verify_logits(moe_model, counter=counter)
    before_L = counter.distinct(0, len(blocks))
    assert before_L == free.distinct_computed_L()
    budget = K + 1
    assert max(before_L) > budget, "the tree must use more experts than the budget"
    counter = ExpertAccessCounter(moe_model)
    logits_NV, routing, _ = verify_logits(moe_model, "router-mass", budget, mode, counter)
    after_L = counter.distinct(0, len(blocks))
    assert all(0 < n <= budget for n in after_L), after_L
    assert after_L == routing.distinct_computed_L()
    assert torch.isfinite(logits_NV).all()


def test_hooks_live_only_inside_the_context(moe_model):
    blocks = find_moe_blocks(moe_model)
    with budgeted_verify(moe_model, get_policy("router-mass"), blocks[0].top_k):
        assert all(b.router._forward_hooks for b in blocks)
    assert not any(b.router._forward_hooks or b.experts._forward_pre_hooks for b in blocks)


def test_each_architecture_declares_its_routing_convention():
    expected = {
        "qwen3_moe": (True, 1.0),  # norm_topk_prob=True in the tiny config
        "olmoe": (False, 1.0),
        "mixtral": (True, 1.0),
        "qwen2_moe": (False, 1.0),
        "deepseek_v2": (False, 2.0),
        "gpt_oss": (True, 1.0),
    }
    assert set(expected) == set(SUPPORTED_MODEL_TYPES)
    for model_type, (renormalize, scale) in expected.items():
        convention = router_convention(tiny_config(model_type))
        assert (convention.renormalize, convention.scale) == (renormalize, scale)


def test_unsupported_architectures_are_named():
    from transformers import Qwen3Config

    with pytest.raises(UnsupportedModelError, match="qwen3_moe") as err:
        router_convention(Qwen3Config())
    assert "'qwen3'" in str(err.value)
    config = tiny_config("deepseek_v2")
    config.topk_method = "group_limited_greedy"
    with pytest.raises(UnsupportedModelError, match="greedy"):
        router_convention(config)
