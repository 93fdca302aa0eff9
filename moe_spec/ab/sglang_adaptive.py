"""SGLang's own adaptive speculation as a baseline: the chain depth its policy picks per step.

With ``--speculative-adaptive`` on a chain (``--speculative-eagle-topk 1``) and no ``auto``,
SGLang 0.5.23 chooses each step's draft depth with ``AdaptiveStepSlot``
(``sglang.srt.speculative.adaptive_spec_params``): an exponential average of the accepted
drafts, checked every few steps after a warm-up, moves the depth up or down among the
candidate steps of the batch size's slot (its default for batch 1: 1, 3, 5, 7; no 0, so it
never stops drafting). :class:`SGLangAdaptiveDepth` drives the engines' ``tree_size=`` with
SGLang's own class, so its choices are SGLang's, fed the accepted drafts of each step.

Kept across generations, as a server keeps it (``warm``): one instance is one server.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

#: The default configuration's slot for batch size 1 (SGLang 0.5.23).
BATCH_1 = "1"


class SGLangAdaptiveDepth:
    """``tree_size`` for the engines: the chain ``(d + 1, 1, d)`` of SGLang's policy's depth d.

    ``initial_steps``: ``--speculative-num-steps`` (the depth it starts from). Needs SGLang.
    """

    def __init__(self, initial_steps: int, config: dict[str, Any] | None = None) -> None:
        try:
            from sglang.srt.speculative.adaptive_spec_params import (
                DEFAULT_ADAPTIVE_CONFIG,
                AdaptiveStepSlot,
            )
        except ImportError as exc:
            raise ValueError(
                f"SGLang's adaptive policy is SGLang's own code; it is not importable ({exc})"
            ) from None
        config = DEFAULT_ADAPTIVE_CONFIG if config is None else config
        self.slot = AdaptiveStepSlot(initial_steps, config[BATCH_1])
        self.max_depth = max(self.slot.candidate_steps)
        if min(self.slot.candidate_steps) < 1:
            raise ValueError(
                f"candidate steps {self.slot.candidate_steps}: the engines run depth 0 only "
                "as auto's decodes; allowed: depths >= 1"
            )
        self.steps: Sequence[Any] = []  # the current generation's steps (the engine's list)
        self.fed = 0  # how many of them the policy has seen

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
        depth = self.slot.current_steps
        return (depth + 1, 1, depth)

    def feed(self, steps: Sequence[Any]) -> None:
        for step in steps[self.fed :]:
            self.slot.update([step.committed - 1])
        self.fed = len(steps)
