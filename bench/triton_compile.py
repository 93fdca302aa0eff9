"""Compile every Triton kernel moe-spec launches for a CUDA GPU, on a machine without one.

Shape legend: T tokens, E experts, K top-k, B budget, D model dim, F expert dim.

The tests run the kernels under Triton's interpreter, which runs code a GPU compile refuses
(a helper without ``@triton.jit``) and tells nothing of registers, spills or shared memory.
This script makes each launch the package makes, at real shapes: budget selection and the
one-launch ranking for softmax and sigmoid routers of 32 to 256 experts, with each caller's
logits and ids dtypes, and as SGLang's plugin launches it, with the device-side budget, ranks
and rest flag; the fused MoE at every block configuration of ``moe_spec.kernels.configs``'
tables, in bf16, fp16 and fp32. It passes CPU tensors under a driver that reports the target
GPU: Triton compiles each launch to a cubin (ptxas ships with Triton) and nothing runs. A
launch that would not compile, that needs more shared memory than the GPU has, or that needs
a global scratch allocator fails here, before a device session is spent on it; spills are
listed. Registers, spills and shared memory come from ``cuobjdump --dump-resource-usage``.

The compile is the installed Triton's (the device machines may run another release), and
arguments are specialised as on a GPU (alignment read from CPU pointers).

usage: ``python bench/triton_compile.py [--arch 90 80] [--json out.json]``; exits 1 when a
launch fails. Run it without ``TRITON_INTERPRET`` (Triton reads it when a kernel is
defined).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from moe_spec.kernels.dispatch import interpreter_enabled  # noqa: E402 (imports no Triton)

#: The most shared memory one block may use, in bytes, per compute capability.
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448, 100: 232448, 120: 101376}


INTERPRETING = (
    "TRITON_INTERPRET is set: kernels defined under it are interpreted and compile nothing; "
    "run without it (env -u TRITON_INTERPRET ...)"
)


def nvidia_tool(name: str) -> Path:
    """One of the CUDA tools Triton's wheel ships (``ptxas``, ``cuobjdump``)."""
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name


@dataclass
class Compiled:
    """One launch's compile: the kernel, its constexpr arguments, and what the cubin needs."""

    kernel: str
    arch: int
    launch: str  # the shape or configuration it was launched for
    constexprs: dict[str, int | bool | str] = field(default_factory=dict)
    num_warps: int = 0
    num_stages: int = 0
    shared: int = 0  # bytes
    scratch: int = 0  # bytes of global scratch a launch needs an allocator for
    regs: int | None = None  # per thread (None: cuobjdump missing)
    local: int | None = None  # bytes of local memory per thread: spills
    error: str = ""

    def problems(self) -> list[str]:
        """Why this launch would fail on the GPU (empty: it would not)."""
        out = [self.error] if self.error else []
        limit = SHARED_LIMIT.get(self.arch)
        if limit is not None and self.shared > limit:
            out.append(f"needs {self.shared} bytes of shared memory; sm_{self.arch} has {limit}")
        if self.scratch:
            out.append(f"needs {self.scratch} bytes of global scratch (an allocator)")
        return out


def resource_usage(cubin: bytes, name: str) -> tuple[int | None, int | None]:
    """``(registers, local bytes)`` of function ``name`` in ``cubin`` (None, None without
    Triton's ``cuobjdump``)."""
    tool = nvidia_tool("cuobjdump")
    if not tool.exists():
        return None, None
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        text = subprocess.run(
            [str(tool), "--dump-resource-usage", f.name], capture_output=True, text=True
        ).stdout
    found = re.search(rf"Function {re.escape(name)}:\s*\n\s*REG:(\d+).*?LOCAL:(\d+)", text)
    return (int(found[1]), int(found[2])) if found else (None, None)


@dataclass
class Session:
    """What :func:`compile_only` yields: the compiles so far, and the launch being made."""

    arch: int
    records: list[Compiled] = field(default_factory=list)
    launch: str = ""


