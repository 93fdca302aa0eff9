"""Which implementation a kernel call runs: Triton on CUDA, torch elsewhere.

``MOE_SPEC_KERNELS=triton|torch`` forces one. Triton needs a CUDA tensor or
Triton's interpreter (``TRITON_INTERPRET=1``, set before Triton is first
imported); forcing it without either is an error that says so.
"""

from __future__ import annotations

import importlib.util
import os

import torch

KERNELS_ENV = "MOE_SPEC_KERNELS"
BACKENDS: tuple[str, ...] = ("triton", "torch")


class KernelBackendError(RuntimeError):
    """The requested kernel backend cannot run here."""


def interpreter_enabled() -> bool:
    """Whether Triton's interpreter is switched on (``TRITON_INTERPRET=1``)."""
    return os.environ.get("TRITON_INTERPRET", "0").strip().lower() in ("1", "true", "on", "yes")


def capturing() -> bool:
    """True while a CUDA graph is being captured: no host value may steer the forward then,
    and nothing may read the device."""
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


def triton_available() -> bool:
    return importlib.util.find_spec("triton") is not None


def forced_backend() -> str | None:
    """The backend ``MOE_SPEC_KERNELS`` asks for, or None when unset or empty."""
    value = os.environ.get(KERNELS_ENV, "").strip().lower()
    if not value:
        return None
    if value not in BACKENDS:
        raise KernelBackendError(
            f"{KERNELS_ENV}={value!r}; allowed: {', '.join(BACKENDS)} or unset"
        )
    return value


def choose_backend(device: torch.device) -> str:
    """``"triton"`` or ``"torch"`` for tensors on ``device``; raises if the forced one can't run.

    Unforced on CPU this reads one environment variable and nothing else, so it
    traces cleanly under ``torch.compile``.
    """
    forced = forced_backend()
    if forced == "torch":
        return "torch"
    if forced is None:
        return "triton" if device.type == "cuda" and triton_available() else "torch"
    if not triton_available() or not (device.type == "cuda" or interpreter_enabled()):
        raise KernelBackendError(triton_unavailable_reason(device))
    return "triton"


def triton_unavailable_reason(device: torch.device) -> str:
    if not triton_available():
        return f"{KERNELS_ENV}=triton but Triton is not installed; install triton or unset it"
    return (
        f"{KERNELS_ENV}=triton but the tensors are on {device.type!r}: Triton kernels need a CUDA "
        f"device, or TRITON_INTERPRET=1 (set before Triton is imported) to interpret them on CPU; "
        f"allowed otherwise: {KERNELS_ENV}=torch or unset"
    )
