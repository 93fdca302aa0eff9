"""What each tree's latest steps committed, every step counted, resting ones too.

Past its learning steps the window (``moe_spec.control.estimates``) takes a resting step
only one time in up to ``max_rank_every`` (at the cap, where smollm2-moe's budgets rest),
so on a text that turns harder it goes on predicting the old text's level: measured, a
warm guard kept the full tree through 68 steps of 48-token chat answers at 1.60 tokens a
step where decoding needed 2.30, its window's 8 steps saying 2.0 (BENCHMARKS.md,
sixty-first and sixty-second sessions). With ``lately`` > 0 (``auto``'s option, off by
default) the guard keeps, per tree, the committed tokens of its latest ``lately`` steps
apart from the window (tokens only: the experts and budgets stay the window's, its long
ranked history), and

- predicts the current tree's committed tokens from them, blended with ``lately_prior``
  pseudo-steps at the window's mean (:meth:`Lately.lately_mean`), and scales every tree's
  prediction alike (:meth:`Lately.lately_scale`: the text's level moved, not the trees'
  order);
- replans before the interval is up when the current tree's steps since the last replan
  committed a mean, plus one standard error, at which the tree would have been predicted
  slower than decoding (:meth:`Lately.behind`: the replan then reads them).

A new request keeps a tree's latest ``carry`` steps, as the window does. Not the default:
like ``learn_resting`` it follows a text that turns harder (warm chat requests) and also a
dip in one that does not (warm code cells lost up to 13%: 8 x 96 C/OLMoE 1.020 -> 0.886x).
"""

from __future__ import annotations

import math
from collections import deque


class Lately:
    """Mixin of :class:`moe_spec.control.Guard`: each tree's latest committed tokens."""

    def new_lately(self, steps: int, prior: float) -> None:
        """Set up: the latest ``steps`` steps of each tree (0: off), blended with ``prior``
        pseudo-steps at the window's mean."""
        self.lately_C = [deque(maxlen=steps) for _ in self.trees] if steps else []
        self.lately_prior = prior
        self.rate_C: dict[int, float] = {}  # the last prediction's tokens/s per arm

    def note_lately(self, c: int, committed: int) -> None:
        """Tree ``c`` (an index into ``trees``) ran a step that committed ``committed``."""
        if self.lately_C:
            self.lately_C[c].append(committed)

    def lately_mean(self, c: int, mean: float) -> float | None:
        """Tree ``c``'s committed tokens a step: its latest steps with ``lately_prior``
        pseudo-steps at the window's ``mean``; None while off or with fewer than 4 steps."""
        if not self.lately_C or len(self.lately_C[c]) < 4:
            return None
        steps = self.lately_C[c]
        return (sum(steps) + self.lately_prior * mean) / (len(steps) + self.lately_prior)

    def lately_scale(self, predicted: dict[int, float]) -> None:
        """Scale every tree's predicted tokens/s in ``predicted`` (and its evidence's mean) by
        the current tree's :meth:`lately_mean` over its window mean: the text's level moved,
        for every tree alike. Measured: the current tree scaled alone (and each tree by its
        own latest steps alike), a text turning harder moved a warm guard from the full tree
        to the 4-token tree, whose window level had not moved (smollm2-moe, 8 x 96, set A,
        OLMoE-1B-7B: 1.004 -> 0.967x; scaled alike 0.999x)."""
        c = self.choice
        if c not in predicted:  # decoding, or a tree with no window steps yet
            return
        mean = self.evidence[c][1]
        lately = self.lately_mean(c, mean) if mean > 0 else None
        if lately is None:
            return
        scale = lately / mean
        for tree in predicted:
            predicted[tree] *= scale
            steps, mean = self.evidence[tree]
            self.evidence[tree] = (steps, mean * scale)

    def behind(self, total: int, n: int, mean: float, spread: float) -> bool:
        """Whether the current tree's ``n`` steps since the replan, committing ``total``
        tokens, put it behind decoding: at their mean plus one standard error (the spread
        at least one token) the tree's last predicted tokens/s, made at a mean of ``mean``,
        falls below decoding's. Needs 4 steps, a prediction and the guard."""
        rate, decode = self.rate_C.get(self.choice), self.rate_C.get(-1)
        if not self.lately_C or n < 4 or rate is None or decode is None or mean <= 0:
            return False
        upper = total / n + max(spread, 1.0) / math.sqrt(n)
        return rate * upper / mean < decode

    def keep_lately(self, keep: int) -> None:
        """A new request: each tree keeps its latest ``keep`` steps."""
        for steps in self.lately_C:
            while len(steps) > keep:
                steps.popleft()
