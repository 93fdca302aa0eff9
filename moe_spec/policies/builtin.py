"""The built-in budgeting policies, registered through the plugin hook like any other.

Shape legend: T tokens, E experts, K top-k, B budget (see ``moe_spec.routing``).
Notation below: ``p[t, e]`` is token t's routing probability for expert e
(softmax over all E experts), ``v[t]`` is 1 for valid rows and 0 for padding,
``topk(t)`` is the set of experts token t picked.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from moe_spec.budget import select_kept
from moe_spec.kernels.budget_select_torch import ScoreRule, score_experts_torch
from moe_spec.policies.base import Policy, PolicyError
from moe_spec.policies.draft_path import ORDERS, priority_key_E, token_rank_T
from moe_spec.policies.hookspecs import hookimpl
from moe_spec.routing import RoutingRecord


class NoBudget(Policy):
    """``none``: keep every expert (unbudgeted speculative decoding, the baseline)."""

    name = "none"
    description = "keep every expert: unbudgeted verification (baseline)"

    def keep(self, record: RoutingRecord, budget: int) -> None:
        return None


class RuleScored(Policy):
    """A policy whose score is a :class:`ScoreRule`.

    One definition serves both paths: :meth:`score` evaluates the rule in torch,
    and the fused Triton kernel computes the same rule when it runs. A subclass
    that overrides ``score`` or ``keep`` leaves the fused path (it no longer
    matches the rule).
    """

    def rule(self, record: RoutingRecord) -> ScoreRule:
        """How this policy scores experts."""
        raise NotImplementedError

    def score(self, record: RoutingRecord) -> torch.Tensor:
        return score_experts_torch(record, self.rule(record))

    def fused_rule(self, record: RoutingRecord) -> ScoreRule | None:
        cls = type(self)
        if cls.score is RuleScored.score and cls.keep is Policy.keep:
            return self.rule(record)
        return None


class TopKFrequency(RuleScored):
    """``topk-frequency``: ``score[e] = sum_t v[t] * [e in topk(t)]``.

    The number of valid tree tokens whose top-k contains the expert.
    """

    name = "topk-frequency"
    description = "experts picked by the most tree tokens"

    def rule(self, record: RoutingRecord) -> ScoreRule:
        return ScoreRule("frequency")


class RouterMass(RuleScored):
    """``router-mass``: ``score[e] = sum_t v[t] * p[t, e]`` (the MoE-Spec paper's ranking).

    Router probability summed over valid tree tokens, over all E experts (not
    only each token's top-k).
    """

    name = "router-mass"
    description = "routing probability summed over tree tokens (MoE-Spec paper)"

    def rule(self, record: RoutingRecord) -> ScoreRule:
        return ScoreRule("mass")


class LayerAdaptive(Policy):
    """``layer-adaptive``: a budget per layer, ``B_l = clamp(n_l, K, B)``.

    With ``coverage`` c (default 0.9): ``n_l`` is the smallest number of experts
    whose router mass (``router-mass`` scores, sorted) covers a share c of the
    layer's total mass. With ``budgets`` (a table of one int per MoE layer, e.g.
    from a calibration run): ``n_l = budgets[l]``, each ``K <= n_l <= E`` (others
    are refused, not clamped). ``B`` is the call's budget, the cap. The kept set
    is a mask of varying size and fixed shape.
    """

    name = "layer-adaptive"
    description = "per-layer budget: fewest experts covering a share of routing mass"

    def __init__(self, coverage: float = 0.9, budgets: Sequence[int] | None = None) -> None:
        if isinstance(coverage, bool) or not isinstance(coverage, int | float):
            raise PolicyError(
                f"layer-adaptive: coverage is {coverage!r}; allowed: a number, 0 < coverage <= 1"
            )
        if not 0.0 < coverage <= 1.0:
            raise PolicyError(f"layer-adaptive: coverage is {coverage}; allowed: 0 < coverage <= 1")
        if budgets is not None:
            ok = isinstance(budgets, Sequence) and not isinstance(budgets, str)
            if not ok or not budgets:
                raise PolicyError(
                    f"layer-adaptive: budgets must be a non-empty list of positive ints "
                    f"(one per MoE layer), got {budgets!r}"
                )
            for layer, b in enumerate(budgets):
                if type(b) is not int or b < 1:
                    raise PolicyError(
                        f"layer-adaptive: budgets[{layer}] (MoE layer {layer}) is {b!r}; "
                        "allowed: an int from the model's top-k to its number of experts E"
                    )
            budgets = tuple(budgets)
        self.coverage = float(coverage)
        self.budgets = budgets
        # the table's range, for check_model's test on every keep() (not a pass per layer)
        self.budget_range = (min(budgets), max(budgets)) if budgets else (0, 0)

    def check_model(self, num_layers: int, num_experts: int, top_k: int) -> None:
        if self.budgets is None:
            return
        if len(self.budgets) != num_layers:
            raise self.error(
                f"budgets has {len(self.budgets)} entries; the model has {num_layers} MoE "
                "layers: give one budget per MoE layer"
            )
        lowest, highest = self.budget_range
        if top_k <= lowest and highest <= num_experts:
            return  # keep() checks on every call: this is its whole cost when all fit
        layer, b = next((i, b) for i, b in enumerate(self.budgets) if not top_k <= b <= num_experts)
        why = (
            f"below top-k={top_k}: a token could not keep its k experts"
            if b < top_k
            else f"above the model's E={num_experts} experts"
        )
        raise self.error(
            f"budgets[{layer}] (MoE layer {layer}) is {b}, {why}; allowed: "
            f"{top_k} <= budgets[{layer}] <= {num_experts} (an entry of E leaves that layer "
            "at the call's budget)"
        )

    def score(self, record: RoutingRecord) -> torch.Tensor:
        return record.router_mass_E()

    def keep(self, record: RoutingRecord, budget: int) -> torch.Tensor:
        mass_E = self.checked_scores(record)
        K = record.top_k
        if self.budgets is not None:
            self.check_model(record.num_layers, record.num_experts, K)  # K <= each <= E
            layer_budget = min(self.budgets[record.layer_idx], budget)
            return select_kept(mass_E, layer_budget, record.used_E())
        sorted_E = torch.sort(mass_E, descending=True, stable=True).values
        cum_E = torch.cumsum(sorted_E, dim=0)
        short_E = cum_E < self.coverage * cum_E[-1]  # prefixes that still miss the target
        layer_budget = (short_E.sum() + 1).clamp(min=K, max=budget)
        return select_kept(mass_E, layer_budget, record.used_E())


class TokenPriority(RuleScored):
    """``token-priority``: ``score[e] = sum_t v[t] * a[t] * p[t, e]`` + root bonus.

    ``a[t]``, how likely token t is to be accepted: ``exp(path_logprob[t])``
    when the draft's path log-probabilities are given, else ``decay ** depth[t]``.
    Experts in the root token's top-k get a bonus above every other score, so
    the root (always accepted) is never re-routed. The root is the row with
    depth 0 (row 0 when no depth is given).
    """

    name = "token-priority"
    description = "tokens weighted by acceptance likelihood; root's experts always kept"

    def __init__(self, decay: float = 0.5) -> None:
        if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 < decay <= 1:
            raise PolicyError(f"token-priority: decay is {decay!r}; allowed: 0 < decay <= 1")
        self.decay = float(decay)

    def rule(self, record: RoutingRecord) -> ScoreRule:
        return ScoreRule("mass", self.accept_T(record), self.root_T(record))

    def accept_T(self, record: RoutingRecord) -> torch.Tensor:
        """fp32 ``[T]``: ``a[t]``, from path log-probabilities, else from depth."""
        if record.path_logprob_T is not None:
            return torch.exp(record.path_logprob_T.float().clamp(max=0.0))
        if record.depth_T is not None:
            return torch.pow(self.decay, record.depth_T.float())
        raise self.error("needs depth_T or path_logprob_T in the routing record")

    def root_T(self, record: RoutingRecord) -> torch.Tensor:
        """bool ``[T]``: the valid root rows (depth 0; row 0 when no depth is given)."""
        return self.root_rows_T(record) & record.valid_mask_T()

    def root_rows_T(self, record: RoutingRecord) -> torch.Tensor:
        """bool ``[T]``: the root rows, valid or not (depth 0; row 0 when no depth is given)."""
        if record.depth_T is not None:
            return record.depth_T == 0
        return torch.arange(record.num_tokens, device=record.router_logits_TE.device) == 0


class DraftPath(TokenPriority):
    """``draft-path``: experts of the likeliest tokens first, in strict order; then mass.

    Tokens are ranked root first; with ``order="path"`` (default) then the
    likeliest token of each depth, shallow first (the draft's guess of the
    accepted path); then the rest by path log-probability (``decay ** depth``
    stands in without it), which lists every token after its ancestors
    (``order="logprob"`` uses this ranking alone). The first ``tokens`` of them
    (default: all valid tokens) hand in their top-k experts in turn, each
    token's in its own preference order; every such expert ranks above every
    other. Remaining places go by ``token-priority``'s score
    ``sum_t v[t] * a[t] * p[t, e]``. A token whose experts all fit is computed
    exactly as without a budget; see ``moe_spec.policies.draft_path``.
    """

    name = "draft-path"
    description = "experts of the likeliest draft path first, in strict order; then by mass"

    def __init__(self, decay: float = 0.5, tokens: int | None = None, order: str = "path") -> None:
        super().__init__(decay=decay)
        if tokens is not None and (type(tokens) is not int or tokens < 1):
            raise PolicyError(f"draft-path: tokens is {tokens!r}; allowed: an int >= 1 (or unset)")
        if order not in ORDERS:
            raise PolicyError(f"draft-path: order is {order!r}; allowed: {', '.join(ORDERS)}")
        self.tokens = tokens
        self.order = order

    def score(self, record: RoutingRecord) -> torch.Tensor:
        accept_T = self.accept_T(record)
        rank_T = token_rank_T(record, self.root_T(record), accept_T, self.order == "path")
        key_E = priority_key_E(record, rank_T, self.tokens)
        mass_E = record.router_mass_E(accept_T)
        fill_E = mass_E / mass_E.sum().clamp_min(1e-30)  # in [0, 1]
        none = record.num_tokens * record.top_k
        return torch.where(key_E < none, (none - key_E + 1).float(), fill_E)


BUILTIN_POLICIES: tuple[type[Policy], ...] = (
    NoBudget,
    TopKFrequency,
    RouterMass,
    LayerAdaptive,
    TokenPriority,
    DraftPath,
)


@hookimpl
def register_policies(register):
    for policy_class in BUILTIN_POLICIES:
        register(policy_class)
