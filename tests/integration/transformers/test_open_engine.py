"""``--checkpoint``: a model name or a folder, read by the engine that reads it."""

from __future__ import annotations

import shutil

import pytest
import torch

from moe_spec.cli import main
from moe_spec.engine.checkpoint import SHIPPED
from moe_spec.engine.generate import Engine
from moe_spec.integration.transformers import TransformersEngine, save_eagle_head
from moe_spec.models.registry import DEFAULT_MODEL, MODELS, open_engine

from .conftest import build, tiny_config
from .test_eagle_head import random_head
from .test_loading import word_tokenizer


@pytest.fixture(scope="module")
def hf_folder(tmp_path_factory):
    """A transformers MoE checkpoint with its EAGLE head in ``eagle/`` (the smollm2-moe layout)."""
    root = tmp_path_factory.mktemp("hf") / "model"
    build(tiny_config("qwen3_moe")).to(torch.float32).save_pretrained(root)
    word_tokenizer().save_pretrained(root)
    save_eagle_head(root / "eagle", random_head())
    return root


def test_the_default_is_the_real_model():
    assert DEFAULT_MODEL == "smollm2-moe" and MODELS[DEFAULT_MODEL].engine == "transformers"


def test_a_name_and_a_reference_checkpoint_folder_open_the_reference_engine(tmp_path):
    engine, path, description = open_engine("stdlib-toy")
    assert isinstance(engine, Engine) and path == SHIPPED and "toy" in description
    copy = shutil.copytree(SHIPPED, tmp_path / "toy")
    engine, path, description = open_engine(copy)
    assert isinstance(engine, Engine) and path == copy and description == str(copy)


def test_a_transformers_folder_with_a_head_opens_the_transformers_engine(hf_folder):
    engine, path, _ = open_engine(str(hf_folder))
    assert isinstance(engine, TransformersEngine) and path == hf_folder
    assert engine.target.dtype == torch.float32  # fp32 on a CPU


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: None, "is neither a model name (smollm2-moe, stdlib-toy) nor a folder"),
        (lambda d: (d / "config.json").write_text("{not json"), "not readable JSON"),
        (lambda d: (d / "config.json").write_text('{"model_type": "qwen3_moe"}'), "in eagle/"),
        (lambda d: (d / "config.json").write_text("[1, 2]"), "expected a reference-engine"),
    ],
)
def test_other_folders_are_refused_by_the_cli_with_what_is_allowed(tmp_path, capsys, make, message):
    folder = tmp_path / "model"
    folder.mkdir()
    make(folder)
    assert main(["generate", "hi", "--checkpoint", str(folder)]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err


def test_demo_runs_a_transformers_folder_and_shows_its_text(hf_folder, tmp_path, capsys):
    out = tmp_path / "demo"
    args = ["--budgets", "3", "--policies", "router-mass", "--repair-policies", ""]
    tree = ["--num-tokens", "6", "--width", "2", "--depth", "3", "--max-new-tokens", "6"]
    assert main(["demo", "--checkpoint", str(hf_folder), "--out", str(out), *args, *tree]) == 0
    text = capsys.readouterr().out
    assert f"Model: {hf_folder}" in text
    assert "none: the same text as autoregressive" in text  # greedy speculation is lossless
    assert "router-mass B=3" in text and (out / "results.json").is_file()


def test_a_named_model_loads_without_transformers_progress_bar(hf_folder, monkeypatch):
    """A named model (small, built here) loads without a progress bar on every run; a folder
    keeps transformers' setting; the setting is as before afterwards either way."""
    from transformers.utils import logging

    import moe_spec.models.registry as registry

    seen = []
    real = registry.progress_bar

    def spy(show):
        seen.append(show)
        return real(show)

    monkeypatch.setattr(registry, "progress_bar", spy)
    monkeypatch.setitem(MODELS, "tiny-hf", MODELS[DEFAULT_MODEL])
    monkeypatch.setattr(registry, "model_path", lambda name: hf_folder)
    logging.enable_progress_bar()
    open_engine("tiny-hf")
    open_engine(str(hf_folder))
    assert seen == [False, True]
    assert logging.is_progress_bar_enabled()
    with pytest.raises(RuntimeError), real(False):
        assert not logging.is_progress_bar_enabled()
        raise RuntimeError("a load that fails")
    assert logging.is_progress_bar_enabled()
