"""The looks of :class:`moe_spec.control.Guard` at trees it does not run: probes and explores.

While not on the full tree the guard probes it every ``probe`` steps (doubling after each probe
that does not win back, up to ``max_probe``), since a smaller tree or decoding teaches nothing
about the full one; at least every ``probe * gap**2`` steps, ``gap`` (at most 4) being how many
times faster the current choice is predicted than the full tree: a probe costs more, and is less
likely to win, the further behind the full tree is; and at least as far apart as keeps the time
a probe is predicted to lose under ``probe_cost`` (0.5%) of the time between probes. A choice
made while the window holds no step of the full tree to predict it from (forgotten at new text)
probes it every ``probe`` steps again. While it decodes, one plan covers every decode up to its
next look at a tree (``StepPlan.steps``). With ``explore`` (default 0.005; 0: off), while it
decodes the guard runs a step of a smaller tree (the one predicted fastest) every few decodes,
as far apart as keeps the time such a step is predicted to lose under ``explore`` of the time
between them (:meth:`explore_floor`), each step's loss counted at its tree's mean committed
tokens plus, with ``hope`` (here off by default; on by default in ``auto``) and while the
window holds fewer than ``trusted`` (8) of its steps, one standard error (the spread at least
one token), so a tree seen on few steps is explored soon and one seen on many as its mean says
(a window of 24 steps never shrinks the hope to nothing: a one-draft step that costs little more
than a decode was explored after every decode for good): they show whether the draft is
accepted, decodes do not (measured with the warm-up that runs on, ``bench/auto_loss_trace.py``,
8 prompts a set, four runs: 10 cells of 16 faster, 3 level, 3 slower, smollm2-moe's tree set B
+0.19 and +0.35x decoding; BENCHMARKS.md, thirty-second session); an explore the draft gate
turns into a decode doubles the spacing until one is verified; and a smaller tree's step whose
accepted path fills it probes the full tree next (the text may have begun to repeat), for
``fill_probe`` full-tree steps before the guard decides again (here 1 by default; 2 in ``auto``:
the first starts where the smaller tree's accepted run ended, and on smollm2-moe's 96-token
requests such probes committed less than the full tree's steps on the same text, 2.45 against
4.52 tokens a step on one prompt, where a 4-token tree that filled every other step kept its
place; BENCHMARKS.md, fifty-eighth session), so the loss of a step counts
the probes its share of filled paths starts. Every explore makes the guard decide again at
once, as a probe does: replans count tree steps, which come one an explore while it decodes.
Measured on smollm2-moe: below its tree's mean, a one-draft chain predicted level with
decoding from a few filled paths ran every other step, committing 1 token, until the next
replan (set B); above it (until the sixtieth session only those below replanned), a prompt
whose 4-token explores committed 2-3 tokens was decoded for 80 steps while the full tree
committed 4-7 a step (set C, 0.898x unbudgeted speculation at OLMoE-1B-7B's shape; 0.985x
since; BENCHMARKS.md).
"""

from __future__ import annotations

import math


def spacing(loss_s: float, step_s: float, share: float) -> int:
    """Steps of ``step_s`` seconds between two looks that each lose ``loss_s`` seconds, for
    the looks to lose at most ``share`` of the time (0 where a look loses nothing)."""
    return math.ceil(loss_s / (share * step_s)) if loss_s > 0 else 0


