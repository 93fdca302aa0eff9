"""``experts_implementation="dense"`` against transformers' own eager experts loop."""

from __future__ import annotations

import pytest
import torch

from moe_spec import get_policy
from moe_spec.integration.transformers import budgeted_verify
from moe_spec.integration.transformers.dense_experts import register
from tests.integration.transformers.conftest import EXTRA, REQUIRED, build, tiny_config

# GPT-OSS's experts have biases, a transposed layout and their own gate: refused by name.
REFUSED = ("gpt_oss",)


def logits(model, ids_T: torch.Tensor) -> torch.Tensor:
    return model(ids_T[None]).logits[0]


@pytest.fixture(scope="module", autouse=True)
def registered():
    register()


@pytest.mark.parametrize("arch", REQUIRED + EXTRA)
@pytest.mark.parametrize("T", [1, 7, 33])
def test_dense_experts_compute_what_the_experts_loop_computes(arch, T):
    model = build(tiny_config(arch))
    ids_T = torch.randint(2, 96, (T,), generator=torch.Generator().manual_seed(T))
    want_TV = logits(model, ids_T)
    model.set_experts_implementation("dense")
    if arch in REFUSED:
        with pytest.raises(ValueError, match='experts_implementation="dense" supports gated'):
            logits(model, ids_T)
        return
    torch.testing.assert_close(logits(model, ids_T), want_TV, rtol=1e-9, atol=1e-9)
    assert ran_dense(model)


def ran_dense(model) -> bool:
    """Every experts module ran the dense path (it caches its down projection there)."""
    experts = [m for m in model.modules() if hasattr(m, "down_proj") and hasattr(m, "has_gate")]
    return bool(experts) and all(hasattr(m, "_dense_down") for m in experts)


@pytest.mark.parametrize("dtype, tol", [(torch.float32, 1e-5), (torch.bfloat16, 3e-2)])
def test_under_a_budget_and_in_low_precision(dtype, tol):
    """The budget rewrites the routing before the experts: dense computes the same rewrite."""
    model = build(tiny_config("qwen3_moe")).to(dtype)
    ids_T = torch.randint(2, 96, (19,), generator=torch.Generator().manual_seed(0))
    policy = get_policy("router-mass")
    with budgeted_verify(model, policy, budget=3) as routing:
        want_TV = logits(model, ids_T)
    model.set_experts_implementation("dense")
    with budgeted_verify(model, policy, budget=3) as dense_routing:
        got_TV = logits(model, ids_T)
    assert ran_dense(model) and max(routing.distinct_computed_L()) <= 3
    assert routing.distinct_computed_L() == dense_routing.distinct_computed_L()
    torch.testing.assert_close(got_TV.float(), want_TV.float(), rtol=tol, atol=tol)


def test_a_changed_down_projection_is_used_not_the_cached_layout():
    model = build(tiny_config("olmoe"))
    ids_T = torch.randint(2, 96, (5,), generator=torch.Generator().manual_seed(1))
    model.set_experts_implementation("dense")
    before_TV = logits(model, ids_T)
    experts = model.model.layers[0].mlp.experts
    experts.down_proj.mul_(0.5)  # in place: the cached [D, E*F] copy is stale now
    after_TV = logits(model, ids_T)
    model.set_experts_implementation("eager")
    torch.testing.assert_close(after_TV, logits(model, ids_T), rtol=1e-9, atol=1e-9)
    assert not torch.allclose(after_TV, before_TV)
