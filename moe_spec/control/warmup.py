"""The measured warm-up of :class:`moe_spec.control.Guard`: no warm-up tree that clearly loses.

The first ``warmup`` tree steps run the full tree unbudgeted, and more, up to ``max_warmup`` (here 2
by default, off; ``auto`` sets 6 for a tree), while the warm-up is unclear
(:meth:`MeasuredWarmup.unclear`): its trees' mean committed tokens lose to decoding, but one
standard error more would pay; once ``budget_from`` (4) of its steps were ranked, the tree is
priced, and its further warm-up steps run, at the budgets they give (without ``measure``:
:meth:`MeasuredWarmup.warm_budgets`). The first steps after a prompt often commit less than the
text's later ones (smollm2-moe's H200 head: 1-2 tokens where the same prompts' trees average
3.6-4.1), so two of them sent a strong draft to decoding for a whole request; two steps of one token
each, on a weak draft, still end it. With ``measure`` and the prompt's forward timed
(:meth:`MeasuredWarmup.prefilled`), unless the full tree, priced from it
(:meth:`MeasuredWarmup.tree_ratio`) or from the warm-up trees timed so far, would clearly lose to
decoding at the acceptance prior: then it decodes until a probe
(:meth:`MeasuredWarmup.before_warmup_tree`; on a CPU, where a tree step costs 3-5 decodes, the
warm-up trees were a fresh request's whole loss). A tree step after a prompt or decodes also catches
the draft up on them: the engine's timing of that (:meth:`MeasuredWarmup.caught_up`) comes off the
step's, and a prompt's catch-up not timed leaves the step untimed.
"""

from __future__ import annotations

import math

import numpy as np

from moe_spec.control.steps import AUTOREGRESSIVE, TREE, StepPlan


