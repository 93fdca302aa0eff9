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
