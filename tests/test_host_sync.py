"""tests/host_sync.py: what HostSyncRecorder records, and what it must leave alone."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from tests.host_sync import PYTHON_READS, HostSyncRecorder

X = torch.arange(6.0)
MASK = X > 2
IDS = torch.tensor([0, 1, 1, 3])
CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def recorded(fn) -> list[str]:
    with HostSyncRecorder() as recorder:
        fn()
    return recorder.syncs


# (operation, what the record names): every one makes the host wait on a GPU
SYNCS = {
    ".item()": (lambda: X[0].item(), "Tensor.item()"),
    "bool(t)": (lambda: bool(MASK.any()), "Tensor.__bool__()"),
    "if t": (lambda: 1 if MASK.any() else 0, "Tensor.__bool__()"),
    "int(t)": (lambda: int(X[1]), "Tensor.__int__()"),
    "float(t)": (lambda: float(X[1]), "Tensor.__float__()"),
    "complex(t)": (lambda: complex(X[1]), "Tensor.__complex__()"),
    "seq[t]": (lambda: [0, 1, 2][IDS[1]], "Tensor.__index__()"),
    "range(t)": (lambda: range(IDS[3]), "Tensor.__index__()"),
    "t in x": (lambda: 3.0 in X, "Tensor.item()"),
    "f-string of t": (lambda: f"{X[0]:.1f}", "Tensor.item()"),
    ".tolist()": (lambda: X.tolist(), "Tensor.tolist()"),
    ".numpy()": (lambda: X.numpy(), "Tensor.numpy()"),
    "np.asarray(t)": (lambda: np.asarray(X), "Tensor.numpy()"),
    ".cpu()": (lambda: X.cpu(), "Tensor.cpu()"),
    "zeros(t)": (lambda: torch.zeros(IDS[3]), "aten._local_scalar_dense"),
    "is_nonzero": (lambda: torch.is_nonzero(X[1]), "aten._local_scalar_dense"),
    "x[mask]": (lambda: X[MASK], "aten.index.Tensor"),
    "x[:, mask]": (lambda: X.view(1, 6)[:, MASK], "aten.index.Tensor"),
    "x[mask] = values": (lambda: X.clone().__setitem__(MASK, torch.ones(3)), "aten.index_put_"),
    "index_put_ accumulate": (
        lambda: X.clone().index_put_((MASK,), torch.tensor(1.0), accumulate=True),
        "aten.index_put_",
    ),
    "index_put": (lambda: torch.index_put(X, (MASK,), torch.ones(3)), "aten.index_put"),
    ".nonzero()": (lambda: MASK.nonzero(), "aten.nonzero"),
    "where(cond)": (lambda: torch.where(MASK), "aten.nonzero"),
    "argwhere": (lambda: torch.argwhere(MASK), "aten.nonzero"),
    "masked_select": (lambda: X.masked_select(MASK), "aten.masked_select"),
    "equal": (lambda: torch.equal(X, X), "aten.equal"),
    "allclose": (lambda: torch.allclose(X, X), "aten.allclose"),
    "unique": (lambda: torch.unique(IDS), "aten._unique2"),
    "unique dim": (lambda: torch.unique(X.view(2, 3), dim=0), "aten.unique_dim"),
    "unique_consecutive": (lambda: torch.unique_consecutive(IDS), "aten.unique_consecutive"),
    "repeat_interleave(t)": (lambda: torch.repeat_interleave(IDS), "aten.repeat_interleave"),
    "x.repeat_interleave(t)": (lambda: IDS.repeat_interleave(IDS), "aten.repeat_interleave"),
    "bincount": (lambda: torch.bincount(IDS), "aten.bincount"),
}

# what the verify path does all the time: none of it reads a value on the host
SYNC_FREE = {
    "matmul": lambda: X.view(2, 3) @ X.view(3, 2),
    "topk": lambda: X.topk(2),
    "scatter": lambda: torch.zeros(6).scatter(0, IDS, 1.0),
    "scatter_add_": lambda: torch.zeros(6).scatter_add_(0, IDS, torch.ones(4)),
    "where(c, a, b)": lambda: torch.where(MASK, X, 0.0),
    "sum": lambda: X.sum(),
    "max": lambda: X.max(),
    "argsort": lambda: X.argsort(),
    "x[int tensor]": lambda: X[IDS],
    "x[int tensor] = v": lambda: X.clone().__setitem__(IDS, 1.0),
    "index_select": lambda: X.index_select(0, IDS),
    "gather": lambda: X.gather(0, IDS),
    "x[mask] = scalar (masked_fill)": lambda: X.clone().__setitem__(MASK, 0.0),
    "masked_fill": lambda: X.masked_fill(MASK, 0.0),
    "repeat_interleave(t, output_size)": lambda: IDS.repeat_interleave(IDS, output_size=5),
    "repeat_interleave(int)": lambda: IDS.repeat_interleave(2),
    "nonzero_static": lambda: MASK.nonzero_static(size=6),
    "count_nonzero": lambda: MASK.count_nonzero(),
    "isclose": lambda: torch.isclose(X, X),
    "to(dtype)": lambda: X.to(torch.float64),
    "copy_ on the host": lambda: torch.empty(6).copy_(X),
    "shape reads": lambda: (X.shape[0], X.size(0), X.numel(), len(X), X.dim(), X.ndim),
    "clamp, cumsum, softmax": lambda: X.clamp(max=3).cumsum(0).softmax(0),
    "iterate rows": lambda: list(X.view(2, 3)),
}


@pytest.mark.parametrize(("op", "name"), SYNCS.values(), ids=SYNCS.keys())
def test_each_host_sync_is_recorded_once_at_its_call_site(op, name):
    syncs = recorded(op)
    assert len(syncs) == 1, syncs  # a Python read is not recorded again as its aten op
    assert syncs[0].startswith(name), syncs
    assert " at tests/test_host_sync.py:" in syncs[0], syncs  # the lambda, not torch


@pytest.mark.parametrize("op", SYNC_FREE.values(), ids=SYNC_FREE.keys())
def test_sync_free_operations_are_not_recorded(op):
    assert recorded(op) == []


def patched() -> list[str]:
    return [name for name in PYTHON_READS if name in torch.Tensor.__dict__]


def test_tensor_methods_are_restored_on_exit_and_on_error():
    before = {name: getattr(torch.Tensor, name) for name in PYTHON_READS}
    with HostSyncRecorder():
        assert patched() == list(PYTHON_READS)
    assert patched() == []
    with pytest.raises(RuntimeError, match="boom"), HostSyncRecorder():
        raise RuntimeError("boom")
    assert patched() == []
    assert {name: getattr(torch.Tensor, name) for name in PYTHON_READS} == before
    assert X.tolist() == [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    assert recorded(lambda: None) == []


def test_nested_and_reentered_recorders():
    outer, inner = HostSyncRecorder(), HostSyncRecorder()
    with outer:
        X.tolist()
        with inner:
            X[MASK]
        assert patched()  # the outer one is still active
        X.numpy()
    assert [s.split(" at ")[0] for s in outer.syncs] == [
        "Tensor.tolist()",
        "aten.index.Tensor",
        "Tensor.numpy()",
    ]
    assert [s.split(" at ")[0] for s in inner.syncs] == ["aten.index.Tensor"]
    for _ in range(2):  # as the SGLang scenarios wrap each call in the same recorder
        with inner:
            X[0].item()
    assert len(inner.syncs) == 3 and patched() == []


def test_cpu_reads_off_records_only_device_tensors():
    with HostSyncRecorder(cpu_reads=False) as recorder:
        X.tolist(), X[MASK], int(X[1]), torch.unique(IDS)
    assert recorder.syncs == []


def test_reads_by_pytest_and_the_triton_interpreter_are_not_recorded():
    """A read whose nearest caller outside torch is pytest's machinery (an assertion's
    explanation) or that runs under Triton's CPU interpreter is not the code under test's."""
    for filename in ("/env/lib/_pytest/assertion/util.py", "/env/triton/runtime/interpreter.py"):
        code = compile("x.tolist(); x[mask]; int(x[0])", filename, "exec")
        with HostSyncRecorder() as recorder:
            exec(code, {"x": X, "mask": MASK})
        assert recorder.syncs == [], filename
    code = compile("x.tolist()", "/work/elsewhere/module.py", "exec")
    with HostSyncRecorder() as recorder:
        exec(code, {"x": X})
    assert recorder.syncs == ["Tensor.tolist() at /work/elsewhere/module.py:1 (<module>)"]


@CUDA
def test_cuda_device_to_host_copies():
    x = torch.arange(6.0, device="cuda")
    mask = x > 2
    pinned = torch.empty(6, pin_memory=True)
    cases = {
        "tolist": (lambda: x.tolist(), ["Tensor.tolist()"]),
        "to cpu": (lambda: x.to("cpu"), ["aten._to_copy.default"]),
        "copy_ into pageable": (lambda: torch.empty(6).copy_(x), ["aten.copy_.default"]),
        "non_blocking into pageable": (
            lambda: torch.empty(6).copy_(x, non_blocking=True),
            ["aten.copy_.default"],
        ),
        "non_blocking into pinned": (lambda: pinned.copy_(x, non_blocking=True), []),
        "non_blocking to cpu": (lambda: x.to("cpu", non_blocking=True), []),
        "x[mask] = scalar": (lambda: x.clone().__setitem__(mask, 0.0), []),
        "x[mask] = device 0-d": (
            lambda: x.clone().__setitem__(mask, torch.tensor(1.0, device="cuda")),
            ["aten.index_put_.default"],
        ),
        "x[mask]": (lambda: x[mask], ["aten.index.Tensor"]),
    }
    for name, (op, want) in cases.items():
        with HostSyncRecorder(cpu_reads=False) as recorder:
            op()
        assert [s.split(" at ")[0] for s in recorder.syncs] == want, name
    torch.cuda.synchronize()
