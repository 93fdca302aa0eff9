"""The controller of one generation: per-layer budgets, and a guard against slow steps.

Before each step (:meth:`Guard.plan`) it answers one of

- the configured **tree** with the per-layer budgets predicted to give the most
  committed tokens per second (``moe_spec.control.planner``);
- a **smaller tree** (the configured tree halved, down to 4 tokens; a chain to 2), with its
  own budgets;
- **autoregressive**: one plain target forward,

whichever is predicted fastest, under the cost tables (``moe_spec.control.cost``) and, with
``measure``, corrected by the wall time measured for tree and autoregressive steps (an
exponential average of measured over modeled seconds per kind). Hysteresis: the current choice
is kept unless another is predicted faster by more than ``margin`` (when the prediction is
redone, and what a new request resets: ``moe_spec.control.replans``). A tree that is not the
current choice is judged with ``switch_prior`` (p) pseudo-steps of one committed token added to
the S window steps it is predicted from: its tokens/s times ``(S + p / a) / (S + p)``, ``a``
its mean committed tokens. A tree predicted from two or three lucky steps does not win a switch
(a switch costs steps to undo), while over a full window the shrink is a few percent.
Autoregressive decoding's time is known, and is not shrunk. With ``hope`` (here off by default;
on in ``auto``) the full tree, while it is the current choice predicted from fewer steps than
fill the window, is judged at its mean committed tokens plus one standard error (the spread
at least one token, but for 8 or more steps none of which accepted a draft; at most its depth
+ 1): it is left on what its steps clearly show, not on a few short paths (a request's first
steps commit less than its later ones, and a chain left after its warm-up was seldom run again
in the request: measured, ``bench/auto_loss_trace.py``, BENCHMARKS.md, thirty-fifth session;
until the forty-first, only below 8 steps). From 8 steps the hope holds it against decoding
alone: a smaller tree that beats it as predicted, and beats decoding, is weighed against it as
predicted. Resting steps (3 in 4 at the cap) enter no window once it holds 8
(``moe_spec.policies.auto``): the hope ends when the full tree has run as many steps as fill
the window, every one counted, and counts again from a drift (counted in the window, a warm
guard's hope held a chat request's full tree at 1.6 tokens a step for 68 steps; BENCHMARKS.md,
sixty-third session). A
smaller tree is not switched to before the window holds 8 (``trusted``) steps of the full
tree, unless decoding would be chosen instead (judged on the full tree as predicted: its hope
holds it against decoding, not against a smaller tree): a smaller tree's committed tokens are
predicted from the full tree's steps (the accepted path's prefix inside its nodes), its own
steps cannot show what the full tree would commit (their paths end at its size), and its probes
of the full tree are far apart while it is predicted ahead (measured: on the toy, a text that
began with short paths held a 4-token tree for a whole request, switched to on 4 steps).
**Looks** (``moe_spec.control.looks``): while not on the full tree the guard probes it, and
while it decodes it explores with a smaller tree, each as far apart as keeps its predicted
loss under ``probe_cost`` and ``explore`` of the time.
**The draft gate** (``moe_spec.control.gate``, with ``gate``): before a planned tree is
grown, the draft's first level may send the step to a decode of the root alone.
**Shadows** (``moe_spec.control.shadows``, with ``shadow`` on a chain): off the full chain,
what it would have committed on the decoded text, from the draft's guesses at it (read every
few decodes), stands for the chains' committed tokens in the prediction.
The first ``warmup`` tree steps run the full tree unbudgeted, and up to ``max_warmup`` (here off by
default; ``auto`` sets 6 for a tree, :meth:`moe_spec.policies.auto.Auto.max_warmup_for`) while their
mean committed tokens lose to decoding but that mean plus one standard error would pay (the tree
priced, from ``budget_from`` ranked steps, at the budgets they give, and run at them; not with
``measure``); with ``measure``, not where the prompt's or the first tree's timing shows the tree
clearly losing (``moe_spec.control.warmup``). Per-layer budgets are searched layer by layer for the
full tree and the current choice once the window holds 8 of its steps (4, while every window step is
of the current text: none carried from the last request, whose per-layer needs may differ), one
budget for all layers before that and for the other trees, and the cap until ``budget_from`` (4) of
a tree's window steps were ranked (a few short paths do not show what longer ones need).
Every plan carries its reason; :attr:`Guard.overhead_s` sums the controller's own time. Without
the guard (``guard=false``; a server that runs its configured tree every step) the reason also
gives decoding without speculation, and :attr:`Guard.slower` says when the tree is predicted
slower than that.
"""

