"""bench/learn_smollm2_moe.py draft: which files each extra features cache holds."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest
import torch


def parts(learn, *argv: str):
    return learn.extra_parts(learn.parser().parse_args(["draft", "--files", "600", *argv]))


def test_extra_caches_hold_consecutive_files_after_the_first(learn):
    got = parts(learn, "--extra-files", "600", "566", "--extra-cache", "B.pt", "C.pt")
    assert got == [(600, 600, Path("B.pt")), (1200, 566, Path("C.pt"))]
    # the single-value form of before, and extracting without caches
    assert parts(learn, "--extra-files", "600", "--extra-cache", "B.pt") == [
        (600, 600, Path("B.pt"))
    ]
    assert parts(learn, "--extra-files", "10", "20") == [(600, 10, None), (610, 20, None)]
    assert parts(learn) == []


def test_caches_that_do_not_pair_with_the_counts_are_refused(learn):
    with pytest.raises(SystemExit, match=r"names 1 caches for 2 --extra-files counts \[600, 566\]"):
        parts(learn, "--extra-files", "600", "566", "--extra-cache", "B.pt")
    with pytest.raises(SystemExit, match=r"counts must be positive, got \[600, 0\]"):
        parts(learn, "--extra-files", "600", "0")


def test_a_cache_of_other_files_is_refused(learn):
    seqs = [[1, 2, 3], [4, 5]]
    data = [(torch.zeros(n, 4), torch.zeros(n, dtype=torch.long)) for n in (3, 2)]
    learn.check_cache(seqs, data, "ok.pt")  # one feature row per token
    for bad in (data[:1], data[::-1]):
        with pytest.raises(SystemExit, match="cache x.pt does not match its files"):
            learn.check_cache(seqs, bad, "x.pt")


def test_the_warm_start_is_recorded_with_the_run_that_trained_it(learn, tmp_path):
    from moe_spec.models.build import ASSETS, read_spec

    spec = read_spec(ASSETS)
    record = learn.init_record(ASSETS / "eagle", spec)
    weights = (ASSETS / "eagle" / "draft.safetensors").read_bytes()
    assert record["draft_sha256"] == hashlib.sha256(weights).hexdigest()
    assert record["trained_by"]["command"] == spec["draft"]["command"]
    (tmp_path / "draft.safetensors").write_bytes(b"x")
    assert learn.init_record(tmp_path, spec) == {
        "dir": str(tmp_path),
        "draft_sha256": hashlib.sha256(b"x").hexdigest(),
    }  # another head: what trained it is not known here
