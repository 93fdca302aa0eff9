"""When :class:`moe_spec.control.Guard` predicts again, and what a new request resets.

The guard's prediction is redone every ``replan_every`` tree steps, and when the window, not
yet full, has doubled since the last replan (:meth:`Guard.grown`); after a replan that changed
neither the choice nor its budgets, made while the guard no longer learns
(:meth:`Guard.learning`), the interval doubles, up to ``max_replan`` (the window's
length: by then every step it predicts from is new), and any change resets it (a replan prices
every candidate tree: most of the controller's time). Two surprises replan at once and reset
the interval (:meth:`Guard.surprised`): the budget touched the accepted path ``surprise`` steps
more often than predicted, or the current tree's committed tokens, or the budget its accepted
paths needed, drifted ``drift`` standard errors from the window's mean (then the window keeps
only the steps since: the text has changed).

A new request (:meth:`Guard.new_request`) is new text: the window keeps only its latest
``carry`` steps (then every step enters until it is full), the drift check counts from its
start (a drift keeps only the new text's steps), its first ``learn_new`` (4) tree
steps all enter the window (:meth:`Guard.learning_new_text`: a step that keeps every expert
otherwise enters only when it ranks, one in ``rank_every``; a resting one enters unranked,
with its tokens and experts), so that a new text that commits other tokens than the carried
steps is told apart within 4 steps, and probes start again; so do all tree steps while the
window holds fewer than ``trusted`` (8) (:meth:`Guard.learning`: a plan made from the
warm-up's 2 steps is remade from 4).
"""

from __future__ import annotations

import math


def mean_and_spread(values: list[float]) -> tuple[float, float]:
    """Mean and standard deviation (over n) of ``values``; ``(0, 0)`` when empty (in Python:
    the window's few dozen numbers take less time than numpy's calls)."""
    if not values:
        return 0.0, 0.0
    n = len(values)
    mean = sum(values) / n
    return mean, math.sqrt(sum((x - mean) ** 2 for x in values) / n)


