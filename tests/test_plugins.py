"""Plugin discovery, the allow-list, and every way a plugin can be broken."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import warnings
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from moe_spec import PluginError, Policy, PolicyError, get_policy, hookimpl, list_policies
from moe_spec.policies import PluginWarning, plugin_failures, reset_registry
from moe_spec.policies.registry import default_registry, registry
from tests.conftest import BUILTIN_NAMES, make_record

REPO = Path(__file__).resolve().parent.parent
BUILTINS = set(BUILTIN_NAMES)


def fake_distribution(root: Path, dist: str, module: str, source: str, ep_name: str) -> None:
    """An installed distribution as importlib.metadata sees it: a module and a dist-info."""
    (root / f"{module}.py").write_text(textwrap.dedent(source))
    info = root / f"{dist.replace('-', '_')}-1.2.3.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.2.3\n")
    (info / "entry_points.txt").write_text(f"[moe_spec.policies]\n{ep_name} = {module}\n")


PLUGIN_SOURCE = """
    from moe_spec import Policy, hookimpl

    class Even(Policy):
        name = "{name}"
        description = "even experts first"

        def score(self, record):
            import torch
            return (torch.arange(record.num_experts) % 2 == 0).float()

    @hookimpl
    def register_policies(register):
        register(Even)
"""


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A directory on sys.path where tests install fake distributions."""
    monkeypatch.syspath_prepend(str(tmp_path))
    return tmp_path


def install(site: Path, dist: str, name: str, source: str | None = None) -> None:
    module = dist.replace("-", "_")
    fake_distribution(site, dist, module, source or PLUGIN_SOURCE.format(name=name), name)
    reset_registry()


def names() -> set[str]:
    return {info.name for info in list_policies()}


def test_builtins_are_registered_through_the_hook_with_their_origin():
    infos = {info.name: info for info in list_policies()}
    assert set(infos) >= BUILTINS
    assert all(infos[name].origin == "built-in" for name in BUILTINS)
    assert all(infos[name].description for name in BUILTINS)


def test_register_policies_hook_receives_register_and_accepts_classes():
    calls = []

    class Plugin:
        @hookimpl
        def register_policies(self, register):
            calls.append(register)
            register(
                type("Mine", (Policy,), {"name": "mine", "score": lambda s, r: r.router_mass_E()})
            )

    registry = default_registry({})
    registry.add_plugin(Plugin(), "mine-plugin", "mine-plugin 0.1")
    assert "mine" in registry.policies() and callable(calls[0])
    policy = registry.get("mine")
    assert policy.origin == "mine-plugin 0.1"
    record = make_record(torch.randn(4, 8), 2)
    assert policy.apply(record, 3).keep_E.sum() == 3


def test_entry_point_plugins_are_discovered(site):
    install(site, "moe-spec-even", "even-first")
    info = {i.name: i for i in list_policies()}["even-first"]
    assert info.origin.startswith("moe-spec-even 1.2.3 (entry point 'even-first'")
    policy = get_policy("even-first")
    assert policy.origin == info.origin
    assert policy.score(make_record(torch.randn(3, 8), 2)).tolist() == [1.0, 0.0] * 4


@pytest.mark.parametrize(
    "allow, visible",
    [
        (None, True),  # unset: every installed plugin
        ("moe-spec-even", True),  # by distribution name
        ("even-first", True),  # by entry-point name
        ("MOE_SPEC_EVEN", True),  # names are normalised like pip's
        ("", False),  # set but empty: no plugins
    ],
)
def test_allow_list(site, monkeypatch, allow, visible):
    install(site, "moe-spec-even", "even-first")
    if allow is not None:
        monkeypatch.setenv("MOE_SPEC_PLUGINS", allow)
    assert ("even-first" in names()) is visible
    assert names() >= BUILTINS  # built-ins are always there


def test_allow_list_naming_a_missing_plugin_is_an_error(site, monkeypatch):
    install(site, "moe-spec-even", "even-first")
    monkeypatch.setenv("MOE_SPEC_PLUGINS", "even-first,typo-policy")
    with pytest.raises(
        PluginError, match=r"MOE_SPEC_PLUGINS names typo-policy.*installed entry points: even-first"
    ):
        list_policies()


