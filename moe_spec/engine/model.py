"""The target: a decoder-only MoE transformer (RMSNorm, rotary positions, KV cache).

Shape legend: B batch, S sequence, Q query tokens, T tokens (flattened), D model
dim, H heads, C head dim, V vocabulary, E experts, K top-k, F expert dim, L layers.

Every layer's feed-forward is a top-k softmax-routed mixture of SwiGLU experts
stored in SGLang's FusedMoE layout (``w13 [E, 2F, D]``, ``w2 [E, D, F]``) and
run by ``moe_spec.kernels.fused_moe``, which reads only experts that have
tokens. In a verification forward (``verify`` given) each MoE layer hands its
routing to the budgeting policy before the experts run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from moe_spec.budget import Mode
from moe_spec.control.steps import TREE, StepOutcome
from moe_spec.engine.attention import KVCache, attend
from moe_spec.engine.config import ModelConfig
from moe_spec.kernels import fused_moe
from moe_spec.policies import Policy
from moe_spec.routing import RoutingRecord, softmax_topk, used_experts_E


class RMSNorm(nn.Module):
    def __init__(self, dim: int, eps: float) -> None:
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x32 = x.float()
        normed = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return (normed * self.weight.float()).to(x.dtype)


def rope_tables(head_dim: int, max_len: int, theta: float) -> tuple[torch.Tensor, torch.Tensor]:
    """``cos, sin`` of shape ``[max_len, C/2]``."""
    freqs = 1.0 / theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim)
    angles = torch.outer(torch.arange(max_len, dtype=torch.float64), freqs)
    return angles.cos().float(), angles.sin().float()


def apply_rope(x_BHQC: torch.Tensor, cos_QC: torch.Tensor, sin_QC: torch.Tensor) -> torch.Tensor:
    """Rotate channel pairs ``(2i, 2i+1)`` by the position's angles."""
    x1, x2 = x_BHQC[..., 0::2].float(), x_BHQC[..., 1::2].float()
    out = torch.stack((x1 * cos_QC - x2 * sin_QC, x1 * sin_QC + x2 * cos_QC), dim=-1)
    return out.flatten(-2).to(x_BHQC.dtype)


class Attention(nn.Module):
    """Multi-head self-attention; causal in training, cached with any mask at inference."""

    def __init__(self, dim: int, n_heads: int) -> None:
        super().__init__()
        self.n_heads, self.head_dim = n_heads, dim // n_heads
        self.wqkv = nn.Linear(dim, 3 * dim, bias=False)
        self.wo = nn.Linear(dim, dim, bias=False)

    def forward(
        self,
        x_BQD: torch.Tensor,
        rope: tuple[torch.Tensor, torch.Tensor],
        cache: KVCache | None = None,
        layer: int = 0,
        mask_QS: torch.Tensor | None = None,
    ) -> torch.Tensor:
        B, Q, D = x_BQD.shape
        qkv = self.wqkv(x_BQD).view(B, Q, 3, self.n_heads, self.head_dim)
        q_BHQC, k_BHQC, v_BHQC = qkv.permute(2, 0, 3, 1, 4).unbind(0)
        q_BHQC, k_BHQC = apply_rope(q_BHQC, *rope), apply_rope(k_BHQC, *rope)
        if cache is None:
            out_BHQC = attend(q_BHQC, k_BHQC, v_BHQC, mask_QS)
        else:
            k_HSC, v_HSC = cache.write(layer, k_BHQC[0], v_BHQC[0])
            out_BHQC = attend(q_BHQC[0], k_HSC, v_HSC, mask_QS)[None]
        return self.wo(out_BHQC.transpose(1, 2).reshape(B, Q, D))


