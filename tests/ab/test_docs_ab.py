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


def test_acceptance_length_is_documented_to_count_a_last_steps_overshoot():
    """``acceptance_length`` counts a last step's tokens past --max-new-tokens (the behaviour
    ``test_modeled_throughput_counts_the_tokens_delivered_not_a_last_steps_overshoot``
    checks); the docs said so only for modeled tok/s."""
    from moe_spec.ab.stats import metric_names

    row = next(line for line in DOC.splitlines() if line.startswith("| `acceptance_length` |"))
    assert "a last step's tokens past `--max-new-tokens` (or an end token) count too" in row
    assert "past max_new_tokens count" in metric_names()["acceptance_length"]  # report.md


def test_a_resume_naming_some_stored_arms_is_documented():
    text = " ".join(DOC.split())
    assert "A `--resume` whose `--config`s name only some of the stored arms rewrites" in text
    assert "how many of its runs are stored and reused" in text
