"""An EAGLE-style draft head.

Shape legend: B batch, Q query tokens, D model dim, V vocabulary.

At position i the draft reads the target's feature ``f_i`` (final normed hidden
state) and the embedding of the next token ``x_{i+1}``, and predicts the
target's feature ``f_{i+1}``; the target's own LM head turns it into logits for
``x_{i+2}``. One decoder layer (attention with its own KV cache, then a dense
SwiGLU MLP) does the work; embeddings and LM head are the target's, frozen.
Drafting deeper than one step feeds the draft's own predicted features back in.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from moe_spec.engine.attention import KVCache
from moe_spec.engine.config import DraftConfig
from moe_spec.engine.model import Attention, MoETransformer, RMSNorm


class SwiGLU(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.w13 = nn.Linear(dim, 2 * hidden, bias=False)
        self.w2 = nn.Linear(hidden, dim, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate, up = self.w13(x).chunk(2, dim=-1)
        return self.w2(F.silu(gate) * up)


class EagleDraft(nn.Module):
    """One decoder layer over ``fc([feature, embedding])``, in one of two layouts.

    ``config.layout == "moe-spec"``: ``fc`` (no bias) over ``[feature, embedding]``, a
    norm before attention, a norm before the MLP and a final norm on the output.
    ``"sglang"``: SGLang's ``LlamaForCausalLMEagle`` (EAGLE v1), ``fc`` with bias over
    ``[embedding, feature]``, attention straight on ``fc``'s output (its layer-0
    ``input_layernorm`` is skipped), a norm before the MLP, and no final norm: the
    output is the residual stream, read by the LM head and fed back when drafting deeper.
    """

    def __init__(self, config: DraftConfig) -> None:
        super().__init__()
        self.config = config
        sglang = config.layout == "sglang"
        self.embed_first = sglang
        self.fc = nn.Linear(2 * config.dim, config.dim, bias=sglang)
        self.attn_norm = nn.Identity() if sglang else RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config.dim, config.n_heads)
        self.mlp_norm = RMSNorm(config.dim, config.norm_eps)
        self.mlp = SwiGLU(config.dim, config.mlp_dim)
        self.out_norm = nn.Identity() if sglang else RMSNorm(config.dim, config.norm_eps)

    def forward(
        self,
        target: MoETransformer,
        feature_BQD: torch.Tensor,
        next_tokens_BQ: torch.Tensor,
        positions_Q: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask_QS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Predicted next features ``[B, Q, D]``; logits are ``target.lm_head(...)`` of them."""
        rope, mask_QS = target.rope_and_mask(next_tokens_BQ, positions_Q, cache, mask_QS)
        embed_BQD = target.embed(next_tokens_BQ)
        pair = (embed_BQD, feature_BQD) if self.embed_first else (feature_BQD, embed_BQD)
        x = self.fc(torch.cat(pair, dim=-1))
        x = x + self.attn(self.attn_norm(x), rope, cache, 0, mask_QS)
        x = x + self.mlp(self.mlp_norm(x))
        return self.out_norm(x)