from __future__ import annotations

import math
import time
from collections import deque

import numpy as np
import torch

from moe_spec.control.cost import StepCost
from moe_spec.control.estimates import AcceptanceEstimates
from moe_spec.control.gate import DraftGate
from moe_spec.control.lately import Lately
from moe_spec.control.looks import Looks
from moe_spec.control.planner import Budgets, budget_levels, window_budgets
from moe_spec.control.ranks import Ranks
from moe_spec.control.replans import Replans, mean_and_spread
from moe_spec.control.shadows import Shadows
from moe_spec.control.steps import AUTOREGRESSIVE, TREE, StepOutcome, StepPlan
from moe_spec.control.warmup import MeasuredWarmup
from moe_spec.costmodel import independent_distinct


class Guard(DraftGate, MeasuredWarmup, Looks, Replans, Ranks, Shadows, Lately):
    """Plans each step of one generation from what the previous steps showed."""

    def __init__(
        self,
        estimates: AcceptanceEstimates,
        cost: StepCost,
        top_k: int,
        cap: int,
        *,
        repair: bool = False,
        guard: bool = True,
        margin: float = 0.05,
        levels: int = 8,
        replan_every: int = 8,
        max_replan: int | None = None,
        warmup: int = 2,
        max_warmup: int = 2,
        hope: bool = False,
        probe: int = 16,
        max_probe: int = 1024,
        probe_cost: float = 0.005,
        measure: bool = False,
        switch_prior: float = 2.0,
        gate: bool = True,
        gate_every: int = 0,
        gate_margin: float = 0.25,
        surprise: float = 2.0,
        drift: float = 2.5,
        carry: int = 4,
        relook: int = 0,
        fill_probe: int = 1,
        explore: float = 0.005,
        rank_every: int = 1,
        max_rank_every: int | None = None,
        rank_near: float = 0.8,
        shadow: bool = False,
        budget_from: int = 4,
        lately: int = 0,
        lately_prior: float = 3.0,
    ) -> None:
        self.est, self.cost, self.repair = estimates, cost, repair
        # while decoding, a step of a smaller tree (index; 0: none) every explore_every decodes,
        # spaced to lose at most ``explore`` of the time
        self.explore, self.explored, self.explore_every, self.since_explore = explore, 0, 0, 0
        self.explores_gated = 0  # explores in a row the draft gate turned into decodes
        self.hope = 0.0  # the tokens over its mean the explored tree's spacing hoped for
        # below ``trusted`` steps, a tree at its mean + 1 SE: explores spaced by it, and the
        # full tree as the current choice judged by it (:meth:`judged`)
        self.hoping = hope
        self.guard, self.margin, self.measure = guard, margin, measure
        self.switch_prior = switch_prior  # pseudo-steps of one token for a challenger tree
        self.evidence: dict[int, tuple[int, float]] = {}  # tree: (window steps, mean committed)
        self.filled: dict[int, float] = {}  # tree: share of window steps whose path fills it
        self.gating = gate and guard
        # modeled draft + verify of each tree at its budgets; before any prediction,
        # unbudgeted with independently routed tokens
        read_C = np.array([independent_distinct(n, top_k, cost.E) for n, _, _ in cost.trees])
        self.step_s_C = np.array(
            [cost.tree_seconds(c, read_C[c], np.array(0)) for c in range(len(cost.trees))]
        )
        self.best_rate = 0.0  # the best predicted tokens/s (the draft gate's exchange rate)
        self.gate_history = 8  # gated shares from fewer of a tree's steps are not trusted
        # each tree's last gate_history steps: 1 the gate decoded it, 0 it was verified
        self.gated_C = [deque(maxlen=self.gate_history) for _ in cost.trees]
        # the gate acts while the best tree is predicted less than this much faster than
        # decoding (and before any prediction): where trees clearly win, its per-step
        # estimates are too noisy to beat them
        self.gate_margin, self.close_call = gate_margin, True
        self.gate_every, self.since_gate = gate_every, 0  # while decoding: the gate's looks
        self.look_every, self.max_look = gate_every, 16 * gate_every
        self.gated: int | None = None  # the tree of a step the gate turned into a decode
        self.levels_V = budget_levels(top_k, cap, levels)
        if np.array_equal(self.levels_V, estimates.levels_V):  # one array: no compare per read
            self.levels_V = estimates.levels_V
        # a tree's window steps before its per-layer budgets are searched, and the full
        # tree's before a smaller tree may be switched to
        self.trusted = 8
        self.own_text = 4  # per-layer budgets from 4 steps where all are of the current text
        self.budget_from = budget_from  # ranked steps of a tree before a budget below the cap
        self.cap = cap
        self.replan_every, self.warmup = replan_every, warmup
        # the warm-up runs on past ``warmup`` steps, up to this many, while it is unclear
        self.max_warmup = max(max_warmup, warmup)
        window = estimates.window.maxlen
        self.max_replan = max(replan_every, window if max_replan is None else max_replan)
        self.replan_interval = replan_every  # doubles while replans change nothing
        # budgeted steps of the current choice since the replan, and how many of them had
        # their path touched by the budget, against the share the replan predicted
        self.touched_C = np.zeros(len(cost.trees))
        self.touched_n = self.touched = 0
        self.surprise = surprise
        # tokens committed by the current tree's steps since the replan (sum, steps), against
        # the window's mean and spread it predicted from; the window's steps at that replan
        self.drift, self.recent, self.spread_C = drift, [0, 0], np.zeros(len(cost.trees))
        self.below_cap_C = np.zeros(len(cost.trees))  # best budget below the cap / the cap
        # a resting tree step ranks one in rank_interval: rank_every, up to max_rank_every
        # while budgets are far from paying (``moe_spec.control.ranks``)
        self.rank_every = self.rank_interval = rank_every
        self.max_rank_every = rank_every if max_rank_every is None else max_rank_every
        self.rank_near = rank_near
        # the window's path need at the replan: mean, spread, ranked steps
        self.need_at_replan: tuple[float, float, int] = (0.0, 0.0, 0)
        # window steps when this request started; the first request learns in its warm-up
        self.learn_new = 4
        self.request_seen = -self.learn_new
        self.seen_at_replan = 0
        self.window_at_replan = 0  # a replan once the window has doubled since (below full)
        self.carry = carry  # window steps a new request starts from
        # a new request while on a smaller tree: the full tree's steps before a replan (0: off)
        self.relook = relook
        # a probe that a smaller tree's filled path started: full-tree steps, and those left
        self.fill_probe, self.probe_left = fill_probe, 0
        self.probe0, self.max_probe, self.probe_cost = probe, max_probe, probe_cost
        self.probe_every = self.floor = probe  # the floor: the interval before doublings
        self.trees = cost.trees
        self.new_shadows(shadow)
        self.new_lately(lately, lately_prior)
        L = estimates.L
        self.budget_L = np.full(L, cap, dtype=np.int64)
        self.choice = 0  # index into trees, or -1 for autoregressive
        self.budgets_C = [self.budget_L.copy() for _ in self.trees]
        self.predicted: dict[str, float] = {}
        self.tree_steps = self.since_replan = self.since_full = 0
        # the full tree's steps run since the text began (the first step, or a drift), every
        # one counted (resting ones enter no window once it holds ``trusted``): the hope ends
        # when they would have filled it
        self.full_run_steps = 0
        self.log_ratio = {TREE: 0.0, AUTOREGRESSIVE: 0.0}
        self.measured = {TREE: 0, AUTOREGRESSIVE: 0}
        self.current: StepPlan | None = None
        self.probing = False
        self.exploring = False  # whether the step planned is an explore (``explore``)
        self.last_probe: tuple[float, int] | None = None  # measured: (seconds, committed)
        self.prompt_ratio: tuple[int, float] | None = None  # last prompt: tokens, measured/modeled
        self.catching_up = False  # whether the next tree step reads a prompt into the draft
        self.after_decodes = False  # whether it reads decoded tokens into the draft
        self.caught_up_s: float | None = None  # the engine's timing of that catch-up
        self.warm_committed = [0, 0]  # the warm-up trees' committed tokens: sum, steps
        self.warm_squares = 0  # and the sum of their squares
        # the full tree's tokens/s at the budgets its ranked warm-up steps give (warm_budgets)
        self.warm_rate: float | None = None
        self.warm_seconds = [0.0, 0]  # the timed warm-up trees' seconds: sum, steps
        self.pause: int | None = None  # paused warm-up: decodes since a full tree to its probe
        self.why = ""
        # without the guard: (tree, plain decoding) tokens/s once the tree is predicted slower
        # than decoding without speculation (:meth:`against_decoding`), else None
        self.slower: tuple[float, float] | None = None
        self.replans = 0
        self.started = 0.0
        self.overhead_s = 0.0
        self.decisions = 0

    # -- before a step -----------------------------------------------------------------
    def plan(self) -> StepPlan:
        t0 = time.perf_counter()
        plan = self.decide()
        self.current, self.decisions = plan, self.decisions + 1
        self.overhead_s += time.perf_counter() - t0
        self.started = time.perf_counter()
        return plan

    def decide(self) -> StepPlan:
        full = self.trees[0]
        if self.tree_steps < self.warmup:
            if before := self.before_warmup_tree():
                return before
            self.budget_L[:] = self.budgets_C[0]  # the cap, or the extension's (warm_budgets)
            return StepPlan(TREE, *full, f"warm-up ({self.tree_steps}/{self.warmup} steps seen)")
        if measuring := self.measuring():
            return measuring
        if self.since_replan >= self.replan_interval or not self.predicted or self.grown():
            self.replan()
        elif surprise := self.surprised():
            if surprise == "drift":  # predict from the steps since the change alone
                self.est.forget(self.est.steps_seen - self.seen_at_replan)
                self.full_run_steps = 0  # and hope, as for a tree seen on few steps
            self.replan_interval = self.replan_every
            self.replan()
        if self.since_full >= self.probe_every:  # on the full tree: a run of gated steps
            self.budget_L[:] = self.budgets_C[0]
            self.probing = True
            return StepPlan(TREE, *full, f"probe the full tree (every {self.probe_every} steps)")
        if self.choice < 0 and self.explored and self.since_explore >= self.explore_every:
            self.since_explore, self.exploring = 0, True
            c, every = self.explored, self.explore_every
            self.budget_L[:] = self.budgets_C[c]
            reason = (
                f"explores with {self.arm_name(c)} (every {every} decodes: it shows acceptance)"
            )
            return StepPlan(TREE, *self.trees[c], reason)
        if (
            self.choice < 0
            and self.gating
            and self.gate_every
            and self.since_gate >= self.look_every
        ):
            self.since_gate = 0
            self.budget_L[:] = self.budgets_C[0]
            return StepPlan(TREE, *full, f"the gate judges the full tree ({self.why})")
        return self.plan_of(self.choice, self.why)

    def plan_of(self, choice: int, reason: str) -> StepPlan:
        if choice < 0:
            run, read = self.decode_run(), self.read_every()
            if read and run > read:  # the draft reads them: what a chain would commit here
                return StepPlan(AUTOREGRESSIVE, reason=reason, steps=read, read=True)
            return StepPlan(AUTOREGRESSIVE, reason=reason, steps=run)
        self.budget_L[:] = self.budgets_C[choice]
        return StepPlan(TREE, *self.trees[choice], reason)

    def predict(self) -> dict[int, float]:
        """Predicted tokens/s per arm (tree index, -1 autoregressive); sets their budgets."""
        predicted: dict[int, float] = {}
        for c in range(len(self.trees) if self.guard else 1):
            window = self.est.arrays(c, self.levels_V)
            if window[1].size == 0:
                continue
            budgets, ranked_S, ranked = self.tree_budgets(c, window)
            tp, exact_S = budgets.tokens_per_s, budgets.exact_S
            if 0 < ranked < self.budget_from:  # budgets held at the cap: the tree is judged at
                tp *= max(1.0, budgets.below_cap)  # what they would give (nor do a few short
                # paths disprove them: judged at the cap, a chain was decoded after 2 such steps)
            committed_S = window[1]
            S, depth = committed_S.size, max(self.trees[c][2], 1)
            mean, self.spread_C[c] = mean_and_spread(committed_S.tolist())
            self.evidence[c] = (S, mean)
            self.filled[c] = np.count_nonzero(committed_S > depth) / S
            touched = np.count_nonzero(exact_S < committed_S[ranked_S]) if ranked else 0
            self.touched_C[c] = touched / max(ranked, 1)
            predicted[c] = self.with_gated(c, committed_S, tp / self.ratio(TREE))
            if (shadowed := self.shadowed(c)) is not None:  # the decoded text's chains
                predicted[c] *= shadowed / mean
                self.evidence[c] = (S, shadowed)
        self.lately_scale(predicted)
        if self.guard:
            predicted[-1] = 1.0 / self.decode_seconds()
        self.best_rate = max(predicted.values(), default=0.0)
        self.rate_C = dict(predicted)
        return predicted

    def tree_budgets(
        self, c: int, window: tuple[np.ndarray, np.ndarray, np.ndarray]
    ) -> tuple[Budgets, np.ndarray, int]:
        """Tree ``c``'s best budgets over its ``window`` (:meth:`AcceptanceEstimates.arrays`),
        kept with its modeled step at them (``budgets_C``, ``step_s_C``, ``below_cap_C``); with
        which window steps were ranked, and how many (they alone tell what a budget would
        keep: steps that rested did not). Per layer for the full tree and the current
        choice, once 8 steps show it, or 4 of the current text alone (L budgets fitted to two
        warm-up steps are noise, and to carried steps of another text, wrong); for the
        others, and before that, one budget for all layers; the cap below ``budget_from``
        ranked steps."""
        ranked_S = self.est.ranked_S(c)
        ranked = int(np.count_nonzero(ranked_S))
        passes = 2 if c in (0, self.choice) and ranked >= self.per_layer_from() else 0
        budgets = window_budgets(
            self.cost, c, window, ranked_S, self.levels_V, self.repair, passes, self.budget_from
        )
        self.budgets_C[c], self.step_s_C[c] = budgets.B_L, budgets.step_s
        self.below_cap_C[c] = budgets.below_cap
        return budgets, ranked_S, ranked

    def per_layer_from(self) -> int:
        """Window steps of a tree before its per-layer budgets are searched: ``trusted`` (8),
        or ``own_text`` (4) while every window step is of the current text (none carried
        from the last request)."""
        own = self.est.steps_seen - max(self.request_seen, 0)
        return self.own_text if own >= len(self.est.window) else self.trusted

    def decode_seconds(self) -> float:
        return self.cost.decode_s * self.ratio(AUTOREGRESSIVE)

    def switch(self, predicted: dict[int, float]) -> None:
        """Move to the best arm if it beats the current one by more than ``margin``; trees
        count with their :meth:`judged` prediction."""
        trees = [tp for c, tp in predicted.items() if c >= 0]
        self.close_call = -1 not in predicted or max(trees, default=0.0) < predicted[-1] * (
            1 + self.gate_margin
        )  # the draft gate acts only then
        unshrunk, predicted = predicted, {c: self.judged(c, tp) for c, tp in predicted.items()}
        names = {c: self.arm_name(c) for c in predicted}
        self.predicted = {names[c]: tp for c, tp in predicted.items()}

        def best_of(arms, by: dict[int, float]) -> int:
            return max(arms, key=lambda c: (by[c], -abs(c)))  # ties: the full tree

        best, waits = best_of(predicted, predicted), ""
        hoped = self.hoped_steps()
        full_steps = self.evidence.get(0, (0, 0.0))[0]
        # the full tree without its hope: what a smaller tree is weighed against
        as_predicted = {**predicted, 0: unshrunk[0]} if hoped else predicted
        if hoped and full_steps >= self.trusted:
            # from ``trusted`` full-tree steps its hope holds it against decoding alone: a
            # smaller tree that beats it as predicted, and beats decoding, is judged against
            # it as predicted (its steps still show its levels' acceptance; decodes show none)
            tree = best_of([c for c in predicted if c >= 0], as_predicted)
            if tree > 0 and as_predicted[tree] >= predicted.get(-1, 0.0):
                predicted, best, hoped = as_predicted, tree, 0
        if best > 0 and best != self.choice and full_steps < self.trusted:
            # a smaller tree waits for the full tree's steps to judge it, unless decoding
            # would be chosen instead (that ends the full tree's steps alike), the full tree
            # judged as predicted: its hope holds it against decoding, not a smaller tree
            held = best_of([c for c in predicted if c <= 0 or c == self.choice], as_predicted)
            if held >= 0:
                best = held
                waits = (
                    f" (a smaller tree waits for {self.trusted} full-tree steps, {full_steps} seen)"
                )
        current = predicted.get(self.choice, 0.0)
        summary = ", ".join(f"{names[c]} {tp:.4g}" for c, tp in predicted.items())
        if hoped:
            waits += f" ({names[self.choice]} at its mean + 1 SE: {hoped} steps)"
        if best != self.choice and predicted[best] > current * (1 + self.margin):
            if best == 0:  # back on the full tree: its own steps show it from here
                self.clear_shadows()
            self.choice = best
            self.why = f"switched to {names[best]}: predicted tok/s {summary}{waits}"
        else:
            self.why = f"keeps {self.arm_name(self.choice)}: predicted tok/s {summary}{waits}"
        self.space_looks(predicted, unshrunk)
        if not self.guard and self.choice in predicted:
            self.why += self.against_decoding(predicted[self.choice])
        if self.explored:
            name = self.arm_name(self.explored)
            self.why += f"; explores with {name} every {self.explore_every} decodes"

    def against_decoding(self, tree_rate: float) -> str:
        """Without the guard (a server that runs its configured tree every step, or
        ``guard=false``): the reason's note of decoding without speculation (no draft
        forward at all). :attr:`slower` (the tree's ``tree_rate`` tokens/s and decoding's,
        or None) is set when decoding is predicted more than ``margin`` faster than the tree
        and cleared once the tree is predicted at least as fast, so a tree near the line
        does not flap; judged on predictions from ``trusted`` (8) window steps or more, and
        held through fewer (after a drift or a new request: the note then says so)."""
        plain = 1.0 / (self.cost.plain_decode_s * self.ratio(AUTOREGRESSIVE))
        judged = self.evidence.get(self.choice, (0, 0.0))[0] >= self.trusted
        if judged:
            if tree_rate >= plain:
                self.slower = None
            elif self.slower is not None or tree_rate * (1 + self.margin) < plain:
                self.slower = (tree_rate, plain)
        note = f"; decoding without speculation {plain:.4g}"
        if self.slower is None:
            return note
        faster = f"{self.slower[1] / self.slower[0] - 1:.0%} faster"
        if judged:
            return f"{note}, {faster} (the tree runs every step here)"
        return f"{note}, {faster} at the last verdict (fewer than {self.trusted} steps since)"

    def judged(self, c: int, tp: float) -> float:
        """Tree ``c``'s predicted tokens/s as :meth:`switch` weighs it: a tree other than the
        current choice with ``switch_prior`` pseudo-steps of one committed token; the current
        choice, if the full tree, with ``hope`` and below a full window of steps, at its mean
        committed tokens plus one standard error, at most its depth + 1 (:meth:`hoped_steps`);
        autoregressive decoding as predicted."""
        if c < 0 or c not in self.evidence:
            return tp
        steps, mean = self.evidence[c]
        if c == self.choice:
            if not self.hoped_steps():
                return tp
            hoped = mean + self.standard_error(c)
            return tp * min(hoped, self.trees[c][2] + 1) / mean  # at most its depth + 1
        prior = self.switch_prior
        return tp * (steps + prior / max(mean, 1.0)) / (steps + prior)

    def hoped_steps(self) -> int:
        """The window steps the full tree, the current choice, is predicted from where
        :meth:`judged` hopes it commits one standard error more (the spread at least one
        token): with ``hope`` and the guard, fewer than fill the window (24 by default)
        while the full tree has run fewer steps than that, every one counted (past its
        learning steps the window takes one resting step in up to 32, so counted in the
        window the hope outlived requests), none of its last steps turned into a decode by
        the draft gate (those show the draft unsure, and enter no window: the hope would hold
        a tree the gate decodes); else 0.
        The configured tree is left for decoding or a smaller tree on what its steps clearly
        show, not on a few short paths: measured (``bench/auto_loss_trace.py``), a request's
        first steps commit less than its later ones, a chain left after its warm-up came back
        a few looks later, if at all, and one left on the mean of 8 steps (a standard error of
        about 0.4 tokens, where a chain pays from 1.74) was decoded for the rest of a request
        whose next 8 steps committed 2.5 a step (BENCHMARKS.md, forty-first session). A full
        window is judged as predicted, so a tree that loses on 24 steps is still left. A
        smaller tree chosen is judged as predicted: its paths fill it often, and a hope above
        its mean would hold it against the full tree."""
        if not (self.hoping and self.guard) or self.choice != 0 or any(self.gated_C[0]):
            return 0
        steps, mean = self.evidence.get(0, (0, 0.0))
        if self.full_run_steps >= self.est.window.maxlen:  # it ran enough steps to fill it
            return 0
        return steps if 0 < steps < self.est.window.maxlen and mean > 0 else 0

    def arm_name(self, c: int) -> str:
        if c < 0:
            return AUTOREGRESSIVE
        n, w, d = self.trees[c]
        return f"tree {n}/{w}/{d} B={','.join(map(str, self.budgets_C[c].tolist()))}"

    def ratio(self, kind: str) -> float:
        """Measured over modeled seconds for this kind of step (1 without ``measure``)."""
        if not self.measure:
            return 1.0
        kinds = [k for k in (kind, TREE, AUTOREGRESSIVE) if self.measured[k]]
        return math.exp(self.log_ratio[kinds[0]]) if kinds else 1.0

    # -- after a step ------------------------------------------------------------------
    def observe(
        self,
        outcome: StepOutcome,
        rank_LE: torch.Tensor | None = None,
        ids_LNK: torch.Tensor | None = None,
    ) -> None:
        t0 = time.perf_counter()
        seconds = t0 - self.started if self.started else 0.0  # 0: a step this guard did not plan
        self.started = 0.0
        explored, self.exploring = self.exploring, False
        if outcome.kind == AUTOREGRESSIVE:
            self.after_decodes = True
        if outcome.kind == AUTOREGRESSIVE and self.gated is not None:  # the gate's decode
            self.gated_C[self.gated].append(1)
            if self.choice < 0:  # a look the gate turned down: look half as often
                self.look_every = min(2 * self.look_every, self.max_look)
            if explored and self.explores_gated < 10:  # turned down: explore half as often
                self.explores_gated += 1
                self.explore_every *= 2
            self.since_replan += 1
            self.gated = None
            self.since_full += 1
        elif outcome.kind == AUTOREGRESSIVE:  # a run of planned decodes
            self.note_time(AUTOREGRESSIVE, seconds / outcome.steps, self.cost.decode_s)
            self.since_full += outcome.steps
            self.since_gate += outcome.steps
            self.since_explore += outcome.steps
        else:
            if outcome.tree in self.trees:  # one of the planned trees: its histories
                ran = self.trees.index(outcome.tree)
                self.gated_C[ran].append(0)
                self.note_lately(ran, outcome.committed)
            self.look_every = self.gate_every  # the draft was sure: look as often again
            self.est.observe(outcome, rank_LE, ids_LNK)
            if explored:
                self.explores_gated = 0
            if (
                outcome.exact is not None
                and self.choice >= 0
                and outcome.tree == self.trees[self.choice]
                and (self.budget_L < self.cost.E).any()
            ):
                self.touched_n += 1
                self.touched += outcome.exact < outcome.committed
            if self.choice >= 0 and outcome.tree == self.trees[self.choice]:
                self.recent[0] += outcome.committed
                self.recent[1] += 1
            full = outcome.tree == self.trees[0]
            self.tree_steps += 1
            self.full_run_steps += int(full)
            self.since_replan += 1
            self.since_full = 0 if full else self.since_full + 1
            self.shadow_step(outcome)
            if (
                self.explore and not full and outcome.committed > max(outcome.tree[2], 1)
            ):  # a smaller tree's path filled it: the full tree might commit more
                self.since_full, self.probe_left = self.probe_every, self.fill_probe
            if explored:  # decide again now, whatever it committed: below the mean, a
                # schedule made from a few lucky steps would explore on, unrevised; above it,
                # the text may have turned easy, and replans count tree steps (while decoding,
                # one an explore: 8 of them were hundreds of decodes)
                self.since_replan = self.replan_interval
            if self.probing and self.probe_left > 1 and self.choice != 0:
                # a probe a filled path started runs on: its first step starts where the
                # smaller tree's accepted run ended, often where the text turns hard
                self.probe_left -= 1
                self.since_full = self.probe_every
            elif self.probing:  # decide again right after a probe
                self.probe_left = 0
                self.since_replan = self.replan_interval
                if self.measure and seconds > 0:
                    self.last_probe = (seconds, outcome.committed)
            if self.tree_steps <= self.warmup:
                self.warm_committed[0] += outcome.committed
                self.warm_committed[1] += 1
                self.warm_squares += outcome.committed**2
                if self.tree_steps == self.warmup < self.max_warmup:
                    self.warm_budgets()
                    if self.unclear():
                        self.warmup += 1
            # a catch-up on a prompt or decodes comes off the step's time; a step that read
            # a prompt into the draft in a time not reported is no measure of a tree step's
            unseen = self.catching_up or self.after_decodes
            catch_up = (self.caught_up_s or 0.0) if unseen else 0.0
            timed = outcome.tree in self.trees and not (
                self.catching_up and self.caught_up_s is None
            )
            if self.measure and timed and self.est.window:
                self.note_time(TREE, seconds - catch_up, self.modeled_step(outcome))
                if self.tree_steps <= self.warmup and seconds > catch_up:
                    self.warm_seconds[0] += seconds - catch_up
                    self.warm_seconds[1] += 1
            self.catching_up = self.after_decodes = False
        self.caught_up_s = None
        self.overhead_s += time.perf_counter() - t0

    def exclude_time(self, seconds: float) -> None:
        """Host ``seconds`` spent on the step being observed that are not its own (a first
        call that compiles a kernel): with ``measure``, they come off its measured time."""
        if self.started:
            self.started += seconds

    def modeled_step(self, outcome: StepOutcome) -> float:
        c = self.trees.index(outcome.tree)
        used_L = self.est.window[-1].used_CL[c]  # the latest step the window took
        read = np.minimum(self.budget_L, used_L).mean()
        exact = outcome.committed if outcome.exact is None else outcome.exact
        tail = outcome.committed - exact if self.repair else 0
        budgeted = bool((self.budget_L < self.cost.E).any())
        return float(self.cost.tree_seconds(c, np.array(read), np.array(max(tail, 0)), budgeted))

    def note_time(self, kind: str, seconds: float, modeled: float) -> None:
        if not self.measure or modeled <= 0 or seconds <= 0:
            return
        x = math.log(seconds / modeled)
        n = self.measured[kind]
        self.log_ratio[kind] = x if n == 0 else 0.8 * self.log_ratio[kind] + 0.2 * x
        self.measured[kind] = n + 1