class Looks:
    """The looks' part of :class:`moe_spec.control.Guard` (a mixin: it reads the guard's
    choice, predictions, evidence and counters)."""

    def space_looks(self, predicted: dict[int, float], unshrunk: dict[int, float]) -> None:
        """After a replan's switch: how far apart the probes of the full tree and the
        explores with a smaller tree come, from the arms' tokens/s (``predicted``, with
        challengers shrunk; ``unshrunk``, as predicted)."""
        if self.choice == 0:
            self.probe_every = self.probe0
        elif self.probing:  # the probe did not win the full tree back: probe less often
            self.probe_every = min(self.probe_every * 2, self.max_probe)
        if self.choice != 0 and 0 in predicted:  # the further behind, the rarer the probe
            gap = predicted[self.choice] / max(predicted[0], 1e-30)
            floor = max(int(self.probe0 * min(gap, 4.0) ** 2), self.probe_floor(predicted))
            self.probe_every = min(max(self.probe_every, floor), self.max_probe)
            self.floor = floor
        elif self.choice != 0:  # chosen with no prediction of the full tree: look at it soon
            self.probe_every = self.floor = self.probe0
        self.probing = False
        self.explored, self.explore_every = self.explore_floor(unshrunk)

    def decode_run(self) -> int:
        """Plain decodes until the guard next looks at a tree: its probe, a step of a smaller
        tree (``explore``), or the gate's look (nothing else changes while it decodes:
        replans count tree steps)."""
        run = self.probe_every - self.since_full
        if self.explored:
            run = min(run, self.explore_every - self.since_explore)
        if self.gating and self.gate_every:
            run = min(run, self.look_every - self.since_gate)
        return max(run, 1)

    def explore_floor(self, predicted: dict[int, float]) -> tuple[int, int]:
        """While decoding with ``explore``: the smaller tree to explore with (the one predicted
        fastest; 0: none) and the decodes between its steps, at least as many as keep the time
        they are predicted to lose under ``explore`` of the time between them (at least 1).
        A step commits ``a`` tokens in ``a / tp`` seconds against ``a / tp_decode``; a share
        ``f`` of its paths (the window's) fill it and probe the full tree next: the step's
        loss counts ``f`` times ``fill_probe`` of a probe step's (:meth:`probe_loss`). ``a``
        in the decodes' seconds is the mean plus, below ``trusted`` window steps of the tree,
        one standard error (the hope a tree seen on few steps commits more: :attr:`hope`);
        the spacing doubles for each explore in a row the draft gate turned into a decode."""
        smaller = [c for c in predicted if c > 0]
        self.hope = 0.0
        if self.choice >= 0 or not self.explore or not smaller:
            return 0, 0
        c = max(smaller, key=predicted.get)
        steps, mean = self.evidence.get(c, (0, 1.0))
        if self.hoping and 0 < steps < self.trusted:  # below ``trusted`` steps: mean + 1 SE
            self.hope = self.standard_error(c)
        loss_s = self.time_lost(c, predicted) - self.hope / predicted[-1]
        probes = self.filled.get(c, 0.0) * self.fill_probe  # full-tree steps a step starts
        loss_s += probes * max(self.probe_loss(predicted, -1), 0.0)
        every = max(spacing(loss_s, 1.0 / predicted[-1], self.explore), 1)
        return c, every * 2**self.explores_gated

    def standard_error(self, c: int) -> float:
        """One standard error of tree ``c``'s mean committed tokens over its window steps,
        the spread taken as at least one token (a few steps' spread is no reference, and a
        text's later steps may commit more than its first: a prompt whose 8 chains
        committed 1-2 tokens, a spread of 0.48, committed 2.33 a step over the next 9),
        except from ``trusted`` (8) steps that accepted at most one draft in 8 (mean at most
        1 + 1/8): such a draft is of little use, and one step that accepted a draft held a
        useless draft's 8-token tree for 37 steps at 1.06 tokens a step. What ``hope`` adds
        for a tree seen on fewer steps than fill its window."""
        steps, mean = self.evidence[c]
        spread = self.spread_C[c]
        if steps < self.trusted or mean > 1.0 + 1.0 / self.trusted:
            spread = max(spread, 1.0)
        return spread / math.sqrt(steps)

    def time_lost(self, c: int, predicted: dict[int, float], against: int = -1) -> float:
        """Seconds one step of tree ``c`` loses against arm ``against`` (decoding) committing
        the step's mean committed tokens, at their ``predicted`` tokens/s."""
        a = self.evidence.get(c, (0, 1.0))[1]
        return a / max(predicted[c], 1e-30) - a / predicted[against]

    def probe_floor(self, predicted: dict[int, float]) -> int:
        """Steps of the current choice between probes for the probes to cost at most
        ``probe_cost`` of the time (:meth:`probe_loss`)."""
        if self.choice not in predicted:
            return 0
        per_token = 1.0 if self.choice < 0 else self.evidence[self.choice][1]
        loss_s = self.probe_loss(predicted, self.choice)
        return spacing(loss_s, per_token / predicted[self.choice], self.probe_cost)

    def probe_loss(self, predicted: dict[int, float], against: int) -> float:
        """Seconds a probe of the full tree loses against arm ``against``: it commits the full
        tree's mean ``a`` tokens in ``a / tp_full`` seconds, which ``against`` commits in
        ``a / tp_against`` (with ``measure``, the last probe's measured seconds and tokens, if
        it lost more; 0 with neither)."""
        loss_s = 0.0
        if 0 in self.evidence and 0 in predicted:
            loss_s = self.time_lost(0, predicted, against)
        if self.last_probe is not None:
            seconds, committed = self.last_probe
            loss_s = max(loss_s, seconds - committed / predicted[against])
        return loss_s
