"""Compare budgeting policies on a routing trace, without running a model.

Shape legend: L layers, T tokens, E experts, K top-k.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import fmean

from moe_spec.budget import Mode
from moe_spec.policies import get_policy
from moe_spec.routing import used_experts_E
from moe_spec.trace import RoutingTrace


@dataclass(frozen=True)
class PolicyOutcome:
    """What one policy at one budget does to every layer of a trace."""

    policy: str
    budget: int | None  # None: unbudgeted
    distinct_before_L: list[int]
    distinct_after_L: list[int]
    mass_kept: float  # share of all routing probability on kept experts
    topk_mass_kept: float  # share of the model's top-k weight whose expert survived
    rerouted: float  # share of (layer, token) pairs whose routing changed
    root_rerouted_layers: int  # layers in which the root token was re-routed


def evaluate(
    trace: RoutingTrace,
    policy_name: str,
    budget: int | None,
    mode: Mode = "substitution",
    **options: object,
) -> PolicyOutcome:
    """Run ``policy_name`` at ``budget`` on every layer of ``trace`` and measure it."""
    policy = get_policy(policy_name, **options)
    E = trace.router_logits_LTE.shape[-1]
    before, after, mass, topk_mass, rerouted, root_layers = [], [], [], [], [], 0
    for layer in range(trace.num_layers):
        record = trace.record(layer)
        out = policy.apply(record, E if budget is None else budget, mode=mode)
        probs_TE = record.routing_probs_TE()
        survived_TK = out.keep_E[record.topk_ids_TK]
        changed_T = (out.topk_ids_TK != record.topk_ids_TK).any(dim=-1)
        changed_T |= (out.topk_weights_TK != record.topk_weights_TK).any(dim=-1)
        before.append(int(record.used_E().sum()))
        after.append(int(used_experts_E(out.topk_ids_TK, E).sum()))
        mass.append(float((probs_TE * out.keep_E).sum() / probs_TE.sum()))
        w_TK = record.topk_weights_TK
        topk_mass.append(float((w_TK * survived_TK).sum() / w_TK.sum()))
        rerouted.append(float(changed_T.float().mean()))
        root_layers += int(changed_T[0])
    return PolicyOutcome(
        policy_name,
        budget,
        before,
        after,
        fmean(mass),
        fmean(topk_mass),
        fmean(rerouted),
        root_layers,
    )


def compare(
    trace: RoutingTrace, policies: Sequence[str], budgets: Sequence[int], mode: Mode
) -> list[PolicyOutcome]:
    """The unbudgeted baseline, then every policy at every budget."""
    rows = [evaluate(trace, "none", None, mode)]
    for name in policies:
        if name == "none":
            continue
        rows.extend(evaluate(trace, name, budget, mode) for budget in budgets)
    return rows


def format_table(rows: Sequence[PolicyOutcome], num_layers: int) -> str:
    """A fixed-width table: one row per (policy, budget), distinct experts per layer."""
    head = (
        f"{'policy':<16}{'B':>4}  {'distinct/layer':>14}  {'mass kept':>9}  {'top-k kept':>10}  "
        f"{'re-routed':>9}  {'root hit':>8}  distinct experts per layer (L0..L{num_layers - 1})"
    )
    lines = [head, "-" * len(head)]
    for r in rows:
        mean_after = fmean(r.distinct_after_L)
        lines.append(
            f"{r.policy:<16}{'-' if r.budget is None else r.budget:>4}  {mean_after:>14.1f}  "
            f"{r.mass_kept:>9.1%}  {r.topk_mass_kept:>10.1%}  {r.rerouted:>9.1%}  "
            f"{r.root_rerouted_layers:>8}  {' '.join(f'{d:>2}' for d in r.distinct_after_L)}"
        )
    return "\n".join(lines)
