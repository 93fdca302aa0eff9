"""``auto``: the budget of every layer chosen per step; a guard against slow speculation.

Shape legend: T tokens, E experts, K top-k, L MoE layers (see ``moe_spec.routing``).

Expert value is ``token-priority``'s acceptance-weighted router mass,
``score[e] = sum_t v[t] * a[t] * p[t, e]`` (the root's experts first), with ``a[t]``
the *calibrated* probability that token t is accepted: the draft's path probability
mapped through the bins of :class:`moe_spec.control.AcceptanceEstimates` (without path
log-probabilities, the estimated probability of reaching the token's depth). Layer l
keeps the experts ranked below ``B_l``, a device tensor the controller rewrites in
place between steps, so the kept mask has a data-dependent size and a static shape,
and nothing in :meth:`Auto.keep` reads the device.

Between steps (:meth:`Auto.plan_step`, :meth:`Auto.observe`, called by the engines
outside the forward; the device tensors are rewritten only when their values change:
the budgets when the plan changes them, the calibration tables after each replan) a
:class:`moe_spec.control.Guard` picks the per-layer budgets
that maximise predicted committed tokens per second under the cost model
(``shape`` on ``gpu``, ``cost_model``) and, with ``guard``, a smaller tree or plain
autoregressive decoding when those are predicted faster; with ``gate`` (and ``guard``;
by default on a chain, not on a tree: :meth:`Auto.gate_for`), before each planned tree, a
decode of the root alone when the draft's first level is too unsure to pay for the tree
(:meth:`Auto.gate`; engines that draft on the host: the reference and transformers
engines); with ``shadow`` (and ``guard``, on a chain), while it
decodes the draft reads the decoded tokens every few decodes and its guesses at them say what
the chain would have committed there (:meth:`Auto.draft_matched`; the same engines, and
SGLang's plugin on an adaptive chain whose decodes run the draft extend). ``measure`` corrects the
modeled times by the measured wall time (for a run whose own speed is what counts,
such as the reference engine on a CPU). A tree step whose budgets are all at least E
*rests* (:attr:`Policy.resting`: the engines then run it unbudgeted without calling the
policy; a server's forwards call it every step, and its selection kernel reads a device
rest flag, :meth:`Auto.flag_rest`, and then keeps every expert without ranking) except
every ``rank_every``-th one, which ranks and is learned from: the ranking is the
selection's cost, and a step that keeps every expert needs it only to learn; while the guard
learns (the window's first 8 steps, a new request's first 4) a step at the cap
ranks where a budget comes within ``rank_near`` of paying and otherwise rests and enters the
window unranked, with its committed tokens and experts (the engines pass its top-k in
``StepOutcome.ids_LTK``); budgets are searched over the ranked steps. With ``rank_after``
(on by default) a step at the cap that ranks only to be learned from rests too and is
ranked after the forward, every layer at once, with the same ranks: in the engines
:meth:`Auto.observe` ranks the routing records the engine kept (``StepOutcome.routing_L``,
:meth:`Auto.rank_routing`; priced at ``2 / L`` of a selection); on a server the resting
selections still write each layer's expert scores (the rest flag's :data:`REST_SCORED`)
and :meth:`Auto.rank_scored` ranks them after the forward (priced at
:data:`SERVER_AFTER_SHARE`). Once
the window is full, one budgeted tree step in ``learn_every`` enters it (:meth:`Auto.learns`)
and replans that change nothing come less often (up to ``max_replan`` tree steps apart):
the two costliest parts of the controller's host time, halved or better where nothing
moves. A replan comes at once when the budget touches the accepted path ``surprise``
steps more often than predicted, or when the tree's committed tokens drift ``drift``
standard errors from the window's mean (then from the steps since alone: new text). With
``lately`` (off by default) the trees' committed tokens are scaled to the current tree's
latest ``lately`` steps, every step counted, blended with ``lately_prior`` pseudo-steps at
the window's mean, and a replan comes at once when its steps since the last replan, resting
ones included, put it behind decoding (``moe_spec.control.lately``: the window takes one
resting step in up to 32).
The state lives in the policy instance: the engines create one per generation unless
given a live one; a server keeps one. At a new request (:meth:`Auto.start_request`) the
window keeps only its latest ``carry`` steps: the plan starts from the end of the last
text and learns the new one from its own steps.
"""

from __future__ import annotations

import time
import warnings

import numpy as np
import torch

from moe_spec.budget import BudgetedTopK, expert_rank_E, expert_rank_LE, kept_of_rank
from moe_spec.control import (
    TREE,
    AcceptanceEstimates,
    Guard,
    StepCost,
    StepOutcome,
    StepPlan,
    candidate_trees,
)
from moe_spec.control.cost import after_share
from moe_spec.control.planner import budget_levels
from moe_spec.costmodel import get_cost_model, get_shape
from moe_spec.kernels.budget_select_torch import (
    RANK,
    REST,
    REST_SCORED,
    ScoreRule,
    rank_layers_LE,
)
from moe_spec.kernels.dispatch import capturing, choose_backend
from moe_spec.policies.base import PolicyError
from moe_spec.policies.builtin import TokenPriority
from moe_spec.policies.hookspecs import hookimpl
from moe_spec.routing import RoutingRecord


def upload(dst: torch.Tensor, src: np.ndarray) -> None:
    """``dst.copy_(src)`` without blocking the host on CUDA: through pinned memory, whose
    caching allocator keeps the buffer until the copy ran (a pageable copy would
    synchronise the stream, stalling a server that overlaps host and device work)."""
    # writable for torch (the estimates' reads are read-only, shared): copied only then
    host = torch.from_numpy(np.require(src, requirements=("C", "W"))).to(dst.dtype)
    if dst.is_cuda:
        dst.copy_(host.pin_memory(), non_blocking=True)
    else:
        dst.copy_(host)