def test_autoload_can_be_disabled(site, monkeypatch):
    install(site, "moe-spec-even", "even-first")
    monkeypatch.setenv("MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert "even-first" not in names() and names() >= BUILTINS


@pytest.mark.parametrize(
    "env, value",
    [
        ("MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD", "1"),
        ("MOE_SPEC_PLUGINS", ""),
        ("MOE_SPEC_PLUGINS", "x-first"),
    ],
)
def test_a_policy_the_environment_left_unloaded_says_so(site, monkeypatch, env, value):
    """Not "install a plugin package": it is installed, and a setting left it out."""
    install(site, "moe-spec-even", "even-first")
    install(site, "moe-spec-x", "x-first")
    monkeypatch.setenv(env, value)
    with pytest.raises(PolicyError, match="unknown policy 'even-first'") as got:
        get_policy("even-first")
    said = str(got.value)
    shown = value if env.endswith("AUTOLOAD") else repr(value)
    assert f"not loaded because {env}={shown}: " in said
    assert "moe-spec-even 1.2.3 (entry point 'even-first' -> moe_spec_even)" in said
    assert ("moe-spec-x" in said) is (value != "x-first")  # the one allowed is not listed
    assert "install a plugin package" not in said


def left_out(match: str) -> None:
    """The registry warns that a plugin was left out; built-ins and the others still load."""
    with pytest.warns(PluginWarning, match=match):
        assert names() >= BUILTINS


def test_a_plugin_that_fails_to_import_is_named_and_the_others_still_load(site):
    install(site, "moe-spec-even", "even-first")
    install(site, "moe-spec-broken", "broken", "import not_a_module_anywhere\n")
    left_out(
        r"plugin moe-spec-broken 1.2.3 \(entry point 'broken'.*failed to import"
        r".*not_a_module_anywhere.*left out"
    )
    assert "even-first" in names()
    failures = plugin_failures()
    assert list(failures) == ["moe-spec-broken 1.2.3 (entry point 'broken' -> moe_spec_broken)"]
    with pytest.raises(PolicyError, match=r"unknown policy 'broken'.*left out: plugin moe-spec-br"):
        get_policy("broken")


def test_a_plugin_that_raises_while_registering_is_named(site):
    source = """
        from moe_spec import hookimpl

        @hookimpl
        def register_policies(register):
            raise RuntimeError("boom")
    """
    install(site, "moe-spec-raises", "raises", source)
    left_out(r"plugin moe-spec-raises 1.2.3 .* failed in register_policies: RuntimeError\('boom'\)")
    from moe_spec.integration.transformers.architectures import architectures

    with warnings.catch_warnings(record=True) as again:
        warnings.simplefilter("always")
        architectures()  # adds its built-ins: the policies' hooks run again
        assert names() >= BUILTINS
    assert not [w for w in again if issubclass(w.category, PluginWarning)]  # warned once


@pytest.mark.parametrize(
    "registered, message",
    [
        ("int", r"registered <class 'int'>, which is not a subclass of moe_spec.Policy"),
        ("instance", r"registered an instance of Good; pass the class \(register\(Good\)\)"),
        ("Policy", r"registered Policy, which implements neither score\(record\) nor keep"),
        ("Empty", r"registered Empty, which implements neither score\(record\) nor keep"),
        ("BadName", r"registered BadName with name 'Bad Name'"),
    ],
)
def test_registering_something_invalid_is_named(registered, message):
    def score(self, record):
        return record.router_mass_E()

    class BadName(Policy):
        name = "Bad Name"

    class Good(Policy):
        name = "good-one"

    class Empty(Policy):  # it would fail only when used
        name = "empty-one"

    BadName.score = Good.score = score
    things = {
        "int": int,
        "Policy": Policy,
        "BadName": BadName,
        "instance": Good(),
        "Empty": Empty,
    }

    def register_policies(register):
        register(Good)  # all or nothing: a plugin with one bad class is left out whole
        register(things[registered])

    plugin = SimpleNamespace(register_policies=hookimpl(register_policies))
    registry = default_registry({})
    registry.add_plugin(plugin, "bad", "bad-plugin 9.9")
    with pytest.warns(PluginWarning, match=r"plugin bad-plugin 9.9 " + message):
        policies = registry.policies()
    assert "good-one" not in policies and set(policies) == BUILTINS
    assert list(registry.failures) == ["bad-plugin 9.9"]


def test_two_plugins_claiming_one_name_are_both_named(site):
    install(site, "moe-spec-a", "router-mass")
    left_out(
        r"'router-mass' is registered twice: by built-in, which keeps it, and by "
        r"moe-spec-a 1.2.3 .*; give one of them another name"
    )
    assert get_policy("router-mass").origin == "built-in"


@pytest.mark.parametrize(
    "hook, message",
    [
        (
            "register_policies(reg)",  # an argument the hook does not pass
            r"plugin moe-spec-odd 1.2.3 .*register_policies.*\{'reg'\}.*the hooks are "
            r"register_policies\(register\) and register_architectures\(register\).*left out",
        ),
        (
            "register_policy(register)",  # a misspelt hook: it would register nothing
            r"plugin moe-spec-odd-2 1.2.3 .* implements no such hook register_policy; the hooks "
            r"are register_policies\(register\).*left out",
        ),
    ],
)
def test_a_plugin_whose_hook_does_not_match_a_spec_is_left_out_whole(site, hook, message):
    source = PLUGIN_SOURCE.format(name="odd-one").replace("register_policies(register)", hook)
    source += "\n    @hookimpl\n    def register_architectures(register):\n        pass\n"
    install(site, "moe-spec-even", "even-first")
    dist = "moe-spec-odd" if "(reg)" in hook else "moe-spec-odd-2"  # a module per source
    install(site, dist, "odd", source)
    left_out(message)
    assert "even-first" in names() and "odd-one" not in names()
    assert [key.split()[0] for key in plugin_failures()] == [dist]
    # left out whole: none of its hooks, its register_architectures included, stays
    assert not any(dist in name for name, _ in registry().manager.list_name_plugin())


@pytest.mark.parametrize(
    "source, message",
    [
        (  # the decorator forgotten
            PLUGIN_SOURCE.format(name="bare").replace("    @hookimpl\n", ""),
            r"implements no hook: mark its register_policies\(register\) with @hookimpl from "
            r"moe_spec",
        ),
        (  # another project's marker: pluggy sees no moe-spec hook
            PLUGIN_SOURCE.format(name="bare").replace(
                "from moe_spec import Policy, hookimpl",
                "import pluggy\n    from moe_spec import Policy\n"
                "    hookimpl = pluggy.HookimplMarker('other-project')",
            ),
            r"implements no hook",
        ),
        (  # no register argument: pluggy allows a subset of the hook's arguments
            PLUGIN_SOURCE.format(name="bare").replace(
                "def register_policies(register):\n        register(Even)",
                "def register_policies():\n        pass",
            ),
            r"register_policies\(\) takes no register argument, so it registers nothing",
        ),
    ],
)
def test_a_plugin_that_would_register_nothing_is_named(site, source, message):
    """Three slips that loaded a plugin with nothing in it and no word, after which asking
    for its policy said to install a plugin package (a plugin-author walkthrough)."""
    dist = f"moe-spec-bare-{sum(map(ord, message))}"  # a module per case (imports stay)
    install(site, dist, "bare", source)
    left_out(rf"plugin {dist} 1.2.3 .*" + message)
    assert "bare" not in names()


def test_entry_points_to_one_module_register_it_once(site):
    install(site, "moe-spec-even", "even-first")
    info = next(site.glob("moe_spec_even-*.dist-info"))
    entry_points = "[moe_spec.policies]\none = moe_spec_even\ntwo = moe_spec_even\n"
    (info / "entry_points.txt").write_text(entry_points + "three = moe_spec.policies.builtin\n")
    reset_registry()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # nothing is left out, so nothing to warn about
        assert names() == BUILTINS | {"even-first"}
    assert plugin_failures() == {}


@pytest.mark.parametrize("value", ["1", "true", "YES", "on"])
def test_autoload_switch_accepts_the_usual_true_spellings(site, monkeypatch, value):
    install(site, "moe-spec-even", "even-first")
    monkeypatch.setenv("MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD", value)
    assert "even-first" not in names()


@pytest.mark.parametrize("value", ["0", "false", "No", "off", ""])
def test_autoload_switch_accepts_the_usual_false_spellings(site, monkeypatch, value):
    install(site, "moe-spec-even", "even-first")
    monkeypatch.setenv("MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD", value)
    assert "even-first" in names()


def test_autoload_switch_refuses_other_values(site, monkeypatch):
    monkeypatch.setenv("MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD", "maybe")
    reset_registry()
    with pytest.raises(
        PluginError, match=r"MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD='maybe' is not a flag"
    ):
        list_policies()


def test_unknown_policy_lists_the_available_ones():
    with pytest.raises(
        PolicyError,
        match=r"unknown policy 'route-mass' \(did you mean 'router-mass'\?\); available: auto, "
        r"draft-path, layer-adaptive, none, "
        r"router-mass, token-priority, topk-frequency",
    ):
        get_policy("route-mass")
    with pytest.raises(PolicyError, match=r"unknown policy 'entropy'; available:"):  # no near one
        get_policy("entropy")


class Misbehaving(Policy):
    """A policy whose outputs are set by the test."""

    name = "misbehaving"

    def __init__(self, scores=None, keep=None):
        self.scores, self.kept = scores, keep

    def score(self, record):
        if isinstance(self.scores, str):
            raise RuntimeError("plugin bug")
        return self.scores

    def keep(self, record, budget):
        if isinstance(self.kept, str):
            raise RuntimeError("plugin bug")
        return self.kept if self.kept is not None else super().keep(record, budget)


def misbehaving(**outputs) -> Policy:
    plugin = SimpleNamespace(register_policies=hookimpl(lambda register: register(Misbehaving)))
    registry = default_registry({})
    registry.add_plugin(plugin, "mis", "moe-spec-mis 0.0.1")
    return registry.get("misbehaving", **outputs)


@pytest.mark.parametrize(
    "outputs, message",
    [
        (
            {"scores": torch.ones(5)},
            r"score\(\) returned shape \(5,\); expected a tensor of shape \[E=8\]",
        ),
        ({"scores": [1.0] * 8}, r"score\(\) returned a list; expected a float tensor of shape"),
        (
            {"scores": torch.full((8,), float("nan"))},
            r"score\(\) returned 8 NaN or inf values, the first nan at expert 0; scores must",
        ),
        (
            {"scores": torch.tensor([0.1, 0.2, 0.3, 0.4, 0.5, float("-inf"), 0.7, 0.8])},
            r"score\(\) returned 1 NaN or inf values, the first -inf at expert 5",
        ),
        (
            {"keep": torch.tensor([0, 9])},
            r"keep\(\) returned expert ids \[0, 9\]; ids must be in \[0, E=8\)",
        ),
        ({"keep": torch.tensor([-1])}, r"keep\(\) returned expert ids \[-1\]; ids must be in"),
        (
            {"keep": torch.ones(8, dtype=torch.bool)},
            r"keep\(\) kept 8 experts; allowed: top-k=2 to budget B=3",
        ),
        ({"keep": torch.zeros(8, dtype=torch.bool)}, r"keep\(\) kept 0 experts"),
        ({"keep": torch.tensor([5])}, r"keep\(\) kept 1 experts; allowed: top-k=2 to budget"),
        (
            {"keep": torch.tensor([4, 4, 4])},
            r"keep\(\) returned expert ids \[4, 4, 4\] with repeats; each id once$",
        ),
        (
            {"keep": torch.tensor([1, 1, 0, 0, 0, 0, 0, 0])},
            r"keep\(\) returned expert ids \[1, 1, 0, 0, 0, 0, 0, 0\] with repeats; each id once "
            r"\(a 0/1 mask\? return it as bool: keep_E.bool\(\)\)",
        ),
        ({"scores": "raise"}, r"score\(\) raised RuntimeError\('plugin bug'\)"),
        ({"keep": "raise"}, r"keep\(\) raised RuntimeError\('plugin bug'\)"),
        (
            {"keep": torch.ones(4, dtype=torch.bool)},
            r"keep\(\) returned a mask of shape \(4,\); expected \[E=8\]",
        ),
        ({"keep": torch.ones(8)}, r"keep\(\) returned torch.float32 of shape \(8,\)"),
        ({"keep": [1, 2]}, r"keep\(\) returned a list; allowed: a bool tensor \[E\]"),
    ],
)
def test_malformed_policy_outputs_name_the_plugin(outputs, message):
    record = make_record(torch.randn(4, 8), 2)
    with pytest.raises(
        PolicyError, match=r"policy 'misbehaving' \(from moe-spec-mis 0.0.1\): " + message
    ):
        misbehaving(**outputs).apply(record, 3)


def test_a_raising_policy_method_points_at_the_plugins_own_line():
    """The CLI shows the PolicyError alone (not its chained traceback): it says where."""
    record = make_record(torch.randn(4, 8), 2)
    raise_line = next(
        n
        for n, text in enumerate(Path(__file__).read_text().splitlines(), 1)
        if 'raise RuntimeError("plugin bug")' in text
    )  # score()'s
    with pytest.raises(PolicyError) as got:
        misbehaving(scores="raise").apply(record, 3)
    assert str(got.value).endswith(f"raised RuntimeError('plugin bug') at {__file__}:{raise_line}")


def test_keep_may_return_expert_ids():
    record = make_record(torch.randn(4, 8), 2)
    out = misbehaving(keep=torch.tensor([6, 2])).apply(record, 3)
    assert out.keep_E.nonzero().flatten().tolist() == [2, 6]
    assert set(out.topk_ids_TK.flatten().tolist()) <= {2, 6}


def test_example_plugin_package_installs_and_is_discovered(tmp_path, monkeypatch):
    """pip-installs examples/shallow_first_policy and finds it through its entry point."""
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--quiet",
            "--no-deps",
            "--no-build-isolation",
            "--target",
            str(target),
            str(REPO / "examples" / "shallow_first_policy"),
        ],
        check=True,
        capture_output=True,
    )
    monkeypatch.syspath_prepend(str(target))
    reset_registry()
    info = {i.name: i for i in list_policies()}["shallow-first"]
    assert info.origin.startswith("moe-spec-shallow-first 0.1.0")
    # Root (depth 0) picks expert 7, which has the least mass of all: still kept.
    probs_TE = torch.full((5, 8), 0.01)
    probs_TE[0, 7] = 0.5
    probs_TE[1:, :3] = 0.3
    record = make_record(probs_TE.log(), 1, depth_T=torch.tensor([0, 2, 2, 3, 3]))
    assert get_policy("router-mass").apply(record, 1).keep_E.nonzero().flatten().tolist() == [0]
    assert get_policy("shallow-first").apply(record, 1).keep_E.nonzero().flatten().tolist() == [7]
    no_depth = make_record(probs_TE.log(), 1)  # SGLang rows it cannot map to the tree
    assert get_policy("shallow-first").apply(no_depth, 1).keep_E.nonzero().flatten().tolist() == [0]
    with pytest.raises(
        PolicyError,
        match=r"policy 'shallow-first' \(from moe-spec-shallow-first 0.1.0 .*\): "
        r"max_depth is 'abc'; allowed: an integ",
    ):
        get_policy("shallow-first", max_depth="abc")
    monkeypatch.setenv("MOE_SPEC_PLUGINS", "")
    reset_registry()
    assert "shallow-first" not in names()


