"""A transformers causal LM as the draft: it grows trees with the engine's ``expand_tree``.

Shape legend: M candidates, Q query tokens, S key positions, D draft model dim, V vocabulary.

The draft is a smaller causal LM sharing the target's tokenizer (a dense model
of the same family, say). It keeps its own ``DynamicCache`` of every committed
token, the root included, so the root's children sit at position ``length``
and a depth-d candidate at ``length + d - 1``: the layout
``moe_spec.engine.tree.expand_tree`` uses. Two small adapters let that function
drive the causal LM unchanged: :class:`DraftCacheView` (the ``length`` /
``offset`` bookkeeping over the contiguous cache) and :class:`CausalLMDraft`
(``draft(...)`` returns the LM's last hidden states, ``lm_head`` turns them into
logits). The engine's parent feature input is ignored: the LM sees a
candidate's ancestors through its KV cache and the tree mask.

``TransformersEngine`` drives any draft through ``new_cache``, ``start`` (after the
prefill), ``extend`` (after each step), ``first_level`` (the root's children's
log-probabilities, which the policy's gate reads) and ``grow_tree``; ``start`` and ``extend`` also
receive the target's features, which only an EAGLE head reads (see ``eagle.py``).
"""

from __future__ import annotations

import torch
from transformers import DynamicCache

from moe_spec.engine.tree import DraftTree, expand_tree
from moe_spec.integration.transformers.tree import (
    check_tree_attention,
    crop_to,
    layer_masks,
    new_cache,
)


def context_limit(config) -> int:
    return getattr(config, "max_position_embeddings", None) or 1 << 30


class DraftCacheView:
    """``expand_tree``'s view of a draft cache: ``length`` committed, ``offset`` scratch entries."""

    def __init__(self, cache: DynamicCache) -> None:
        self.cache = cache
        self.length = cache.get_seq_length()
        self.offset = 0
        self.key_pos_S = torch.arange(self.length)  # positions of the cached entries

    def append(self, positions_Q: torch.Tensor) -> torch.Tensor:
        """Note new entries' positions; return every entry's position ``[S]``."""
        self.key_pos_S = torch.cat((self.key_pos_S, positions_Q.cpu()))
        return self.key_pos_S


class CausalLMDraft:
    """A causal LM behind the ``(draft, target)`` interface ``expand_tree`` calls."""

    def __init__(self, model) -> None:
        check_tree_attention(model)
        if getattr(model.config, "final_logit_softcapping", None):
            raise ValueError(
                f"draft model_type {model.config.model_type!r} soft-caps its logits; "
                "use a draft whose logits are lm_head(last hidden state) (Llama, Qwen, Mistral)"
            )
        self.model = model
        self.body = model.get_decoder()
        self.head = model.get_output_embeddings()
        self.context_limit = context_limit(model.config)
        self.vocab = model.get_input_embeddings().num_embeddings

    def embeddable(self, ids: torch.Tensor) -> torch.Tensor:
        """``ids`` with a token the draft cannot embed (a target's id past a smaller draft
        vocabulary) read as the draft's last id: its guesses after it are likely rejected,
        the target's tokens are not changed."""
        return ids.clamp(max=self.vocab - 1)

    def new_cache(self, _max_len: int) -> DynamicCache:
        return new_cache()

    def lm_head(self, hidden_QD: torch.Tensor) -> torch.Tensor:
        """fp32 logits (on the CPU) of final hidden states."""
        return self.head(hidden_QD.to(self.model.device)).float().cpu()

    def __call__(
        self,
        _target,
        _feature_BQD: torch.Tensor,
        tokens_BQ: torch.Tensor,
        positions_Q: torch.Tensor,
        view: DraftCacheView,
        allowed_QS: torch.Tensor,
    ) -> torch.Tensor:
        """Run candidate tokens after the cache; last hidden states ``[1, Q, D]``."""
        device, config = self.model.device, self.model.config
        key_pos_S = view.append(positions_Q)
        masks = layer_masks(config, allowed_QS, positions_Q, key_pos_S, self.model.dtype, device)
        out = self.body(
            input_ids=self.embeddable(tokens_BQ.to(device)),
            position_ids=positions_Q[None].to(device),
            attention_mask=masks,
            past_key_values=view.cache,
            use_cache=True,
        )
        return out.last_hidden_state.cpu()

    def extend(self, cache: DynamicCache, tokens: list[int], _feature_QD=None) -> torch.Tensor:
        """Append committed tokens to the cache (plain causal); log-probs ``[V]`` after the last.

        The target's features are not used: the LM reads its own.
        """
        return torch.log_softmax(self.lm_head(self.hidden(cache, tokens)[-1]), dim=-1)

    def read(
        self, cache: DynamicCache, tokens: list[int], _feature_QD=None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`extend`, and the LM's most likely next token after each of ``tokens``
        (long ``[Q]``, on the CPU)."""
        logits_QV = self.lm_head(self.hidden(cache, tokens))
        return torch.log_softmax(logits_QV[-1], dim=-1), logits_QV.argmax(-1)

    def hidden(self, cache: DynamicCache, tokens: list[int]) -> torch.Tensor:
        ids = self.embeddable(torch.tensor([tokens], device=self.model.device))
        out = self.body(input_ids=ids, past_key_values=cache, use_cache=True)
        return out.last_hidden_state[0]

    def start(self, cache: DynamicCache, prompt: list[int], root: int, _feature_PD=None):
        """After the target's prefill: the prompt and the root; log-probs ``[V]`` after the root."""
        return self.extend(cache, prompt + [root])

    def first_level(self, root_logprobs_V: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[V]`` of the root's children (the state ``extend`` returned)."""
        return root_logprobs_V

    def grow_tree(
        self,
        cache: DynamicCache,
        root: int,
        root_logprobs_V: torch.Tensor,
        width: int,
        depth: int,
        num_tokens: int,
        _first_level: torch.Tensor | None = None,
    ) -> DraftTree:
        """A tree below ``root`` (the cache's last entry); the cache is left as it was."""
        view = DraftCacheView(cache)
        unused_feature_D = torch.zeros(self.model.config.hidden_size, dtype=self.model.dtype)
        tree = expand_tree(
            self, self, view, root, unused_feature_D, root_logprobs_V, width, depth, num_tokens
        )
        crop_to(cache, view.length)
        return tree
