"""The split is exact before routing; routers pick top-k; the simulator is the checkpoint."""

from __future__ import annotations

import torch

from moe_spec.models.build import content_hash, write_checkpoint
from moe_spec.models.simulate import LayerSplit, as_moe
from tests.models.conftest import SLICE_LAYERS, dense_llama, load_moe

IDS = [[1604, 3987, 46477, 24, 94, 727, 472, 1003, 304, 30, 13, 198, 2047, 28, 7]]


def stored(w: torch.Tensor) -> torch.Tensor:
    """As the checkpoint stores it: rounded to bf16."""
    return w.to(torch.bfloat16).float()


def build(tmp_path, sliced, split, **overrides):
    spec, perms, routers = split
    shape, state = sliced
    write_checkpoint(tmp_path, shape, state, {**spec, **overrides}, perms, routers)
    return tmp_path


def test_every_expert_active_is_the_dense_model(tmp_path, sliced, shipped_split):
    """With K = E and equal weights (router 0), the Qwen2-MoE checkpoint computes the dense
    Llama: shared expert (gate 0, doubled down) + all routed experts = the whole FFN."""
    E = shipped_split[0]["n_experts"]
    path = build(tmp_path, sliced, shipped_split, top_k=E, router_scale=0.0)
    moe = load_moe(path)
    assert moe.config.num_experts == E and moe.config.num_experts_per_tok == E
    dense = dense_llama(*sliced)
    with torch.no_grad():
        got = moe(input_ids=torch.tensor(IDS)).logits
        want = dense(input_ids=torch.tensor(IDS)).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()


def test_top_k_routing_matches_the_masked_simulator(tmp_path, sliced, shipped_split):
    """The shipped checkpoint (top-k routing) equals ``simulate.as_moe`` on the dense model,
    and every router picks exactly K distinct experts with weights summing to 1."""
    spec, perms, routers = shipped_split
    K, E = spec["top_k"], spec["n_experts"]
    moe = load_moe(build(tmp_path, sliced, shipped_split))
    picks = []
    for layer in moe.model.layers:
        layer.mlp.gate.register_forward_hook(lambda _m, _a, out: picks.append(out))
    dense = dense_llama(*sliced)
    splits = [
        LayerSplit(perms[i], spec["shared"], stored(spec["router_scale"] * routers[i]))
        for i in range(SLICE_LAYERS)
    ]
    with torch.no_grad():
        got = moe(input_ids=torch.tensor(IDS)).logits
        with as_moe(dense, splits, E, K):
            want = dense(input_ids=torch.tensor(IDS)).logits
    assert torch.allclose(got, want, atol=1e-4, rtol=1e-4), (got - want).abs().max()
    assert len(picks) == SLICE_LAYERS
    for logits_TE, weights_TK, ids_TK in picks:
        T = len(IDS[0])
        assert ids_TK.shape == (T, K) and weights_TK.shape == (T, K)
        assert all(row.unique().numel() == K for row in ids_TK)
        assert torch.equal(ids_TK.sort(1).values, logits_TE.topk(K, 1).indices.sort(1).values)
        assert torch.allclose(weights_TK.sum(1), torch.ones(T))


def test_slice_build_is_deterministic(tmp_path, sliced, shipped_split):
    a = build(tmp_path / "a", sliced, shipped_split)
    b = build(tmp_path / "b", sliced, shipped_split)
    assert content_hash(a) == content_hash(b)
    (b / "model.safetensors").write_bytes((b / "model.safetensors").read_bytes()[:-1] + b"\0")
    assert content_hash(a) != content_hash(b)
