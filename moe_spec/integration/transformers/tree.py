"""Tree attention through a transformers model's own attention, and its KV cache.

Shape legend: N tree tokens, P committed prefix, S key positions, V vocabulary.

The tree goes through the model in one forward: ``position_ids`` are
``P + depth`` and the attention mask is a 4-D additive float mask
``[1, 1, N, P + N]`` (0 where a node may attend: the whole prefix, itself and its
ancestors; the dtype's minimum elsewhere). transformers returns a 4-D mask
as-is to the attention implementation, and both ``eager`` (adds it to the
scores) and ``sdpa`` (passes it to ``scaled_dot_product_attention``) accept it.

KV cache: a ``DynamicCache`` is contiguous, so the verify forward appends the N
tree entries after the prefix. :func:`keep_path` then gathers the accepted
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


def tree_inputs(tree: DraftTree, prefix: int, dtype: torch.dtype, device) -> dict:
    """Model kwargs for a tree forward after ``prefix`` cached tokens."""
    allowed_NS = torch.cat(
        (torch.ones(tree.size, prefix, dtype=torch.bool), tree.ancestor_mask_NN()), dim=1
    )
    return {
        "input_ids": tree.tokens_N[None].to(device),
        "position_ids": (prefix + tree.depth_N)[None].to(device),
        "attention_mask": additive_mask(allowed_NS.to(device), dtype),
    }


def run_tree(model, cache: DynamicCache, tree: DraftTree) -> torch.Tensor:
    """One forward of the tree after the cached prefix: fp32 logits ``[N, V]``.

    Leaves the N tree entries appended to ``cache`` (see :func:`keep_path`).
    """
    prefix = cache.get_seq_length()
    inputs = tree_inputs(tree, prefix, model.dtype, model.device)
    out = model(**inputs, past_key_values=cache, use_cache=True)
    return out.logits[0].float()


def keep_path(cache: DynamicCache, prefix: int, path_N: torch.Tensor) -> None:
    """Keep the prefix, then the tree entries at ``prefix + path_N``; drop the rest."""
    for layer_idx, layer in enumerate(cache.layers):
        if layer.keys is None or layer.keys.numel() == 0:
            continue
        cached = layer.keys.shape[-2]
        if (
            cached < prefix + int(path_N.max()) + 1
            or getattr(layer, "cumulative_length", cached) != cached
        ):
            raise TreeAttentionError(
                f"cache layer {layer_idx} holds {cached} entries, not the whole prefix of {prefix} "
                "plus the tree: a sliding-window layer dropped entries (keep prompt + new tokens "
                "within the model's sliding_window)"
            )
        keep_S = torch.cat((torch.arange(prefix), prefix + path_N.cpu())).to(layer.keys.device)
        layer.keys = layer.keys.index_select(-2, keep_S)
        layer.values = layer.values.index_select(-2, keep_S)
        if hasattr(layer, "cumulative_length"):
            layer.cumulative_length = keep_S.numel()


def crop(cache: DynamicCache, length: int) -> None:
    """Drop every entry after the first ``length`` (the draft's scratch entries)."""
    cache.crop(length)