class Replans:
    """The replans' part of :class:`moe_spec.control.Guard` (a mixin: it reads the guard's
    estimates, choice and counters; :meth:`replan` calls its ``predict`` and ``switch``)."""

    def surprised(self) -> str:
        """Why to replan before the interval is up ("" if not): the budget touched the
        accepted path ``surprise`` steps more often than the last replan predicted
        ("touched"), or at least 4 of the current tree's steps since then (since the request
        started, if later: :meth:`new_request`) committed a mean
        that differs from that of the window's (at least 4) steps by more than ``drift``
        standard errors, the spread taken as at least one token, or at least 4 steps that
        entered the window since then (and some ranked before) needed a mean budget to keep
        their accepted paths that differs from the window's at the replan by more than
        ``drift`` standard errors, the spread taken as at least one expert ("drift": the text
        has changed, as at a new request, and the window predicts for the old one), or the
        current tree's steps since the replan put it behind decoding, resting steps included
        ("behind": :meth:`moe_spec.control.lately.Lately.behind`; the replan reads them)."""
        if self.choice < 0:
            return ""
        expected = self.touched_n * self.touched_C[self.choice]
        if self.surprise and self.touched - expected >= self.surprise:
            return "touched"
        total, n = self.recent
        steps, mean = self.evidence.get(self.choice, (0, 0.0))
        new = self.est.steps_seen - self.seen_at_replan
        committed = self.drift and n >= 4 and steps >= 4 and new >= 2
        if committed and self.drifted(total / n, n, mean, self.spread_C[self.choice]):
            return "drift"
        if self.behind(total, n, mean, self.spread_C[self.choice]):
            return "behind"
        if not self.drift:
            return ""
        need_N = self.est.recent_need(new) if new < len(self.est.window) else ()
        # ranked steps alone know their need: judged against a window that had some
        if len(need_N) >= 4 and self.need_at_replan[2]:
            need = float(need_N.sum() / need_N.size)
            if self.drifted(need, need_N.size, *self.need_at_replan[:2]):  # mean, spread
                return "drift"
        return ""

    def drifted(self, recent: float, n: int, mean: float, spread: float) -> bool:
        """Whether the mean ``recent`` of ``n`` steps is more than ``drift`` standard errors
        from the window's ``mean``, its ``spread`` taken as at least 1 (a token, an expert:
        the spread of a few steps is no reference)."""
        return abs(recent - mean) > self.drift * max(spread, 1.0) / math.sqrt(n)

    def learning_new_text(self) -> bool:
        """Whether fewer than ``learn_new`` steps entered the window since this request
        started (after the first: that one's warm-up ranks): its tree steps rank, none rests."""
        return self.est.steps_seen - self.request_seen < self.learn_new

    def learning(self) -> bool:
        """Whether every tree step enters the window (a resting one with its tokens and
        experts, unranked: ``moe_spec.policies.auto.Auto.learns``): a new request's first
        steps (:meth:`learning_new_text`), and while the window holds fewer than ``trusted``
        (8) steps, so that a plan made from the warm-up's 2 steps is made again from 4 two
        steps later (:meth:`grown`). Measured on a CPU (smollm2-moe, fresh requests): a full
        tree kept after two warm-up steps of 4 tokens, resting, ran 7 more steps of 1-3
        tokens before the window had grown enough to replan. Until the thirty-third session
        these steps all ranked, and on a short request nearly every step paid the selection;
        now one at the cap ranks only where a budget comes close to paying
        (``moe_spec.policies.auto.Auto.rests``)."""
        return self.learning_new_text() or len(self.est.window) < self.trusted

    def new_request(self) -> None:
        """A new request: its text is new. The window keeps its latest ``carry`` steps (the
        end of the last text, not all of it: a long request of another kind would hold the
        plan for many steps), and every step of the new text enters it until it is full. The
        next replan comes as it would have (the interval, a drift, a surprise; not as the
        window grows back: at every request that would add replans to the steps it already
        adds to the window). Resting steps rank ``rank_every`` apart again
        (``moe_spec.control.ranks``): spaced on the last text, they kept a warm policy at the
        cap through a text whose budgets paid. Off the full tree, probes start again
        ``probe`` steps apart (the floors of :meth:`switch` still hold): a full tree that
        lost on the old text may win on the new one. The drift check (:meth:`surprised`)
        counts the new text's steps alone, and a drift keeps only them in the window: the
        steps since the last replan were the old text's, as the carried ones are. Measured
        (the toy's chain priced as SGLang runs it, warm, 8 prompts of set A): counted from the
        last replan, a text whose chain committed 1 token a step was judged against 2 steps
        of the old text that stayed in the window, and the chain ran 47 steps where a fresh
        guard decodes after 8 (BENCHMARKS.md, forty-ninth session).

        With ``relook`` (0, off, by default), a guard on a smaller tree goes back to the full
        tree and replans after ``relook`` of its steps. Measured (BENCHMARKS.md, fifty-seventh
        session): a warm guard kept the 4-token tree of one request through the next four,
        each 4-23% behind the full tree, its estimate of the full tree mixing the last text's
        steps with a few probes of the new one; ``relook=4`` took that cell (smollm2-moe, set
        A, OLMoE-1B-7B, 96-token requests) from 0.952x to 1.014x unbudgeted speculation, and
        cost smollm2-moe's warm A/Qwen3 cell 6% on 48-token requests and the toy's warm
        B/Qwen3 4% on 64-token ones: not the default."""
        self.clear_shadows(new_request=True)  # of the last text
        if self.tree_steps < self.warmup:
            return
        self.request_seen = self.est.steps_seen
        self.est.forget(self.carry)
        self.keep_lately(self.carry)
        self.window_at_replan = self.est.window.maxlen
        # the drift check counts the new text's steps alone, and a drift keeps only them
        self.seen_at_replan, self.recent = self.request_seen, [0, 0]
        self.rank_one_in(self.rank_every)  # budgets may pay on the new text
        if self.relook and self.guard and self.choice > 0:  # the new text on the full tree
            self.choice, self.since_replan = 0, max(self.replan_interval - self.relook, 0)
            self.why = f"a new request: the full tree for {self.relook} steps, then a replan"
        if self.choice != 0:  # the doublings go, the floors stay
            self.probe_every = min(max(self.probe0, self.floor), self.max_probe)

    def grown(self) -> bool:
        """Whether the window, not yet full, has doubled since the last replan: a plan
        made from 2 steps is made again at 4, 8 and 16 (the replan interval counts tree
        steps, and a resting full tree enters only one ranked step in ``rank_every``)."""
        n = len(self.est.window)
        return n < self.est.window.maxlen and n >= 2 * max(self.window_at_replan, 1)

    def replan(self) -> None:
        """Predict every arm's tokens/s from the window; switch with hysteresis."""
        self.since_replan = 0
        self.window_at_replan = len(self.est.window)
        self.touched_n = self.touched = 0
        self.recent = [0, 0]
        self.seen_at_replan = self.est.steps_seen
        need_S = self.est.recent_need(len(self.est.window)).tolist()
        self.need_at_replan = (*mean_and_spread(need_S), len(need_S))
        self.replans += 1
        before = self.held()
        self.switch(self.predict())
        self.space_ranks()
        # a first one changes everything; one made while the guard learns (a new text's first
        # steps, a window under ``trusted``) is provisional: the next comes at the interval
        steady = self.held() == before and self.replans > 1 and not self.learning()
        self.replan_interval = (
            min(2 * self.replan_interval, self.max_replan) if steady else self.replan_every
        )

    def held(self) -> tuple[int, list[int] | None]:
        """The current choice and its budgets: what a replan may change."""
        return self.choice, (self.budgets_C[self.choice].tolist() if self.choice >= 0 else None)
