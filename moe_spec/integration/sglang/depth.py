"""``auto``'s guard as SGLang's adaptive-speculation policy, for chains.

SGLang 0.5.23's ``--speculative-adaptive`` (EAGLE chains, ``--speculative-eagle-topk 1``)
builds one runtime state per candidate draft depth, 0 included (the root verified alone: a
plain decode), and asks a policy object which depth each step runs
(``sglang.srt.speculative.adaptive_runtime_state.AdaptiveSpecPolicy``). Its own policy
follows an average of accepted drafts. With ``auto``, :class:`GuardedDepth` takes its place
(the plugin swaps ``worker.adaptive_controller.params`` right after ``EAGLEWorkerV2`` is
built, before the states are): the candidates are the configured chain, its halvings and
0, and each step runs the depth of the guard's latest plan (:meth:`AcceptanceFeed.depth`):
the chain whose predicted committed tokens per second under the cost model are highest, or
decoding where speculation is predicted to lose.

With ``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND=1`` (SGLang's experimental switch: a depth-0
step skips the draft forward over its token, and a chain after it drafts from a zeroed
stand-in) the guard's decodes skip that forward except the last of each planned run, so
the chain after a run drafts from a current state, and ``auto`` prices a decode as a plain
one (``decode_extend=False``).

The switch is taken when the worker asks, at the start of each decode forward
(``get_steps_for_batch``), from a plan made in the verify hook of the worker's own thread:
every tensor-parallel rank folds the same steps in the same order, so all ranks run the
same depth at the same step. ``on_verify_complete`` (called later, from the scheduler's
result processing) changes nothing. The guard prices batch-1 steps: at larger batches it
still chooses from the batch's first request.
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from moe_spec.integration.sglang.compat import SKIP_EXTEND
from moe_spec.integration.sglang.feed import AcceptanceFeed


class GuardedDepth:
    """SGLang's ``AdaptiveSpecPolicy``: each step's chain depth from ``auto``'s guard."""

    def __init__(self, feed: AcceptanceFeed) -> None:
        self.feed = feed
        self.steps = sorted({0, *(depth for _, _, depth in feed.trees)})
        self.cuda_graph_bs: list[int] | None = None

    @property
    def candidate_steps(self) -> list[int]:
        """Depths SGLang builds a runtime state for: the guard's chains and 0 (decoding)."""
        return self.steps

    def set_cuda_graph_bs(self, cuda_graph_bs: list[int] | None) -> None:
        self.cuda_graph_bs = sorted(cuda_graph_bs) if cuda_graph_bs else None

    def cuda_graph_bs_for_step(self, step: int) -> list[int] | None:
        """Every batch size can run every depth (the guard does not choose by batch)."""
        return self.cuda_graph_bs

    def get_steps_for_batch(self, batch_size: int) -> int:
        """The depth of the guard's latest plan (0: a plain decode). Where SGLang's
        ``SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND`` was set, it is rewritten for this step
        (SGLang reads it after the verify, in this thread): on only for a decode that
        another planned decode follows (:meth:`AcceptanceFeed.skips_extend`). Never raises
        (SGLang's scheduler would stop): a failure stops the feed, whose depth is then the
        configured chain's."""
        try:
            depth = self.feed.depth()
            skip = self.feed.skips_extend(depth)
        except Exception as exc:
            self.feed.stop(exc, "the depth choice")
            depth, skip = self.feed.depth(), False
        if self.feed.skip_extend:
            os.environ[SKIP_EXTEND] = "1" if skip else "0"
        return depth

    def on_verify_complete(self, num_correct_drafts_per_req: list[int], batch_size: int) -> None:
        """Nothing: the feed learned this step in the verify hook (see the module's doc)."""
        return None


def drive_depth(worker: Any, feed: AcceptanceFeed | None) -> GuardedDepth | None:
    """Put :class:`GuardedDepth` in place of the policy of ``worker``'s adaptive controller
    (an ``EAGLEWorkerV2`` just built). Returns it, or None where there is no controller
    (SGLang's adaptive speculation is off, or this rank hosts no draft) or no chain feed."""
    controller = getattr(worker, "adaptive_controller", None)
    if controller is None or feed is None or not feed.chains:
        return None
    controller.params = GuardedDepth(feed)
    switches = logging.getLogger(SWITCH_LOGGER)
    if not any(isinstance(f, SwitchLines) for f in switches.filters):
        switches.addFilter(SwitchLines())
    return controller.params


SWITCH_LOGGER = "sglang.srt.speculative.eagle_worker_v2"
SWITCH_LINE = "Switch adaptive runtime state: "


class SwitchLines(logging.Filter):
    """Thins SGLang's INFO line per depth switch, which the guard's decode runs, explores and
    probes make every few verify steps: each transition's first line, then at most one a
    minute, saying how many were held back (``auto``'s periodic line counts steps per
    depth)."""

    def __init__(self, every_s: float = 60.0) -> None:
        super().__init__()
        self.every_s = every_s
        self.seen: set[str] = set()
        self.last = -float("inf")
        self.held = 0

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith(SWITCH_LINE):
            return True
        transition, now = message.split(",")[0], time.monotonic()
        if transition in self.seen and now - self.last < self.every_s:
            self.held += 1
            return False
        self.seen.add(transition)
        if self.held:
            record.msg, record.args = (
                f"{message} ({self.held} more since the last shown; moe-spec thins these)",
                (),
            )
        self.held, self.last = 0, now
        return True
