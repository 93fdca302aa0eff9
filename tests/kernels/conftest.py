"""Kernel tests run Triton's interpreter on CPU: switch it on before Triton is imported.

Triton reads ``TRITON_INTERPRET`` when a ``@triton.jit`` function is defined,
and ``moe_spec.kernels`` defines its Triton kernels only on first use, so
setting it here (pytest imports this file before any test module of this
folder) works in a whole-suite run too.
"""

from __future__ import annotations

import os

os.environ.setdefault("TRITON_INTERPRET", "1")