@dataclass
class VerifyBudget:
    """What a verification forward needs to budget its MoE layers, and what it measured.

    ``depth_T`` and ``path_logprob_T`` describe the tree tokens (passed to the policy).
    After the forward, ``ids_before_LTK`` / ``ids_after_LTK`` hold each layer's routing and,
    with ``track_exact`` (repair needs it), ``exact_LT`` which tokens' routing the budget left
    bit-identical (ids and weights).
    """

    policy: Policy
    budget: int
    mode: Mode = "substitution"
    depth_T: torch.Tensor | None = None
    path_logprob_T: torch.Tensor | None = None
    track_exact: bool = False
    ids_before_LTK: list[torch.Tensor] = field(default_factory=list)
    ids_after_LTK: list[torch.Tensor] = field(default_factory=list)
    exact_LT: list[torch.Tensor] = field(default_factory=list)
    exact_path: int | None = None  # with track_exact: the accepted path's exact prefix length
    policy_layers: int = 0  # MoE layers of this forward that called the policy
    routing_L: list[RoutingRecord] = field(default_factory=list)  # kept to rank after it

    @property
    def ranked_after(self) -> bool:
        """Whether the policy ranks this forward's layers after it (they skipped it)."""
        return bool(self.routing_L) and not self.ranked

    @property
    def ranked(self) -> bool:
        """Whether the policy ran in any layer (ranked experts, budgeted or not)."""
        return self.policy_layers > 0

    def skips(self, num_experts: int) -> bool:
        """Whether a layer of ``num_experts`` runs unbudgeted without calling the policy:
        B >= E and the policy does not budget by itself, or rests this step."""
        rest = self.budget >= num_experts and (not self.policy.adaptive or self.policy.resting)
        self.policy_layers += not rest
        return rest

    def note_unbudgeted(
        self, ids_TK: torch.Tensor, record: Callable[[], RoutingRecord] | None = None
    ) -> None:
        """A layer the budget cannot touch (B >= E): its routing, unchanged and exact; and
        its ``record()`` where the policy ranks the step after the forward."""
        if record is not None and self.policy.ranking_after:
            self.routing_L.append(record())
        self.ids_before_LTK.append(ids_TK)
        self.ids_after_LTK.append(ids_TK)
        if self.track_exact:
            self.exact_LT.append(
                torch.ones(ids_TK.shape[0], dtype=torch.bool, device=ids_TK.device)
            )

    def outcome(
        self,
        path: list[int],
        depth_N: torch.Tensor,
        logprob_N: torch.Tensor,
        tree: tuple[int, int, int],
    ) -> StepOutcome:
        """The finished tree step, for the policy's ``observe``. A step the policy did not
        rank carries the forward's unbudgeted top-k per layer (``ids_LTK``, the list itself:
        no work here; an adaptive policy that rested learns its tokens and experts from it;
        any other step's policy recorded what it ranked), and the layers' routing records
        where the policy ranks the step after the forward (``routing_L``)."""
        ids_LTK = None if self.ranked else self.ids_before_LTK
        routing_L = self.routing_L if self.ranked_after else None
        self.routing_L = []  # handed over: the records go once the policy has ranked them
        return StepOutcome(
            TREE,
            path,
            depth_N,
            logprob_N,
            tree,
            self.exact_path,
            ids_LTK=ids_LTK,
            routing_L=routing_L,
        )

    def exact_T(self) -> torch.Tensor:
        """bool ``[T]``: tokens whose routing no layer's budget changed (on layer 0's device)."""
        device = self.exact_LT[0].device  # a model split over devices keeps flags per layer
        return torch.stack([exact_T.to(device) for exact_T in self.exact_LT]).all(dim=0)


