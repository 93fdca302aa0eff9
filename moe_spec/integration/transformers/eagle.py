"""An engine-format EAGLE head as the draft of a transformers target.

Shape legend: B batch (1), Q query tokens, P prompt tokens, S key positions, D the
target's hidden size (= the head's dim), V vocabulary.

The head is the engine's :class:`~moe_spec.engine.draft.EagleDraft` (``fc`` over
``[feature, embedding]``, one decoder layer, ``out_norm``), driven exactly as
``moe_spec.engine.generate.Engine`` drives it: after every target forward it catches
up on pairs ``(f_i, x_{i+1})`` of the target's features and the next tokens, and
``expand_tree`` grows the tree from its predicted features.

The feature ``f_i`` is what the engine's EAGLE head reads: the target's final
*normed* hidden state, the exact input of its LM head (``MoETransformer.norm``'s
output). On a transformers causal LM that is the decoder body's
``last_hidden_state`` (``model.get_decoder()``, whose last step is the final norm,
and which ``ForCausalLM.forward`` hands to ``lm_head``); :func:`capture_features`
records it with a forward hook, for every position even when the logits are
computed for the last one only. Embeddings are ``model.get_input_embeddings()``,
logits ``model.get_output_embeddings()`` of a feature; both stay the target's.

:class:`EagleHeadDraft` plays both roles ``expand_tree`` expects: the draft (a
callable that moves inputs to the head's device) and the small "target" the
head's forward calls: ``rope_and_mask`` (the engine's own, over rotary tables
built from the head's ``head_dim`` and ``rope_theta``), ``embed`` and ``lm_head``.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch

from moe_spec.engine.attention import KVCache
from moe_spec.engine.config import DraftConfig, ModelConfig
from moe_spec.engine.draft import EagleDraft
from moe_spec.engine.model import MoETransformer, rope_tables
from moe_spec.engine.tree import DraftTree, expand_tree
from moe_spec.integration.transformers.hot_tokens import check_hot_tokens, hot_logits

ROPE_THETA = ModelConfig().rope_theta  # the engine's default, used when a head names none


class EagleHeadError(ValueError):
    """An EAGLE head that does not fit the target, or a malformed head checkpoint."""


def check_head_fits(head_config: DraftConfig, target_config) -> None:
    """The head reads and predicts the target's features: its dim must be the hidden size."""
    hidden = target_config.hidden_size
    if head_config.dim != hidden:
        raise EagleHeadError(
            f"EAGLE head dim {head_config.dim} != the target's hidden_size {hidden} "
            f"({target_config.model_type}); the head must be built for this target"
        )
    if getattr(target_config, "final_logit_softcapping", None):
        raise EagleHeadError(
            f"target model_type {target_config.model_type!r} soft-caps its logits; an EAGLE "
            "head needs logits = lm_head(final normed hidden state)"
        )


class FeatureRecorder:
    """The last ``last_hidden_state`` ``[1, S, D]`` the target's decoder body returned."""

    last_BSD: torch.Tensor | None = None

    def __call__(self, _module, _args, output) -> None:
        hidden = getattr(output, "last_hidden_state", None)
        self.last_BSD = output[0] if hidden is None else hidden  # a tuple with return_dict=False


@contextmanager
def capture_features(target) -> Iterator[FeatureRecorder]:
    """Record the target's final normed hidden states while the ``with`` block runs."""
    recorder = FeatureRecorder()
    handle = target.get_decoder().register_forward_hook(recorder)
    try:
        yield recorder
    finally:
        handle.remove()


