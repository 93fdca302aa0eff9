"""The calibrated cost model: published points, the fit, leave-one-out, named variants."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import pytest

from moe_spec.costmodel import NO_OVERHEADS, Overheads, get_cost_model
from moe_spec.costmodel.fit import FREE, fit_overheads, leave_one_out, log_errors, predict
from moe_spec.costmodel.model import calibrated_overheads
from moe_spec.costmodel.paper import PAPER_CASES, check_case
from moe_spec.costmodel.published import PUBLISHED, PublishedPoint


@dataclass(frozen=True)
class Pt:
    x: float
    value: float


def slope_through_origin(points: list[Pt]) -> float:
    return sum(p.x * p.value for p in points) / sum(p.x * p.x for p in points)


def test_leave_one_out_matches_a_hand_computed_tiny_case():
    points = [Pt(1, 2), Pt(2, 3), Pt(3, 7)]
    held = leave_one_out(points, slope_through_origin, lambda p, a: a * p.x)
    # without (1,2): a = (6+21)/(4+9); without (2,3): a = (2+21)/(1+9); without (3,7): 8/5
    expected = [27 / 13, 2 * 23 / 10, 3 * 8 / 5]
    assert [h.predicted for h in held] == pytest.approx(expected)
    assert [h.error for h in held] == pytest.approx(
        [e / p.value - 1 for e, p in zip(expected, points, strict=True)]
    )
    assert [h.fitted for h in held] == pytest.approx([27 / 13, 23 / 10, 8 / 5])
    with pytest.raises(ValueError, match="at least 2 points"):
        leave_one_out(points[:1], slope_through_origin, lambda p, a: a * p.x)


def test_the_fit_recovers_overheads_that_generated_the_points():
    truth = Overheads(forward_s=40e-6, layer_s=80e-6, expert_s=0.5e-6)
    synthetic = [replace(p, value=predict(p, truth)) for p in PUBLISHED]
    fitted = fit_overheads(synthetic)
    # exact points: the fit lands within 1e-14 of every term (1e-4 leaves room for its stop)
    assert max(abs(e) for e in log_errors(synthetic, fitted)) < 1e-6
    for name in FREE:
        assert getattr(fitted, name) == pytest.approx(getattr(truth, name), rel=1e-4), name


def test_the_roofline_prediction_of_a_budget_gain_is_the_paper_checks():
    for case in PAPER_CASES:
        point = next(p for p in PUBLISHED if p.kind == "budget_gain" and p.shape == case.shape)
        assert predict(point, NO_OVERHEADS) == pytest.approx(check_case(case).predicted_gain)


def test_calibrated_reproduces_every_point_it_was_fitted_on_within_15_percent():
    fitted = calibrated_overheads()
    errors = log_errors(PUBLISHED, fitted)
    assert max(abs(math.expm1(e)) for e in errors) < 0.15
    roofline = log_errors(PUBLISHED, NO_OVERHEADS)
    assert (errors**2).sum() < (roofline**2).sum() / 10
    # the fitted slope is the published one (it is the only absolute time in the data)
    slope = next(p for p in PUBLISHED if p.kind == "expert_slope")
    assert predict(slope, fitted) == pytest.approx(slope.value, rel=0.05)


def test_every_published_point_names_its_source():
    for p in PUBLISHED:
        assert "arXiv" in p.source and "https://" in p.source, p.name
    assert len({p.name for p in PUBLISHED}) == len(PUBLISHED)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "speedup"}, "allowed: spec_over_ar, budget_gain, expert_slope"),
        ({"value": 0.0}, "value must be > 0"),
        ({"acceptance": None}, "needs acceptance >= 1"),
        ({"kind": "budget_gain", "acceptance": None}, "needs a budget"),
    ],
)
def test_bad_points_are_refused(kwargs, message):
    base = dict(
        name="x",
        kind="spec_over_ar",
        shape="OLMoE-1B-7B",
        gpu="H100",
        value=2.0,
        num_tokens=8,
        distinct=20,
        source="s",
        acceptance=3.0,
    )
    with pytest.raises(ValueError, match=message):
        PublishedPoint(**{**base, **kwargs})


def test_named_cost_models():
    assert get_cost_model("roofline", "H200").overheads == NO_OVERHEADS
    calibrated = get_cost_model("calibrated", "h100")
    assert calibrated.overheads == calibrated_overheads() and calibrated.gpu.name == "H100"
    with pytest.raises(ValueError, match="allowed: calibrated, roofline"):
        get_cost_model("magic", "H200")
    with pytest.raises(ValueError, match="allowed: forward_s, layer_s, expert_s"):
        fit_overheads(PUBLISHED, free=("bandwidth",))


def test_benchmarks_quote_the_fit_table_the_code_prints():
    from pathlib import Path

    from moe_spec.costmodel.fit_report import format_fit

    doc = (Path(__file__).resolve().parents[2] / "BENCHMARKS.md").read_text()
    for line in format_fit().splitlines():
        assert line in doc, line
