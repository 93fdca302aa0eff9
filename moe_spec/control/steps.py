"""What a planning policy and an engine tell each other around one decoding step.

Shape legend: N tree tokens (node 0 is the root).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from moe_spec.routing import RoutingRecord

TREE = "tree"
AUTOREGRESSIVE = "autoregressive"
KINDS = (TREE, AUTOREGRESSIVE)


@dataclass(frozen=True)
class StepPlan:
    """The guard's decision for the next step: a tree of this size, or plain decodes.

    ``reason`` says why in words (it goes into the step statistics and the A/B report).
    ``steps``: for an autoregressive plan, how many plain decodes to run before asking
    again (fewer where the request ends); a guard that has settled on decoding plans the
    whole run up to its next look at a tree, so the engine's loop costs what decoding's does.
    ``read``: for an autoregressive plan, the draft reads the decoded tokens after them (one
    draft forward; its guesses at them go to ``Policy.draft_matched``).
    """

    kind: str
    num_tokens: int = 1
    width: int = 0
    depth: int = 0
    reason: str = ""
    steps: int = 1
    read: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"step kind is {self.kind!r}; allowed: {', '.join(KINDS)}")
        if self.read and self.kind != AUTOREGRESSIVE:
            raise ValueError(f"a {self.kind} plan reads nothing; allowed: read with plain decodes")
        if type(self.steps) is not int or self.steps < 1 or (self.kind == TREE and self.steps > 1):
            raise ValueError(
                f"a plan's steps is {self.steps!r}; allowed: an integer >= 1 (1 for a tree)"
            )
        if self.kind == TREE and not (self.num_tokens >= 2 and self.width >= 1 and self.depth >= 1):
            raise ValueError(
                f"a tree step needs num_tokens >= 2, width >= 1, depth >= 1; got "
                f"{self.num_tokens}/{self.width}/{self.depth}"
            )

    @property
    def tree(self) -> tuple[int, int, int]:
        return (self.num_tokens, self.width, self.depth)


@dataclass(frozen=True)
class StepOutcome:
    """One finished step as the engine saw it, after acceptance (and any repair).

    ``path`` holds the accepted path's tree node indices, root first (its length is the
    tokens committed: accepted drafts plus the bonus token); ``exact`` how many of them,
    from the root, the budget left untouched (None: not tracked). Autoregressive steps
    have ``kind=AUTOREGRESSIVE``, ``path=[0]``, no tree, and ``steps``: how many plain
    decodes ran for the plan (one outcome reports them all). ``ids_LTK``: for a tree step the
    policy did not rank (a resting one, :attr:`moe_spec.policies.Policy.resting`), the
    verify's unbudgeted top-k of each MoE layer, long ``[N, K]`` each, as the forward left
    them (a policy that learns from them stacks them; None otherwise). ``routing_L``: for such
    a step that the policy ranks after the forward
    (:attr:`moe_spec.policies.Policy.ranking_after`), each MoE layer's routing record.
    """

    kind: str
    path: list[int]
    depth_N: torch.Tensor | None = None
    logprob_N: torch.Tensor | None = None
    tree: tuple[int, int, int] = (1, 0, 0)
    exact: int | None = None
    steps: int = 1
    ids_LTK: list[torch.Tensor] | None = None
    routing_L: list[RoutingRecord] | None = None

    @property
    def committed(self) -> int:
        return len(self.path)


def candidate_trees(num_tokens: int, width: int, depth: int) -> list[tuple[int, int, int]]:
    """``(num_tokens, width, depth)``: the tree and its halvings down to 4 tokens; a chain
    (``width`` 1) also one draft, 2 tokens (the cheapest speculation, SGLang's adaptive
    chains' shallowest depth)."""
    out, n = [], num_tokens
    while n >= 4 or not out:
        out.append((n, min(width, n - 1), min(depth, n - 1)))
        n //= 2
    if width == 1 and out[-1][0] > 2:
        out.append((2, 1, 1))
    return out
