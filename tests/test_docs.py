"""The README's code runs as written."""

from __future__ import annotations

import re
from pathlib import Path
from types import SimpleNamespace

import torch

from moe_spec.policies.registry import default_registry
from tests.conftest import make_record

README = (Path(__file__).resolve().parent.parent / "README.md").read_text()
PYTHON_BLOCKS = re.findall(r"```python\n(.*?)```", README, flags=re.S)


def test_readme_has_the_two_quick_start_commands():
    quick_start = README.split("## Quick start", 1)[1].split("##", 1)[0]
    commands = re.findall(r"^make \w+", quick_start, flags=re.M)
    assert commands == ["make demo", "make test"]


def test_readme_usage_example_runs():
    usage = next(block for block in PYTHON_BLOCKS if "apply_budget(record" in block)
    exec(compile(usage, "README.md", "exec"), {})


def test_readme_plugin_example_registers_and_runs():
    source = next(block for block in PYTHON_BLOCKS if "register_policies" in block)
    namespace: dict = {}
    exec(compile(source, "README.md", "exec"), namespace)
    registry = default_registry({})
    plugin = SimpleNamespace(register_policies=namespace["register_policies"])
    registry.add_plugin(plugin, "readme", "README example")
    policy = registry.get("deep-first")
    for depth_T in (torch.arange(9), None):  # depth_T may be None (SGLang rows, no tree)
        record = make_record(torch.randn(9, 16), 2, depth_T=depth_T)
        assert policy.apply(record, 4).topk_ids_TK.unique().numel() <= 4


def test_auto_options_table_lists_every_option_with_its_default():
    """docs/auto.md's options table is the reference users read: it must name every keyword
    ``Auto`` takes, once, with the default the code has."""
    import inspect

    from moe_spec.policies.auto import Auto

    text = (Path(__file__).resolve().parent.parent / "docs" / "auto.md").read_text()
    table = text.split("## Options", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(\w+)` \| (.+?) \|", table, flags=re.M)
    documented = [name for name, _ in rows]
    params = inspect.signature(Auto.__init__).parameters
    expected = [name for name in params if name != "self"]
    assert sorted(documented) == sorted(expected)
    assert len(documented) == len(set(documented))

    def shown(value) -> str:  # how the table writes a default
        if value is None:
            return "None"
        if isinstance(value, bool):
            return f"`{str(value).lower()}`"
        return f"`{value}`"

    for name, default in rows:
        assert default == shown(params[name].default), name
