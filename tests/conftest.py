"""Shared helpers: routing records built the way a model builds them.

Triton kernels run under Triton's interpreter on CPU. Triton reads
``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined, and importing
transformers' model classes (or SGLang) defines some, so it is switched on here,
before any test module is collected.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest
import torch

from moe_spec import RoutingRecord
from moe_spec.policies import reset_registry

#: Every built-in policy (the compile, host-sync and registry tests cover each).
BUILTIN_NAMES = (
    "none",
    "topk-frequency",
    "router-mass",
    "layer-adaptive",
    "token-priority",
    "draft-path",
    "auto",
)


def model_topk(
    logits_TE: torch.Tensor,
    top_k: int,
    *,
    scoring: str = "softmax",
    renormalize: bool = True,
    bias_E: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own routing: top-k by choice score (ties to the lower id), weights from gates."""
    logits_TE = logits_TE.float()
    gates_TE = torch.softmax(logits_TE, -1) if scoring == "softmax" else torch.sigmoid(logits_TE)
    choice_TE = gates_TE + bias_E if bias_E is not None else gates_TE
    ids_TK = torch.sort(choice_TE, dim=-1, descending=True, stable=True).indices[:, :top_k]
    weights_TK = gates_TE.gather(1, ids_TK)
    if renormalize:
        weights_TK = weights_TK / weights_TK.sum(-1, keepdim=True)
    return ids_TK, weights_TK


def make_record(logits_TE: torch.Tensor, top_k: int, **kwargs) -> RoutingRecord:
    """A :class:`RoutingRecord` whose top-k is what the model would pick from ``logits_TE``."""
    scoring = kwargs.get("scoring", "softmax")
    renormalize = kwargs.get("renormalize", True)
    bias_E = kwargs.get("correction_bias_E")
    ids_TK, weights_TK = model_topk(
        logits_TE, top_k, scoring=scoring, renormalize=renormalize, bias_E=bias_E
    )
    return RoutingRecord(logits_TE, ids_TK, weights_TK, **kwargs)


@pytest.fixture(autouse=True)
def fresh_registry(monkeypatch):
    """Every test starts from a registry loaded with its own environment."""
    monkeypatch.delenv("MOE_SPEC_PLUGINS", raising=False)
    monkeypatch.delenv("MOE_SPEC_DISABLE_PLUGIN_AUTOLOAD", raising=False)
    reset_registry()
    yield
    reset_registry()