def test_policies_command_lists_a_broken_plugin_and_every_other_policy(site, capsys):
    from moe_spec.cli import main

    install(site, "moe-spec-even", "even-first")
    install(site, "moe-spec-broken", "broken", "import not_a_module_anywhere\n")
    assert main(["policies"]) == 0
    out, err = capsys.readouterr()
    assert "even-first" in out and "router-mass" in out
    (even,) = [x for x in out.splitlines() if x.startswith("even-first")]
    assert even.split()[1:4] == ["moe-spec-even", "1.2.3", "even"]  # package, version: short
    (line,) = [x for x in err.splitlines() if x.startswith("left out:")]
    assert line.startswith("left out: plugin moe-spec-broken 1.2.3 (entry point 'broken'")
    assert line.count("moe-spec-broken 1.2.3") == 1  # named once
    assert "not_a_module_anywhere" in line
    assert line.endswith(f"(at {site / 'moe_spec_broken.py'}:1)")  # the plugin's own line


def test_a_plugins_own_option_error_names_the_policy_and_plugin():
    class Alpha(Policy):
        name = "alpha-mass"

        def score(self, record):
            return record.router_mass_E()

        def __init__(self, alpha: float = 1.0) -> None:
            self.alpha = float(alpha)  # a plain ValueError on "abc", not a PolicyError

    plugin = SimpleNamespace(register_policies=hookimpl(lambda register: register(Alpha)))
    registry = default_registry({})
    registry.add_plugin(plugin, "alpha", "moe-spec-alpha 0.3")
    with pytest.raises(
        PolicyError,
        match=r"policy 'alpha-mass' \(from moe-spec-alpha 0.3\): bad options \{'alpha': 'abc'\}: "
        r"could not convert string to float: 'abc'$",
    ):
        registry.get("alpha-mass", alpha="abc")
    assert registry.get("alpha-mass", alpha="0.5").alpha == 0.5


