"""The routing of one MoE layer in one verification forward.

Shape legend (torchtitan style; every tensor name ends with its shape):
    T  tree tokens in the verify pass (rows, padded rows included)
    E  routed experts in the layer
    K  experts each token routes to (top-k)
    B  expert budget: distinct experts the layer may read

A :class:`RoutingRecord` is what a budgeting policy sees. It holds the router
logits, the model's own top-k choice, which rows are real tokens, optional
per-token tree metadata, and the model's routing convention (scoring function
and renormalisation), so that the budgeting core can re-route tokens exactly
the way the model itself would have.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

Scoring = Literal["softmax", "sigmoid", "sparsemixer"]
SCORINGS: tuple[str, ...] = ("softmax", "sigmoid", "sparsemixer")


@dataclass(frozen=True)
class RoutingRecord:
    """Routing of one MoE layer for the tokens of one verify pass.

    Attributes:
        router_logits_TE: raw router outputs.
        topk_ids_TK: the model's expert choice per token (any integer dtype).
        topk_weights_TK: the model's combine weights per token.
        valid_T: bool, False for padded rows (they never count in scores).
        depth_T: optional tree depth per token (0 for the root).
        path_logprob_T: optional draft log-probability of the path root..token.
        layer_idx: index of this MoE layer, in ``[0, num_layers)``.
        num_layers: number of MoE layers in the model.
        scoring: ``"softmax"`` (Mixtral, Qwen-MoE, OLMoE), ``"sigmoid"``
            (DeepSeek-V3 style, optionally with ``correction_bias_E``) or
            ``"sparsemixer"`` (PhiMoE: experts by logit, each weighted by a softmax
            over the logits near it; see :func:`sparsemixer_topk`).
        sparsemixer_eps: the sparsemixer's jitter epsilon (PhiMoE's
            ``router_jitter_noise``); used only with ``scoring="sparsemixer"``.
        renormalize: whether the model rescales its top-k weights to sum to 1.
        correction_bias_E: sigmoid routers' selection bias (chooses experts,
            does not weight them).
        masked_rows: whether a row with a negative id is *masked* (SGLang marks the
            rows it does not route with -1): such a row never counts and is handed
            back as it came. :meth:`~moe_spec.policies.base.Policy.apply` takes such a
            record (the fused kernel skips those rows itself; policies' own methods see
            :func:`~moe_spec.budget.without_masked_rows`' record).
    """

    router_logits_TE: torch.Tensor
    topk_ids_TK: torch.Tensor
    topk_weights_TK: torch.Tensor
    valid_T: torch.Tensor | None = None
    depth_T: torch.Tensor | None = None
    path_logprob_T: torch.Tensor | None = None
    layer_idx: int = 0
    num_layers: int = 1
    scoring: Scoring = "softmax"
    renormalize: bool = True
    correction_bias_E: torch.Tensor | None = None
    sparsemixer_eps: float = 0.01
    masked_rows: bool = False

    def __post_init__(self) -> None:
        check_shapes(self)

    @property
    def num_tokens(self) -> int:
        return self.router_logits_TE.shape[0]

    @property
    def num_experts(self) -> int:
        return self.router_logits_TE.shape[1]

    @property
    def top_k(self) -> int:
        return self.topk_ids_TK.shape[1]

    def valid_mask_T(self) -> torch.Tensor:
        """bool ``[T]``: True for real tokens."""
        if self.valid_T is None:
            return torch.ones(
                self.num_tokens, dtype=torch.bool, device=self.router_logits_TE.device
            )
        return self.valid_T

    def routing_probs_TE(self) -> torch.Tensor:
        """fp32 ``[T, E]``: each token's routing distribution over all experts.

        Softmax (and sparsemixer) routers: ``softmax(logits)``. Sigmoid routers:
        ``sigmoid(logits)`` normalised over the experts, so every token carries mass 1.
        """
        logits_TE = self.router_logits_TE.float()
        if self.scoring != "sigmoid":
            return torch.softmax(logits_TE, dim=-1)
        gates_TE = torch.sigmoid(logits_TE)
        return gates_TE / gates_TE.sum(dim=-1, keepdim=True).clamp_min(1e-20)

    def gate_weights_TE(self) -> torch.Tensor:
        """fp32 ``[T, E]``: the weight a token would give each expert before renormalisation.

        A sparsemixer's weights depend on which experts are available; this is the
        plain softmax, which ranks experts as its logits do (see :func:`sparsemixer_topk`).
        """
        logits_TE = self.router_logits_TE.float()
        if self.scoring != "sigmoid":
            return torch.softmax(logits_TE, dim=-1)
        return torch.sigmoid(logits_TE)

    def choice_scores_TE(self) -> torch.Tensor:
        """fp32 ``[T, E]``: what the model ranks experts by when it takes its top-k."""
        gates_TE = self.gate_weights_TE()
        if self.correction_bias_E is not None:
            return gates_TE + self.correction_bias_E.float()
        return gates_TE

    def router_mass_E(self, weight_T: torch.Tensor | None = None) -> torch.Tensor:
        """fp32 ``[E]``: routing probability summed over valid tokens (times ``weight_T``).

        Padded rows are left out by selection, not by multiplying with 0, so
        whatever they hold (NaN included) never reaches the sum.
        """
        mass_TE = self.routing_probs_TE()
        if weight_T is not None:
            mass_TE = mass_TE * weight_T.float()[:, None]
        return torch.where(self.valid_mask_T()[:, None], mass_TE, 0.0).sum(dim=0)

    def topk_hits_TE(self) -> torch.Tensor:
        """bool ``[T, E]``: True where expert e is in token t's top-k (padded rows too)."""
        return one_hot_topk_TE(self.topk_ids_TK, self.num_experts)

    def used_E(self) -> torch.Tensor:
        """bool ``[E]``: experts in the top-k of at least one valid token."""
        return used_experts_E(self.topk_ids_TK, self.num_experts, self.valid_mask_T())


def softmax_topk(
    logits_TE: torch.Tensor, top_k: int, renormalize: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """A softmax router's own choice: fp32 ``(weights_TK, ids_TK)``.

    Weights are the top-k softmax probabilities, rescaled to sum to 1 when the
    model renormalises (Qwen3, Mixtral) and raw otherwise (OLMoE).
    """
    weights_TK, ids_TK = torch.topk(torch.softmax(logits_TE.float(), dim=-1), top_k, dim=-1)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(dim=-1, keepdim=True)
    return weights_TK, ids_TK


def sparsemixer_topk(
    logits_TE: torch.Tensor, top_k: int, eps: float, allowed_E: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """PhiMoE's sparsemixer in inference (``transformers``' ``sparsemixer``, eval mode).

    Step k picks ``e_k``, the best logit ``m_k`` among the experts not picked yet
    (and in ``allowed_E``, bool ``[E]``, when given); its weight is the softmax, at
    ``e_k``, over the experts still available whose logit is near the step's best:
    ``(m_k - s_j) / max(|s_j|, m_k) <= 2 * eps``. PhiMoE has ``top_k = 2``; the rule
    runs for any k. Returns fp32 ``(weights_TK, ids_TK)``; ties go to the lower id.
    """
    s_TE = logits_TE.float()
    available_TE = torch.ones_like(s_TE, dtype=torch.bool)
    if allowed_E is not None:
        available_TE = available_TE & allowed_E[None, :]
    weights, ids = [], []
    for _ in range(top_k):
        candidates_TE = s_TE.masked_fill(~available_TE, float("-inf"))
        m_T, e_T = candidates_TE.max(dim=-1, keepdim=True)  # first maximum: lower id
        far_TE = (m_T - s_TE) / s_TE.abs().clamp(min=m_T) > 2 * eps
        gates_TE = torch.softmax(candidates_TE.masked_fill(far_TE, float("-inf")), dim=-1)
        weights.append(gates_TE.gather(1, e_T))
        ids.append(e_T)
        available_TE = available_TE.scatter(1, e_T, False)
    return torch.cat(weights, dim=1), torch.cat(ids, dim=1)


def one_hot_topk_TE(topk_ids_TK: torch.Tensor, num_experts: int) -> torch.Tensor:
    """bool ``[T, E]``: True where expert e is among token t's top-k ids."""
    hits_TE = torch.zeros(
        topk_ids_TK.shape[0], num_experts, dtype=torch.bool, device=topk_ids_TK.device
    )
    return hits_TE.scatter(1, topk_ids_TK.long(), True)


def check_shapes(record: RoutingRecord) -> None:
    """Raise ``ValueError`` when the record's static shapes or settings disagree.

    Looks only at shapes, dtypes and Python settings: free, and safe inside
    CUDA-graph capture and ``torch.compile``.
    """
    logits = record.router_logits_TE
    if logits.dim() != 2:
        raise ValueError(f"router_logits_TE must be 2-D [T, E], got shape {tuple(logits.shape)}")
    T, E = logits.shape
    if E < 1:
        raise ValueError(f"router_logits_TE has {E} experts; need at least 1")
    if not logits.is_floating_point():
        raise ValueError(f"router_logits_TE must be floating point, got {logits.dtype}")
    ids, weights = record.topk_ids_TK, record.topk_weights_TK
    if ids.dim() != 2 or ids.shape[0] != T:
        raise ValueError(f"topk_ids_TK must be [T={T}, K], got shape {tuple(ids.shape)}")
    if ids.is_floating_point() or ids.dtype == torch.bool:
        raise ValueError(f"topk_ids_TK must be an integer tensor, got {ids.dtype}")
    K = ids.shape[1]
    if not 1 <= K <= E:
        raise ValueError(f"top-k is {K}; it must be in [1, E={E}]")
    if not weights.is_floating_point():
        raise ValueError(f"topk_weights_TK must be floating point, got {weights.dtype}")
    if tuple(weights.shape) != (T, K):
        raise ValueError(
            f"topk_weights_TK must have the shape of topk_ids_TK {(T, K)}, "
            f"got {tuple(weights.shape)}"
        )
    optional_T = {
        "valid_T": record.valid_T,
        "depth_T": record.depth_T,
        "path_logprob_T": record.path_logprob_T,
    }
    for name, tensor in optional_T.items():
        if tensor is not None and tuple(tensor.shape) != (T,):
            raise ValueError(f"{name} must have shape [T={T}], got {tuple(tensor.shape)}")
    if record.valid_T is not None and record.valid_T.dtype != torch.bool:
        raise ValueError(f"valid_T must be a bool tensor, got {record.valid_T.dtype}")
    bias = record.correction_bias_E
    if bias is not None and tuple(bias.shape) != (E,):
        raise ValueError(f"correction_bias_E must have shape [E={E}], got {tuple(bias.shape)}")
    if record.scoring not in SCORINGS:
        raise ValueError(f"scoring is {record.scoring!r}; allowed: {', '.join(SCORINGS)}")
    if record.scoring == "sparsemixer" and not record.sparsemixer_eps >= 0:
        raise ValueError(f"sparsemixer_eps is {record.sparsemixer_eps!r}; allowed: >= 0")
    if bias is not None and record.scoring != "sigmoid":
        raise ValueError("correction_bias_E is only used by sigmoid routers (scoring='sigmoid')")
    if record.num_layers < 1 or not 0 <= record.layer_idx < record.num_layers:
        raise ValueError(
            f"layer_idx is {record.layer_idx}; it must be in [0, num_layers={record.num_layers})"
        )


def check_values(record: RoutingRecord) -> None:
    """Raise ``ValueError`` for NaN/inf logits or out-of-range ids in valid rows.

    Reads tensor values (a host synchronisation): the budgeting core skips it
    under ``torch.compile`` and CUDA-graph capture.
    """
    valid_T = record.valid_mask_T()
    logits_TE = record.router_logits_TE
    finite_T = torch.isfinite(logits_TE).all(dim=-1)
    bad_T = valid_T & ~finite_T
    if bool(bad_T.any()):
        row = int(bad_T.nonzero()[0, 0])
        expert = int((~torch.isfinite(logits_TE[row])).nonzero()[0, 0])
        raise ValueError(
            f"router_logits_TE has NaN or inf values in valid row {row}, the first "
            f"{logits_TE[row, expert].item()} at expert {expert}; scores must be finite"
        )
    ids_TK = record.topk_ids_TK
    out_of_range = valid_T[:, None] & ((ids_TK < 0) | (ids_TK >= record.num_experts))
    if bool(out_of_range.any()):
        row = int(out_of_range.nonzero()[0, 0])
        masked = (
            " (rows marked with negative ids, as SGLang marks rows it does not route: build "
            "the record with masked_rows=True, or give valid_T)"
            if bool((ids_TK[row] < 0).any()) and not record.masked_rows
            else ""
        )
        raise ValueError(
            f"topk_ids_TK row {row} is {ids_TK[row].tolist()}; "
            f"ids must be in [0, E={record.num_experts}){masked}"
        )


def used_experts_E(
    topk_ids_TK: torch.Tensor, num_experts: int, valid_T: torch.Tensor | None = None
) -> torch.Tensor:
    """bool ``[E]``: experts in the top-k of at least one (valid) row.

    Its sum is the number of distinct experts whose weights a grouped MoE
    kernel reads for these rows.
    """
    hits_TE = one_hot_topk_TE(topk_ids_TK, num_experts)
    if valid_T is not None:
        hits_TE = hits_TE & valid_T[:, None]
    return hits_TE.any(dim=0)
