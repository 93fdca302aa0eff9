"""Forward times measured on a GPU by ``bench/gpu_check.sh``, as cost-model points.

The GPU check times one decode step and verify steps (trees of 32 and 64 tokens,
unbudgeted and budgeted) of OLMoE-1B-7B- and Qwen3-30B-A3B-shaped models with random
bf16 weights, eagerly and replayed from CUDA graphs, and writes them as JSON
(``--json``). Files shipped in ``moe_spec/costmodel/measured/<GPU>.json`` feed the
``measured`` cost model: overheads fitted to that GPU's CUDA-graph points
(``moe_spec.costmodel.model``). JSON only; nothing is unpickled.
"""

from __future__ import annotations

import json
from pathlib import Path

from moe_spec.costmodel.gpus import get_gpu
from moe_spec.costmodel.published import PublishedPoint
from moe_spec.costmodel.shapes import get_shape

MEASURED_DIR = Path(__file__).parent / "measured"
STACKS = ("graph", "eager")
POINT_FIELDS = ("kind", "shape", "gpu", "stack", "num_tokens", "distinct", "budget", "value")


def load_measured(path: Path | str, stack: str = "graph") -> list[PublishedPoint]:
    """The ``stack`` points of a GPU-check JSON file; ``ValueError`` names what is wrong."""
    if stack not in STACKS:
        raise ValueError(f"stack {stack!r}; allowed: {', '.join(STACKS)}")
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not a readable GPU-check JSON file ({e})") from e
    if not isinstance(report, dict) or not isinstance(report.get("points"), list):
        raise ValueError(f"{path}: expected an object with a 'points' list (bench/gpu_check.py)")
    source = (
        f"{report.get('command', 'bash bench/gpu_check.sh')} on {report.get('device_name', '?')}, "
        f"{report.get('date', '?')} (torch {report.get('torch', '?')}, "
        f"triton {report.get('triton', '?')})"
    )
    points = []
    for i, raw in enumerate(report["points"]):
        missing = [f for f in POINT_FIELDS if not isinstance(raw, dict) or f not in raw]
        if missing:
            raise ValueError(f"{path}: point {i} lacks {', '.join(missing)}")
        if raw["stack"] != stack:
            continue
        get_shape(raw["shape"]), get_gpu(raw["gpu"])  # unknown names: ValueError with the list
        budget = raw["budget"]
        step = "decode" if raw["num_tokens"] == 1 else f"verify T={raw['num_tokens']}"
        try:
            point = PublishedPoint(
                f"{raw['shape']} {step} B={budget or 'none'}",
                raw["kind"],
                raw["shape"],
                raw["gpu"],
                float(raw["value"]),
                num_tokens=int(raw["num_tokens"]),
                distinct=float(raw["distinct"]),
                budget=None if budget is None else int(budget),
                source=source,
            )
        except (TypeError, ValueError) as exc:  # a value that is not a number
            raise ValueError(f"{path}: point {i}: {exc}") from None
        points.append(point)
    if not points:
        raise ValueError(f"{path}: no {stack!r} points")
    return points


def measured_gpus() -> list[str]:
    """GPUs with shipped measurements (file names under ``MEASURED_DIR``)."""
    return sorted(p.stem for p in MEASURED_DIR.glob("*.json"))


def shipped_points(gpu_name: str, stack: str = "graph") -> list[PublishedPoint]:
    """The shipped measurements of ``gpu_name``; ``ValueError`` lists the GPUs that have some."""
    gpu = get_gpu(gpu_name).name
    path = MEASURED_DIR / f"{gpu}.json"
    if not path.is_file():
        have = ", ".join(measured_gpus()) or "none"
        raise ValueError(f"no GPU-check measurements of {gpu} are shipped; measured: {have}")
    return load_measured(path, stack)
