"""Budgeted tree verification inside real transformers MoE blocks."""

from __future__ import annotations

import pytest
import torch

from moe_spec.integration.transformers import (
    SUPPORTED_MODEL_TYPES,
    UnsupportedModelError,
    budgeted_verify,
    find_moe_blocks,
)
from moe_spec.integration.transformers.adapter import router_convention
from moe_spec.integration.transformers.tree import new_cache, run_tree
from moe_spec.policies import get_policy
from tests.loop_reference import reference_sparsemixer

from .conftest import ExpertAccessCounter, build, hand_tree, tiny_config

PROMPT = [5, 17, 42, 8, 63, 29]
# root, two children, grandchildren under both, one great-grandchild: 9 nodes, 4 leaves
PARENTS = [-1, 0, 0, 1, 1, 2, 3, 3, 5]
TOKENS = [11, 70, 3, 44, 91, 12, 7, 58, 33]


def verify_logits(model, policy="none", budget=None, mode="substitution", counter=None):
    """Prefill PROMPT, then one (budgeted) tree forward: ``(logits_NV, routing)``."""
    tree = hand_tree(TOKENS, PARENTS)
    cache = new_cache()
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
        "qwen3_moe": ("softmax", True, 1.0),  # norm_topk_prob=True in the tiny config
        "olmoe": ("softmax", False, 1.0),
        "mixtral": ("softmax", True, 1.0),
        "qwen2_moe": ("softmax", False, 1.0),
        "deepseek_v2": ("softmax", False, 2.0),
        "gpt_oss": ("softmax", True, 1.0),
        "glm4_moe": ("sigmoid", True, 2.5),
        "deepseek_v3": ("sigmoid", True, 2.5),
        "granitemoe": ("softmax", True, 1.0),
        "granitemoeshared": ("softmax", True, 1.0),
        "phimoe": ("sparsemixer", False, 1.0),
    }
    assert set(expected) == set(SUPPORTED_MODEL_TYPES)
    for model_type, want in expected.items():
        convention = router_convention(tiny_config(model_type))
        assert (convention.scoring, convention.renormalize, convention.scale) == want


def test_unsupported_architectures_are_named():
    from transformers import Qwen3Config

    with pytest.raises(UnsupportedModelError, match="qwen3_moe") as err:
        router_convention(Qwen3Config())
    assert "'qwen3'" in str(err.value)
    config = tiny_config("deepseek_v2")
    config.topk_method = "group_limited_greedy"
    with pytest.raises(UnsupportedModelError, match="greedy"):
        router_convention(config)
    config = tiny_config("glm4_moe")
    config.n_group, config.topk_group = 4, 2
    with pytest.raises(UnsupportedModelError, match="topk_group"):
        router_convention(config)


def capture_block_io(model):
    """Hooks that record each router's own output and what each experts module receives."""
    seen = {"router": [], "experts": []}
    handles = []
    convention = router_convention(model.config)
    for block in find_moe_blocks(model):  # router outputs stored as (logits, weights, ids)
        handles.append(
            block.router.register_forward_hook(
                lambda _m, _a, out: seen["router"].append(convention.split(out))
            )
        )
        handles.append(
            block.experts.register_forward_pre_hook(
                lambda _m, args: seen["experts"].append((args[1], args[2]))
            )
        )
    return seen, handles


def gates_and_choice(convention, logits_E, bias_E):
    """The model's gate values and the scores it picks its top-k by."""
    if convention.scoring == "softmax":
        gates_E = torch.softmax(logits_E.double(), dim=-1)
        return gates_E, gates_E
    gates_E = torch.sigmoid(logits_E.double())
    return gates_E, gates_E + bias_E.double()


