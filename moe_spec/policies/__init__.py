"""Budgeting policies: the interface, the plugin registry and the built-ins."""

from moe_spec.policies.base import Policy, PolicyError
from moe_spec.policies.hookspecs import hookimpl
from moe_spec.policies.registry import (
    ALLOW_ENV,
    DISABLE_ENV,
    ENTRY_POINT_GROUP,
    PluginError,
    PluginWarning,
    PolicyInfo,
    get_policy,
    list_policies,
    plugin_failures,
    reset_registry,
)

__all__ = [
    "ALLOW_ENV",
    "DISABLE_ENV",
    "ENTRY_POINT_GROUP",
    "PluginError",
    "PluginWarning",
    "Policy",
    "PolicyError",
    "PolicyInfo",
    "get_policy",
    "hookimpl",
    "list_policies",
    "plugin_failures",
    "reset_registry",
]
