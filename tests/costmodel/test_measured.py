"""GPU-check measurements as cost-model points, the select/tree terms, the `measured` model."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest

from moe_spec.control.cost import StepCost
from moe_spec.costmodel import Overheads, get_cost_model, get_gpu, get_shape, verify_seconds
from moe_spec.costmodel.fit import FREE_MEASURED, fit_overheads, log_errors, predict
from moe_spec.costmodel.measured import MEASURED_DIR, load_measured, shipped_points

H200 = get_gpu("H200")
OLMOE = get_shape("OLMoE-1B-7B")


def write(tmp_path, report) -> str:
    path = tmp_path / "check.json"
    path.write_text(json.dumps(report))
    return str(path)


def point(**change) -> dict:
    base = {"kind": "forward_seconds", "shape": "OLMoE-1B-7B", "gpu": "H200", "stack": "graph",
            "num_tokens": 32, "distinct": 40.0, "budget": 16, "value": 6e-3}  # fmt: skip
    return base | change


def test_the_shipped_h200_file_holds_decode_and_verify_points_of_both_stacks():
    graph, eager = shipped_points("H200"), shipped_points("H200", "eager")
    # per shape: decode + trees of 32 and 64 tokens x (none + 2 budgets); OLMoE also T=255
    assert len(graph) == len(eager) == 17
    assert sum(p.num_tokens == 255 for p in graph) == 3
    assert {p.shape for p in graph} == {"OLMoE-1B-7B", "Qwen3-30B-A3B"}
    assert sum(p.num_tokens == 1 for p in graph) == 2
    assert all(p.kind == "forward_seconds" and p.value > 0 for p in graph)
    budgeted = [p for p in graph if p.budget is not None]
    assert budgeted and all(p.distinct <= p.budget + 1e-9 for p in budgeted)
    assert "NVIDIA H200" in graph[0].source
    assert (MEASURED_DIR / "H200.json").is_file()


def test_bad_files_get_errors_that_name_the_problem(tmp_path):
    with pytest.raises(ValueError, match="not a readable GPU-check JSON"):
        load_measured(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="not a readable"):
        load_measured(tmp_path / "bad.json")
    with pytest.raises(ValueError, match="'points' list"):
        load_measured(write(tmp_path, {"points": 3}))
    lacking = point()
    del lacking["distinct"]
    with pytest.raises(ValueError, match="point 0 lacks distinct"):
        load_measured(write(tmp_path, {"points": [lacking]}))
    with pytest.raises(ValueError, match=r"check.json: point 0: could not convert .*'fast'"):
        load_measured(write(tmp_path, {"points": [point(value="fast")]}))
    with pytest.raises(ValueError, match="unknown model shape 'tiny'"):
        load_measured(write(tmp_path, {"points": [point(shape="tiny")]}))
    with pytest.raises(ValueError, match="no 'eager' points"):
        load_measured(write(tmp_path, {"points": [point()]}), "eager")
    with pytest.raises(ValueError, match="stack 'warm'; allowed: graph, eager"):
        load_measured(write(tmp_path, {"points": [point()]}), "warm")


def test_a_forward_point_is_predicted_as_that_verify_with_its_selection_and_tree_terms(tmp_path):
    o = Overheads(layer_s=100e-6, select_s=10e-6, tree_s=50e-6, token_s=1e-6)
    (p,) = load_measured(write(tmp_path, {"points": [point()]}))
    base = verify_seconds(H200, OLMOE, 32, 40.0)
    L = OLMOE.n_layers
    tree = 50e-6 + 32 * 1e-6
    assert predict(p, o) == pytest.approx(base + L * (100e-6 + tree) + L * 10e-6)
    unbudgeted = replace(p, budget=None)
    assert predict(unbudgeted, o) == pytest.approx(base + L * (100e-6 + tree))
    decode = replace(unbudgeted, num_tokens=1, distinct=8.0)
    assert predict(decode, o) == pytest.approx(verify_seconds(H200, OLMOE, 1, 8.0) + L * 100e-6)


def test_the_measured_fit_recovers_terms_that_generated_the_points():
    truth = Overheads(forward_s=30e-6, layer_s=200e-6, select_s=15e-6, tree_s=90e-6, token_s=1e-6)
    synthetic = [replace(p, value=predict(p, truth)) for p in shipped_points("H200")]
    fitted = fit_overheads(synthetic, FREE_MEASURED)
    # exact points: the fit lands within 1e-13 of every term (1e-4 leaves room for its stop)
    assert max(abs(e) for e in log_errors(synthetic, fitted)) < 1e-6
    for name in FREE_MEASURED:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-4), name


def test_the_measured_model_fits_the_h200_within_10_percent_and_exists_only_there():
    model = get_cost_model("measured", "H200")
    assert model.overheads.select_s > 0 and model.overheads.tree_s > 0
    errors = log_errors(shipped_points("H200"), model.overheads)
    assert max(abs(np.expm1(errors))) < 0.10
    with pytest.raises(ValueError, match="no GPU-check measurements of A100-80GB.*measured: H200"):
        get_cost_model("measured", "A100-80GB")


def test_the_controller_prices_the_ranking_it_runs():
    # a budgeted step ranks; an unbudgeted one ranks every rank_every-th time (auto learns
    # from the ranking), so it pays that share on average
    model = replace(get_cost_model("roofline", "H200"), overheads=Overheads(select_s=20e-6))
    no_select = StepCost(get_cost_model("roofline", "H200"), OLMOE, 8, 64, [(32, 8, 6)])
    cost = StepCost(model, OLMOE, top_k=8, n_experts=64, trees=[(32, 8, 6)], rank_every=4)
    read, tail = np.array([64.0, 30.0]), np.array([0, 0])
    budgeted = np.array([False, True])
    ranked = cost.tree_seconds(0, read, tail, budgeted) - no_select.tree_seconds(0, read, tail)
    assert ranked == pytest.approx([OLMOE.n_moe_layers * 20e-6 / 4, OLMOE.n_moe_layers * 20e-6])