def expected_routing(config, logits_E, bias_E, ids_K, weights_K, kept, mode):
    """{expert: weight} a re-routed token should get, from the model's documented formula."""
    convention = router_convention(config)
    if convention.scoring == "sparsemixer":  # PhiMoE: the model's own rule on the kept experts
        eps, K = convention.sparsemixer_eps, ids_K.numel()
        if mode == "substitution":
            return dict(zip(*reference_sparsemixer(logits_E.tolist(), kept, K, eps), strict=True))
        weights = {
            int(e): float(w) for e, w in zip(ids_K, weights_K, strict=True) if int(e) in kept
        }
        if not weights:
            first, weight = reference_sparsemixer(logits_E.tolist(), kept, 1, eps)
            weights = {first[0]: weight[0]}
        return weights
    gates_E, choice_E = gates_and_choice(convention, logits_E, bias_E)
    kept_ids = sorted(kept)
    if mode == "substitution":
        ids = sorted(kept_ids, key=lambda e: (-float(choice_E[e]), e))[: ids_K.numel()]
        weights = {e: float(gates_E[e]) for e in ids}
    else:
        raw = weights_K.double() / convention.scale
        weights = {int(e): float(w) for e, w in zip(ids_K, raw, strict=True) if int(e) in kept}
        if not weights:
            best = max(kept_ids, key=lambda e: (float(choice_E[e]), -e))
            weights = {best: float(gates_E[best])}
    if convention.renormalize:
        total = sum(weights.values())
        weights = {e: w / total for e, w in weights.items()}
    return {e: w * convention.scale for e, w in weights.items()}


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_rerouted_tokens_follow_the_models_own_convention(moe_model, mode):
    """Independent of the budgeting core: the paper's kept set and each model's weight formula."""
    blocks = find_moe_blocks(moe_model)
    convention = router_convention(moe_model.config)
    budget = blocks[0].top_k + 1
    seen, handles = capture_block_io(moe_model)
    try:
        verify_logits(moe_model, "router-mass", budget, mode)
    finally:
        for handle in handles:
            handle.remove()
    prefill_calls = len(seen["router"]) // 2  # one per layer for the prefill, then the tree
    rerouted = 0
    for block, (logits, weights_TK, ids_TK), (got_ids_TK, got_weights_TK) in zip(
        blocks, seen["router"][prefill_calls:], seen["experts"][prefill_calls:], strict=True
    ):
        if convention.scoring != "sigmoid":  # softmax and sparsemixer routers
            probs_TE = torch.softmax(logits.double(), dim=-1)
        else:  # the paper's mass for sigmoid routers: gates normalised per token
            probs_TE = torch.sigmoid(logits.double())
            probs_TE = probs_TE / probs_TE.sum(-1, keepdim=True)
        used = sorted({int(e) for e in ids_TK.flatten()})
        mass_E = probs_TE.sum(0)
        kept = set(sorted(used, key=lambda e: (-float(mass_E[e]), e))[:budget])
        for t in range(ids_TK.shape[0]):
            got = {}
            for e, w in zip(got_ids_TK[t].tolist(), got_weights_TK[t].tolist(), strict=True):
                got[e] = got.get(e, 0.0) + w
            got = {e: w for e, w in got.items() if w != 0.0}
            if set(ids_TK[t].tolist()) <= kept:
                assert torch.equal(got_ids_TK[t], ids_TK[t])
                assert torch.equal(got_weights_TK[t], weights_TK[t])
                continue
            rerouted += 1
            want = expected_routing(
                moe_model.config,
                logits[t],
                block.correction_bias_E,
                ids_TK[t],
                weights_TK[t],
                kept,
                mode,
            )
            assert set(got) == set(want), (t, got, want)
            for e in want:
                assert got[e] == pytest.approx(want[e], rel=1e-5, abs=1e-7)
    assert rerouted > 0


def test_attention_without_custom_masks_is_refused():
    from types import SimpleNamespace

    from moe_spec.integration.transformers.tree import TreeAttentionError, check_tree_attention

    model = SimpleNamespace(config=SimpleNamespace(_attn_implementation="flash_attention_2"))
    with pytest.raises(TreeAttentionError, match="eager, sdpa"):
        check_tree_attention(model)


def test_bad_budget_or_mode_fails_before_the_forward(moe_model):
    policy = get_policy("router-mass")
    with pytest.raises(ValueError, match="below top-k"):
        budgeted_verify(moe_model, policy, 1).__enter__()
    with pytest.raises(ValueError, match="budget mode"):
        budgeted_verify(moe_model, policy, 4, mode="drop").__enter__()
    assert not any(b.router._forward_hooks for b in find_moe_blocks(moe_model))


