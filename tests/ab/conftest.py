"""Fixtures: the engine tests' tiny checkpoint, saved to a folder for the CLI."""

from __future__ import annotations

import pytest

from moe_spec.engine.checkpoint import save_checkpoint
from tests.engine.conftest import tiny_checkpoint, tiny_engine  # noqa: F401


@pytest.fixture(scope="session")
def tiny_dir(tmp_path_factory, tiny_checkpoint):  # noqa: F811
    path = tmp_path_factory.mktemp("ckpt")
    c = tiny_checkpoint
    save_checkpoint(path, c.target, c.draft, c.tokenizer, {"note": "tiny"})
    return path


@pytest.fixture
def ab_args(tiny_dir, tmp_path) -> list[str]:
    """``moe-spec ab`` on the tiny checkpoint: one prompt, a small tree, output in tmp_path."""
    prompts = tmp_path / "p.txt"
    prompts.write_text("def f(x):\nreturn x\n")
    return [
        "ab", "--checkpoint", str(tiny_dir), "--prompts", str(prompts),
        "--out", str(tmp_path / "out"), "--max-new-tokens", "6", "--no-progress",
        "--num-tokens", "8", "--width", "4", "--depth", "3",
    ]  # fmt: skip
