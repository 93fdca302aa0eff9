"""moe-spec: expert budgeting for speculative decoding on Mixture-of-Experts models.

In the verification forward of a speculative draft tree, each MoE layer may
read at most B distinct experts (MoE-Spec, arXiv 2602.16052).
"""

from moe_spec.budget import MODES, BudgetedTopK, apply_budget, select_kept
from moe_spec.policies import (
    PluginError,
    Policy,
    PolicyError,
    get_policy,
    hookimpl,
    list_policies,
)
from moe_spec.routing import RoutingRecord

__version__ = "0.1.0"

__all__ = [
    "MODES",
    "BudgetedTopK",
    "PluginError",
    "Policy",
    "PolicyError",
    "RoutingRecord",
    "apply_budget",
    "get_policy",
    "hookimpl",
    "list_policies",
    "select_kept",
]