class EagleHeadDraft:
    """An :class:`EagleDraft` behind the ``(draft, target)`` interface ``expand_tree`` calls.

    ``head`` is moved (in place) to the target's device and dtype. ``hot_tokens`` (int64
    ``[N]``, :mod:`~moe_spec.integration.transformers.hot_tokens`): draft only from these ids.
    """

    def __init__(
        self,
        head: EagleDraft,
        target,
        rope_theta: float = ROPE_THETA,
        hot_tokens: torch.Tensor | None = None,
    ) -> None:
        check_head_fits(head.config, target.config)
        if not rope_theta > 0:
            raise EagleHeadError(f"rope_theta must be > 0, got {rope_theta!r}")
        self.device = target.device
        self.head = head.to(device=self.device, dtype=target.dtype).eval().requires_grad_(False)
        self.embed = target.get_input_embeddings()
        self.out = target.get_output_embeddings()
        # GraniteMoE divides its logits by logits_scaling after the LM head
        self.logits_scaling = float(getattr(target.config, "logits_scaling", 1.0) or 1.0)
        self.rope_theta = float(rope_theta)
        self.rope_cos = self.rope_sin = None
        self.context_limit = 1 << 30  # rotary tables are built per run (new_cache)
        self.hot_tokens = None
        self.vocab_size = self.out.weight.shape[0]
        if hot_tokens is not None:
            check_hot_tokens(hot_tokens, self.vocab_size)
            if getattr(self.out, "bias", None) is not None:
                raise EagleHeadError("hot tokens need an LM head without bias")
            self.hot_tokens = hot_tokens.cpu()  # indexes the CPU logits
            self.hot_weight_ND = self.out.weight[hot_tokens.to(self.device)].contiguous()

    rope_and_mask = MoETransformer.rope_and_mask  # positions after the cache; causal by default

    def new_cache(self, max_len: int) -> KVCache:
        """An empty one-layer cache of ``max_len`` slots, and rotary tables that long."""
        cfg = self.head.config
        cos, sin = rope_tables(cfg.head_dim, max_len, self.rope_theta)
        self.rope_cos, self.rope_sin = cos.to(self.device), sin.to(self.device)
        dtype = self.head.fc.weight.dtype
        return KVCache(1, cfg.n_heads, cfg.head_dim, max_len, dtype, self.device)

    def lm_head(self, feature_QD: torch.Tensor) -> torch.Tensor:
        """fp32 logits (on the CPU) of features, through the target's LM head (its hot rows
        only, -inf elsewhere, when the draft has hot tokens)."""
        if self.hot_tokens is None:
            logits_QV = self.out(feature_QD.to(self.device)).float().cpu()
        else:
            feature_QD = feature_QD.to(self.device)
            logits_QV = hot_logits(feature_QD, self.hot_weight_ND, self.hot_tokens, self.vocab_size)
        return logits_QV / self.logits_scaling if self.logits_scaling != 1.0 else logits_QV

    def __call__(
        self,
        _target,
        feature_BQD: torch.Tensor,
        tokens_BQ: torch.Tensor,
        positions_Q: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask_QS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The head's predicted next features ``[1, Q, D]`` (on the head's device)."""
        dev = self.device
        return self.head(
            self,
            feature_BQD.to(dev),
            tokens_BQ.to(dev),
            None if positions_Q is None else positions_Q.to(dev),
            cache,
            None if mask_QS is None else mask_QS.to(dev),
        )

    def extend(self, cache: KVCache, tokens: list[int], feature_QD: torch.Tensor) -> torch.Tensor:
        """Catch up on pairs ``(feature_QD[i], tokens[i])``; the last predicted feature ``[D]``."""
        return self.predicted_features(cache, tokens, feature_QD)[-1]

    def read(
        self, cache: KVCache, tokens: list[int], feature_QD: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """:meth:`extend`, and the head's most likely next token after each of ``tokens``
        (long ``[Q]``, on the CPU)."""
        out_QD = self.predicted_features(cache, tokens, feature_QD)
        return out_QD[-1], self.lm_head(out_QD).argmax(-1)

    def predicted_features(
        self, cache: KVCache, tokens: list[int], feature_QD: torch.Tensor
    ) -> torch.Tensor:
        out_BQD = self(self, feature_QD[None], torch.tensor([tokens]), cache=cache)
        cache.advance(len(tokens))
        return out_BQD[0]

    def start(self, cache: KVCache, prompt: list[int], root: int, feature_PD: torch.Tensor):
        """After the prefill: the prompt's features paired with the tokens that follow them."""
        return self.extend(cache, prompt[1:] + [root], feature_PD)

    def first_level(self, root_feature_D: torch.Tensor) -> torch.Tensor:
        """Log-probabilities ``[V]`` of the root's children, from the head's feature for it."""
        return torch.log_softmax(self.lm_head(root_feature_D), dim=-1)

    def grow_tree(
        self,
        cache: KVCache,
        root: int,
        root_feature_D: torch.Tensor,
        width: int,
        depth: int,
        num_tokens: int,
        root_logprobs_V: torch.Tensor | None = None,
    ) -> DraftTree:
        """A tree below ``root`` from the head's feature for it; scratch entries are dropped.
        ``root_logprobs_V``: :meth:`first_level` if already computed."""
        if root_logprobs_V is None:
            root_logprobs_V = self.first_level(root_feature_D)
        tree = expand_tree(
            self, self, cache, root, root_feature_D, root_logprobs_V, width, depth, num_tokens
        )
        cache.offset = 0
        return tree