class MeasuredWarmup:
    """The measured warm-up's part of :class:`moe_spec.control.Guard` (a mixin: it reads
    the guard's cost tables, estimates, warm-up counts and measured ratios)."""

    def measuring(self) -> StepPlan | None:
        """With ``measure`` (and the guard), a decode that times a decode, until two have."""
        if self.guard and self.measure and self.measured[AUTOREGRESSIVE] < 2:
            return StepPlan(AUTOREGRESSIVE, reason="measuring an autoregressive step's time")
        return None

    def prefilled(self, tokens: int, seconds: float) -> None:
        """The prompt's forward: ``tokens`` tokens in ``seconds`` (the engine's wall time).
        With ``measure``, its measured over modeled seconds prices a tree step before any
        has run (:meth:`before_warmup_tree`); the latest prompt's counts."""
        modeled = self.cost.forward_seconds(tokens) if tokens > 0 else 0.0
        if self.measure and seconds > 0 and modeled > 0:
            self.prompt_ratio = (tokens, seconds / modeled)
        self.catching_up = True  # the next tree step also reads the prompt into the draft

    def caught_up(self, tokens: int, seconds: float) -> None:
        """The draft read ``tokens`` tokens it had not seen before the planned tree, in
        ``seconds`` (the engine's wall time). After a prompt or decodes (a catch-up a tree
        step after a tree does not make) it comes off that step's measured time; the
        reference engine's also holds the last tree's path, a few tokens. That catch-up is
        then charged to neither kind of step, except in a probe's loss (``last_probe``)."""
        self.caught_up_s = seconds

    def tree_ratio(self) -> float:
        """Measured over modeled seconds for a forward of the full tree's N tokens, before
        any tree ran: linear in tokens through a decode's (1 token) and the prompt's (P
        tokens) ratios, at N. A device whose time grows with tokens where the modeled one's
        does not (a CPU's compute against a weight-bound GPU) adds a per-token term to the
        ratio: on an Intel Xeon, smollm2-moe's prompts (under the H200 model) went 14.0,
        14.2, 15.4, 18.7, 39.6, 104 at 1, 9, 18, 32, 128 and 300 tokens, and its 32-token
        tree step 24; a line from 1 to 300 gives 23.3 at 32, a line in log tokens 47.3.
        Where P < N the line is extended past the prompt, kept between the lower of the two
        ratios and the prompt's times ``N / P`` times the modeled forward of P over that of
        N (a forward's time at most proportional to its tokens); a prompt of one token gives
        its own."""
        tokens, prompt = self.prompt_ratio
        n = self.trees[0][0]
        if tokens < 2:
            return prompt
        decode = self.ratio(AUTOREGRESSIVE)
        ratio = decode + (prompt - decode) * (n - 1) / (tokens - 1)
        if tokens >= n:
            return ratio
        forward = self.cost.forward_seconds
        most = prompt * n / tokens * forward(tokens) / forward(n)
        return min(max(ratio, min(decode, prompt)), most)

    def before_warmup_tree(self) -> StepPlan | None:
        """With ``measure``, before each warm-up tree step: decodes, not the tree, while the
        full tree is predicted to lose clearly (decoding more than ``gate_margin`` faster) at
        the acceptance prior's tokens a step (``1 + sum 2**-d``, about 2; the warm-up trees'
        mean where higher: one or two steps may not lower it), its step priced as the mean
        measured seconds of the warm-up trees timed so far (less the draft's catch-up), or
        before any as the modeled one times :meth:`tree_ratio` (from the prompt's forward,
        :meth:`prefilled`: a forward of many tokens is what a verify is). The first two
        decodes measure a decode's time. A pause probes the full tree once the prior's loss
        over the warm-up trees still to run (priced as the pause starts) is at most
        ``probe_cost`` of the decodes' time since the last full tree (``probe`` to
        ``max_probe`` steps; at most ``4 * probe`` after a timed tree, which may have been a
        cold first call; a new request does not restart this count); that probe is the next
        warm-up tree, and after the warm-up probes are spaced as before. The test runs before
        every plan: a tree that no longer clearly loses ends the pause. None: run a warm-up
        tree now."""
        total_s, timed = self.warm_seconds
        if (
            not (self.guard and self.measure)
            or not timed
            and (self.tree_steps or self.prompt_ratio is None)
        ):
            return None  # nothing to price a tree from, or a warm-up tree ran untimed
        if measuring := self.measuring():
            return measuring
        tree_s = self.warm_tree_seconds()  # the warm-up trees' own, or from the prompt's
        decode_s = self.decode_seconds()
        committed = 1.0 + float(self.est.reach_prior_D[1 : self.trees[0][2] + 1].sum())
        total, steps = self.warm_committed
        committed = max(committed, total / steps) if steps else committed
        if committed / tree_s * (1 + self.gate_margin) >= 1.0 / decode_s:
            self.pause = None
            return None
        if self.pause is None:  # a pause starts: how long until its probe
            trees = self.warmup - self.tree_steps
            loss = trees * (tree_s - committed * decode_s) / (self.probe_cost * decode_s)
            # one or two timed trees may have been cold (a first call's allocations)
            longest = min(4 * self.probe0, self.max_probe) if timed else self.max_probe
            self.pause = min(max(self.probe0, math.ceil(loss)), longest)
        if self.since_full >= self.pause:  # the probe: a warm-up tree
            self.pause = None
            return None
        seen = f"warm-up paused ({self.tree_steps}/{self.warmup} steps seen)"
        priced = "measured" if timed else "priced from the prompt's forward"
        reason = (
            f"{seen if self.tree_steps else 'no tree yet'}: a full-tree step {priced} "
            f"({tree_s * 1e3:.3g} ms) at {committed:.2f} tokens loses to a decode of "
            f"{decode_s * 1e3:.3g} ms; probe it in {self.pause - self.since_full} steps"
        )
        return StepPlan(AUTOREGRESSIVE, reason=reason, steps=self.pause - self.since_full)

    def warm_budgets(self) -> None:
        """At the end of the warm-up (and of each step it runs on), once ``budget_from`` (4)
        of the window's steps were ranked: the full tree's budgets from them, and its
        modeled step at them (:meth:`moe_spec.control.Guard.tree_budgets`). The warm-up's
        further trees run at those budgets, and :meth:`unclear` prices the tree at them:
        judged unbudgeted, a tree that its budgets make pay ran its warm-up on at the cap
        (measured: the toy's 32-token tree on Qwen3-30B-A3B, set A, low-acceptance prompts
        warmed up for 6 steps at 2 tokens each, 0.973x the best fixed budget; BENCHMARKS.md,
        forty-second session). Not with ``measure``: there the warm-up's timed trees, at the
        cap, price the tree."""
        if self.measure:
            return
        if np.count_nonzero(self.est.ranked_S(0)) >= self.budget_from:  # else: the cap
            self.warm_rate = self.tree_budgets(0, self.est.arrays(0, self.levels_V))[0].tokens_per_s

    def unclear(self) -> bool:
        """Whether the warm-up runs one more full tree (up to ``max_warmup`` steps): its
        trees' mean committed tokens ``m`` lose to decoding, but ``m`` plus one standard
        error (the spread taken as at least one token) would pay for the full tree's step,
        priced as :meth:`before_warmup_tree` prices it (unbudgeted), or, once
        :meth:`warm_budgets` planned them, at its budgets' predicted tokens/s (without
        repair, the tokens they would lose counted)."""
        total, n = self.warm_committed
        if not self.guard or n == 0 or self.warmup >= self.max_warmup:
            return False
        mean = total / n
        spread = math.sqrt(max(self.warm_squares / n - mean * mean, 1.0))
        if self.warm_rate:  # mean tokens a step at the budgets' rate: the step's price
            break_even = mean / (self.warm_rate * self.decode_seconds())
        else:
            break_even = self.warm_tree_seconds() / self.decode_seconds()
        return mean < break_even <= mean + spread / math.sqrt(n)

    def warm_tree_seconds(self) -> float:
        """A full unbudgeted tree's step: the timed warm-up trees' mean seconds (the next
        one is the same full tree), or the modeled one (times :meth:`tree_ratio` with
        ``measure`` and a timed prompt)."""
        total_s, timed = self.warm_seconds
        if timed:
            return total_s / timed
        ratio = self.tree_ratio() if self.measure and self.prompt_ratio else self.ratio(TREE)
        return float(self.step_s_C[0]) * ratio
