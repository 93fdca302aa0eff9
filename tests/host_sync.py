"""A recorder of the operations that make the host wait for the device (host syncs).

CUDA-graph capture and the verify hot path need code that never reads a device value into
Python: such a read blocks the host until the GPU has finished, and is refused inside a
captured graph. :class:`HostSyncRecorder` is a context manager that records those operations
while it is active, each with its call site, so a test can assert ``recorder.syncs == []``.

It catches two kinds of operation:

* **Aten ops** (through a ``TorchDispatchMode``), on CPU and CUDA tensors alike:

  - ``_local_scalar_dense`` / ``item``: ``.item()``, ``bool(t)`` (``if t:``, ``t in x``,
    ``and``/``or``/``not`` on a tensor), ``int(t)``, ``float(t)``, ``f"{t:.2f}"``, a 0-d
    tensor passed where an op takes an int (``torch.zeros(t)``);
  - ``nonzero`` (``.nonzero()``, ``torch.where(cond)``, ``argwhere``), ``masked_select``;
  - ``index`` with a boolean (or uint8) index: ``x[mask]``, ``x[:, mask]``;
  - ``index_put_`` / ``index_put`` / ``_index_put_impl_`` with a boolean index, except the
    form ATen turns into ``masked_fill_`` without a sync (one mask, a one-element value on
    the host, no ``accumulate``: ``x[mask] = 0.0``); ``x[mask] = values`` is recorded;
  - ``equal``, ``allclose``, ``is_nonzero``;
  - ``_unique`` / ``_unique2`` / ``unique_dim`` / ``unique_consecutive`` /
    ``unique_dim_consecutive`` (every ``torch.unique`` / ``unique_consecutive``);
  - ``repeat_interleave`` with a tensor of repeats and no ``output_size``;
  - ``bincount``;
  - ``_to_copy`` / ``copy_`` from a non-CPU tensor into CPU memory, blocking: on CUDA
    ``.to("cpu")`` and ``host_buffer.copy_(t)`` (``.tolist()`` and ``.cpu()`` run these too,
    recorded as the Python call below); ``.to("cpu", non_blocking=True)`` (which pins its
    output) and a ``non_blocking`` ``copy_`` into pinned memory are not recorded.

* **Python-level Tensor methods**, patched on ``torch.Tensor`` while a recorder is active
  (restored on exit, also when the block raises): ``tolist``, ``numpy`` (and so
  ``np.asarray(t)``), ``item``, ``__bool__``, ``__int__``, ``__float__``, ``__complex__``,
  ``__index__`` (``range(t)``, ``seq[t]``), ``cpu``. On a CPU tensor ``.tolist()``,
  ``.numpy()`` and ``.cpu()`` reach no aten op at all, so without the patch a CPU test could
  not see them. One Python-level call is one record: the aten ops it runs (the
  ``_local_scalar_dense`` under ``.item()``) are not recorded again.

Both kinds are recorded whatever the tensor's device: on a CPU test every tensor stands for
the device tensor it would be on a GPU, and the recorder's purpose is to flag code that would
sync there. A test on CUDA that reads host copies on purpose passes ``cpu_reads=False``: then
only operations on a non-CPU tensor are recorded.

Each record reads ``"<op> at <file>:<line> (<function>)"``: the nearest frame that is not
inside torch or this module (so a sync inside ``torch.functional.unique`` or
``torch/_tensor.py`` is charged to the code that called it). Calls made from pytest's own
machinery (assertion rewriting's explanations, reprs) and anything run under Triton's CPU
interpreter (its host work emulates a GPU kernel, which reads nothing on the host) are not
recorded. Only the thread that entered the recorder is recorded.

What it cannot catch:

* a sync inside a C++ op that is not in the lists above, e.g. one that reads a size or a
  value off the device internally (the error checks of ``torch.linalg`` ops other than the
  ``*_ex`` ones, data-dependent output sizes inside custom C++/CUDA extensions such as
  SGLang's kernels), and syncs the CUDA runtime makes by itself (``cudaMemcpy`` into
  pageable memory from an extension, ``torch.cuda.synchronize()``, ``Event.synchronize()``);
  on CUDA ``torch.cuda.set_sync_debug_mode("error")`` sees most of these;
* on CPU, ``.to("cpu")`` / ``.to(x.device)`` / ``copy_`` of a CPU tensor (no copy happens,
  and the recorder cannot tell a host copy meant to be on the host from a stand-in for a
  device tensor), and ``x[mask] = t`` with a one-element ``t`` that would be a *device*
  tensor on a GPU (it syncs there; on CPU it is indistinguishable from ``x[mask] = 0.0``);
* reads made by Python code that reaches the data without these methods
  (``memoryview``/``ctypes`` on ``data_ptr()``), and ops run by a different thread.
"""