def test_a_plugins_option_error_in_the_examples_style_names_the_policy_once():
    """The example plugin prefixes its own PolicyError with "name: "; the registry's prefix
    replaces it instead of naming the policy twice."""

    class Beta(Policy):
        name = "beta-mass"

        def score(self, record):
            return record.router_mass_E()

        def __init__(self, beta: float = 1.0) -> None:
            if not isinstance(beta, float):
                raise PolicyError(f"beta-mass: beta is {beta!r}; allowed: a float")

    plugin = SimpleNamespace(register_policies=hookimpl(lambda register: register(Beta)))
    registry = default_registry({})
    registry.add_plugin(plugin, "beta", "moe-spec-beta 0.1")
    with pytest.raises(PolicyError) as got:
        registry.get("beta-mass", beta="x")
    assert str(got.value) == (
        "policy 'beta-mass' (from moe-spec-beta 0.1): beta is 'x'; allowed: a float"
    )


def test_a_plugin_policy_without_options_names_itself_once():
    class Plain(Policy):
        name = "plain-one"

        def score(self, record):
            return record.router_mass_E()

    plugin = SimpleNamespace(register_policies=hookimpl(lambda register: register(Plain)))
    registry = default_registry({})
    registry.add_plugin(plugin, "plain", "moe-spec-plain 0.1")
    with pytest.raises(PolicyError) as caught:
        registry.get("plain-one", budget=3)
    assert str(caught.value) == (
        "policy 'plain-one' (from moe-spec-plain 0.1) takes no options; got budget"
    )


