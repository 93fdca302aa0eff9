"""Tree attention through a transformers model's own attention, and its KV cache.

Shape legend: N tree tokens, P committed prefix, S key positions, V vocabulary.

The tree goes through the model in one forward: ``position_ids`` are
``P + depth`` and the attention mask is a 4-D additive float mask
``[1, 1, N, P + N]`` (0 where a node may attend: the whole prefix, itself and its
ancestors; the dtype's minimum elsewhere). transformers returns a 4-D mask
as-is to the attention implementation, and both ``eager`` (adds it to the
scores) and ``sdpa`` (passes it to ``scaled_dot_product_attention``) accept it.

Sliding-window layers get the same mask with keys ``window`` or more positions
behind the query removed (a dict by layer type where the model mixes both kinds).

KV cache: a ``DynamicCache`` is contiguous, so the verify forward appends the N
tree entries after the prefix. Its layers keep every entry, sliding ones too
(the masks hide what a sliding layer may not see). :func:`keep_path` then gathers the accepted
path's entries into place and drops the rest. Each path node's keys were
computed at position ``P + depth``, which is exactly where a plain forward of
the path would put them, so no forward is re-run.
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from moe_spec.engine.tree import DraftTree

TREE_ATTENTION = ("eager", "sdpa")


class TreeAttentionError(ValueError):
    """The model's attention or cache cannot run a tree forward."""


def check_tree_attention(model) -> None:
    impl = model.config._attn_implementation
    if impl not in TREE_ATTENTION:
        raise TreeAttentionError(
            f"attn_implementation={impl!r} cannot take a tree mask; allowed: "
            f"{', '.join(TREE_ATTENTION)} (load with attn_implementation='sdpa')"
        )


def additive_mask(allowed_QS: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """float ``[1, 1, Q, S]``: 0 where ``allowed_QS`` is True, the dtype minimum elsewhere."""
    mask = torch.zeros(allowed_QS.shape, dtype=dtype, device=allowed_QS.device)
    return mask.masked_fill(~allowed_QS, torch.finfo(dtype).min)[None, None]


def sliding_window(config) -> int | None:
    """The model's attention window, or None when every layer attends to everything."""
    return getattr(config, "sliding_window", None) or None


def layer_masks(config, allowed_QS, query_pos_Q, key_pos_S, dtype: torch.dtype, device):
    """The masks the model's layers need for ``allowed_QS``: one 4-D mask, or one per layer type.

    Sliding-window layers also drop keys ``window`` or more positions behind the query
    (the model's own rule, ``q - k < window``). A model mixing full and sliding layers
    (GPT-OSS, Qwen2-MoE with ``use_sliding_window``) takes a dict by layer type.
    """
    full = additive_mask(allowed_QS.to(device), dtype)
    window = sliding_window(config)
    if window is None:
        return full
    near_QS = query_pos_Q[:, None] - key_pos_S[None, :] < window
    sliding = additive_mask((allowed_QS & near_QS).to(device), dtype)
    layer_types = set(getattr(config, "layer_types", None) or ())
    if {"full_attention", "sliding_attention"} <= layer_types:
        return {"full_attention": full, "sliding_attention": sliding}
    return sliding


def tree_attention_mask(config, tree: DraftTree, prefix: int, dtype: torch.dtype, device):
    """Masks for a tree forward after ``prefix`` cached tokens (see :func:`layer_masks`)."""
    allowed_NS = torch.cat(
        (torch.ones(tree.size, prefix, dtype=torch.bool), tree.ancestor_mask_NN()), dim=1
    )
    key_pos_S = torch.cat((torch.arange(prefix), prefix + tree.depth_N))
    return layer_masks(config, allowed_NS, prefix + tree.depth_N, key_pos_S, dtype, device)


def tree_inputs(model, tree: DraftTree, prefix: int) -> dict:
    """Model kwargs for a tree forward after ``prefix`` cached tokens."""
    device = model.device
    return {
        "input_ids": tree.tokens_N[None].to(device),
        "position_ids": (prefix + tree.depth_N)[None].to(device),
        "attention_mask": tree_attention_mask(model.config, tree, prefix, model.dtype, device),
    }


def new_cache() -> DynamicCache:
    """A cache that keeps every entry in every layer (sliding layers included).

    The model masks what a sliding layer may not see, so nothing is lost by
    keeping it, and the accepted path can always be gathered into place.
    """
    return DynamicCache()


def check_complete(cache: DynamicCache) -> None:
    """Raise :class:`TreeAttentionError` if a cache layer dropped entries (a sliding window)."""
    for layer_idx, layer in enumerate(cache.layers):
        if layer.keys is not None and layer.keys.shape[-2] != layer.get_seq_length():
            raise TreeAttentionError(
                f"cache layer {layer_idx} keeps {layer.keys.shape[-2]} of "
                f"{layer.get_seq_length()} entries (a sliding window dropped the rest); "
                "use new_cache() (keeps every entry), not DynamicCache(config=...)"
            )


def run_tree(model, cache: DynamicCache, tree: DraftTree) -> torch.Tensor:
    """One forward of the tree after the cached prefix: fp32 logits ``[N, V]``.

    Leaves the N tree entries appended to ``cache`` (see :func:`keep_path`).
    """
    check_complete(cache)
    inputs = tree_inputs(model, tree, cache.get_seq_length())
    out = model(**inputs, past_key_values=cache, use_cache=True)
    return out.logits[0].float()


def keep_path(cache: DynamicCache, prefix: int, path_N: torch.Tensor) -> None:
    """Keep the prefix, then the tree entries at ``prefix + path_N``; drop the rest."""
    check_complete(cache)
    for layer in cache.layers:
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        keep_S = torch.cat((torch.arange(prefix), prefix + path_N.cpu())).to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, keep_S)
        layer.values = layer.values.index_select(-2, keep_S)


def crop_to(cache: DynamicCache, length: int) -> None:
    """Drop the cache's entries past ``length`` (transformers deprecates a positive ``crop``)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)