@contextlib.contextmanager
def compile_only(arch: int) -> Iterator[Session]:
    """Within: every ``@triton.jit`` launch compiles for ``sm_<arch>`` and returns without
    running; each is appended to the session's records (a compile error as its ``error``;
    the launch's caller sees no exception, and its outputs are left unwritten)."""
    import torch
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.driver import CudaDriver
    from triton.runtime import driver
    from triton.runtime.jit import JITFunction

    if interpreter_enabled():
        raise RuntimeError(INTERPRETING)

    class CompileOnlyDriver(CudaDriver):
        def __init__(self) -> None:  # no libcuda: nothing is loaded or launched
            pass

        def get_current_target(self) -> GPUTarget:
            return GPUTarget("cuda", arch, 32)

        def get_current_device(self) -> int:
            return 0

        def get_current_stream(self, device: int | None = None) -> int:
            return 0

        def get_active_torch_device(self) -> torch.device:
            return torch.device("cpu")

    session = Session(arch)
    seen: dict[int, JITFunction] = {}  # by id: a kernel's hash compiles it
    run = JITFunction.run

    def compile_launch(self: JITFunction, *args, grid, warmup, **kwargs):
        seen[id(self)] = self
        name = self.fn.__name__
        constexprs = {
            k: v for k, v in kwargs.items() if k.isupper() and isinstance(v, int | bool | str)
        }
        record = Compiled(name, arch, session.launch, constexprs)
        session.records.append(record)
        try:
            kernel = run(self, *args, grid=grid, warmup=True, **kwargs)
        except Exception as exc:  # a compile error: reported, the next launch goes on
            record.error = f"{type(exc).__name__}: {str(exc).strip()[:400]}"
            return None
        meta = kernel.metadata
        record.num_warps, record.num_stages = meta.num_warps, meta.num_stages
        record.shared, record.scratch = meta.shared, getattr(meta, "global_scratch_size", 0)
        record.regs, record.local = resource_usage(kernel.asm["cubin"], meta.name)
        return kernel

    active = driver._active  # None until a driver was first asked for (none without a GPU)
    driver.set_active(CompileOnlyDriver())
    JITFunction.run = compile_launch
    try:
        yield session
    finally:
        JITFunction.run = run
        driver._active = active
        for fn in seen.values():  # their binders hold this target
            fn.device_caches.clear()


