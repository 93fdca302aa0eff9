"""apply_budget and every built-in policy compile with fullgraph=True.

A graph break would mean a host synchronisation or a branch on tensor values:
exactly what CUDA-graph capture of SGLang's verify pass cannot replay.
"""

from __future__ import annotations

import pytest
import torch

from moe_spec import apply_budget, get_policy
from tests.conftest import BUILTIN_NAMES, make_record
from tests.host_sync import HostSyncRecorder

BUILTINS = list(BUILTIN_NAMES)


def sample_record():
    g = torch.Generator().manual_seed(0)
    return make_record(
        torch.randn(13, 16, generator=g),
        4,
        depth_T=torch.randint(0, 4, (13,), generator=g),
        valid_T=torch.arange(13) < 11,
    )


@pytest.fixture(autouse=True)
def fresh_dynamo():
    torch._dynamo.reset()
    yield
    torch._dynamo.reset()


@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_apply_budget_compiles_without_graph_breaks(mode):
    record = sample_record()
    compiled = torch.compile(
        lambda r: apply_budget(r, 6, mode=mode), fullgraph=True, backend="aot_eager"
    )
    got, want = compiled(record), apply_budget(record, 6, mode=mode)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)
    assert torch.equal(got.topk_weights_TK, want.topk_weights_TK)


@pytest.mark.parametrize("name", BUILTINS)
def test_policy_compiles_without_graph_breaks(name):
    policy = get_policy(name)
    record = sample_record()
    compiled = torch.compile(lambda r: policy.apply(r, 6), fullgraph=True, backend="aot_eager")
    got, want = compiled(record), policy.apply(record, 6)
    assert torch.equal(got.keep_E, want.keep_E)
    assert torch.equal(got.topk_ids_TK, want.topk_ids_TK)


@pytest.mark.parametrize("name", BUILTINS)
@pytest.mark.parametrize("mode", ["substitution", "truncation"])
def test_eager_hot_path_never_waits_for_the_device(name, mode):
    """What CUDA-graph capture needs of eager code: no op that reads a value on the host."""
    policy = get_policy(name)
    policy.validate = False
    record = sample_record()
    with HostSyncRecorder() as recorder:
        policy.apply(record, 6, mode=mode)
    assert recorder.syncs == []
    policy.validate = True  # the recorder does see the value checks' host reads
    with HostSyncRecorder() as recorder:
        policy.apply(record, 6, mode=mode)
    assert recorder.syncs
