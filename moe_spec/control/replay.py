"""The controller's own host time, measured by replaying one generation's calls.

A live run times the controller beside the model's forwards, so on a busy machine its
figure carries whatever else ran (a one-shot timer read 0.19 ms per step on a run that a
quiet replay of the same calls puts at a third of that). :func:`record` wraps a live
:class:`moe_spec.control.Guard` so that every call the engine makes on it is kept with its
arguments; :func:`replay_seconds` feeds the same calls to fresh guards built the same way,
several times, and keeps each call's fastest time (the usual microbenchmark rule: the
minimum is the run nothing interrupted). A replay must decide exactly as the live run
did, or it is refused: its time would be of other work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from moe_spec.control.guard import Guard
from moe_spec.control.steps import TREE

# the guard's methods an engine or a policy calls, in the order they come
CALLS = ("plan", "observe", "gate", "new_request", "prefilled", "caught_up", "draft_matched")


@dataclass
class Recording:
    """One generation's calls on its guard: ``(method, args, kwargs, result)``."""

    calls: list[tuple[str, tuple, dict, object]] = field(default_factory=list)

    def steps(self) -> tuple[int, int]:
        """Tree steps and plain decodes that ran (as observed: a run of decodes may end
        with its request before the plan's count, and the draft gate turns a tree into one)."""
        outcomes = [args[0] for name, args, _, _ in self.calls if name == "observe"]
        trees = sum(o.kind == TREE for o in outcomes)
        return trees, sum(o.steps for o in outcomes if o.kind != TREE)


def record(guard: Guard, recording: Recording) -> Guard:
    """Make ``guard`` keep every call of :data:`CALLS` in ``recording``; returns it."""
    for name in CALLS:
        method = getattr(guard, name)

        def kept(*args, _method=method, _name=name, **kwargs):
            result = _method(*args, **kwargs)
            # a server's recorded ranking is a device buffer the next step rewrites
            kept_args = tuple(a.clone() if isinstance(a, torch.Tensor) else a for a in args)
            recording.calls.append((_name, kept_args, kwargs, result))
            return result

        setattr(guard, name, kept)
    return guard


@dataclass(frozen=True)
class ControllerTime:
    """The replay's fastest seconds, summed by the kind of step each call served."""

    tree_s: float  # plans of tree steps, their draft gates and observations
    decode_s: float  # plans of plain decodes and their observations
    tree_steps: int
    decodes: int

    @property
    def per_tree_step_s(self) -> float:
        return self.tree_s / max(self.tree_steps, 1)

    @property
    def per_decode_s(self) -> float:
        return self.decode_s / max(self.decodes, 1)


def replay_seconds(
    recording: Recording, build: Callable[[], Guard], repeats: int = 5
) -> ControllerTime:
    """Feed ``recording``'s calls to ``repeats`` guards from ``build`` (built as the live
    one was) and keep each call's fastest time. Raises ``ValueError`` where a replay plans
    differently from the live run (a guard that reads measured wall times, ``measure``)."""
    if repeats < 1:
        raise ValueError(f"repeats is {repeats}; allowed: an integer >= 1")
    best = np.full(len(recording.calls), np.inf)
    for _ in range(repeats):
        guard = build()
        for i, (name, args, kwargs, result) in enumerate(recording.calls):
            method = getattr(guard, name)
            t0 = time.perf_counter()
            got = method(*args, **kwargs)
            best[i] = min(best[i], time.perf_counter() - t0)
            if name in ("plan", "gate") and got != result:
                raise ValueError(
                    f"the replay's {name} call {i} answered {got!r}, the live run {result!r}: "
                    "a guard that reads wall times (measure) cannot be replayed"
                )
    tree_s = decode_s = 0.0
    planned_tree = True
    for (name, args, _, result), seconds in zip(recording.calls, best, strict=True):
        if name == "plan":
            serves_tree = planned_tree = result.kind == TREE
        elif name == "observe":
            serves_tree = args[0].kind == TREE
        elif name == "draft_matched":  # a tree's catch-up, or a read after decodes
            serves_tree = planned_tree
        else:  # the gate and the request and timing notes: counted with tree steps
            serves_tree = True
        if serves_tree:
            tree_s += seconds
        else:
            decode_s += seconds
    return ControllerTime(tree_s, decode_s, *recording.steps())
