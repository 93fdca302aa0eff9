"""Routing traces: the synthetic generator, safetensors round trip, and refused files."""

from __future__ import annotations

import dataclasses
import pickle

import pytest
import torch
from safetensors.torch import save_file

from moe_spec.compare import compare, evaluate
from moe_spec.trace import load_trace, save_trace, synthetic_trace


def test_synthetic_trace_is_reproducible_and_shaped():
    a, b = synthetic_trace(tree_size=20, seed=3), synthetic_trace(tree_size=20, seed=3)
    assert torch.equal(a.router_logits_LTE, b.router_logits_LTE)
    assert a.router_logits_LTE.shape == (16, 20, 64)
    assert not torch.equal(
        a.router_logits_LTE, synthetic_trace(tree_size=20, seed=4).router_logits_LTE
    )
    # A tree: the root has no parent, every other token's parent comes before it, one level up.
    assert a.parent_T[0] == -1 and a.depth_T[0] == 0
    for t in range(1, 20):
        p = int(a.parent_T[t])
        assert 0 <= p < t and a.depth_T[t] == a.depth_T[p] + 1
        assert a.path_logprob_T[t] < a.path_logprob_T[p]


def test_synthetic_routing_is_neither_collapsed_nor_uniform():
    trace = synthetic_trace(tree_size=32)
    used = [int(trace.record(layer).used_E().sum()) for layer in range(trace.num_layers)]
    # Independent uniform routing would use 64 * (1 - (1 - 8/64) ** 32) = 63.2 experts.
    assert all(2 * 8 < u < 56 for u in used), used


def test_round_trip(tmp_path):
    trace = synthetic_trace(num_layers=3, num_experts=16, top_k=2, tree_size=9, seed=1)
    save_trace(trace, tmp_path / "t.safetensors")
    loaded = load_trace(tmp_path / "t.safetensors")
    assert torch.equal(loaded.router_logits_LTE, trace.router_logits_LTE)
    assert torch.equal(loaded.depth_T, trace.depth_T)
    assert (loaded.top_k, loaded.renormalize, loaded.source) == (2, False, trace.source)


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_malformed_trace_files_are_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"does not exist"):
        load_trace(tmp_path / "missing.safetensors")
    good = tmp_path / "good.safetensors"
    save_trace(synthetic_trace(num_layers=2, tree_size=5), good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-100])
    with pytest.raises(
        ValueError, match=r"truncated.safetensors is not a readable safetensors file"
    ):
        load_trace(truncated)
    pickled = tmp_path / "pickled.safetensors"
    pickled.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=r"not a readable safetensors file"):
        load_trace(pickled)
    assert not (tmp_path / "pwned-by-pickle").exists()  # loading never unpickles
    other = tmp_path / "other.safetensors"
    save_file({"x": torch.zeros(2)}, str(other))
    with pytest.raises(ValueError, match=r"has format None; expected 'moe-spec-trace/1'"):
        load_trace(other)
    wrong_shape = tmp_path / "wrong.safetensors"
    save_file(
        {
            "router_logits_LTE": torch.zeros(2, 4, 8),
            "parent_T": torch.zeros(3),
            "depth_T": torch.zeros(4),
            "path_logprob_T": torch.zeros(4),
        },
        str(wrong_shape),
        metadata={
            "format": "moe-spec-trace/1",
            "meta": '{"top_k": 2, "renormalize": false, "source": "x"}',
        },
    )
    with pytest.raises(ValueError, match=r"parent_T must have shape \[T=4\], got \(3,\)"):
        load_trace(wrong_shape)


@pytest.mark.parametrize(
    "field, index, value, message",
    [
        (
            "router_logits_LTE",
            (1, 3, 5),
            float("nan"),
            r"1 non-finite values, the first nan at "
            r"layer 1, token 3, expert 5",
        ),
        ("router_logits_LTE", (0, 0, 0), float("inf"), r"the first inf at layer 0, token 0"),
        (
            "parent_T",
            3,
            99,
            r"parent_T\[3\] is 99; allowed: -1 \(a root\) or an earlier "
            r"token, 0..2",
        ),
        ("parent_T", 2, 2, r"parent_T\[2\] is 2"),
        ("parent_T", 1, -2, r"parent_T\[1\] is -2"),
        ("depth_T", 4, -1, r"depth_T\[4\] is -1; its parent is \d+, so it must be \d+"),
        ("depth_T", 0, 1, r"depth_T\[0\] is 1; its parent is -1, so it must be 0"),
    ],
)
def test_a_trace_file_with_impossible_values_names_them(tmp_path, field, index, value, message):
    trace = synthetic_trace(num_layers=2, num_experts=16, top_k=2, tree_size=8, seed=0)
    tensors = {
        name: getattr(trace, name).clone()
        for name in ("router_logits_LTE", "parent_T", "depth_T", "path_logprob_T")
    }
    tensors[field][index] = value
    path = tmp_path / "bad.safetensors"
    meta = '{"top_k": 2, "renormalize": false, "source": "x"}'
    save_file(tensors, str(path), metadata={"format": "moe-spec-trace/1", "meta": meta})
    with pytest.raises(ValueError, match=r"bad.safetensors: .*" + message):
        load_trace(path)


