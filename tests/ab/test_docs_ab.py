"""docs/ab.md: its TOML example parses, and its paper-check table is what the code prints."""

from __future__ import annotations

import re
from pathlib import Path

from moe_spec.ab.configs import parse_config
from moe_spec.costmodel.paper import format_paper_check

DOC = (Path(__file__).resolve().parents[2] / "docs" / "ab.md").read_text()


def test_toml_example_parses(tmp_path):
    (block,) = re.findall(r"```toml\n(.*?)```", DOC, flags=re.S)
    path = tmp_path / "configs.toml"
    path.write_text(block)
    labels = [c.label for c in parse_config(str(path))]
    assert labels == ["none", "token-priority B=12 truncation"]


def test_paper_check_table_matches_the_code():
    for line in format_paper_check("A100-80GB").splitlines()[2:]:
        assert line in DOC