from __future__ import annotations

import os
import sys
import threading

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

aten = torch.ops.aten

_THIS_FILE = os.path.abspath(__file__)
_TORCH_DIR = os.path.dirname(os.path.abspath(torch.__file__)) + os.sep
_REPO_ROOT = os.path.dirname(os.path.dirname(_THIS_FILE)) + os.sep
#: Callers whose host reads are not the code under test's (see the module docstring).
_IGNORED_CALLERS = (f"{os.sep}_pytest{os.sep}", f"{os.sep}pluggy{os.sep}")
_TRITON_INTERPRETER = os.path.join("triton", "runtime", "interpreter.py")
_SITE_PACKAGES = "site-packages" + os.sep

#: Python-level Tensor methods that read a tensor's value on the host.
PYTHON_READS = (
    "tolist",
    "numpy",
    "item",
    "__bool__",
    "__int__",
    "__float__",
    "__complex__",
    "__index__",
    "cpu",
)

_MISSING = object()
_state = threading.local()  # .depth: nesting of patched Python-level calls on this thread
_active: list[HostSyncRecorder] = []  # recorders entered and not yet exited (any thread)
_saved: dict[str, object] = {}  # what the patches replaced on torch.Tensor
_lock = threading.Lock()


def _site() -> str | None:
    """The caller charged with a sync, ``file:line (function)``: the nearest frame outside
    torch and this module. None for a caller whose reads are not the code under test's."""
    frame = sys._getframe(1)
    while frame is not None:
        filename = frame.f_code.co_filename
        if filename != _THIS_FILE and not filename.startswith(_TORCH_DIR):
            break
        frame = frame.f_back
    if frame is None:
        return "<unknown>"
    if any(part in filename for part in _IGNORED_CALLERS) or _under_triton_interpreter(frame):
        return None
    if filename.startswith(_REPO_ROOT):
        shown = filename[len(_REPO_ROOT) :]
    elif _SITE_PACKAGES in filename:
        shown = filename.split(_SITE_PACKAGES, 1)[1]
    else:
        shown = filename
    return f"{shown}:{frame.f_lineno} ({frame.f_code.co_name})"


def _under_triton_interpreter(frame) -> bool:
    """Whether Triton's CPU interpreter runs this: its host copies emulate the GPU kernel."""
    while frame is not None:
        if frame.f_code.co_filename.endswith(_TRITON_INTERPRETER):
            return True
        frame = frame.f_back
    return False


def _depth() -> int:
    return getattr(_state, "depth", 0)


def _patched(name: str, original):
    def read(self, *args, **kwargs):
        if _depth() == 0 and _active:
            recorders = [
                r
                for r in dict.fromkeys(_active)
                if r._thread == threading.get_ident() and (r.cpu_reads or self.device.type != "cpu")
            ]
            if recorders:
                site = _site()
                if site is not None:
                    for recorder in recorders:
                        recorder.syncs.append(f"Tensor.{name}() at {site}")
        _state.depth = _depth() + 1
        try:
            return original(self, *args, **kwargs)
        finally:
            _state.depth -= 1

    read.__name__ = getattr(original, "__name__", name)
    read.__qualname__ = f"Tensor.{name}"
    read.__doc__ = getattr(original, "__doc__", None)
    return read


def _install(recorder: HostSyncRecorder) -> None:
    with _lock:
        if not _active:
            for name in PYTHON_READS:
                _saved[name] = torch.Tensor.__dict__.get(name, _MISSING)
                setattr(torch.Tensor, name, _patched(name, getattr(torch.Tensor, name)))
        _active.append(recorder)


def _uninstall(recorder: HostSyncRecorder) -> None:
    with _lock:
        # the last entry of this recorder: `with r:` nested in `with r:` exits inner first
        for i in range(len(_active) - 1, -1, -1):
            if _active[i] is recorder:
                del _active[i]
                break
        if not _active:
            for name, saved in _saved.items():
                if saved is _MISSING:
                    delattr(torch.Tensor, name)  # inherited from torch._C.TensorBase again
                else:
                    setattr(torch.Tensor, name, saved)
            _saved.clear()


_BOOL_INDEX_DTYPES = (torch.bool, torch.uint8)


def _bool_indices(indices) -> list[torch.Tensor]:
    return [i for i in indices if isinstance(i, torch.Tensor) and i.dtype in _BOOL_INDEX_DTYPES]


