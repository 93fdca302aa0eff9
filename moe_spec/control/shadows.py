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
predicted) is scaled by its shadows' mean over the window's mean. A probe's accepted drafts
join them, and so do a smaller chain's that ended before filling it. Shadows arriving make the
guard decide again at its next plan; a switch back to the full chain (its steps then show it)
and a new request clear them; a new request's first read comes after at most 6 decodes
(measured: smollm2-moe's chain at 600 characters, warm set B +0.076x decoding, the toy's warm
set B -0.007, the other 10 screened cells level). Measured on ``bench/auto_loss_trace.py``'s
SGLang-priced chain screen (BENCHMARKS.md, thirty-sixth session): 12 cells' geometric mean
0.974 -> 0.994 of max(autoregressive, unbudgeted), the worst 0.830 -> 0.900.
"""

from __future__ import annotations

from collections import deque

from moe_spec.control.looks import spacing
from moe_spec.control.steps import StepOutcome


def shadow_run(matched: list[bool], j: int, depth: int) -> int | None:
    """Drafts a greedy chain of ``depth`` would have committed rooted before decoded token
    ``j``: the run of ``True`` in ``matched`` from ``j``, at most ``depth``; None where the
    run reaches the end of ``matched`` first (cut short by what is not decoded yet).
    ``matched[i]``: whether the draft's most likely token after the decoded text before
    token ``i`` was token ``i``."""
    run = 0
    while run < depth and j + run < len(matched) and matched[j + run]:
        run += 1
    return run if run == depth or j + run < len(matched) else None


def shadow_runs(matched: list[bool], depth: int) -> list[int]:
    """:func:`shadow_run` before each decoded token, those cut short left out."""
    runs = (shadow_run(matched, j, depth) for j in range(len(matched)))
    return [run for run in runs if run is not None]


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
        runs = shadow_runs(matched, max(d for _, _, d in self.trees))
        self.shadow.extend(runs)
        if runs:
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
        the shadows where they show the full chain's run (a probe's; a smaller chain's
        that ended before filling it)."""
        if not self.shadowing or self.choice == 0 or outcome.tree not in self.trees:
            return
        run = outcome.committed - 1
        if outcome.tree == self.trees[0] or run < outcome.tree[2]:
            self.shadow.append(run)

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
        return 1.0 + sum(min(run, depth) for run in self.shadow) / len(self.shadow)

    def new_shadows(self, shadow: bool, window: int = 16, least: int = 4) -> None:
        """Set up: ``shadow`` on only where the configured tree is a chain."""
        self.shadowing = shadow and self.trees[0][1] == 1
        self.shadow: deque[int] = deque(maxlen=window)
        self.shadow_min = least
        self.first_read = 6  # a new request's first read: after at most this many decodes
        self.unread_request = False  # no guesses at this request's decodes yet
