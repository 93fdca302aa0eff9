"""A dispatch mode that records the aten ops which make the host wait for the device."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode


class HostSyncRecorder(TorchDispatchMode):
    """Records the aten ops that make the host wait for the device (on CPU as on CUDA)."""

    SYNC_OPS = {
        torch.ops.aten._local_scalar_dense.default,  # .item(), bool(t), int(t), .tolist()
        torch.ops.aten.nonzero.default,  # boolean-mask indexing, .nonzero()
        torch.ops.aten.masked_select.default,
        torch.ops.aten._unique2.default,
    }

    def __init__(self):
        super().__init__()
        self.syncs: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in self.SYNC_OPS:
            self.syncs.append(str(func))
        return func(*args, **(kwargs or {}))