# The share of a budget selection a resting tree verify still pays on a server (not a plain
# decode's, one row per request: the plugin runs no selection there, budgets_plain_decodes):
# its forwards (CUDA graphs included) run the selection's two
# kernels every step, and where the rest flag is set they read it, keep every expert and
# copy the rows (no scores, no ranking, no re-routing). An estimate, not a measurement: the
# H200's selection in a captured graph took 14.0 us at 32 tokens and 18.3 us at 64 (OLMoE's
# shape), so launches plus the work that does not grow with tokens are at most 9.7 us, 0.69
# of it, and the ranking over E is part of that; bench/gpu_check.py times the resting
# selection ("auto at rest") and the rest as the plugin runs it ("plugin at rest /
# selection": the measure).
SERVER_REST_SHARE = 0.5

# The share of a selection a server's step at the cap pays beyond the rest's to be ranked
# after its forward (:meth:`Auto.rank_scored`): each layer's resting selection scores its
# rows (the token-dependent part of a selection, with the re-routing: 4.3 us of 14.0 at 32
# tokens on the H200, so scoring alone about 0.1), then one launch ranks every layer's
# scores (about one layer's ranking, 1 / L: 0.06 on OLMoE's 16 layers). An estimate, not a
# measurement, like SERVER_REST_SHARE; bench/gpu_check.py times both.
SERVER_AFTER_SHARE = 0.15

# The fewest of a resting tree's steps that rank while budgets are far from paying, one in
# this many (``max_rank_every``'s default; raised to ``rank_every`` where that is larger):
# measured since the forty-fourth session, with each new request ranking at ``rank_every``
# again (BENCHMARKS.md).
MAX_RANK_EVERY = 32


def server_options(decode_extend: bool = True) -> dict[str, object]:
    """``auto``'s options as SGLang's plugin runs it (:meth:`Auto.for_server`), for benches
    that price the engines' steps as SGLang runs them: no draft gate; SGLang's draft extend
    after every step, a decode's too unless ``decode_extend`` is off (its skip switch, where
    the draft then makes no guesses at decoded tokens: no ``shadow``); and a resting step
    paying ``SERVER_REST_SHARE`` of a selection (SGLang's forwards, CUDA graphs included, run
    the selection's kernels every step; at rest they only keep every expert); and a step at
    the cap that ranks only to be learned from ranked after the forward, from the scores its
    resting selections wrote, at ``SERVER_AFTER_SHARE`` of a selection more
    (:meth:`Auto.rank_scored`)."""
    options: dict[str, object] = dict(
        gate=False,
        draft_extend=True,
        decode_extend=decode_extend,
        rest_share=SERVER_REST_SHARE,
        rank_after=True,
        after_share=SERVER_AFTER_SHARE,
    )
    if not decode_extend:
        options["shadow"] = False
    return options


def _check(name: str, value, ok: bool, allowed: str) -> None:
    if not ok:
        raise PolicyError(f"auto: {name} is {value!r}; allowed: {allowed}")


def _is_int(value) -> bool:
    return type(value) is int


