"""Hook specifications of the ``moe_spec`` plugin system (pluggy): policies and architectures.

A plugin is a module (or object) with functions marked ``@hookimpl``. Built-in
policies are registered the same way as third-party ones; third-party plugins
are found through the ``moe_spec.policies`` entry-point group.
"""

from __future__ import annotations

from collections.abc import Callable

import pluggy

PROJECT = "moe_spec"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_policies(register: Callable[[type], None]) -> None:
    """Register budgeting policies by calling ``register(PolicyClass)`` for each."""


@hookspec
def register_architectures(register: Callable[[object], None]) -> None:
    """Register transformers MoE architectures by calling ``register(Architecture(...))``."""
