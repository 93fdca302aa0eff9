"""Find, load and look up budgeting policies.

Plugins come from two places, loaded the same way:
  * the built-in module ``moe_spec.policies.builtin``;
  * installed packages that declare an entry point in the ``moe_spec.policies``
    group (``[project.entry-points."moe_spec.policies"] name = "module"``).

Environment:
  * ``MOE_SPEC_PLUGINS=a,b``: load only these entry points (by entry-point or
    distribution name); set but empty loads none.
  * ``MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD=1``: load no entry points at all.
Built-in policies are always available.
"""

from __future__ import annotations

import importlib
import os
import re
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from moe_spec.policies import builtin, hookspecs
from moe_spec.policies.base import Policy, PolicyError

ENTRY_POINT_GROUP = "moe_spec.policies"
ALLOW_ENV = "MOE_SPEC_PLUGINS"
DISABLE_ENV = "MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_ORIGIN = "built-in"
POLICY_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")


class PluginError(RuntimeError):
    """A plugin failed to import or registered something invalid."""


@dataclass(frozen=True)
class PolicyInfo:
    """An installed policy: its class and the plugin it came from."""

    name: str
    policy_class: type[Policy]
    origin: str

    @property
    def description(self) -> str:
        return self.policy_class.description


class PolicyRegistry:
    """A pluggy plugin manager and the policies its plugins registered."""

    def __init__(self) -> None:
        self.manager = pluggy.PluginManager(hookspecs.PROJECT)
        self.manager.add_hookspecs(hookspecs)
        self.origins: dict[str, str] = {}  # pluggy plugin name -> human-readable origin
        self._policies: dict[str, PolicyInfo] | None = None

    def add_plugin(self, plugin: object, name: str, origin: str) -> None:
        """Register a plugin object (usually a module) under ``name``."""
        self.manager.register(plugin, name=name)
        self.origins[name] = origin
        self._policies = None

    def load_entry_points(self, environ: os._Environ | dict | None = None) -> None:
        """Import and register the ``moe_spec.policies`` entry points the environment allows."""
        environ = os.environ if environ is None else environ
        if environ.get(DISABLE_ENV, "").strip() not in ("", "0"):
            return
        found = list(entry_points(group=ENTRY_POINT_GROUP))
        allowed = environ.get(ALLOW_ENV)
        if allowed is not None:
            wanted = {normalise(n) for n in allowed.split(",") if n.strip()}
            found = [ep for ep in found if wanted & {normalise(ep.name), normalise(dist_name(ep))}]
            known = {normalise(ep.name) for ep in found} | {
                normalise(dist_name(ep)) for ep in found
            }
            missing = sorted(wanted - known)
            if missing:
                installed = ", ".join(
                    sorted(ep.name for ep in entry_points(group=ENTRY_POINT_GROUP))
                )
                raise PluginError(
                    f"{ALLOW_ENV} names {', '.join(missing)} but no installed plugin has "
                    f"that name; "
                    f"installed entry points: {installed or 'none'}"
                )
        for ep in found:
            self.add_plugin(import_entry_point(ep), f"{dist_name(ep)}:{ep.name}", describe(ep))

    def policies(self) -> dict[str, PolicyInfo]:
        """All registered policies by name (runs the ``register_policies`` hook once)."""
        if self._policies is None:
            self._policies = self._collect()
        return self._policies

    def _collect(self) -> dict[str, PolicyInfo]:
        found: dict[str, PolicyInfo] = {}
        for impl in self.manager.hook.register_policies.get_hookimpls():
            origin = self.origins.get(impl.plugin_name, impl.plugin_name)

            def register(policy_class: type[Policy], origin: str = origin) -> None:
                info = check_policy_class(policy_class, origin)
                if info.name in found:
                    raise PluginError(
                        f"policy {info.name!r} is registered twice: by {found[info.name].origin} "
                        f"and by {origin}"
                    )
                found[info.name] = info

            kwargs = {"register": register}
            try:
                impl.function(*(kwargs[arg] for arg in impl.argnames))
            except (PluginError, PolicyError):
                raise
            except Exception as exc:
                raise PluginError(f"plugin {origin} failed in register_policies: {exc!r}") from exc
        return dict(sorted(found.items()))

    def get(self, name: str, **options: object) -> Policy:
        """A configured instance of policy ``name``; unknown names list the known ones."""
        available = self.policies()
        if name not in available:
            raise PolicyError(
                f"unknown policy {name!r}; available: {', '.join(available)} "
                f"(install a plugin package to add more; `moe-spec policies` lists them)"
            )
        info = available[name]
        try:
            policy = info.policy_class(**options)
        except PolicyError:
            raise
        except TypeError as exc:
            raise PolicyError(
                f"policy {name!r} (from {info.origin}): bad options {options}: {exc}"
            ) from exc
        policy.origin = info.origin
        return policy


def check_policy_class(policy_class: object, origin: str) -> PolicyInfo:
    """Validate what a plugin passed to ``register``; errors name the plugin."""
    if not (isinstance(policy_class, type) and issubclass(policy_class, Policy)):
        raise PluginError(
            f"plugin {origin} registered {policy_class!r}, which is not a subclass of "
            f"moe_spec.Policy"
        )
    name = policy_class.name
    if not isinstance(name, str) or not POLICY_NAME.match(name):
        raise PluginError(
            f"plugin {origin} registered {policy_class.__name__} with name {name!r}; a policy "
            f"name is lower-case letters, digits and single dashes (e.g. 'shallow-first')"
        )
    return PolicyInfo(name, policy_class, origin)


def import_entry_point(ep: EntryPoint) -> ModuleType | object:
    try:
        return ep.load()
    except Exception as exc:
        raise PluginError(f"plugin {describe(ep)} failed to import: {exc!r}") from exc


def dist_name(ep: EntryPoint) -> str:
    return ep.dist.name if ep.dist is not None else "unknown"


def describe(ep: EntryPoint) -> str:
    version = ep.dist.version if ep.dist is not None else "?"
    return f"{dist_name(ep)} {version} (entry point {ep.name!r} -> {ep.value})"


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name.strip()).lower()


def default_registry(environ: os._Environ | dict | None = None) -> PolicyRegistry:
    """A registry with the built-ins and the entry points ``environ`` allows."""
    registry = PolicyRegistry()
    registry.add_plugin(builtin, "moe_spec.builtin", BUILTIN_ORIGIN)
    registry.load_entry_points(environ)
    return registry


_registry: PolicyRegistry | None = None


def registry() -> PolicyRegistry:
    """The process-wide registry, loaded on first use."""
    global _registry
    if _registry is None:
        _registry = default_registry()
    return _registry


def reset_registry() -> None:
    """Forget the process-wide registry (after installing a plugin, or in tests)."""
    global _registry
    _registry = None
    importlib.invalidate_caches()


def list_policies() -> list[PolicyInfo]:
    """Every installed policy, sorted by name."""
    return list(registry().policies().values())


def get_policy(name: str, **options: object) -> Policy:
    """A configured instance of the installed policy ``name``."""
    return registry().get(name, **options)
