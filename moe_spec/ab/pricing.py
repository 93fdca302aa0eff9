"""Which cost model prices an A/B run, and which one the depth-width controller decides with.

Two roles, kept apart so a finished run can be re-priced without rerunning it:

- **pricing** (the modeled columns): ``--model-shape/--gpu`` with ``--cost-model``
  (``calibrated`` by default, or ``roofline``) or ``--overhead-us`` (the roofline plus a
  fixed time per layer). Changing it on ``--resume`` re-prices the stored steps.
- **the controller** of the ``depth-width`` arm: its tree choices depend on a cost model,
  so they are part of what ran. It is stored in ``run.json`` (``controller``: shape, GPU,
  cost model and its overhead terms) when the run starts; a resumed run reuses the stored
  one whatever the pricing options say, so new depth-width runs decide as the old ones did.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields

from moe_spec.ab.configs import BASELINES
from moe_spec.ab.stats import Modeled
from moe_spec.costmodel import (
    COST_MODELS,
    CostModel,
    ModelShape,
    Overheads,
    get_cost_model,
    get_gpu,
    get_shape,
    map_distinct,
)

COST_MODEL_CHOICES = COST_MODELS
DEFAULT_CONTROLLER_MODEL = ("OLMoE-1B-7B", "H200")
STORED = "cannot read the stored depth-width controller (run.json's `controller`)"


def cost_model_from_args(gpu_name: str, name: str | None, overhead_us: float | None) -> CostModel:
    """``--cost-model`` / ``--overhead-us`` on ``gpu_name`` (default: calibrated)."""
    if overhead_us is None:
        return get_cost_model(name or "calibrated", gpu_name)
    if name not in (None, "roofline"):
        raise ValueError(
            f"--overhead-us adds to the roofline; it cannot go with --cost-model {name}"
        )
    if not 0 <= overhead_us < math.inf:
        raise ValueError(f"--overhead-us must be a finite number >= 0, got {overhead_us}")
    overheads = Overheads(layer_s=overhead_us * 1e-6)
    return CostModel(f"roofline+{overhead_us:g}us/layer", get_gpu(gpu_name), overheads)


def pricing(model_shape: str | None, gpu: str | None, name: str | None, overhead_us) -> Modeled:
    """The model that prices the modeled columns, or None without ``--model-shape/--gpu``."""
    if (model_shape is None) != (gpu is None):
        raise ValueError("--model-shape and --gpu go together")
    if gpu is None:
        return None  # --cost-model alone still chooses the depth-width controller's model
    return Modeled(cost_model_from_args(gpu, name, overhead_us), get_shape(model_shape))


@dataclass(frozen=True)
class Controller:
    """The cost model the depth-width arm picks trees with."""

    cost: CostModel
    shape: ModelShape

    def to_json(self) -> dict:
        """Every overhead term (``forward``, ``layer``, ``expert``, ``select``, ``tree``,
        ``token``, in seconds): a ``measured`` model has all six."""
        o = self.cost.overheads
        overheads = {f.name.removesuffix("_s"): getattr(o, f.name) for f in fields(Overheads)}
        return {
            "shape": self.shape.name,
            "gpu": self.cost.gpu.name,
            "cost_model": self.cost.name,
            "overheads_s": overheads,
        }

    @classmethod
    def from_json(cls, data) -> Controller:
        """From ``run.json``: ``to_json``'s object (older ones hold three overhead terms: the
        others are 0), or the older ``SHAPE on GPU, N us/layer``; anything else is refused."""
        if isinstance(data, str):
            m = re.fullmatch(r"(\S+) on (\S+), ([0-9.eE+-]+) us/layer", data)
            if not m:
                raise ValueError(f"{STORED} {data!r}")
            data = {
                "shape": m[1],
                "gpu": m[2],
                "cost_model": f"roofline+{m[3]}us/layer",
                "overheads_s": {"layer": float(m[3]) * 1e-6},
            }
        try:
            o = data["overheads_s"]
            names = {f.name.removesuffix("_s") for f in fields(Overheads)}
            unknown = set(o) - names
            if unknown:
                raise ValueError(f"unknown overhead terms {sorted(unknown)}")
            overheads = Overheads(**{f"{k}_s": v for k, v in o.items()})
            cost = CostModel(str(data["cost_model"]), get_gpu(data["gpu"]), overheads)
            return cls(cost, get_shape(data["shape"]))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            detail = f"no {exc}" if isinstance(exc, KeyError) else str(exc)
            raise ValueError(f"{STORED} {data!r}: {detail}") from None


def controller(priced: Modeled | None, stored, name: str | None, overhead_us) -> Controller:
    """The stored controller (resume), else the pricing model, else OLMoE-1B-7B on an H200."""
    if stored is not None:
        return Controller.from_json(stored)
    if priced is not None:
        return Controller(priced.cost, priced.shape)
    shape, gpu = DEFAULT_CONTROLLER_MODEL
    return Controller(cost_model_from_args(gpu, name, overhead_us), get_shape(shape))


def planned_for(configs) -> dict[str, tuple[str, str, str]]:
    """``label -> (shape, gpu, cost model)`` of each arm whose policy plans with a cost model
    of its own (``auto``: its ``shape``/``gpu``/``cost_model`` options), which the run's
    pricing options do not change."""
    from moe_spec.policies import get_policy

    out = {}
    for c in configs:
        if c.policy in BASELINES:
            continue
        policy = get_policy(c.policy, **c.options)
        shape, cost = getattr(policy, "shape", None), getattr(policy, "cost", None)
        if isinstance(shape, ModelShape) and isinstance(cost, CostModel):
            out[c.label] = (shape.name, cost.gpu.name, cost.name)
    return out


def planning_mismatches(
    planned: dict[str, tuple[str, str, str]], priced_by: Modeled | None
) -> list[str]:
    """A warning per arm that plans for another shape or GPU than the run is priced for."""
    if priced_by is None:
        return []
    priced = (priced_by.shape.name, priced_by.cost.gpu.name)
    return [
        f"{label} plans for {s} on {g} (its opt.shape and opt.gpu, set or default), but this "
        f"run is priced for {priced[0]} on {priced[1]}: its budgets and guard are chosen for "
        f"another model than the one priced; set opt.shape={priced[0]},opt.gpu={priced[1]} "
        "in the arm to plan for it (the arm then runs again), or price the run as it plans"
        for label, (s, g, _) in planned.items()
        if (s, g) != priced
    ]


def priced_budgets(configs, info: dict, shape: ModelShape) -> dict[str, str]:
    """``label -> "B=8 of 32 experts, priced as 25.1 of Qwen3-30B-A3B's 128"`` for each fixed
    budget carried to a shape of other top-k or experts (``map_distinct`` over the arm's tree):
    the arm keeps its label, which names the budget of the model that ran."""
    K, E = info.get("top_k"), info.get("n_experts")
    if K is None or E is None or (shape.top_k, shape.n_experts) == (K, E):
        return {}
    return {
        c.label: f"B={c.budget} of {E} experts, priced as "
        f"{map_distinct(min(c.budget, E), K, E, shape.top_k, shape.n_experts, c.num_tokens):.1f}"
        f" of {shape.name}'s {shape.n_experts}"
        for c in configs
        if c.budget is not None and c.policy not in BASELINES
    }
