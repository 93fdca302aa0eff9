"""The shadows of :class:`moe_spec.control.Guard`: what a chain would commit on decoded text.

While the guard decodes, no step shows how the full chain does on the current text; its
explores (``moe_spec.control.looks``) show one draft a step, and its probes are far apart.
But the draft can read the decoded tokens in one forward (the catch-up before a tree, or a
*read*: a plan of decodes with ``StepPlan.read``, every :meth:`Shadows.read_every` decodes,
as far apart as keeps a draft forward's time under ``explore`` of theirs), and its most
likely next token before each of them costs only its LM head there (the engines pass the
guesses on: :meth:`Shadows.draft_matched`). A greedy chain rooted before decoded token ``j``
commits its drafts up to the first the target did not decode; with the draft reading the
target's features (teacher forcing) that is ``1 +`` the run of right guesses from ``j``, at
most the chain's depth: a *shadow* step of every chain candidate at every decoded token.
Past its first draft a chain feeds the draft its own features, so a shadow may overstate the
deeper drafts; measured (``bench/shadow_accuracy.py``, smollm2-moe's 4/1/3 chain, 8 prompts of
each set, 32 new tokens), the chain committed 2.40 tokens a step, the shadows at its roots
averaged 2.47 and at every generated token 2.44, per prompt within 0.48 of the chain's mean
(1.68 to 3.30); at 600 characters a prompt 2.36, 2.36 and 2.35 (within 0.37). The prompt's
own text (human-written) gives 1.72-1.81 whatever the chain does: it tells nothing.

With ``shadow`` (on in ``auto``; in SGLang only where every decode runs the draft extend,
whose output holds the guess: ``moe_spec.integration.sglang.feed``) and a chain configured
(width 1: the draft's top guess does not show a tree's other drafts), while the guard is off
the full chain the latest ``window`` (16) shadows, once there are 4, stand for the chains'
committed tokens in the prediction: each chain's tokens/s (budgets, cost and window as
predicted) is scaled by its shadows' mean (:func:`chain_mean`) over the window's mean. A
probe's accepted drafts join them, and so do a smaller chain's (a run cut at its depth where
it filled: a shadow, like one that reaches the end of the decoded text, may show fewer
levels than the chain drafts, and counts for the levels it shows). Shadows arriving make the
guard decide again at its next plan; a switch back to the full chain (its steps then show it)
and a new request clear them; a new request's first read comes after at most 6 decodes
(measured: smollm2-moe's chain at 600 characters, warm set B +0.076x decoding, the toy's warm
set B -0.007, the other 10 screened cells level). Measured on ``bench/auto_loss_trace.py``'s
SGLang-priced chain screen (BENCHMARKS.md, thirty-sixth session): 12 cells' geometric mean
0.974 -> 0.994 of max(autoregressive, unbudgeted), the worst 0.830 -> 0.900.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Collection

from moe_spec.control.looks import spacing
from moe_spec.control.steps import StepOutcome


def shadow_run(matched: list[bool], j: int, depth: int) -> tuple[int, int]:
    """A greedy chain of ``depth`` rooted before decoded token ``j``: ``(run, seen)``, the
    drafts it would have committed (the run of ``True`` in ``matched`` from ``j``, at most
    ``depth``) and the levels of it ``matched`` shows (``min(depth, len(matched) - j)``). A
    run that reaches ``seen`` below ``depth`` is cut short by what is not decoded yet: it
    passed every level shown. ``matched[i]``: whether the draft's most likely token after
    the decoded text before token ``i`` was token ``i``."""
    seen = min(depth, len(matched) - j)
    run = 0
    while run < seen and matched[j + run]:
        run += 1
    return run, seen


def shadow_runs(matched: list[bool], depth: int) -> list[tuple[int, int]]:
    """:func:`shadow_run` before each decoded token."""
    return [shadow_run(matched, j, depth) for j in range(len(matched))]


def chain_mean(shadows: Collection[tuple[int, int]], depth: int) -> float:
    """Tokens a greedy chain of ``depth`` commits a step (the bonus token included), from
    ``(run, seen)`` shadows (:func:`shadow_run`), some cut short: ``1 + sum_d S(d)``, ``S``
    the product-limit (Kaplan-Meier) estimate of P(run >= d). Level d's hazard is read off
    the shadows that reached level d - 1 and show level d: those that passed it over them.
    Leaving the cut runs out (as before the thirty-ninth session) kept every miss and
    dropped runs that had passed every level shown: the mean came out low wherever runs are
    cut often (a decode between two one-draft explores is a run of one guess). Uncut shadows
    give the plain mean of ``min(run, depth)``. A level no shadow shows takes the hazard
    of the level above."""
    survive, total, hazard = 1.0, 1.0, 1.0
    for d in range(1, depth + 1):
        at_risk = passed = 0
        for run, seen in shadows:
            if run >= d - 1 and seen >= d:
                at_risk += 1
                passed += run >= d
        if at_risk:
            hazard = passed / at_risk
        survive *= hazard
        total += survive
    return total


class Shadows:
    """The shadows' part of :class:`moe_spec.control.Guard` (a mixin: it reads the guard's
    trees and evidence, and asks it to replan)."""

    def draft_matched(self, matched: list[bool]) -> None:
        """The draft caught up on decoded tokens: ``matched[i]``, whether its most likely
        next token before decoded token ``i`` was that token (the first decoded token's
        is left out where the engine's draft state before it is not at hand)."""
        if not self.shadowing or not matched:
            return
        self.unread_request = False
        self.shadow.extend(shadow_runs(matched, max(d for _, _, d in self.trees)))
        self.since_replan = self.replan_interval  # decide again with them

    def read_every(self) -> int:
        """With ``shadow``, the decodes after which the draft reads them (0: none): as
        far apart as keeps a draft forward's time under ``explore`` of theirs; a new
        request's first read after at most ``first_read`` (6) decodes (its text is new)."""
        if not self.shadowing or not self.explore:
            return 0
        every = max(spacing(self.first_draft_s(0), self.decode_seconds(), self.explore), 1)
        return min(every, self.first_read) if self.unread_request else every

    def shadow_step(self, outcome: StepOutcome) -> None:
        """A chain step off the full chain (a probe, an explore): its accepted drafts join
        the shadows, with the levels it shows (its depth: a smaller chain that filled
        passed every level it drafted)."""
        if not self.shadowing or self.choice == 0 or outcome.tree not in self.trees:
            return
        self.shadow.append((outcome.committed - 1, outcome.tree[2]))

    def clear_shadows(self, new_request: bool = False) -> None:
        """Forget the shadows (of the text before a switch back to the full chain, or of
        the last request: ``new_request``, whose first read then comes sooner)."""
        self.shadow.clear()
        self.unread_request |= new_request

    def shadowed(self, c: int) -> float | None:
        """Chain ``c``'s mean committed tokens over the shadows, or None without enough
        of them (``shadow_min``) or for a tree that is not a chain."""
        _, width, depth = self.trees[c]
        if self.choice == 0 or len(self.shadow) < self.shadow_min or width != 1:
            return None
        return chain_mean(self.shadow, depth)

    def new_shadows(self, shadow: bool, window: int = 16, least: int = 4) -> None:
        """Set up: ``shadow`` on only where the configured tree is a chain."""
        self.shadowing = shadow and self.trees[0][1] == 1
        self.shadow: deque[tuple[int, int]] = deque(maxlen=window)  # (run, seen)
        self.shadow_min = least
        self.first_read = 6  # a new request's first read: after at most this many decodes
        self.unread_request = False  # no guesses at this request's decodes yet
