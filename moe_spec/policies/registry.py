"""Find, load and look up budgeting policies.

Plugins come from two places, loaded the same way:
  * the built-in modules ``moe_spec.policies.builtin`` and ``moe_spec.policies.auto``;
  * installed packages that declare an entry point in the ``moe_spec.policies``
    group (``[project.entry-points."moe_spec.policies"] name = "module"``).

Environment:
  * ``MOE_SPEC_PLUGINS=a,b``: load only these entry points (by entry-point or
    distribution name); set but empty loads none.
  * ``MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD=1`` (or true/yes/on): load no entry
    points at all; ``0``/false/no/off or unset: load them.
Built-in policies are always available. A plugin that fails to import or to
register is left out with a :class:`PluginWarning` that names it and says why;
every other plugin still loads, and asking for a policy that is missing lists
the plugins that failed.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
import re
import traceback
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import EntryPoint, entry_points
from types import ModuleType

import pluggy

from moe_spec.checks import flag_value
from moe_spec.policies import auto, builtin, hookspecs
from moe_spec.policies.base import Policy, PolicyError

ENTRY_POINT_GROUP = "moe_spec.policies"
ALLOW_ENV = "MOE_SPEC_PLUGINS"
DISABLE_ENV = "MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD"
BUILTIN_ORIGIN = "built-in"
POLICY_NAME = re.compile(r"^[a-z][a-z0-9]*(-[a-z0-9]+)*$")
# settings of the decoding that users pass as policy options by mistake: where each goes
DECODING_SETTINGS = {
    "repair": "`moe-spec generate --repair`, `repair=true` in an A/B config (not `opt.repair`), "
    "SpecConfig(repair=True); SGLang's verify path has no repair",
    "budget": "`--budget B`, `B=` in an A/B config, SpecConfig(budget=B)",
    "mode": "`--mode`, `mode=` in an A/B config, SpecConfig(mode=...)",
}
# frames of a failing plugin's traceback that are not the plugin: moe_spec, importlib, pluggy
OWN_FILES = (
    os.path.dirname(os.path.dirname(__file__)) + os.sep,
    os.path.dirname(importlib.__file__),
    "<frozen importlib",
    os.path.dirname(pluggy.__file__),
)


class PluginError(RuntimeError):
    """A plugin failed to import or registered something invalid (``where``: the plugin's
    function at fault, or a ``(file, line)``, where known)."""

    def __init__(self, message: str, where: object = None) -> None:
        super().__init__(message)
        self.where = where


class PluginWarning(UserWarning):
    """A plugin was left out because it failed to import or to register."""


def plugin_line(exc: BaseException, where: object = None) -> tuple[str, int] | None:
    """``(file, line)`` in a plugin's own code that ``exc`` (a failure to import or register
    it) comes from: a syntax error's line; else the innermost frame of its traceback, or of
    its cause's, outside this package's registries and importlib; else the place
    ``exc.where`` (a :class:`PluginError`'s) or ``where`` names (a function, or a module: its
    first line; or a ``(file, line)`` itself). None where nothing points into the plugin."""
    where = getattr(exc, "where", None) or where
    for err in (exc, exc.__cause__):
        if isinstance(err, SyntaxError) and err.filename and err.lineno:
            return err.filename, err.lineno
        frames = [] if err is None else traceback.extract_tb(err.__traceback__)
        ours = [f for f in frames if not f.filename.startswith(OWN_FILES) and f.lineno]
        if ours:
            return ours[-1].filename, ours[-1].lineno
    if isinstance(where, tuple):
        return where
    code = getattr(where, "__code__", None)
    if code is not None:
        return code.co_filename, code.co_firstlineno
    if isinstance(where, ModuleType) and getattr(where, "__file__", None):
        return where.__file__, 1
    return None


def warn_left_out(message: str, line: tuple[str, int] | None) -> None:
    """A :class:`PluginWarning` that a plugin is left out, pointed at the plugin's own
    ``line`` (:func:`plugin_line`) so that a warnings filter or IDE lands there, not in
    moe_spec."""
    if line is None:
        warnings.warn(message, PluginWarning, stacklevel=3)
    else:
        warnings.warn_explicit(message, PluginWarning, *line)


def env_flag(environ: os._Environ | dict, name: str) -> bool:
    """An on/off environment variable; anything but the usual spellings is an error."""
    value = flag_value(environ.get(name), False)
    if value is None:
        raise PluginError(
            f"{name}={environ.get(name)!r} is not a flag; allowed: 1/true/yes/on or "
            "0/false/no/off (or unset)"
        )
    return value


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
        self.failures: dict[str, str] = {}  # origin -> why that plugin was left out
        self.not_loaded: str = ""  # the installed plugins the environment left unloaded, why
        self._policies: dict[str, PolicyInfo] | None = None

    def add_plugin(self, plugin: object, name: str, origin: str) -> None:
        """Register a plugin object (usually a module) under ``name``; a hook function whose
        arguments the hook does not pass is a :class:`PluginError` naming it."""
        try:
            self.manager.register(plugin, name=name)
        except pluggy.PluginValidationError as exc:
            why = str(exc).replace("\n", "; ")  # pluggy says it on three lines
            hook = re.search(r"for hook '(\w+)'", why)
            raise PluginError(
                f"plugin {origin}: {why}; {hooks_take(self.manager)}",
                getattr(plugin, hook[1], None) if hook else None,
            ) from exc
        except ValueError as exc:  # its name, or the object, registered already
            raise PluginError(f"plugin {origin}: {exc}") from exc
        self.origins[name] = origin
        self._policies = None

    def load_entry_points(self, environ: os._Environ | dict | None = None) -> None:
        """Import and register the ``moe_spec.policies`` entry points the environment allows."""
        environ = os.environ if environ is None else environ
        found = list(entry_points(group=ENTRY_POINT_GROUP))
        if env_flag(environ, DISABLE_ENV):
            self.note_not_loaded(found, f"{DISABLE_ENV}={environ[DISABLE_ENV]}")
            return
        allowed = environ.get(ALLOW_ENV)
        if allowed is not None:
            wanted = {normalise(n) for n in allowed.split(",") if n.strip()}
            every, found = (
                found,
                [ep for ep in found if wanted & {normalise(ep.name), normalise(dist_name(ep))}],
            )
            self.note_not_loaded(
                [ep for ep in every if ep not in found], f"{ALLOW_ENV}={allowed!r}"
            )
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
            plugin = None
            try:
                plugin = import_entry_point(ep)
                if self.manager.is_registered(plugin):  # a second entry point to one module
                    continue  # (or to a built-in): its hooks are in already, once
                self.add_plugin(plugin, f"{dist_name(ep)}:{ep.name}", describe(ep))
                check_hook_names(self.manager, plugin, describe(ep))
            except PluginError as exc:
                if plugin is not None and self.manager.is_registered(plugin):
                    self.manager.unregister(plugin)  # left out whole
                self.fail(describe(ep), exc, plugin)

    def note_not_loaded(self, left: list, why: str) -> None:
        """Remember the entry points ``left`` unloaded because of ``why`` (an environment
        setting): a policy asked for by name may be theirs."""
        if left:
            names = ", ".join(sorted({describe(ep) for ep in left}))
            self.not_loaded = f"; not loaded because {why}: {names}"

    def fail(self, origin: str, exc: PluginError, where: object = None) -> None:
        """Leave a plugin out: remember why and warn, naming it (at its own code's line),
        once: the hooks run again whenever a plugin is added (the architectures' built-ins
        are added after the policies are first collected)."""
        line = plugin_line(exc, where)
        why = str(exc) if line is None else f"{exc} (at {line[0]}:{line[1]})"
        if self.failures.get(origin) == why:
            return
        self.failures[origin] = why
        warn_left_out(f"{exc}; the plugin is left out (its policies and architectures)", line)

    def policies(self) -> dict[str, PolicyInfo]:
        """All registered policies by name (runs the ``register_policies`` hook once)."""
        if self._policies is None:
            self._policies = self._collect()
        return self._policies

    def _collect(self) -> dict[str, PolicyInfo]:
        found: dict[str, PolicyInfo] = {}
        # In registration order, built-ins first: a plugin that reuses a taken name is
        # the one left out.
        for impl in self.manager.hook.register_policies.get_hookimpls():
            origin = self.origins.get(impl.plugin_name, impl.plugin_name)
            try:
                found.update(collect_plugin(impl, origin, found))
            except PluginError as exc:
                self.fail(origin, exc, impl.function)
        return dict(sorted(found.items()))

    def get(self, name: str, **options: object) -> Policy:
        """A configured instance of policy ``name``; unknown names list the known ones."""
        available = self.policies()
        if name not in available:
            failed = "".join(f"; left out: {why}" for why in self.failures.values())
            close = difflib.get_close_matches(name, available, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            more = "" if self.not_loaded else "install a plugin package to add more; "
            raise PolicyError(
                f"unknown policy {name!r}{hint}; available: {', '.join(available)} "
                f"({more}`moe-spec policies` lists them){failed}{self.not_loaded}"
            )
        info = available[name]
        try:
            policy = info.policy_class(**options)
        except PolicyError as exc:  # the policy's own words; a plugin's, with where from
            if info.origin == BUILTIN_ORIGIN or info.origin in str(exc):
                raise
            said, named = str(exc), f"policy {name!r} "
            where = f"{named}(from {info.origin})"
            said = said.removeprefix(f"{name}: ")  # the example's own "name: ..." convention
            said = f"{where} {said[len(named) :]}" if said.startswith(named) else f"{where}: {said}"
            raise PolicyError(said) from exc
        except (TypeError, ValueError) as exc:  # a plugin's own check, not a PolicyError
            unknown = re.search(r"unexpected keyword argument '(\w+)'", str(exc))
            if unknown:  # Python's words for it name __init__: say it as an option
                where = DECODING_SETTINGS.get(unknown[1])
                setting = (
                    f" ({unknown[1]} is a setting of the decoding, not of a policy: {where})"
                    if where
                    else ""
                )
                raise PolicyError(
                    f"policy {name!r} (from {info.origin}): unknown option {unknown[1]!r}"
                    f"{setting}{allowed_options(info.policy_class, options)}"
                ) from exc
            allowed = (
                allowed_options(info.policy_class, options) if isinstance(exc, TypeError) else ""
            )
            raise PolicyError(
                f"policy {name!r} (from {info.origin}): bad options {options}: {exc}{allowed}"
            ) from exc
        policy.origin = info.origin
        return policy


def allowed_options(policy_class: type[Policy], given: Iterable[str] = ()) -> str:
    """``"; allowed: a, b"``: the keyword options ``policy_class`` takes (``""`` where it takes
    any, or none, or its signature cannot be read), after a guess at what each option of
    ``given`` it does not take was meant to be (``did you mean 'decay' for 'decy'?``)."""
    try:
        params = inspect.signature(policy_class.__init__).parameters.values()
    except (TypeError, ValueError):
        return ""
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return ""
    kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
    names = [p.name for p in params if p.kind in kinds and p.name != "self"]
    if not names:
        return "; it takes no options"
    guesses = [
        f"{close[0]!r} for {name!r}"
        for name in given
        if name not in names and (close := difflib.get_close_matches(name, names, n=1))
    ]
    meant = f"; did you mean {', '.join(guesses)}?" if guesses else ""
    return f"{meant}; allowed: {', '.join(names)}"


def collect_plugin(impl, origin: str, taken: dict[str, PolicyInfo]) -> dict[str, PolicyInfo]:
    """What one plugin's ``register_policies`` registers, all or nothing."""
    mine: dict[str, PolicyInfo] = {}

    def register(policy_class: type[Policy]) -> None:
        info = check_policy_class(policy_class, origin)
        if info.name in taken or info.name in mine:
            first = taken[info.name].origin if info.name in taken else origin
            raise PluginError(
                f"policy {info.name!r} is registered twice: by {first}, which keeps it, and by "
                f"{origin}; give one of them another name"
            )
        mine[info.name] = info

    kwargs = {"register": register}
    try:
        impl.function(*(kwargs[arg] for arg in impl.argnames))
    except PluginError:
        raise
    except Exception as exc:
        raise PluginError(f"plugin {origin} failed in register_policies: {exc!r}") from exc
    return mine


def check_policy_class(policy_class: object, origin: str) -> PolicyInfo:
    """Validate what a plugin passed to ``register``; errors name the plugin."""
    if isinstance(policy_class, Policy):
        raise PluginError(
            f"plugin {origin} registered an instance of {type(policy_class).__name__}; pass "
            f"the class (register({type(policy_class).__name__})): the registry makes instances"
        )
    if not (isinstance(policy_class, type) and issubclass(policy_class, Policy)):
        raise PluginError(
            f"plugin {origin} registered {policy_class!r}, which is not a subclass of "
            f"moe_spec.Policy"
        )
    if policy_class.score is Policy.score and policy_class.keep is Policy.keep:
        raise PluginError(
            f"plugin {origin} registered {policy_class.__name__}, which implements neither "
            "score(record) nor keep(record, budget); a policy needs one of them"
        )
    name = policy_class.name
    if not isinstance(name, str) or not POLICY_NAME.match(name):
        raise PluginError(
            f"plugin {origin} registered {policy_class.__name__} with name {name!r}; a policy "
            f"name is lower-case letters, digits and single dashes (e.g. 'shallow-first')"
        )
    return PolicyInfo(name, policy_class, origin)


def hooks_take(manager: pluggy.PluginManager) -> str:
    """``"the hooks are a(x) and b(y)"``: the hook specifications, in hookspecs.py's order."""
    specs = sorted(
        (c.spec for c in vars(manager.hook).values() if c.has_spec()),
        key=lambda spec: spec.function.__code__.co_firstlineno,
    )
    return "the hooks are " + " and ".join(f"{s.name}({', '.join(s.argnames)})" for s in specs)


def check_hook_names(manager: pluggy.PluginManager, plugin: object, origin: str) -> None:
    """A :class:`PluginError` where ``plugin`` marks a function ``@hookimpl`` that no hook
    has (a misspelt name would otherwise register nothing, without a word)."""
    callers = manager.get_hookcallers(plugin) or []
    unknown = sorted(c.name for c in callers if not c.has_spec())
    if unknown:
        raise PluginError(
            f"plugin {origin} implements no such hook {', '.join(unknown)}; {hooks_take(manager)}",
            getattr(plugin, unknown[0], None),
        )
    if not callers:  # no @hookimpl at all: it would register nothing, without a word
        raise PluginError(
            f"plugin {origin} implements no hook: mark its register_policies(register) with "
            "@hookimpl from moe_spec (`from moe_spec import hookimpl`; another project's "
            f"marker does not count); {hooks_take(manager)}",
            getattr(plugin, "register_policies", None),
        )
    for caller in callers:
        for impl in caller.get_hookimpls():
            if impl.plugin is plugin and "register" not in impl.argnames:
                raise PluginError(
                    f"plugin {origin}: {caller.name}() takes no register argument, so it "
                    f"registers nothing; {hooks_take(manager)}",
                    impl.function,
                )


def import_entry_point(ep: EntryPoint) -> ModuleType | object:
    try:
        return ep.load()
    except Exception as exc:
        message = f"plugin {describe(ep)} failed to import: {exc!r}"
        raise PluginError(message, entry_point_line(ep)) from exc


def entry_point_line(ep: EntryPoint) -> tuple[str, int] | None:
    """``(file, line)`` of ``ep``'s declaration in its distribution's ``entry_points.txt``
    (what a module that is not there comes from); None where the metadata is not a file."""
    folder = getattr(ep.dist, "_path", None)  # a PathDistribution's metadata folder
    if folder is None:
        return None
    path = os.path.join(str(folder), "entry_points.txt")
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    declared = re.compile(rf"\s*{re.escape(ep.name)}\s*=")
    return next(((path, n) for n, text in enumerate(lines, 1) if declared.match(text)), None)


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
    registry.add_plugin(auto, "moe_spec.auto", BUILTIN_ORIGIN)
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


def plugin_failures() -> dict[str, str]:
    """Plugins left out of the process-wide registry: origin -> why."""
    registry().policies()
    return dict(registry().failures)


def get_policy(name: str, **options: object) -> Policy:
    """A configured instance of the installed policy ``name``."""
    return registry().get(name, **options)