class MoE(nn.Module):
    """Top-k softmax router over E SwiGLU experts."""

    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        E, F_, D = config.n_experts, config.expert_dim, config.dim
        self.config, self.layer_idx = config, layer_idx
        self.router = nn.Linear(D, E, bias=False)
        self.w13_EFD = nn.Parameter(torch.randn(E, 2 * F_, D) * D**-0.5)
        self.w2_EDF = nn.Parameter(torch.randn(E, D, F_) * F_**-0.5)

    def route(self, x_TD: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``router_logits_TE``, ``topk_ids_TK``, ``topk_weights_TK`` (fp32)."""
        logits_TE = self.router(x_TD).float()
        weights_TK, ids_TK = softmax_topk(logits_TE, self.config.top_k, self.config.renormalize)
        return logits_TE, ids_TK, weights_TK

    def forward(self, x_TD: torch.Tensor, verify: VerifyBudget | None = None):
        """``out_TD`` and the Switch-style load-balancing loss ``E * sum_e f_e * P_e``."""
        logits_TE, ids_TK, weights_TK = self.route(x_TD)

        def make_record() -> RoutingRecord:
            return RoutingRecord(
                logits_TE,
                ids_TK,
                weights_TK,
                depth_T=verify.depth_T,
                path_logprob_T=verify.path_logprob_T,
                layer_idx=self.layer_idx,
                num_layers=self.config.n_layers,
                renormalize=self.config.renormalize,
            )

        if verify is not None and verify.skips(self.config.n_experts):  # nothing to budget
            verify.note_unbudgeted(ids_TK, make_record)
        elif verify is not None:
            record = make_record()
            verify.ids_before_LTK.append(ids_TK)
            new_ids_TK, new_weights_TK, _ = verify.policy.apply(
                record, verify.budget, mode=verify.mode
            )
            verify.ids_after_LTK.append(new_ids_TK)
            if verify.track_exact:
                verify.exact_LT.append(
                    (new_ids_TK == ids_TK).all(dim=-1) & (new_weights_TK == weights_TK).all(dim=-1)
                )
            ids_TK, weights_TK = new_ids_TK, new_weights_TK
        out_TD = fused_moe(
            x_TD,
            self.w13_EFD.to(x_TD.dtype),
            self.w2_EDF.to(x_TD.dtype),
            ids_TK,
            weights_TK.to(x_TD.dtype),
        )
        aux = torch.zeros((), device=x_TD.device)
        if self.training:
            E = self.config.n_experts
            f_E = torch.bincount(ids_TK.flatten(), minlength=E).float() / ids_TK.numel()
            aux = E * (f_E * torch.softmax(logits_TE, dim=-1).mean(0)).sum()
        return out_TD, aux


class Block(nn.Module):
    def __init__(self, config: ModelConfig, layer_idx: int) -> None:
        super().__init__()
        self.layer_idx = layer_idx
        self.attn_norm = RMSNorm(config.dim, config.norm_eps)
        self.attn = Attention(config.dim, config.n_heads)
        self.moe_norm = RMSNorm(config.dim, config.norm_eps)
        self.moe = MoE(config, layer_idx)

    def forward(self, x_BQD, rope, cache=None, mask_QS=None, verify=None):
        x_BQD = x_BQD + self.attn(self.attn_norm(x_BQD), rope, cache, self.layer_idx, mask_QS)
        B, Q, D = x_BQD.shape
        moe_TD, aux = self.moe(self.moe_norm(x_BQD).reshape(B * Q, D), verify)
        return x_BQD + moe_TD.view(B, Q, D), aux


@dataclass
class ModelOutput:
    """A forward's features; logits are computed on first use (prefill needs only the last)."""

    feature_BQD: torch.Tensor  # final normed hidden state, what the LM head reads (EAGLE's feature)
    aux_loss: torch.Tensor
    head: Callable[[torch.Tensor], torch.Tensor]
    _logits_BQV: torch.Tensor | None = None

    @property
    def logits_BQV(self) -> torch.Tensor:
        if self._logits_BQV is None:
            self._logits_BQV = self.head(self.feature_BQD)
        return self._logits_BQV


class MoETransformer(nn.Module):
    """The target model. Embedding and LM head are tied."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.dim)
        nn.init.normal_(self.embed.weight, std=0.02)
        self.layers = nn.ModuleList(Block(config, i) for i in range(config.n_layers))
        self.norm = RMSNorm(config.dim, config.norm_eps)
        cos, sin = rope_tables(config.head_dim, config.max_seq_len, config.rope_theta)
        self.register_buffer("rope_cos", cos, persistent=False)
        self.register_buffer("rope_sin", sin, persistent=False)

    def lm_head(self, feature_BQD: torch.Tensor) -> torch.Tensor:
        """fp32 logits from a feature (the final normed hidden state; the draft reuses this)."""
        return F.linear(feature_BQD, self.embed.weight).float()

    def forward(
        self,
        tokens_BQ: torch.Tensor,
        positions_Q: torch.Tensor | None = None,
        cache: KVCache | None = None,
        mask_QS: torch.Tensor | None = None,
        verify: VerifyBudget | None = None,
    ) -> ModelOutput:
        """Causal over ``tokens_BQ`` without a cache; with one, attends to the cached prefix.

        With a cache, ``mask_QS`` covers ``[cache.length + Q]`` keys (default: causal) and the
        new keys are written after ``cache.length``; the caller advances or commits the cache.
        """
        rope, mask_QS = self.rope_and_mask(tokens_BQ, positions_Q, cache, mask_QS)
        x_BQD = self.embed(tokens_BQ)
        aux = torch.zeros((), device=tokens_BQ.device)
        for block in self.layers:
            x_BQD, layer_aux = block(x_BQD, rope, cache, mask_QS, verify)
            aux = aux + layer_aux
        feature_BQD = self.norm(x_BQD)
        return ModelOutput(feature_BQD, aux / len(self.layers), self.lm_head)

    def rope_and_mask(self, tokens_BQ, positions_Q, cache, mask_QS):
        """Rotary tables for the positions (default: after the cache) and the attention mask."""
        Q = tokens_BQ.shape[1]
        if positions_Q is None:
            start = 0 if cache is None else cache.length
            positions_Q = torch.arange(start, start + Q, device=tokens_BQ.device)
        if cache is not None and mask_QS is None:
            mask_QS = causal_mask(cache.length, Q, tokens_BQ.device)
        return (self.rope_cos[positions_Q], self.rope_sin[positions_Q]), mask_QS


def causal_mask(prefix: int, q: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """bool ``[Q, prefix + Q]``: every new token sees the prefix and the new tokens up to itself."""
    new_QQ = torch.ones(q, q, dtype=torch.bool, device=device).tril()
    return torch.cat((torch.ones(q, prefix, dtype=torch.bool, device=device), new_QQ), dim=1)


def distinct_per_layer(ids_LTK: list[torch.Tensor], n_experts: int, rows_T=None) -> list[int]:
    """Distinct experts each layer's routing uses (optionally only the rows ``rows_T``)."""
    out = []
    for ids_TK in ids_LTK:
        ids = ids_TK if rows_T is None else ids_TK[rows_T]
        out.append(int(used_experts_E(ids, n_experts).sum()))
    return out