def _index_put_syncs(func, args, kwargs) -> bool:
    """Whether this index_put syncs: a bool index ATen cannot turn into ``masked_fill_``."""
    self, indices, value = args[0], args[1], args[2]
    accumulate = args[3] if len(args) > 3 else kwargs.get("accumulate", False)
    if not _bool_indices(indices):
        return False
    defined = [i for i in indices if i is not None]
    # ATen's canDispatchToMaskedFill (TensorAdvancedIndexing): sync-free masked_fill_
    masked_fill = (
        not accumulate
        and len(defined) == 1
        and defined[0].device == self.device
        and isinstance(value, torch.Tensor)
        and value.numel() == 1
        and value.device.type == "cpu"
    )
    return not masked_fill


def _device_to_host(src, dst_device) -> bool:
    return (
        isinstance(src, torch.Tensor)
        and src.device.type not in ("cpu", "meta")
        and torch.device(dst_device).type == "cpu"
    )


def _to_copy_syncs(func, args, kwargs) -> bool:
    """``.to("cpu")``/``.cpu()``/``.tolist()`` of a device tensor; a non_blocking one pins its
    output and does not wait."""
    device = kwargs.get("device")
    return (
        device is not None
        and _device_to_host(args[0], device)
        and not kwargs.get("non_blocking", False)
    )


def _copy_syncs(func, args, kwargs) -> bool:
    """``dst.copy_(src)`` from a device tensor into CPU memory; a non_blocking copy waits too
    unless ``dst`` is pinned (a copy into pageable memory is synchronous)."""
    dst, src = args[0], args[1]
    non_blocking = args[2] if len(args) > 2 else kwargs.get("non_blocking", False)
    return _device_to_host(src, dst.device) and not (non_blocking and dst.is_pinned())


def _index_syncs(func, args, kwargs) -> bool:
    return bool(_bool_indices(args[1]))  # x[mask]: ATen runs nonzero on the mask


def _repeat_interleave_syncs(func, args, kwargs) -> bool:
    """A tensor of repeats sizes the output from its sum, unless output_size is given."""
    return func._overloadname in ("Tensor", "self_Tensor") and kwargs.get("output_size") is None


def _on_device(args, kwargs) -> bool:
    """Whether any tensor argument lives off the host."""
    return any(
        isinstance(leaf, torch.Tensor) and leaf.device.type != "cpu"
        for leaf in tree_leaves((args, kwargs))
    )


class HostSyncRecorder(TorchDispatchMode):
    """Records the operations that make the host wait for the device (see the module)."""

    #: Aten op packets (every overload) that always read a device value on the host.
    SYNC_OPS = {
        aten._local_scalar_dense,  # .item(), bool(t), int(t), float(t)
        aten.item,
        aten.is_nonzero,
        aten.nonzero,  # .nonzero(), torch.where(cond), argwhere
        aten.masked_select,
        aten.equal,
        aten.allclose,
        aten._unique,
        aten._unique2,
        aten.unique_dim,
        aten.unique_consecutive,
        aten.unique_dim_consecutive,
        aten.bincount,
    }
    #: Aten op packets that sync for some arguments: the rule that decides.
    SYNC_IF = {
        aten.index: _index_syncs,
        aten.index_put_: _index_put_syncs,
        aten.index_put: _index_put_syncs,
        aten._index_put_impl_: _index_put_syncs,
        aten.repeat_interleave: _repeat_interleave_syncs,
        aten._to_copy: _to_copy_syncs,
        aten.copy_: _copy_syncs,
        aten.copy: _copy_syncs,
    }

    def __init__(self, cpu_reads: bool = True):
        super().__init__()
        self.syncs: list[str] = []
        #: record syncs on CPU tensors too (off: only where a tensor involved is off the host)
        self.cpu_reads = cpu_reads
        self._thread: int | None = None

    def __enter__(self):
        self._thread = threading.get_ident()
        _install(self)
        try:
            return super().__enter__()
        except BaseException:
            _uninstall(self)
            raise

    def __exit__(self, exc_type, exc_value, traceback):
        try:
            return super().__exit__(exc_type, exc_value, traceback)
        finally:
            _uninstall(self)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if _depth() == 0:
            packet = func.overloadpacket
            rule = self.SYNC_IF.get(packet)
            if (packet in self.SYNC_OPS or (rule is not None and rule(func, args, kwargs))) and (
                self.cpu_reads or _on_device(args, kwargs)
            ):
                site = _site()
                if site is not None:
                    self.syncs.append(f"{func} at {site}")
        return func(*args, **kwargs)