def test_a_policy_made_from_its_class_says_it_is_unregistered():
    """A plugin author's own unit test of ``MyPolicy().apply(...)``: not "from built-in"."""

    class Wrong(Policy):
        name = "wrong-shape"

        def score(self, record):
            return torch.zeros(3)

    with pytest.raises(PolicyError, match=r"policy 'wrong-shape' \(from unregistered\): score"):
        Wrong().apply(make_record(torch.randn(4, 8), 2), 4)


BROKEN_PLUGINS = {  # source, the line a left-out warning should point at
    "fails-to-import": ("x = 1\nimport not_a_module_anywhere\n", "import not_a_module_anywhere"),
    "raises": (
        "from moe_spec import hookimpl\n\n@hookimpl\ndef register_policies(register):\n"
        "    raise RuntimeError('boom')\n",
        "    raise RuntimeError('boom')",
    ),
    "registers-int": (
        "from moe_spec import hookimpl\n\n@hookimpl\ndef register_policies(register):\n"
        "    register(int)\n",
        "    register(int)",
    ),
    # a function's code starts at its decorator
    "wrong-args": (
        "from moe_spec import hookimpl\n\n@hookimpl\ndef register_policies(reg):\n    pass\n",
        "@hookimpl",
    ),
    "misspelt": (
        "from moe_spec import hookimpl\n\n@hookimpl\ndef register_policy(register):\n    pass\n",
        "@hookimpl",
    ),
}