def launches() -> dict[str, Callable[[], None]]:
    """Each launch configuration the package makes, by name: a call of its public wrapper
    with CPU tensors."""
    import torch

    from moe_spec.kernels.budget_select_torch import ScoreRule
    from moe_spec.kernels.budget_select_triton import (
        rank_layers_triton,
        rank_scored_triton,
        select_budget_triton,
    )
    from moe_spec.kernels.configs import DEFAULT_TABLE, DEVICE_TABLES, MoeBlockConfig
    from moe_spec.kernels.fused_moe_triton import fused_moe_triton
    from moe_spec.routing import RoutingRecord

    def record(
        T: int, E: int, K: int, scoring: str, logits: torch.dtype, ids: torch.dtype
    ) -> RoutingRecord:
        logits_TE = torch.randn(T, E).to(logits)
        ids_TK = logits_TE.float().topk(K).indices.to(ids)
        weights_TK = torch.rand(T, K)
        bias_E = torch.randn(E) if scoring == "sigmoid" else None
        return RoutingRecord(
            logits_TE, ids_TK, weights_TK, scoring=scoring, correction_bias_E=bias_E
        )

    # the routing each caller hands over: the reference engine fp32 logits and int64 ids,
    # the transformers engine its bf16 model's logits and int64 ids, SGLang bf16 and int32
    engine, transformers, sglang = (
        (torch.float32, torch.int64),
        (torch.bfloat16, torch.int64),
        (torch.bfloat16, torch.int32),
    )

    def selection(T: int, E: int, K: int, scoring: str, served: bool, mode: str) -> None:
        dtypes = sglang if served else engine if mode == "substitution" else transformers
        r = record(T, E, K, scoring, *dtypes)
        rule = ScoreRule("mass", torch.rand(T), torch.arange(T) < 2)
        device_state = {}
        if served:  # SGLang's plugin: budget, ranks, rest flag, score rows, top-k copy
            device_state = {
                "limit_1": torch.tensor([E // 2], dtype=torch.int32),
                "rank_E": torch.empty(E, dtype=torch.long),
                "rest_1": torch.zeros(1, dtype=torch.int32),
                "scores_E": torch.empty(3, E)[1],
                "used_E": torch.empty(3, E, dtype=torch.int32)[1],
                "ids_out": torch.empty(3, min(T, 6), K + 1, dtype=torch.long)[1],  # observe's
            }
        budget = 1 if K == 1 else max(K, E // 2)  # a budget of 1: a constant to Triton
        select_budget_triton(r, budget, rule, mode, **device_state)

    def ranking(T: int, E: int, K: int, scoring: str, weighted: bool) -> None:
        records = [record(T, E, K, scoring, *transformers) for _ in range(3)]
        weight_T = torch.rand(T) if weighted else None
        rank_layers_triton(records, ScoreRule("mass", weight_T, torch.arange(T) < 2))

    def ranking_scored(E: int) -> None:  # a server's ranking of the scores its rests kept
        L = 3
        used_LE = torch.randint(0, 2, (L, E), dtype=torch.int32)
        rank_scored_triton(torch.randn(L, E), used_LE, torch.empty(L, E, dtype=torch.long))

    def fused(config: MoeBlockConfig, dtype: torch.dtype, T: int = 8) -> None:
        E, D, F, K = 8, 256, 128, 2
        x_TD = torch.randn(T, D).to(dtype)
        w13_EFD = torch.randn(E, 2 * F, D).to(dtype)
        w2_EDF = torch.randn(E, D, F).to(dtype)
        ids_TK = torch.randint(0, E, (T, K))
        fused_moe_triton(x_TD, w13_EFD, w2_EDF, ids_TK, torch.rand(T, K), config)

    out: dict[str, Callable[[], None]] = {}
    routers = [(32, "softmax"), (64, "softmax"), (128, "softmax"), (256, "sigmoid")]
    for E, scoring in routers:
        for T in (1, 32):
            for served in (False, True):
                caller = "SGLang" if served else "reference engine"
                name = f"selection T={T} E={E} K=8 {scoring} ({caller})"
                out[name] = lambda a=(T, E, 8, scoring, served, "substitution"): selection(*a)
        name = f"selection T=32 E={E} K=1 B=1 {scoring} (SGLang)"  # top-1 routers
        out[name] = lambda a=(32, E, 1, scoring, True, "substitution"): selection(*a)
        out[f"selection T=32 E={E} K=8 {scoring} truncation (transformers)"] = (
            lambda a=(32, E, 8, scoring, False, "truncation"): selection(*a)
        )
        for weighted in (False, True):
            rule = " weighted" if weighted else ""
            name = f"ranking after L=3 T=32 E={E} K=8 {scoring}{rule} (transformers)"
            out[name] = lambda a=(32, E, 8, scoring, weighted): ranking(*a)
        out[f"ranking scored L=3 E={E} (SGLang)"] = lambda E=E: ranking_scored(E)
    tables = {"default": DEFAULT_TABLE, **DEVICE_TABLES}
    configs: dict[MoeBlockConfig, list[str]] = {}
    for table_name, rows in tables.items():
        for _, config in rows:
            configs.setdefault(config, []).append(table_name)
    for config, names in configs.items():
        table = ", ".join(names)
        for dtype in (torch.bfloat16, torch.float16, torch.float32):
            if dtype == torch.float32:  # as moe_block_config halves the reduction tile
                config = MoeBlockConfig(
                    config.block_m, config.block_n, min(config.block_k, 64), config.num_warps, 2
                )
            blocks = f"{config.block_m}x{config.block_n}x{config.block_k}"
            name = (
                f"fused MoE {str(dtype).removeprefix('torch.')} {blocks} "
                f"w{config.num_warps} s{config.num_stages} ({table})"
            )
            out[name] = lambda c=config, d=dtype: fused(c, d)
    return out


def compile_all(arch: int) -> list[Compiled]:
    """Every launch of :func:`launches` compiled for ``sm_<arch>``."""
    with compile_only(arch) as session:
        for name, call in launches().items():
            session.launch = name
            call()
    return session.records


def table(records: list[Compiled]) -> str:
    lines = [
        "| sm | launch | kernel | warps | stages | registers | spills (local B) | shared B | "
        "result |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in records:
        result = "; ".join(r.problems()) or ("spills" if r.local else "ok")
        lines.append(
            f"| {r.arch} | {r.launch} | {r.kernel} | {r.num_warps} | {r.num_stages} | "
            f"{r.regs if r.regs is not None else 'n/a'} | "
            f"{r.local if r.local is not None else 'n/a'} | {r.shared} | {result} |"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--arch",
        type=int,
        nargs="+",
        default=[90],
        choices=sorted(SHARED_LIMIT),
        help="compute capabilities to compile for (90: H100/H200, 80: A100)",
    )
    ap.add_argument("--json", type=Path, default=None, help="write every compile here")
    args = ap.parse_args(argv)
    if interpreter_enabled():
        print(INTERPRETING, file=sys.stderr)
        return 2
    import triton

    started = time.perf_counter()
    records = [r for arch in args.arch for r in compile_all(arch)]
    print(table(records))
    failed = [r for r in records if r.problems()]
    spills = [r for r in records if r.local]
    print(
        f"\n{len(records)} launches compiled for sm_{', sm_'.join(map(str, args.arch))} with "
        f"Triton {triton.__version__} in {time.perf_counter() - started:.0f} s; "
        f"failed: {len(failed)}; with spills: {len(spills)}"
    )
    for r in failed:
        print(f"FAILED {r.launch}: {r.kernel}: {'; '.join(r.problems())}")
    if args.json:
        args.json.write_text(json.dumps([asdict(r) for r in records], indent=1))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