class Auto(TokenPriority):
    """``auto``: per-layer budgets from calibrated acceptance and the cost model."""

    name = "auto"
    description = "per-layer budget per step from acceptance and cost model; guard vs AR"
    adaptive = True
    budgets_plain_decodes = False  # its guard's decodes rest (flag_rest): nothing to rank

    def __init__(
        self,
        shape: str = "OLMoE-1B-7B",
        gpu: str = "H200",
        cost_model: str = "calibrated",
        guard: bool = True,
        gate: bool | None = None,
        gate_every: int = 0,
        gate_margin: float = 0.25,
        margin: float = 0.05,
        measure: bool = False,
        window: int = 24,
        levels: int = 8,
        prior: float = 4.0,
        replan_every: int = 8,
        warmup: int = 2,
        max_warmup: int | None = None,
        hope: bool = True,
        shadow: bool = True,
        probe: int = 16,
        max_probe: int = 1024,
        probe_cost: float = 0.005,
        switch_prior: float = 2.0,
        rank_every: int = 4,
        max_rank_every: int | None = None,
        rest_share: float | None = None,
        rank_near: float = 0.8,
        learn_every: int = 2,
        max_replan: int | None = None,
        surprise: float = 2.0,
        drift: float = 2.5,
        carry: int = 4,
        relook: int = 0,
        fill_probe: int = 2,
        explore: float = 0.005,
        draft_extend: bool = False,
        decode_extend: bool = True,
        budget_from: int = 4,
        rank_after: bool = True,
        after_share: float | None = None,
        learn_resting: bool = False,
        lately: int = 0,
        lately_prior: float = 3.0,
    ) -> None:
        super().__init__()
        try:
            self.shape = get_shape(shape)
            self.cost = get_cost_model(cost_model, gpu)
        except ValueError as exc:
            raise PolicyError(f"auto: {exc}") from None
        flags = (("guard", guard), ("measure", measure), ("hope", hope))
        flags += (("shadow", shadow), ("rank_after", rank_after), ("learn_resting", learn_resting))
        extends = (("draft_extend", draft_extend), ("decode_extend", decode_extend))
        for name, value in (*flags, *extends):
            _check(name, value, isinstance(value, bool), "true or false")
        ok = gate is None or isinstance(gate, bool)
        _check("gate", gate, ok, "true, false or None (on a chain, off on a tree)")
        ok = max_warmup is None or (_is_int(max_warmup) and max_warmup >= 1)
        allowed = "an integer >= 1 or None (6 on a tree, warmup on a chain)"
        _check("max_warmup", max_warmup, ok, allowed)
        num = (int, float)
        _check("margin", margin, isinstance(margin, num) and 0 <= margin < 1, "0 <= margin < 1")
        _check("prior", prior, isinstance(prior, num) and prior > 0, "a number > 0")
        ok = isinstance(gate_margin, num) and not isinstance(gate_margin, bool)
        _check("gate_margin", gate_margin, ok and gate_margin >= 0, "a number >= 0")
        ok = isinstance(probe_cost, num) and not isinstance(probe_cost, bool)
        _check("probe_cost", probe_cost, ok and 0 < probe_cost <= 1, "0 < probe_cost <= 1")
        for name, value in (("switch_prior", switch_prior), ("lately_prior", lately_prior)):
            ok = isinstance(value, num) and not isinstance(value, bool)
            _check(name, value, ok and value >= 0, "a number >= 0")
        ok = isinstance(explore, num) and not isinstance(explore, bool)
        _check("explore", explore, ok and 0 <= explore < 1, "0 <= explore < 1 (0: off)")
        for name, value in (("surprise", surprise), ("drift", drift)):
            ok = isinstance(value, num) and not isinstance(value, bool)
            _check(name, value, ok and value >= 0, "a number >= 0 (0: off)")
        for name, value, low in (
            ("window", window, 1),
            ("levels", levels, 2),
            ("replan_every", replan_every, 1),
            ("warmup", warmup, 1),
            ("probe", probe, 1),
            ("rank_every", rank_every, 1),
            ("learn_every", learn_every, 1),
            ("gate_every", gate_every, 0),
            ("carry", carry, 1),
            ("relook", relook, 0),
            ("fill_probe", fill_probe, 1),
            ("budget_from", budget_from, 1),
            ("lately", lately, 0),
        ):
            _check(name, value, _is_int(value) and value >= low, f"an integer >= {low}")
        if draft_extend and (gate or measure):  # SGLang's steps: no gate, no host timing
            raise PolicyError(
                f"auto: draft_extend=True with gate={gate}, measure={measure}: the draft "
                "extend prices SGLang's steps, where the draft gate and measured step times "
                "do not run; allowed: draft_extend with gate=false and measure=false"
            )
        if not decode_extend and not draft_extend:
            raise PolicyError(
                "auto: decode_extend=False without draft_extend: it says which plain decodes "
                "skip SGLang's draft extend; allowed: decode_extend=false with draft_extend=true"
            )
        ok = max_rank_every is None or (_is_int(max_rank_every) and max_rank_every >= rank_every)
        allowed = f"None ({MAX_RANK_EVERY}, or rank_every where larger) or an integer >= "
        allowed += f"rank_every ({rank_every}; equal: off)"
        _check("max_rank_every", max_rank_every, ok, allowed)
        ok = isinstance(rest_share, num) and not isinstance(rest_share, bool)
        ok = rest_share is None or (ok and 0 <= rest_share <= 1)
        allowed = f"None (0; on a server {SERVER_REST_SHARE}) or a number from 0 to 1"
        _check("rest_share", rest_share, ok, allowed)
        ok = isinstance(after_share, num) and not isinstance(after_share, bool)
        ok = after_share is None or (ok and 0 <= after_share <= 1)
        allowed = "None (2 / L: the cost model's estimate) or a number from 0 to 1"
        _check("after_share", after_share, ok, allowed)
        ok = isinstance(rank_near, num) and not isinstance(rank_near, bool)
        _check("rank_near", rank_near, ok and 0 < rank_near <= 1, "0 < rank_near <= 1")
        ok = _is_int(max_probe) and max_probe >= probe
        _check("max_probe", max_probe, ok, f"an integer >= probe ({probe})")
        ok = max_replan is None or (_is_int(max_replan) and max_replan >= replan_every)
        _check("max_replan", max_replan, ok, f"None (the window) or an integer >= {replan_every}")
        self.options = dict(
            guard=guard,
            gate=gate,
            gate_every=gate_every,
            gate_margin=float(gate_margin),
            margin=float(margin),
            measure=measure,
            levels=levels,
            replan_every=replan_every,
            max_replan=max_replan,
            warmup=warmup,
            max_warmup=max_warmup,
            hope=hope,
            shadow=shadow,
            probe=probe,
            max_probe=max_probe,
            probe_cost=float(probe_cost),
            switch_prior=float(switch_prior),
            surprise=float(surprise),
            drift=float(drift),
            carry=carry,
            relook=relook,
            fill_probe=fill_probe,
            explore=float(explore),
            max_rank_every=max(MAX_RANK_EVERY, rank_every)
            if max_rank_every is None
            else max_rank_every,
            rank_near=float(rank_near),
            budget_from=budget_from,
            lately=lately,
            lately_prior=float(lately_prior),
        )
        self.window, self.prior = window, float(prior)
        self.draft_extend = draft_extend  # price a draft forward after every verify (SGLang)
        self.decode_extend = decode_extend  # and after every plain decode (off: a run's last)
        self.rank_every = rank_every  # an unbudgeted step ranks (and is learned from) 1 in n
        self.rank_after = rank_after  # and does so after its forward
        # the share of a selection that ranking after the forward costs (None: 2 / L)
        self.after_share = None if after_share is None else float(after_share)
        self.ranking_after = False  # whether the step planned does
        self.ranked_after_once = False  # a first ranking after a forward has run
        # the share of a selection a resting step pays (None: 0, SERVER_REST_SHARE on a server)
        self.rest_share = None if rest_share is None else float(rest_share)
        self.rest_host = 0  # what the device rest flag holds
        self.rest_tree = 0  # what the last tree step's plan set it to (decodes rest anyway)
        self.learn_every = learn_every  # once the window is full, a budgeted step: 1 in n
        self.learn_resting = learn_resting  # every resting step enters the window (learns)
        self.controller: Guard | None = None
        self.dims: tuple[int, int, int, int] | None = None  # L, E, K, cap
        self.device_state: dict[str, torch.Tensor] = {}
        self.record_routing = True  # keep each layer's ranking for observe() (eager engines)
        self.rank_LE: dict[int, torch.Tensor] = {}
        self.ids_LNK: dict[int, torch.Tensor] = {}
        self.repair = False
        self.tree: tuple[int, int, int] | None = None
        self.budget_host_L: np.ndarray | None = None  # what the device tensor holds
        self.tables_at = 0  # the controller's replan count the calibration tables are from
        self.prompt: tuple[int, float] | None = None  # the last prompt's forward, not yet passed on
        self.forward_rows: tuple | None = None  # this forward's token weights and roots (rule)

    # -- inside the forward (graph-safe) -----------------------------------------------
    def rule(self, record: RoutingRecord) -> ScoreRule:
        """``token-priority``'s rule with the calibrated weights (:meth:`accept_T`). The
        token weights and root rows are the same in every MoE layer of a forward (one tree,
        one table): made at its first layer, reused by the others (a forward hands every
        layer the same depth and path tensors; forgotten at each plan, when the tables may
        change), so later layers add no op (the scorer keeps the valid roots)."""
        rows = self.forward_rows
        if rows is None or rows[0] is not record.path_logprob_T or rows[1] is not record.depth_T:
            made = (self.accept_T(record), self.root_rows_T(record))
            rows = (record.path_logprob_T, record.depth_T, *made)
            self.forward_rows = rows if self.device_state else None
        return ScoreRule("mass", rows[2], rows[3])  # the kernel keeps the valid roots

    def accept_T(self, record: RoutingRecord) -> torch.Tensor:
        state = self.device_state
        if not state:
            return super().accept_T(record)
        if record.path_logprob_T is not None:
            lp_T = record.path_logprob_T.float().clamp(max=0.0)
            return state["accept_B"][torch.bucketize(lp_T, state["edges"], right=True)]
        if record.depth_T is not None:
            reach_D = state["reach_D"]
            return reach_D[record.depth_T.long().clamp(0, reach_D.numel() - 1)]
        return super().accept_T(record)

    def keep(self, record: RoutingRecord, budget: int) -> torch.Tensor:
        """The torch path of :meth:`apply_fused`'s selection. On a server it reads the rest
        flag on the host where no CUDA graph is being captured (a captured graph ranks on
        every replay, its scores written too, so a ranking after the forward agrees)."""
        self.prepare_for(record, budget)
        served, graph = "score_LE" in self.device_state, capturing()
        rest = self.rest_host if served and not graph else RANK
        if rest == REST:  # every expert kept: no scores, no ranking
            self.remember(record, None)
            return torch.ones_like(record.router_logits_TE[0], dtype=torch.bool)
        scores_E, used_E = self.checked_scores(record), record.used_E()
        if served and (rest == REST_SCORED or graph):  # a graph replays at every flag
            self.keep_scores(record, scores_E, used_E)
        if rest == REST_SCORED:  # every expert kept, ranked after the forward
            self.remember(record, None)
            return torch.ones_like(used_E)
        rank_E = expert_rank_E(scores_E, used_E)
        self.remember(record, rank_E)
        budget_1 = self.device_state["budget_L"][record.layer_idx].clamp(max=budget)
        return kept_of_rank(rank_E, budget_1, used_E)

    def keep_scores(
        self, record: RoutingRecord, scores_E: torch.Tensor, used_E: torch.Tensor
    ) -> None:
        """Copy a layer's scores and used mask into a server's buffers (:meth:`rank_scored`)."""
        state, layer, E = self.device_state, record.layer_idx, record.num_experts
        state["score_LE"][layer, :E].copy_(scores_E)
        state["used_LE"][layer, :E].copy_(used_E)

    def fused_rule(self, record: RoutingRecord) -> ScoreRule | None:
        """The rule (:meth:`keep` is the torch path of the same selection) once the device
        state exists: where the kernels run on Triton (CUDA), one layer's scores, ranks,
        kept set and re-routing are then two kernel launches (:meth:`apply_fused`) instead
        of some sixty small ops. Before it (the first layer a policy sees, unless a server
        prepared it) the torch path, which creates the state the rule's weights read."""
        return self.rule(record) if self.device_state else None

    def apply_fused(self, record: RoutingRecord, budget: int, *args, **_) -> BudgetedTopK:
        """:meth:`keep`'s selection in the Triton kernel: the layer's budget is read from
        the device tensor the controller rewrites, and the kernel writes the ranking that
        :meth:`observe` learns from (a server's straight into its buffer)."""
        self.prepare_for(record, budget)
        state, layer, E = self.device_state, record.layer_idx, record.num_experts
        limit_1 = state["budget_L"][layer : layer + 1]
        if "rank_LE" in state and not self.record_routing:
            rank_E = state["rank_LE"][layer, :E]
        else:
            rank_E = torch.empty(E, dtype=torch.long, device=limit_1.device)
        rest_1 = state["rest_1"]  # set: every expert kept, rank_E not written
        out = {}
        if "score_LE" in state:  # a server's: scores kept for a ranking after the forward
            out = dict(scores_E=state["score_LE"][layer, :E], used_E=state["used_LE"][layer, :E])
        if "ids_LRK" in state:  # the kernel copies the top-k observe reads (no op of its own)
            ids_LRK = state["ids_LRK"]
            out["ids_out"] = ids_LRK[layer, : min(record.num_tokens, ids_LRK.shape[1])]
        budgeted = super().apply_fused(
            record, budget, *args, limit_1=limit_1, rank_E=rank_E, rest_1=rest_1, **out
        )
        self.remember(record, rank_E, ids_copied="ids_out" in out)
        return budgeted

    def prepare_for(self, record: RoutingRecord, budget: int) -> None:
        """:meth:`prepare` from a layer's routing (the first verify pass creates the state)."""
        E, K = record.num_experts, record.top_k
        self.prepare(record.num_layers, E, K, budget, record.router_logits_TE.device)

    def remember(
        self, record: RoutingRecord, rank_E: torch.Tensor | None, ids_copied: bool = False
    ) -> None:
        """Keep the layer's ranking and top-k for :meth:`observe` (eager engines) and copy
        them into a server's device buffers (:meth:`record_to_device`; None: the ranking
        is not made in this forward; ``ids_copied``: the kernel wrote the top-k there)."""
        if self.record_routing and rank_E is not None:
            self.rank_LE[record.layer_idx] = rank_E
            self.ids_LNK[record.layer_idx] = record.topk_ids_TK
        if "ids_LRK" in self.device_state:
            self.record_rows(record, rank_E, ids_copied)

    def record_rows(
        self, record: RoutingRecord, rank_E: torch.Tensor | None, ids_copied: bool = False
    ) -> None:
        """Copy this layer's ranking (if made) and its first rows' top-k (and depths) into
        the buffers of :meth:`record_to_device`: in-place copies, static shapes, no host read.
        What the kernel wrote there already is not copied."""
        state, layer = self.device_state, record.layer_idx
        if rank_E is not None:
            rank_row_E = state["rank_LE"][layer, : rank_E.numel()]
            if rank_E.data_ptr() != rank_row_E.data_ptr():  # the kernel may have written it
                rank_row_E.copy_(rank_E)
        ids_LRK = state["ids_LRK"]
        R, K = min(record.num_tokens, ids_LRK.shape[1]), record.top_k
        if not ids_copied:
            ids_RK = record.topk_ids_TK[:R]
            ids_LRK[layer, :R, :K].copy_(ids_RK)
            if ids_LRK.shape[2] > K:  # narrower layers repeat their first id: neither a
                # rank maximum nor a count changes (as the kernel's copy)
                ids_LRK[layer, :R, K:].copy_(ids_RK[:, :1].expand(R, ids_LRK.shape[2] - K))
        if record.depth_T is not None and layer == 0:
            state["depth_R"][:R].copy_(record.depth_T[:R])

    # -- between steps ------------------------------------------------------------------
    def record_to_device(self, rows: int, top_k: int) -> dict[str, torch.Tensor]:
        """Device buffers that every verify forward overwrites, for a server's observe.

        Returns ``rank_LE`` (long ``[L, E]``, each layer's expert ranking; layers with
        fewer experts leave the rest), ``ids_LRK`` (long ``[L, rows, top_k]``, the
        unbudgeted top-k of the first ``rows`` verify rows) and ``depth_R`` (long
        ``[rows]``). Call after :meth:`prepare` and before any graph is captured; read
        the buffers after the forward (:meth:`observe` takes them as arguments), after
        :meth:`rank_scored` where the forward's rest flag was :data:`REST_SCORED`. The
        device state also gets the scores and used masks those forwards write
        (``score_LE`` fp32 and ``used_LE`` int32 ``[L, E]``; unwritten columns score -inf,
        unused, so they rank last); with ``rank_after`` their ranking runs once here, so that
        on CUDA its kernel is compiled before graphs are captured, not at a first request.
        """
        if self.dims is None:
            raise PolicyError("auto: record_to_device() needs prepare() first")
        L, E, _, _ = self.dims
        device = self.device_state["budget_L"].device
        self.device_state.update(
            rank_LE=torch.full((L, E), E, dtype=torch.long, device=device),
            ids_LRK=torch.zeros((L, rows, top_k), dtype=torch.long, device=device),
            depth_R=torch.zeros(rows, dtype=torch.long, device=device),
            score_LE=torch.full((L, E), float("-inf"), device=device),
            used_LE=torch.zeros((L, E), dtype=torch.int32, device=device),
        )
        if self.rank_after:  # compiled now, before graphs are captured, not at a first request
            self.rank_scored()
            self.device_state["rank_LE"].fill_(E)
        return {k: self.device_state[k] for k in ("rank_LE", "ids_LRK", "depth_R")}

    def rank_scored(self) -> None:
        """After a server's forward at :data:`REST_SCORED` (host side, before its buffers
        are copied): each layer's ranking of the scores its resting selection wrote, into
        ``rank_LE``, as the selection would have ranked them. On CUDA one Triton launch, a
        program per layer (:func:`rank_scored_triton`; where it cannot run, the torch path
        after one warning: :meth:`try_kernel`), else torch ops. No host read."""
        state = self.device_state
        score_LE, used_LE, rank_LE = state["score_LE"], state["used_LE"], state["rank_LE"]
        if self.fused_error is None and choose_backend(score_LE.device) == "triton":
            from moe_spec.kernels.budget_select_triton import rank_scored_triton

            args = (score_LE, used_LE, rank_LE)
            if self.try_kernel(rank_scored_triton, *args, what="ranking") is not None:
                return
        rank_LE.copy_(expert_rank_LE(score_LE, used_LE.bool()))

    def for_server(
        self, guard: bool = False, decode_extend: bool = True, guesses: bool = False
    ) -> None:
        """For a server (SGLang), before the first step: no measured step times (every
        tensor-parallel rank must plan alike) and no draft gate (the draft runs on the
        device). Without ``guard`` the server runs the configured tree every step: plan its
        per-layer budgets only (a guard would ask for trees the server cannot run); with it
        the server can also run the smaller candidates and plain decoding (SGLang's
        adaptive chains, ``moe_spec.integration.sglang.depth``). Every step is priced with
        the draft forward SGLang runs over its verified tokens after the verify
        (``draft_extend``; a depth-0 step runs one too, so there a plain decode costs a
        1-token draft forward more than without speculation; without ``decode_extend``,
        SGLang skips it on every decode of a run but the last, and a decode is priced as a
        plain one). ``shadow`` (as set) only with the guard and ``guesses``: the server hands
        the draft's guesses at decoded tokens to :meth:`draft_matched` (SGLang's plugin
        reads them before each decode, where every decode extends; under SGLang's skip
        switch the draft does not read the decoded tokens at all)."""
        if self.controller is not None:
            raise PolicyError("auto: for_server() must come before the first step")
        served = server_options(decode_extend)
        shadow = served.get("shadow", self.options["shadow"]) and guard and guesses
        self.options.update(guard=guard, gate=served["gate"], measure=False, shadow=shadow)
        self.draft_extend, self.decode_extend = served["draft_extend"], decode_extend
        if self.rest_share is None:
            self.rest_share = served["rest_share"]
        if self.after_share is None:
            self.after_share = served["after_share"]

    def prepare(
        self, num_layers: int, num_experts: int, top_k: int, cap: int, device: torch.device
    ) -> None:
        """Create the device state (a server calls this before capturing graphs)."""
        if self.device_state:
            return
        self.forward_rows = None
        cap = min(cap, num_experts)
        self.dims = (num_layers, num_experts, top_k, cap)
        est = self.estimates()
        self.budget_host_L = np.full(num_layers, cap, dtype=np.int64)
        self.device_state = {
            "budget_L": torch.full((num_layers,), cap, dtype=torch.long, device=device),
            "edges": torch.tensor(est.logprob_edges(), dtype=torch.float32, device=device),
            "accept_B": torch.tensor(est.accept_B(), dtype=torch.float32, device=device),
            "reach_D": torch.tensor(est.reach_D(), dtype=torch.float32, device=device),
            "rest_1": torch.zeros(1, dtype=torch.int32, device=device),  # flag_rest
        }

    def estimates(self) -> AcceptanceEstimates:
        if self.controller is not None:
            return self.controller.est
        L, E, _, _ = self.dims
        trees = candidate_trees(*self.tree) if self.tree else [(32, 8, 6)]
        return AcceptanceEstimates(L, E, [n for n, _, _ in trees], self.window, prior=self.prior)

    def build_controller(self) -> Guard:
        L, E, K, cap = self.dims
        # without the guard only the configured tree runs: no smaller candidate to predict
        trees = candidate_trees(*self.tree) if self.options["guard"] else [tuple(self.tree)]
        extend, rank = self.draft_extend, self.rank_every
        cost = StepCost(
            self.cost,
            self.shape,
            K,
            E,
            trees,
            rank_every=rank,
            draft_extend=extend,
            decode_extend=self.decode_extend,
            rest_share=self.rest_share or 0.0,
            rank_share=self.rank_share(),
        )
        levels_V = budget_levels(K, cap, self.options["levels"])  # the tables the guard reads
        est = AcceptanceEstimates(
            L, E, [n for n, _, _ in trees], self.window, prior=self.prior, levels=levels_V
        )
        width = self.tree[1]
        options = {**self.options, "max_warmup": self.max_warmup_for(width)}
        options["gate"] = self.gate_for(width)
        return Guard(est, cost, K, cap, repair=self.repair, rank_every=rank, **options)

    def rank_share(self) -> float:
        """The share of a selection a step at the cap that ranks pays: a whole one inside the
        forward; with ``rank_after`` the rest's (its forward rests) plus ``after_share``."""
        if not self.rank_after:
            return 1.0
        return (self.rest_share or 0.0) + after_share(self.shape, self.after_share)

    def max_warmup_for(self, width: int) -> int:
        """``max_warmup``, or where left to its default (None), for a tree of ``width``
        drafts per level: 6 steps for a tree, ``warmup`` (off) for a chain.

        A strong draft's trees commit 1-2 tokens on some of a request's first steps; judged
        on two warm-up steps, such a tree was decoded for whole requests (smollm2-moe's
        tree, set B: 0.64-0.78x the unbudgeted tree). On chains the longer warm-up cost
        smollm2-moe's SGLang-priced chain 0.09 on warm set B (BENCHMARKS.md, thirty-second
        and thirty-fourth sessions).
        """
        max_warmup = self.options["max_warmup"]
        if max_warmup is not None:
            return max_warmup
        return 6 if width > 1 else self.options["warmup"]

    def gate_for(self, width: int) -> bool:
        """``gate``, or where left to its default (None), for a tree of ``width`` drafts
        per level: on for a chain, off for a tree (and off where the draft extend prices
        SGLang's steps, which the gate does not see).

        The gate judges a step by its first level's calibrated acceptance and the
        acceptance per depth; on a tree that fell short of what the tree committed: on
        smollm2-moe's 32-token tree with its H200 head, fresh requests decoded 8 steps in a
        row expecting 2.7 tokens where the tree's steps had committed 4.2, and with it off
        6 of 8 cells (8 prompts a set) rose 1.2-6.7%, one fell 0.4%, the toy's tree within
        0.7%. On chains, where it was built, the same comparison was mixed (-2.3% to +4.1%,
        BENCHMARKS.md, forty-third session), so it stays on there.
        """
        gate = self.options["gate"]
        if gate is not None:
            return gate
        return width == 1 and not self.draft_extend

    def plan_step(self, tree: tuple[int, int, int], repair: bool) -> StepPlan:
        self.forward_rows = None  # the tables may change below
        if self.tree is None:
            self.tree, self.repair = tuple(tree), repair
        if self.controller is None and self.dims is not None:
            self.controller = self.build_controller()
        if self.controller is None:
            return StepPlan(TREE, *self.tree, "warm-up (no verify step seen yet)")
        if self.prompt is not None:
            self.controller.prefilled(*self.prompt)
            self.prompt = None
        plan = self.controller.plan()
        self.resting = self.rests(plan)
        self.ranking_after = self.ranks_after(plan)
        self.resting |= self.ranking_after
        scored = self.ranking_after and "score_LE" in self.device_state  # a server's
        # a server's plain decode (a 1-token verify) does not reach the policy
        # (budgets_plain_decodes); rest where one comes that the plan did not foresee
        decodes = plan.kind != TREE
        rest = REST_SCORED if scored else REST if self.resting else RANK
        if not decodes:
            self.rest_tree = rest
        self.flag_rest(REST if decodes and rest == RANK else rest)
        if plan.kind == TREE and (self.controller.budget_L != self.budget_host_L).any():
            self.budget_host_L = self.controller.budget_L.copy()
            upload(self.device_state["budget_L"], self.budget_host_L)
        if self.controller.replans != self.tables_at:  # new estimates: refresh the tables
            self.tables_at = self.controller.replans
            est = self.controller.est
            upload(self.device_state["accept_B"], est.accept_B())
            upload(self.device_state["reach_D"], est.reach_D())
        return plan

    def flag_rest(self, rest: int) -> None:
        """Set the device rest flag the selection reads (:meth:`apply_fused`, :meth:`keep`):
        a server's forwards call the policy every step, and a resting step's selections then
        keep every expert without ranking (the engines skip the policy instead), at
        :data:`REST_SCORED` writing the scores that :meth:`rank_scored` ranks after the
        forward. ``rest``: :data:`RANK`, :data:`REST` or :data:`REST_SCORED` (True: REST)."""
        if int(rest) != self.rest_host and "rest_1" in self.device_state:
            self.rest_host = int(rest)
            upload(self.device_state["rest_1"], np.array([self.rest_host], dtype=np.int32))

    def stop_learning(self) -> None:
        """A server's feed stopped (no more acceptance, so no more plans): every later step
        runs at the budgets of the last tree step's plan, which keep every expert where it
        rested; none writes scores that nothing would rank."""
        self.flag_rest(RANK if self.rest_tree == RANK else REST)

    def start_request(self) -> None:
        """A new request begins: its text is new (:meth:`moe_spec.control.Guard.new_request`)."""
        if self.controller is not None:
            self.controller.new_request()

    def prefilled(self, tokens: int, seconds: float) -> None:
        """Kept for the controller's next plan (:meth:`Guard.prefilled`; with ``measure``
        it prices a tree step before the first has run)."""
        self.prompt = (tokens, seconds)

    def draft_caught_up(self, tokens: int, seconds: float) -> None:
        """Passed on (:meth:`Guard.caught_up`; with ``measure`` it comes off the step's time)."""
        if self.controller is not None:
            self.controller.caught_up(tokens, seconds)

    @property
    def wants_guesses(self) -> bool:
        """With ``shadow`` on a chain (:attr:`moe_spec.control.Guard.shadowing`)."""
        return self.controller is not None and self.controller.shadowing

    def draft_matched(self, matched: list[bool]) -> None:
        """Passed on (:meth:`Guard.draft_matched`: with ``shadow``, what a chain would have
        committed on the decoded text)."""
        if self.controller is not None:
            self.controller.draft_matched(matched)

    def gate(self, logprob_W: torch.Tensor) -> str | None:
        """The guard's draft gate (:meth:`moe_spec.control.Guard.gate`)."""
        return None if self.controller is None else self.controller.gate(logprob_W)

    def rests(self, plan: StepPlan) -> bool:
        """Whether the planned step runs unbudgeted without ranking: a tree step whose
        budgets are all at least E, except the warm-up's, every ``rank_every``-th tree step
        (learned from; farther apart while budgets are far from paying:
        ``moe_spec.control.ranks``)
        and, with ``hope``, the guard's looks at a tree it does not run (a
        probe or an explore: run to be learned from; measured: probes alternating with
        hope's frequent explores fell on resting counts every time, and the full tree was
        never predicted again; without ``hope`` explores are rare, and learning every look
        cost smollm2-moe's SGLang-priced chain 15% on warm set B), and, while the guard
        learns (:meth:`moe_spec.control.Guard.learning`), a step whose best budget below the
        cap comes within ``rank_near`` of paying (``Guard.far_from_paying``: the ranking could
        change the plan). A learning step far from paying rests and still enters the
        window, with its tokens and experts (:meth:`learns`): ranking it only for that was
        the selection's cost on nearly every step of a short request (measured, 8 prompts a
        set: resting every learning step took smollm2-moe's tree up to +0.02x decoding but
        cost the toy's tree, whose budgets come close to paying, 0.05 of max(AR,
        unbudgeted) on warm set B/OLMoE, 1.034 -> 0.982; with ``rank_near`` the toy and
        both chains decide as before)."""
        c = self.controller
        if plan.kind != TREE or not self.ranks_only_to_learn() or self.looks():
            return False
        if c.learning() and not c.far_from_paying():
            return False
        return c.tree_steps >= c.warmup and c.tree_steps % c.rank_interval != 0

    def ranks_after(self, plan: StepPlan) -> bool:
        """With ``rank_after``: whether a tree step that ranks only to be learned from (its
        budgets all at least E) rests instead and is ranked after the forward, every layer
        at once, with the same ranks: in the engines :meth:`observe` ranks the routing they
        kept (:meth:`rank_routing`; priced at the cost model's ``after_share``, 2 / L of a
        selection, an estimate); on a server the resting selections keep their scores
        (:data:`REST_SCORED`) and :meth:`rank_scored` ranks them (priced at
        ``SERVER_AFTER_SHARE`` more than a rest). Inside the forward the ranking is a
        selection in every layer; after it, on CUDA, one launch of a program per layer."""
        if not self.rank_after or self.resting or plan.kind != TREE:
            return False
        # at the cap, and entering the window (with ``rank_every`` 1, not every step does)
        return not (self.controller.budget_L < self.dims[1]).any() and self.learns(rested=False)

    def looks(self) -> bool:
        """With ``hope``: whether the step is the guard's probe or explore (run to be
        learned from, so it neither rests nor waits its turn for the window)."""
        c = self.controller
        return c.hoping and (c.probing or c.exploring)

    def ranks_only_to_learn(self) -> bool:
        """Whether the current budgets keep every expert while steps may rest
        (``rank_every`` > 1): a step that ranks then does so only to be learned from."""
        return self.rank_every > 1 and not (self.controller.budget_L < self.dims[1]).any()

    def observe(
        self,
        outcome: StepOutcome,
        rank_LE: torch.Tensor | None = None,
        ids_LNK: torch.Tensor | None = None,
        rested: bool | None = None,
    ) -> None:
        """Fold in a finished step. A server passes the ranking and the tree's unbudgeted
        top-k it recorded (:meth:`record_to_device`; no ranking for a step that rested) and
        whether the step rested (None: :attr:`resting`, the step just planned; a server
        that folds a step in late knows better); eager engines leave them to
        ``record_routing``."""
        if self.controller is None and self.dims is not None:
            self.controller = self.build_controller()
        if self.controller is None:
            return
        if rested is None and self.ranking_after:  # rested, to be ranked here (or it ran)
            rested = not outcome.routing_L and len(self.rank_LE) < self.dims[0]
            if rested and outcome.kind == TREE:
                self.no_routing_kept()
        if outcome.kind != TREE or not self.learns(rested):
            rank_LE = ids_LNK = None
        elif rank_LE is None and outcome.routing_L:  # ranked after the forward
            started = time.perf_counter()
            rank_LE = self.rank_routing(outcome.routing_L)
            ids_LNK = torch.stack([r.topk_ids_TK.to(rank_LE.device) for r in outcome.routing_L])
            if not self.ranked_after_once:  # a first call compiles the kernel: not a step's time
                self.ranked_after_once = True
                self.controller.exclude_time(time.perf_counter() - started)
        elif rank_LE is None and len(self.rank_LE) == self.dims[0]:
            rank_LE = torch.stack([self.rank_LE[layer] for layer in sorted(self.rank_LE)])
            ids_LNK = torch.stack([self.ids_LNK[layer] for layer in sorted(self.ids_LNK)])
        elif rank_LE is None and ids_LNK is None and outcome.ids_LTK:  # rested: no ranking
            device = outcome.ids_LTK[0].device  # stacked only for a step that enters
            ids_LNK = torch.stack([ids_TK.to(device) for ids_TK in outcome.ids_LTK])
        self.rank_LE, self.ids_LNK = {}, {}
        self.controller.observe(outcome, rank_LE, ids_LNK)

    def rank_routing(self, routing_L: list[RoutingRecord]) -> torch.Tensor:
        """long ``[L, E]``: the ranking each layer's selection would have made of a forward's
        ``routing_L`` (tokens and router shared), after it, on the path that layer's
        selection takes (:meth:`Policy.apply`): on CUDA one Triton launch, a program per
        layer (:func:`rank_layers_triton`; where it cannot run, :meth:`try_kernel` warns
        once and the torch path takes over), else, and for sparsemixer routers, batched
        torch ops (:func:`rank_layers_LE`). Layers unlike the first (another device in a
        split model, another shape, top-k or router) are ranked one by one, each on its
        own path, and moved to the first layer's device."""
        first = routing_L[0]
        device = first.router_logits_TE.device
        if not all(batched_alike(first, r) for r in routing_L[1:]):
            return torch.stack([self.rank_routing([r])[0].to(device) for r in routing_L])
        rule = self.rule(first)
        kernel = self.fused_error is None and first.scoring != "sparsemixer"
        if kernel and choose_backend(device) == "triton":
            from moe_spec.kernels.budget_select_triton import rank_layers_triton

            rank_LE = self.try_kernel(rank_layers_triton, routing_L, rule, what="ranking")
            if rank_LE is not None:
                return rank_LE
        return rank_layers_LE(routing_L, rule)

    def no_routing_kept(self) -> None:
        """A tree step planned to be ranked after its forward came back with neither the
        layers' routing (``StepOutcome.routing_L``) nor their ranks: the engine keeps no
        records (:meth:`VerifyBudget.note_unbudgeted` without ``record``). Rank inside
        the forward from now on (else no step at the cap would be learned from), and say
        so once."""
        self.rank_after = self.ranking_after = False
        self.controller.cost.rank_at(self.rank_share(), self.controller.rank_interval)
        warnings.warn(
            f"policy {self.name!r}: a tree step to be ranked after its forward came back "
            "without the layers' routing (StepOutcome.routing_L); the engine keeps none, so "
            "this policy ranks inside the forward from now on (rank_after=false)",
            RuntimeWarning,
            stacklevel=3,
        )

    def learns(self, rested: bool | None = None) -> bool:
        """Whether the tree step just run (``rested``, None: :attr:`resting`) enters the
        window (the calibration and the acceptance per depth count every step). A step that
        rested (not ranked): with its tokens and experts, without its need, while the guard
        learns (:meth:`moe_spec.control.Guard.learning`: the window's first 8 steps, a new
        request's first 4), and not after: the window then holds ranked steps, one in
        ``rank_every`` at the cap, four times the history (measured with every resting step
        entering: smollm2-moe's tree on warm set B fell from 1.32 to 1.09x decoding, a
        switch to decoding on a few poor steps), unless ``learn_resting``: then every resting
        step enters (off by default; a warm guard's window otherwise goes stale on a text that
        turns harder, its resting steps unseen: BENCHMARKS.md, sixty-first session). Of the
        others: every step until the window
        is full, then one budgeted step in ``learn_every`` (the window stays a sample of
        the recent steps; its update is most of an observation's cost), every unbudgeted
        step that ranked (with ``rank_every`` > 1 it ranked only to be learned from), and,
        with ``hope``, every look at a tree the guard does not run (a probe or an explore:
        by a step count, probes that alternate with explores fell on the same parity every
        time)."""
        c = self.controller
        if self.resting if rested is None else rested:  # unranked, while the guard learns
            return self.learn_resting or c.learning()
        window = c.est.window
        if len(window) < window.maxlen or self.looks():
            return True
        return self.ranks_only_to_learn() or c.tree_steps % self.learn_every == 0


def batched_alike(a: RoutingRecord, b: RoutingRecord) -> bool:
    """Whether two layers' records rank in one batch: one device, shape, top-k and router."""
    return (
        a.router_logits_TE.device == b.router_logits_TE.device
        and a.router_logits_TE.shape == b.router_logits_TE.shape
        and a.topk_ids_TK.shape == b.topk_ids_TK.shape
        and a.topk_ids_TK.dtype == b.topk_ids_TK.dtype
        and a.scoring == b.scoring
    )


@hookimpl
def register_policies(register):
    register(Auto)
