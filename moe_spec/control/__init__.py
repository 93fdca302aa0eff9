"""Choosing the verify budget per step and layer, and guarding against slow speculation.

- ``steps``: what an engine tells a planning policy before a step (``StepPlan``, the
  guard's answer) and after it (``StepOutcome``).
- ``estimates``: online statistics of what was accepted (calibration of the draft's
  path probability, acceptance per depth, and per step the budget each layer needed
  to keep the accepted path whole).
- ``cost``: the step-time tables the controller plans with (a cost model for a model
  shape and device, optionally corrected by measured wall time).
- ``planner``: predicted committed tokens over predicted time for a tree and per-layer
  budgets; the search for the best per-layer budgets.
- ``guard``: before each step, the budgeted tree, a smaller tree or autoregressive
  decoding, whichever is predicted fastest, with hysteresis and probes; with its parts
  ``gate`` (a tree only where this step's draft pays), ``warmup`` (with measured
  times, no warm-up tree that clearly loses) and ``shadows`` (on a chain, what it would
  have committed on decoded text, from the draft's guesses at it).

The ``auto`` policy (``moe_spec.policies.auto``) holds one controller per generation.
"""

from moe_spec.control.cost import StepCost
from moe_spec.control.estimates import AcceptanceEstimates
from moe_spec.control.guard import Guard
from moe_spec.control.steps import AUTOREGRESSIVE, TREE, StepOutcome, StepPlan, candidate_trees

__all__ = [
    "AUTOREGRESSIVE",
    "TREE",
    "AcceptanceEstimates",
    "Guard",
    "StepCost",
    "StepOutcome",
    "StepPlan",
    "candidate_trees",
]
