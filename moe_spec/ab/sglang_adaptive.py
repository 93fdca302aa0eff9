"""SGLang's own adaptive speculation as a baseline: the chain depth its policy picks per step.

With ``--speculative-adaptive`` on a chain (``--speculative-eagle-topk 1``) and no ``auto``,
SGLang 0.5.23 chooses each step's draft depth with ``AdaptiveSpeculativeParams``
(``sglang.srt.speculative.adaptive_spec_params``): per batch-size slot, an exponential
average of the accepted drafts, checked every few steps after a warm-up, moves the depth up
or down among the slot's candidate steps (the default for batch 1: 1, 3, 5, 7; no 0, so it
never stops drafting). :class:`SGLangAdaptiveDepth` drives the engines' ``tree_size=`` with
SGLang's own class at batch size 1, fed each step's accepted drafts, so its choices are
SGLang's. One instance is one server: keep it across generations.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


class SGLangAdaptiveDepth:
    """``tree_size`` for the engines: the chain ``(d + 1, 1, d)`` of SGLang's policy's depth d.

    ``initial_steps``: ``--speculative-num-steps``, one of the batch-1 slot's candidate steps
    (SGLang refuses other values); ``config``: ``--speculative-adaptive-config`` (a JSON file;
    None: SGLang's default). Needs SGLang.
    """

    def __init__(self, initial_steps: int, config: str | None = None) -> None:
        try:
            from sglang.srt.speculative.adaptive_spec_params import AdaptiveSpeculativeParams
        except ImportError as exc:
            raise ValueError(
                f"SGLang's adaptive policy is SGLang's own code; it is not importable ({exc})"
            ) from None
        self.params = AdaptiveSpeculativeParams(initial_steps, config)
        candidates = self.params._route(1).candidate_steps  # the slot batch size 1 runs
        if initial_steps not in candidates or min(candidates) < 1:
            raise ValueError(
                f"SGLang's adaptive policy at batch size 1 runs depths {candidates}, starting "
                f"from {initial_steps}; allowed here: a start among them, and depths >= 1 (the "
                "engines decode only as auto's guard)"
            )
        self.max_depth = max(candidates)
        self.steps: Sequence[Any] = []  # the current generation's steps (the engine's list)
        self.fed = 0  # how many of them the policy has seen
        self.verifies = 0  # steps fed in all

    @property
    def largest(self) -> tuple[int, int, int]:
        """The deepest chain it can pick: the engine's configured tree must hold it."""
        return (self.max_depth + 1, 1, self.max_depth)

    def __call__(self, steps: Sequence[Any]) -> tuple[int, int, int]:
        """The next step's chain, after feeding the accepted drafts (committed tokens less
        the bonus token) of the steps not seen yet: at a new generation (a new list), first
        the last ones of the previous (the engine appends to its list after each pick)."""
        if steps is not self.steps:
            self.feed(self.steps)
            self.steps, self.fed = steps, 0
        self.feed(steps)
        depth = self.params.get_steps_for_batch(1)
        return (depth + 1, 1, depth)

    def feed(self, steps: Sequence[Any]) -> None:
        for step in steps[self.fed :]:
            self.params.on_verify_complete([step.committed - 1], batch_size=1)
            self.verifies += 1
        self.fed = len(steps)