@pytest.mark.parametrize("case", BROKEN_PLUGINS)
def test_a_left_out_plugins_warning_points_at_its_own_code(site, case):
    """A warnings filter, an IDE or ``-W error`` lands on the plugin's line, not moe_spec's."""
    source, line = BROKEN_PLUGINS[case]
    dist = f"moe-spec-left-out-{case}"  # a module name no other test imported
    install(site, dist, case, source)
    with pytest.warns(PluginWarning) as caught:
        names()
    (warning,) = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert Path(warning.filename) == site / f"{dist.replace('-', '_')}.py"
    assert warning.lineno == source.splitlines().index(line) + 1


def test_an_entry_point_to_a_missing_module_points_at_its_declaration(site):
    """No plugin code ran: the warning lands on the entry point's line in entry_points.txt."""
    fake_distribution(site, "moe-spec-gone", "moe_spec_gone", "", "gone")
    (site / "moe_spec_gone.py").unlink()
    info = site / "moe_spec_gone-1.2.3.dist-info" / "entry_points.txt"
    info.write_text("# a comment\n" + info.read_text())  # the declaration is on line 3
    reset_registry()
    with pytest.warns(PluginWarning, match="failed to import") as caught:
        names()
    (warning,) = [w for w in caught if issubclass(w.category, PluginWarning)]
    assert (Path(warning.filename), warning.lineno) == (info, 3)


