"""Tree masks, positions and KV-cache commits against a direct computation of each path."""

from __future__ import annotations

import copy

import torch

from moe_spec.engine.tree import DraftTree, expand_tree, verify_mask

PROMPT = [5, 17, 42, 8, 99, 3]
# root 7; children 3 and 9; 3 has children 4 and 5; 5 has child 6.
HAND_TREE = DraftTree(
    tokens_N=torch.tensor([7, 3, 9, 4, 5, 6]),
    parent_N=torch.tensor([-1, 0, 0, 1, 1, 4]),
    depth_N=torch.tensor([0, 1, 1, 2, 2, 3]),
    logprob_N=torch.tensor([0.0, -0.1, -0.2, -0.3, -0.4, -0.5]),
)


def path_to(tree: DraftTree, node: int) -> list[int]:
    path = [node]
    while int(tree.parent_N[path[-1]]) != -1:
        path.append(int(tree.parent_N[path[-1]]))
    return path[::-1]


def test_ancestor_mask_matches_paths():
    mask = HAND_TREE.ancestor_mask_NN()
    for node in range(HAND_TREE.size):
        assert mask[node].nonzero().flatten().tolist() == sorted(path_to(HAND_TREE, node))
    assert verify_mask(HAND_TREE, 3)[:, :3].all()


def test_verify_logits_equal_each_path_run_as_its_own_sequence(tiny_engine):
    target = tiny_engine.target
    cache = tiny_engine.new_cache(
        target.config.n_layers, target.config.n_heads, target.config.head_dim
    )
    tiny_engine.prefill(PROMPT, cache)
    positions = cache.length + HAND_TREE.depth_N
    out = target(HAND_TREE.tokens_N[None], positions, cache, verify_mask(HAND_TREE, cache.length))
    for node in range(HAND_TREE.size):
        tokens = PROMPT + HAND_TREE.tokens_N[path_to(HAND_TREE, node)].tolist()
        direct = target(torch.tensor([tokens])).logits_BQV[0, -1]
        torch.testing.assert_close(out.logits_BQV[0, node], direct, atol=1e-5, rtol=1e-5)


def test_commit_keeps_only_the_accepted_path(tiny_engine):
    target = tiny_engine.target
    cache = tiny_engine.new_cache(
        target.config.n_layers, target.config.n_heads, target.config.head_dim
    )
    tiny_engine.prefill(PROMPT, cache)
    target(
        HAND_TREE.tokens_N[None],
        cache.length + HAND_TREE.depth_N,
        cache,
        verify_mask(HAND_TREE, cache.length),
    )
    cache.commit(torch.tensor(path_to(HAND_TREE, 5)))  # root, 3, 5, 6
    assert cache.length == len(PROMPT) + 4
    logits = tiny_engine.decode_one_token(11, cache)
    direct = target(torch.tensor([PROMPT + [7, 3, 5, 6, 11]])).logits_BQV[0, -1]
    torch.testing.assert_close(logits, direct, atol=1e-5, rtol=1e-5)


def test_expanded_tree_scores_equal_sequential_drafting(tiny_engine):
    """The draft's tree attention over scratch slots equals drafting each path one by one."""
    target, draft = tiny_engine.target, tiny_engine.draft
    dcache = tiny_engine.new_cache(1, draft.config.n_heads, draft.config.head_dim)
    _, feature_PD = tiny_engine.prefill(
        PROMPT,
        tiny_engine.new_cache(
            target.config.n_layers, target.config.n_heads, target.config.head_dim
        ),
    )
    root_feature = tiny_engine.draft_catch_up(feature_PD, PROMPT[1:] + [7], dcache)
    root_logprobs = torch.log_softmax(target.lm_head(root_feature), -1)
    fresh = copy.deepcopy(dcache)
    tree = expand_tree(
        draft, target, dcache, 7, root_feature, root_logprobs, width=3, depth=4, num_tokens=20
    )
    assert tree.size == 20 and int(tree.depth_N.max()) <= 4
    assert all(int(tree.parent_N[i]) < i for i in range(1, tree.size))  # topological
    for node in range(1, tree.size):
        cache = copy.deepcopy(fresh)
        feature, total = root_feature, 0.0
        for child in path_to(tree, node)[1:]:
            logprobs = torch.log_softmax(target.lm_head(feature), -1)
            total += float(logprobs[tree.tokens_N[child]])
            if child != node:
                feature = tiny_engine.draft_catch_up(
                    feature[None], [int(tree.tokens_N[child])], cache
                )
        assert abs(total - float(tree.logprob_N[node])) < 1e-4, node


def test_tree_keeps_the_best_candidates_and_their_ancestors(tiny_engine):
    target, draft = tiny_engine.target, tiny_engine.draft
    dcache = tiny_engine.new_cache(1, draft.config.n_heads, draft.config.head_dim)
    feature = torch.randn(
        len(PROMPT), target.config.dim, generator=torch.Generator().manual_seed(0)
    )
    root_feature = tiny_engine.draft_catch_up(feature, PROMPT[1:] + [7], dcache)
    root_logprobs = torch.log_softmax(target.lm_head(root_feature), -1)
    tree = expand_tree(draft, target, dcache, 7, root_feature, root_logprobs, 2, 3, 6)
    # The root's two best tokens are depth 1 (a child never beats its parent).
    assert sorted(tree.tokens_N[tree.depth_N == 1].tolist()) == sorted(
        root_logprobs.topk(2).indices.tolist()
    )
    for node in range(1, tree.size):
        assert tree.logprob_N[node] <= tree.logprob_N[int(tree.parent_N[node])]


def test_greedy_acceptance_walks_the_matching_chain():
    from moe_spec.engine.verify import accept_greedy

    def logits_choosing(choices: dict[int, int]) -> torch.Tensor:
        logits = torch.zeros(HAND_TREE.size, 20)
        for node, token in choices.items():
            logits[node, token] = 1.0
        return logits

    # root -> 3 (node 1) -> 5 (node 4) -> 6 (node 5); then the target wants 11.
    assert accept_greedy(HAND_TREE, logits_choosing({0: 3, 1: 5, 4: 6, 5: 11})) == (
        [0, 1, 4, 5],
        11,
    )
    # root wants 9 (node 2, a leaf): bonus from node 2.
    assert accept_greedy(HAND_TREE, logits_choosing({0: 9, 2: 12})) == ([0, 2], 12)
    # root wants a token no child has; a matching grandchild does not count.
    assert accept_greedy(HAND_TREE, logits_choosing({0: 13, 1: 4})) == ([0], 13)
