"""The device ops ``auto`` adds to each MoE layer of a verify forward in SGLang, by path.

In a CUDA graph every op the plugin issues is a kernel node the GPU runs each verify, and a
tiny kernel costs a few microseconds however little it does; the measured cost model
prices the budget selection as the Triton kernel's (``select_s``, fitted on an H200). This
counts, without a GPU, what :meth:`BudgetRuntime.budget_standard` dispatches for one MoE
layer after the first (per-forward values already made), as a server runs ``auto``
(:meth:`Auto.record_to_device` buffers, no value checks):

- ``torch``: the policy's torch path (``MOE_SPEC_KERNELS=torch``; what CUDA ran before
  the thirty-eighth session);
- ``triton``: the fused path (scores, ranks, kept set and re-routing in the two Triton
  kernels of :mod:`moe_spec.kernels.budget_select_triton`, the layer's budget read from the
  device); the kernels are replaced by stand-ins that count their launches, so the
  interpreter's own ops are not counted.

Reported per layer: the aten ops that launch work (views, bare allocations and host queries
left out), the Triton launches, their sum, and the views; and the ops a forward's first MoE
layer adds once (the batch's real rows and depths, a policy's per-forward values).
Shapes: a chain of 4 and a 32-token tree at OLMoE-1B-7B's width (E=64, K=8) and
Qwen3-30B-A3B's (E=128, K=8), one request; beside ``router-mass`` at a fixed B on the kernel
(the selection ``select_s`` was fitted to).

    PYTHONPATH=$PWD .venv/bin/python bench/auto_forward_ops.py
"""

from __future__ import annotations

import contextlib
import os
from collections import Counter
from collections.abc import Iterator
from types import SimpleNamespace

import torch
from torch.utils._python_dispatch import TorchDispatchMode

os.environ.setdefault("TRITON_INTERPRET", "1")  # the fused path's wiring runs on a CPU

from moe_spec.integration.sglang.batch import running_batch  # noqa: E402
from moe_spec.integration.sglang.runtime import BudgetRuntime  # noqa: E402
from moe_spec.integration.sglang.settings import ServeSettings  # noqa: E402

ALLOCATIONS = {"empty", "empty_like", "new_empty", "empty_strided", "set_", "detach"}
QUERIES = {"_cuda_version"}  # answered on the host, no device work
SHAPES = [  # (what, T, E, K, depths of one request's rows)
    ("chain of 4, E=64", 4, 64, 8, [0, 1, 2, 3]),
    ("tree of 32, E=64", 32, 64, 8, [0] + [1] * 8 + [2] * 8 + [3] * 8 + [4] * 4 + [5] * 3),
    ("tree of 32, E=128", 32, 128, 8, [0] + [1] * 8 + [2] * 8 + [3] * 8 + [4] * 4 + [5] * 3),
]


# auto on both paths; router-mass at a fixed B on the kernel (what select_s was fitted to)
RUNS = [("auto", "torch"), ("auto", "triton"), ("router-mass", "triton")]


class DeviceOps(TorchDispatchMode):
    """Counts dispatched aten ops: launching work, views, allocations."""

    def __init__(self) -> None:
        super().__init__()
        self.work: Counter[str] = Counter()
        self.views = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        name = func.overloadpacket.__name__
        if func.is_view:
            self.views += 1
        elif name not in ALLOCATIONS and name not in QUERIES:
            self.work[name] += 1
        return func(*args, **(kwargs or {}))


@contextlib.contextmanager
def counted_launches() -> Iterator[list[str]]:
    """The two Triton kernels replaced by stand-ins that record their launches."""
    import moe_spec.kernels.budget_select_triton as module

    launches: list[str] = []
    real = {name: getattr(module, name) for name in ("score_keep_kernel", "rewrite_topk_kernel")}

    class StandIn:
        def __init__(self, name: str) -> None:
            self.name = name

        def __getitem__(self, grid):
            return lambda *args, **kwargs: launches.append(self.name)

    for name in real:
        setattr(module, name, StandIn(name))
    try:
        yield launches
    finally:
        for name, kernel in real.items():
            setattr(module, name, kernel)


def served_runtime(policy: str, E: int, K: int, rows: int) -> BudgetRuntime:
    """``policy`` in the plugin's runtime, as after ``prepare``: two MoE layers, B = E/2
    (``auto``: its budgets on the device, the server's B at E)."""
    adaptive = policy == "auto"
    rt = BudgetRuntime(ServeSettings(policy, budget=E if adaptive else E // 2, counters=False))
    rt.layer_index, rt.ready = {0: 0, 1: 1}, True
    if adaptive:
        rt.policy.record_routing = False
        rt.policy.prepare(2, E, K, E, torch.device("cpu"))
        rt.policy.record_to_device(rows, K)
        rt.policy.device_state["budget_L"].fill_(E // 2)
    return rt


def layer_ops(
    policy: str, backend: str, T: int, E: int, K: int, depths: list[int]
) -> tuple[Counter, int, int, int]:
    """``(work ops, views, Triton launches)`` of the second MoE layer's rewrite, and the
    first layer's device ops (work ops and launches: the forward's own values made too)."""
    os.environ["MOE_SPEC_KERNELS"] = backend
    g = torch.Generator().manual_seed(T + E)
    logits_TE = torch.randn(T, E, generator=g)
    weights_TK, ids_TK = logits_TE.softmax(-1).topk(K, dim=-1)
    output = StandardTopKOutput(weights_TK / weights_TK.sum(-1, keepdim=True), ids_TK, logits_TE)
    batch = SimpleNamespace(
        positions=torch.tensor([100 + d for d in depths]), seq_lens=torch.tensor([100])
    )
    rt = served_runtime(policy, E, K, T)
    config = SimpleNamespace(scoring_func="softmax", renormalize=True, correction_bias=None)
    with running_batch(batch), counted_launches() as launches:
        with DeviceOps() as first:
            rt.budget_standard(
                SimpleNamespace(is_draft=False, layer_id=0, topk_config=config), output, 0
            )
        first_ops = sum(first.work.values()) + len(launches)
        launches.clear()
        with DeviceOps() as ops:
            rt.budget_standard(
                SimpleNamespace(is_draft=False, layer_id=1, topk_config=config), output, 1
            )
    return ops.work, ops.views, len(launches), first_ops


class StandardTopKOutput(tuple):
    """SGLang's output as the runtime reads it (recognised by its class name)."""

    def __new__(cls, topk_weights, topk_ids, router_logits):
        return super().__new__(cls, (topk_weights, topk_ids, router_logits))

    topk_weights = property(lambda self: self[0])
    topk_ids = property(lambda self: self[1])
    router_logits = property(lambda self: self[2])


def main() -> None:
    print(
        "| rows | policy | path | ops launching work | Triton launches | device ops per layer "
        "| more once a forward | views | the most frequent ops |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for what, T, E, K, depths in SHAPES:
        for policy, backend in RUNS:
            work, views, launches, first = layer_ops(policy, backend, T, E, K, depths)
            n = sum(work.values())
            top = ", ".join(f"{name} {c}" for name, c in work.most_common(6))
            print(
                f"| {what} | {policy} | {backend} | {n} | {launches} | {n + launches} "
                f"| {first - n - launches} | {views} | {top} |"
            )


if __name__ == "__main__":
    main()