class CheckBug(Policy):
    """A plugin policy whose check_model has a bug, or refuses without naming itself."""

    name = "check-bug"

    def __init__(self, refuse: bool = False):
        self.refuse = refuse

    def score(self, record):
        return record.router_mass_E()

    def check_model(self, num_layers, num_experts, top_k):
        if self.refuse:
            raise PolicyError("sizes has 2 entries; allowed: one per MoE layer")
        return {}["oops"]


@pytest.mark.parametrize(
    "refuse, message",
    [
        (
            False,
            r"policy 'check-bug' \(from moe-spec-cb 0.0.1\): check_model\(\) raised "
            r"KeyError\('oops'\)",
        ),
        (True, r"policy 'check-bug' \(from moe-spec-cb 0.0.1\): sizes has 2 entries"),
    ],
)
def test_check_model_errors_name_the_policy_before_any_verify(refuse, message):
    """A plugin's check_model that raises (a bug) was a raw traceback from `moe-spec
    generate`; its own PolicyError lacked the prefix other policy errors carry."""
    from moe_spec.engine.checkpoint import SHIPPED, load_checkpoint
    from moe_spec.engine.generate import Engine, SpecConfig

    plugin = SimpleNamespace(register_policies=hookimpl(lambda register: register(CheckBug)))
    reg = default_registry({})
    reg.add_plugin(plugin, "cb", "moe-spec-cb 0.0.1")
    policy = reg.get("check-bug", refuse=refuse)
    with pytest.raises(PolicyError, match=message):
        policy.model_check(4, 32, 4)
    engine = Engine(load_checkpoint(SHIPPED))
    spec = SpecConfig(policy="check-bug", budget=8)
    with pytest.raises(PolicyError, match=message):
        engine.generate_speculative(engine.encode("def f():"), 4, spec, policy=policy)
