"""The draft gate of :class:`moe_spec.control.Guard`: a tree only where this step's draft pays.

Before the planned tree is grown (:meth:`DraftGate.gate`, with ``gate``), the draft's first
level (the log-probabilities of the root's ``width`` most likely children, known once the
draft has caught up) gives the step's own expected committed tokens, ``1 + min(1, sum_i
a(q_i)) * (1 + m)``: ``a`` the calibrated acceptance of a child of the root of path
probability ``q_i`` (the first level's own calibration; only one child of the root can be
accepted), ``m`` the tokens expected past depth 1 from the acceptance per depth. With ``R``
the best predicted tokens/s the tree is drafted and verified when ``expected - R * rest_s >=
1 - R * decode_s`` (``rest_s``: the tree step less its first draft forward, already run),
else the root is decoded alone. Draft confidence varies from step to step far more than the
window's mean does, so this aims the tree at the steps it pays on; a tree's prediction
counts its gated steps (one token for a draft forward and a decode) at their share of its
last ``gate_history`` (8) steps, or, before that, at the share the gate would gate of the
window's steps (their first-level bins are kept there) (:meth:`DraftGate.with_gated`).

The gate rests in warm-up: judged by the priors and one or two steps, a tree it turns down
teaches nothing, so an early pessimistic estimate would stay (measured: the toy's warm-up
decoded where its trees win); before the first prediction it trades at decoding's rate. Not
in a probe, and not while the best tree is predicted more than ``gate_margin`` (25%) faster
than decoding: there the tree clearly wins and the gate's per-step estimates are too noisy
to beat it. On the full tree a run of ``probe_every`` gated steps ends in a probe (a gate
that turns every tree down would learn nothing more). With ``gate_every`` (0: off, the
default), while the guard decodes, every ``gate_every``-th step is planned as the full tree
for the gate to judge (the draft catches up on the decoded tokens in one forward): the tree
runs where the draft is sure, the rest are decodes, and these looks are the gated share the
full tree's prediction is made from. A look the gate turns down doubles the interval (up to
``16 * gate_every``); a tree step resets it.

Shape legend: W first-level nodes, S window steps, B calibration bins.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from moe_spec.control.steps import TREE


class DraftGate:
    """The gate's part of :class:`moe_spec.control.Guard` (a mixin: it reads the guard's
    estimates, cost tables, current plan and measured ratios)."""

    def with_gated(self, c: int, committed_S: np.ndarray, rate: float) -> float:
        """Tree ``c``'s tokens/s with the draft gate: its window steps (``committed_S``,
        verified at ``rate`` tokens/s) mixed with gated steps (one token for a draft
        forward and a decode) at the gated share of its last ``gate_history`` steps, or,
        with fewer behind it, at the share the gate would gate of the window's steps now
        (then the window's mean counts only the steps it would verify)."""
        if not self.gating or rate <= 0.0 or committed_S.size == 0:
            return rate
        seconds = self.step_s_C[c] * self.ratio(TREE)  # per verified step
        mean = rate * seconds  # tokens counted per verified step
        if len(self.gated_C[c]) >= self.gate_history:
            g = sum(self.gated_C[c]) / len(self.gated_C[c])
        else:
            first_SB = self.est.first_WB[self.est.rows(c)]
            gated_S = self.would_gate(c, first_SB, self.best_rate or rate)
            S = committed_S.size  # the means as ratios of integer sums: a few numpy calls less
            g = int(gated_S.sum()) / S if gated_S.size == S else 0.0
            if 0.0 < g < 1.0:  # the steps it would verify
                kept = committed_S[~gated_S]
                mean *= (int(kept.sum()) / kept.size) / (int(committed_S.sum()) / S)
        if g == 0.0:
            return rate
        gated_s = self.first_draft_s(c) * self.ratio(TREE) + self.decode_seconds()
        return ((1 - g) * mean + g) / ((1 - g) * seconds + g * gated_s)

    def would_gate(self, c: int, first_SB: np.ndarray, rate: float) -> np.ndarray:
        """bool ``[S]``: the steps whose first level (counts per calibration bin) the gate
        would send to a decode at ``rate`` tokens/s."""
        return ~self.pays(c, self.expected_S(c, first_SB), rate)

    def expected_S(self, c: int, first_SB: np.ndarray) -> np.ndarray:
        """float ``[S]``: committed tokens expected from tree ``c`` given the first level's
        nodes per calibration bin (``first_SB``): ``1 + min(1, sum a) * (1 + beyond)``."""
        first_S = np.minimum(first_SB @ self.est.accept_first_B(), 1.0)
        return 1.0 + first_S * (1.0 + self.beyond_first(c))

    def pays(self, c: int, expected_S: np.ndarray, rate: float) -> np.ndarray:
        """bool ``[S]``: the rest of tree ``c``'s step beats a decode at ``rate`` tokens/s."""
        return expected_S - rate * self.rest_seconds(c) >= 1.0 - rate * self.decode_seconds()

    def rest_seconds(self, c: int) -> float:
        """Tree ``c``'s step less its first draft forward (run before the gate decides)."""
        return (self.step_s_C[c] - self.first_draft_s(c)) * self.ratio(TREE)

    def gate(self, logprob_W: torch.Tensor) -> str | None:
        """Before the planned tree is grown: None to grow and verify it, else why to decode
        the root alone instead. ``logprob_W``: the draft's log-probabilities of the root's
        most likely children (its first level)."""
        t0 = time.perf_counter()
        try:
            plan = self.current
            if (
                not self.gating
                or self.tree_steps < self.warmup  # warm-up: the trees teach the gate
                or not self.close_call
                or plan is None
                or plan.kind != TREE
                or self.probing
                or plan.tree not in self.trees
            ):
                return None
            c = self.trees.index(plan.tree)
            expected = self.expected_tokens(logprob_W.detach().float().cpu().numpy(), c)
            rate = self.best_rate or 1.0 / self.decode_seconds()  # before a prediction
            if self.pays(c, np.array([expected]), rate)[0]:
                return None
            self.gated = c
            return (
                f"draft gate: {expected:.2f} expected tokens do not pay a tree step of "
                f"{self.rest_seconds(c) * 1e3:.3g} ms against a decode of "
                f"{self.decode_seconds() * 1e3:.3g} ms at {rate:.4g} tok/s"
            )
        finally:
            self.overhead_s += time.perf_counter() - t0

    def expected_tokens(self, logprob_W: np.ndarray, c: int) -> float:
        """:meth:`expected_S` of one first level given as log-probabilities ``[W]``."""
        first_B = np.bincount(self.est.bin_of(logprob_W), minlength=self.est.bins)
        return float(self.expected_S(c, first_B[None])[0])

    def beyond_first(self, c: int) -> float:
        """Tokens tree ``c`` is expected to accept past depth 1, given depth 1."""
        reach_D = self.est.reach_D()  # P(the accepted path reaches depth d)
        return float(np.minimum(reach_D[2 : self.trees[c][2] + 1] / reach_D[1], 1.0).sum())

    def first_draft_s(self, c: int) -> float:
        """Modeled seconds of one draft forward of tree ``c`` (the catch-up the gate reads)."""
        return float(self.cost.draft_C[c]) / self.trees[c][2]
