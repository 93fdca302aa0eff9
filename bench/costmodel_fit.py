"""The calibrated cost model: its fit to the published points, leave-one-out errors, and
how both move with the assumed acceptance length and with fewer free terms.

.venv/bin/python bench/costmodel_fit.py
"""

from __future__ import annotations

from moe_spec.costmodel.fit_report import format_fit, format_sensitivity

if __name__ == "__main__":
    print("## All three overhead terms free\n")
    print(format_fit())
    print("\n## One per-layer term only (the old --overhead-us)\n")
    print(format_fit(free=("layer_s",)))
    print("\n## Sensitivity to the assumed acceptance length (spec_over_ar points)\n")
    print(format_sensitivity())