def test_a_cache_that_dropped_sliding_entries_is_refused():
    from transformers import DynamicCache

    from moe_spec.integration.transformers.tree import TreeAttentionError, keep_path

    from .conftest import build

    model = build(tiny_config("gpt_oss"))  # sliding window of 8
    cache = DynamicCache(config=model.config)  # trims its sliding layers to the window
    model(input_ids=torch.tensor([PROMPT + PROMPT]), past_key_values=cache, use_cache=True)
    with pytest.raises(TreeAttentionError, match="new_cache"):
        run_tree(model, cache, hand_tree(TOKENS, PARENTS))
    with pytest.raises(TreeAttentionError, match="new_cache"):
        keep_path(cache, 2 * len(PROMPT), torch.tensor([0, 1, 3]))


def router_probs_hook(captured: list):
    """A router forward hook that keeps each layer's routing probabilities ``[tokens, E]``."""
    return lambda _m, _args, out: captured.append(
        torch.softmax(out[0].reshape(-1, out[0].shape[-1]), -1)
    )


def test_a_padded_batch_counts_only_its_real_tokens_when_given_valid_t():
    """A left-padded batch of 2: with ``valid_T`` the kept set is router-mass's top-B over the
    real tokens alone (computed here from the router's own probabilities); without it the pad
    tokens' routing chooses too (the walkthrough's finding)."""
    model = build(tiny_config("qwen3_moe"))
    blocks = find_moe_blocks(model)
    B, pad = blocks[0].top_k + 1, 6
    ids = torch.tensor([[5, 17, 42, 8, 63, 29, 11, 70, 3, 44], [0] * pad + [91, 12, 7, 58]])
    mask = torch.ones_like(ids)
    mask[1, :pad] = 0
    found = []
    for seed in range(40):  # routing where padding would change the choice
        torch.manual_seed(seed)
        ids[1, :pad] = torch.randint(1, 90, (pad,))
        probs: list = []
        handle = blocks[0].router.register_forward_hook(router_probs_hook(probs))
        with budgeted_verify(model, get_policy("router-mass"), B, valid_T=mask) as routing:
            model(input_ids=ids, attention_mask=mask)
        handle.remove()
        valid_T = mask.flatten().bool()
        mass_E = probs[0][valid_T].sum(0)
        kept = set(torch.topk(mass_E, B).indices.tolist())
        padded_kept = set(torch.topk(probs[0].sum(0), B).indices.tolist())
        used = set(routing.ids_after_LTK[0].unique().tolist())  # every row re-routed into it
        assert used <= kept, (seed, used, kept)
        if padded_kept != kept:
            found.append(seed)
            with budgeted_verify(model, get_policy("router-mass"), B) as unmasked:
                model(input_ids=ids, attention_mask=mask)
            assert not set(unmasked.ids_after_LTK[0].unique().tolist()) <= kept
            break
    assert found, "no seed where the padding would change the kept set"
    short = budgeted_verify(model, get_policy("router-mass"), B, valid_T=mask[:, :2])
    with pytest.raises(ValueError, match="valid_T holds 4 entries but the forward routes"), short:
        model(input_ids=ids, attention_mask=mask)


def test_a_padded_batch_under_a_large_budget_reads_only_the_real_tokens_experts():
    """B above the experts the real tokens picked: the pad tokens, re-routed into the kept
    set, read no expert the real tokens did not pick (the engine walkthrough's B 4/8/16
    read 4/7/11 experts where the real tokens picked 4)."""
    model = build(tiny_config("qwen3_moe"))
    blocks = find_moe_blocks(model)
    ids = torch.tensor([[5, 17, 42, 8, 63, 29], [0, 0, 0, 0, 91, 12]])
    mask = torch.ones_like(ids)
    mask[1, :4] = 0
    valid_T = mask.flatten().bool()
    E = blocks[0].num_experts
    for B in (blocks[0].top_k + 1, E // 2, E - 1):
        with budgeted_verify(model, get_policy("router-mass"), B, valid_T=valid_T) as routing:
            model(input_ids=ids, attention_mask=mask)
        for layer, ids_TK in enumerate(routing.ids_after_LTK):
            picked = set(routing.ids_before_LTK[layer][valid_T].unique().tolist())
            assert set(ids_TK.unique().tolist()) <= picked, (B, layer)
