"""The calibrated cost model: its fit to the published points, leave-one-out errors, and
how both move with the assumed acceptance length and with fewer free terms; then the
``measured`` model: the fit to the GPU check's CUDA-graph forwards on an H200, and what
the paper-calibrated model predicted for those forwards.

.venv/bin/python bench/costmodel_fit.py
"""

from __future__ import annotations

import argparse

from moe_spec.costmodel.fit import FREE_MEASURED
from moe_spec.costmodel.fit_report import format_fit, format_sensitivity
from moe_spec.costmodel.measured import shipped_points
from moe_spec.costmodel.model import calibrated_overheads

if __name__ == "__main__":
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()  # --help: no fit
    print("## All three overhead terms free\n")
    print(format_fit())
    print("\n## One per-layer term only (the old --overhead-us)\n")
    print(format_fit(free=("layer_s",)))
    print("\n## Sensitivity to the assumed acceptance length (spec_over_ar points)\n")
    print(format_sensitivity())
    for gpu in ("H200",):
        points = shipped_points(gpu)
        print(f"\n## Measured on the {gpu} (bench/gpu_check.sh, CUDA graphs)\n")
        print(f"Source: {points[0].source}\n")
        print(format_fit(points, FREE_MEASURED, calibrated_overheads(), value_label="measured"))