def test_a_trace_with_float_parents_is_refused():
    trace = synthetic_trace(num_layers=1, tree_size=4)
    with pytest.raises(ValueError, match=r"parent_T must hold integers, got torch.float32"):
        dataclasses.replace(trace, parent_T=trace.parent_T.float())


def test_compare_measures_each_policy_against_the_unbudgeted_baseline():
    trace = synthetic_trace(num_layers=4, tree_size=24)
    rows = compare(trace, ["router-mass", "token-priority"], [16, 32], "substitution")
    baseline = rows[0]
    assert baseline.policy == "none" and baseline.budget is None
    assert baseline.distinct_after_L == baseline.distinct_before_L
    assert (baseline.mass_kept, baseline.topk_mass_kept, baseline.rerouted) == (1.0, 1.0, 0.0)
    assert [(r.policy, r.budget) for r in rows[1:]] == [
        ("router-mass", 16),
        ("router-mass", 32),
        ("token-priority", 16),
        ("token-priority", 32),
    ]
    for row in rows[1:]:
        assert all(d <= row.budget for d in row.distinct_after_L)
        assert 0.5 < row.mass_kept < 1.0 and 0.0 < row.rerouted < 1.0
        assert row.distinct_before_L == baseline.distinct_before_L
    assert rows[3].root_rerouted_layers == 0  # token-priority never re-routes the root
    tight, loose = rows[1], rows[2]
    assert tight.mass_kept < loose.mass_kept and tight.rerouted > loose.rerouted


def test_mass_kept_is_the_share_of_probability_on_kept_experts():
    trace = synthetic_trace(num_layers=1, num_experts=8, top_k=2, tree_size=6)
    row = evaluate(trace, "router-mass", 3)
    probs_TE = torch.softmax(trace.router_logits_LTE[0], -1)
    mass_E = probs_TE.sum(0)
    kept = sorted(
        range(8), key=lambda e: (not bool(trace.record(0).used_E()[e]), -float(mass_E[e]), e)
    )[:3]
    assert row.mass_kept == pytest.approx(float(mass_E[kept].sum() / mass_E.sum()), rel=1e-6)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"tree_size": 0}, r"tree_size is 0; allowed: an integer >= 1"),
        ({"num_layers": 0}, r"num_layers is 0; allowed: an integer >= 1"),
        (
            {"num_experts": 0},
            r"num_experts is 0; allowed: an integer >= 8 \(at least 1 and top_k\)",
        ),
        ({"top_k": 0}, r"top_k is 0; allowed: an integer >= 1"),
    ],
)
def test_synthetic_trace_refuses_an_empty_or_impossible_shape(kwargs, message):
    with pytest.raises(ValueError, match=message):
        synthetic_trace(**kwargs)


def test_an_empty_trace_and_an_unwritable_path_are_refused(tmp_path):
    with pytest.raises(ValueError, match=r"shape \[L=0, T=3, E=8\]; a trace needs at least one"):
        load_trace_of_shape(tmp_path / "empty.safetensors", (0, 3, 8))
    with pytest.raises(ValueError, match=r"cannot write trace file .*missing"):
        save_trace(synthetic_trace(num_layers=1, tree_size=2), tmp_path / "missing" / "t.st")


def load_trace_of_shape(path, shape_LTE: tuple[int, int, int]):
    """``load_trace`` of a file holding zero router logits of ``shape_LTE``."""
    T = shape_LTE[1]
    save_file(
        {
            "router_logits_LTE": torch.zeros(shape_LTE),
            "parent_T": torch.full((T,), -1),
            "depth_T": torch.zeros(T, dtype=torch.long),
            "path_logprob_T": torch.zeros(T),
        },
        str(path),
        metadata={
            "format": "moe-spec-trace/1",
            "meta": '{"top_k": 2, "renormalize": false, "source": "x"}',
        },
    )
    return load_trace(path)
