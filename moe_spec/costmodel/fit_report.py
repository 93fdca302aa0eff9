"""Markdown tables of the calibrated cost model: the fit, leave-one-out, and its sensitivity.

``bench/costmodel_fit.py`` prints them; docs/ab.md and BENCHMARKS.md quote them (a test
checks the quoted rows are what this code prints).
"""

from __future__ import annotations

import math
from dataclasses import replace

from moe_spec.costmodel.fit import FREE, fit_overheads, leave_one_out, log_errors, predict
from moe_spec.costmodel.published import PUBLISHED, PublishedPoint
from moe_spec.costmodel.roofline import NO_OVERHEADS, Overheads


def _value(p: PublishedPoint, v: float) -> str:
    return f"{v * 1e3:.3f} ms" if p.kind in ("expert_slope", "forward_seconds") else f"{v:.3f}"


def _terms(o: Overheads) -> str:
    text = f"{o.forward_s * 1e6:.0f} / {o.layer_s * 1e6:.0f} / {o.expert_s * 1e6:.2f}"
    if o.select_s or o.tree_s or o.token_s:
        text += (
            f" / select {o.select_s * 1e6:.1f} / tree {o.tree_s * 1e6:.0f}"
            f" + {o.token_s * 1e6:.2f}/token"
        )
    return text


def with_acceptance(points, acceptance: float) -> list[PublishedPoint]:
    """The points with every ``spec_over_ar`` acceptance replaced (sensitivity checks)."""
    return [replace(p, acceptance=acceptance) if p.kind == "spec_over_ar" else p for p in points]


def format_fit(
    points=PUBLISHED, free=FREE, reference: Overheads | None = None, value_label="published"
) -> str:
    """Per point: published, roofline, calibrated (in-sample) and leave-one-out predictions;
    with ``reference``, also what those overheads (e.g. the paper-calibrated ones) predict."""
    fitted = fit_overheads(points, free)
    held = leave_one_out(list(points), lambda pts: fit_overheads(pts, free), predict)
    ref_head, ref_rule = (" paper-calibrated |", " --- |") if reference else ("", "")
    lines = [
        f"Calibrated overheads (forward us / layer us / expert us): {_terms(fitted)}",
        "",
        f"| point | {value_label} | roofline |{ref_head} calibrated | left out: predicted | "
        "left out: fit (fwd/layer/expert us) |",
        f"| --- | --- | --- |{ref_rule} --- | --- | --- |",
    ]
    for p, h in zip(points, held, strict=True):
        roof, cal = predict(p, NO_OVERHEADS), predict(p, fitted)
        held_text = (
            f"{_value(p, h.predicted)} ({h.error:+.0%})"
            if abs(h.error) < 10
            else "diverges: without it no point fixes an absolute time"
        )
        ref = ""
        if reference:
            r = predict(p, reference)
            ref = f" {_value(p, r)} ({r / p.value - 1:+.0%}) |"
        lines.append(
            f"| {p.name} | {_value(p, p.value)} | {_value(p, roof)} ({roof / p.value - 1:+.0%}) |"
            f"{ref} {_value(p, cal)} ({cal / p.value - 1:+.0%}) | "
            f"{held_text} | {_terms(h.fitted) if abs(h.error) < 10 else '-'} |"
        )
    return "\n".join(lines)


def format_sensitivity(acceptances=(3.5, 4.0, 5.0, 6.0), points=PUBLISHED) -> str:
    """How the fit moves with the assumed acceptance length of the ``spec_over_ar`` points."""
    lines = [
        "| assumed acceptance | fit (fwd/layer/expert us) | worst in-sample error | "
        "leave-one-out errors |",
        "| --- | --- | --- | --- |",
    ]
    for a in acceptances:
        pts = with_acceptance(points, a)
        fitted = fit_overheads(pts)
        worst = max((math.expm1(e) for e in log_errors(pts, fitted)), key=abs)
        held = leave_one_out(pts, fit_overheads, predict)
        errors = ", ".join(f"{h.error:+.0%}" if abs(h.error) < 10 else "diverges" for h in held)
        lines.append(f"| {a:g} | {_terms(fitted)} | {worst:+.0%} | {errors} |")
    return "\n".join(lines)
