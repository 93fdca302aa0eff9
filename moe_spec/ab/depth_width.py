"""The Cascade-style baseline (arXiv 2506.20675): pick the tree size per step, never budget.

Instead of capping experts, shrink speculation when verification is expensive.
Before each step the controller scores candidate trees (the configured tree and
its halvings: 32, 16, 8, 4 tokens; a chain also one draft, 2 tokens) by modeled utility

    expected committed tokens / (modeled draft + verify seconds)

where the expected committed tokens and the distinct experts per layer of a
candidate are the means of the steps that used it so far in this generation,
and the times come from the cost model for the chosen GPU and model shape (the
distinct counts mapped to its size). Each candidate is tried once first
(largest first), and the least recently tried one again every ``explore_every``
steps. The state lives in the steps of one generation, so every prompt starts
afresh and a resumed run reproduces an uninterrupted one.
"""

from __future__ import annotations

from dataclasses import dataclass
from statistics import fmean

from moe_spec.control import candidate_trees  # noqa: F401 (re-exported: the trees it scores)
from moe_spec.costmodel import CostModel, ModelShape, draft_seconds, map_distinct, verify_seconds


@dataclass
class DepthWidthController:
    cost: CostModel  # device and overheads the utility is priced with
    shape: ModelShape
    top_k: int  # of the model that runs (the small one)
    n_experts: int
    candidates: list[tuple[int, int, int]]
    explore_every: int = 8

    def __call__(self, steps) -> tuple[int, int, int]:
        """The tree of the next step given this generation's ``steps`` (engine StepStats)."""
        seen = {
            c: [s for s in steps if (s.num_tokens, s.width, s.depth) == c] for c in self.candidates
        }
        untried = [c for c in self.candidates if not seen[c]]
        if untried:
            return untried[0]
        if len(steps) % self.explore_every == 0:
            trees = [(s.num_tokens, s.width, s.depth) for s in steps]
            return min(self.candidates, key=lambda c: max(i for i, t in enumerate(trees) if t == c))
        return max(self.candidates, key=lambda c: self.utility(c, seen[c]))

    def utility(self, tree: tuple[int, int, int], steps) -> float:
        num_tokens, width, depth = tree
        committed = fmean(s.committed for s in steps)
        distinct = fmean(fmean(s.distinct_before_L) for s in steps)
        mapped = map_distinct(
            distinct, self.top_k, self.n_experts, self.shape.top_k, self.shape.n_experts, num_tokens
        )
        g, s, o = self.cost.gpu, self.shape, self.cost.overheads
        seconds = draft_seconds(g, s, width, depth, overheads=o) + verify_seconds(
            g, s, num_tokens, mapped, overheads=o
        )
        return committed / seconds
