"""How often a resting step of :class:`moe_spec.control.Guard` ranks experts.

A tree step whose budgets are all at least E rests (runs unbudgeted without the policy's
ranking) except every ``rank_every``-th one, which ranks and is learned from. The ranking is
worth its cost (the budget selection's) only where it could change the plan: while the
chosen tree's best budget for all layers below the cap is predicted under ``rank_near``
(0.8) of the cap's tokens/s (:meth:`Ranks.far_from_paying`), each replan that keeps the cap
halves how often a resting step ranks, down to one in ``max_rank_every`` (``auto``'s
default 32; the guard's own, ``rank_every``: off), and the steps the guard learns from rest
too (``moe_spec.policies.auto.Auto.rests``); near paying, or on a new request's text
(:meth:`moe_spec.control.replans.Replans.new_request`), one in ``rank_every`` again. The
guard prices a step at the cap at that share of the selection (plus the resting steps'
``rest_share`` of it: :class:`moe_spec.control.StepCost`).
"""

from __future__ import annotations


class Ranks:
    """The ranks' part of :class:`moe_spec.control.Guard` (a mixin: it reads the guard's
    choice, budgets and predictions, and its step costs' selection)."""

    def far_from_paying(self) -> bool:
        """Whether the chosen tree's best budget for all layers below the cap is predicted
        under ``rank_near`` of the cap's tokens/s at the last replan (before the first: yes;
        decoding chosen: no)."""
        return self.choice >= 0 and self.below_cap_C[self.choice] < self.rank_near

    def space_ranks(self) -> None:
        """After a replan: far from paying with the chosen tree at the cap, a resting step
        ranks half as often as before, down to one in ``max_rank_every``; otherwise one in
        ``rank_every``. Measured (8 prompts a set, with ``max_warmup=6, hope=true``):
        ``max_rank_every=32`` took smollm2-moe's tree on warm set A from 1.633 to 1.667x
        decoding (unbudgeted 1.669), every other cell level or up; the toy's tree, whose
        budgets come close to paying, lost 0.012 on warm set B with ``rank_near=0.9`` and
        0.08-0.10 with a doubling at every replan at the cap. Left off then (a fresh cell fell
        with the draft gate on); with the gate off on trees, and a new request ranking at
        ``rank_every`` again, every ``bench/auto_budget.py`` tree cell read level or up
        (forty-fourth session), and it became the default."""
        if self.choice < 0 or self.rank_every <= 1:  # decoding: no tree step to rank
            return
        at_cap = not (self.budgets_C[self.choice] < self.cost.E).any()
        far = at_cap and self.far_from_paying()
        interval = min(2 * self.rank_interval, self.max_rank_every) if far else self.rank_every
        self.rank_one_in(interval)

    def rank_one_in(self, interval: int) -> None:
        """A resting step ranks one time in ``interval``, and steps at the cap are priced so."""
        if interval != self.rank_interval:
            self.rank_interval = interval
            self.cost.rest_every(interval)
