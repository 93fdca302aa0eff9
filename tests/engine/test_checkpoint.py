"""Checkpoints round-trip through safetensors; damaged ones are refused by name."""

from __future__ import annotations

import json
import pickle
import shutil

import pytest
import torch

from moe_spec.engine.checkpoint import load_checkpoint, save_checkpoint


@pytest.fixture
def saved(tmp_path, tiny_checkpoint):
    path = tmp_path / "ckpt"
    save_checkpoint(
        path,
        tiny_checkpoint.target,
        tiny_checkpoint.draft,
        tiny_checkpoint.tokenizer,
        {"note": "test"},
    )
    return path


def test_round_trip_gives_the_bf16_rounded_model(saved, tiny_checkpoint):
    loaded = load_checkpoint(saved)
    tokens = torch.tensor([[5, 17, 42, 8]])
    rounded = {
        k: v.to(torch.bfloat16).float() for k, v in tiny_checkpoint.target.state_dict().items()
    }
    for name, tensor in loaded.target.state_dict().items():
        assert torch.equal(tensor, rounded[name]), name
    assert loaded.target(tokens).logits_BQV.shape == (1, 4, 300)
    assert loaded.tokenizer.get_vocab_size() == 300
    assert not any(p.requires_grad for p in loaded.target.parameters())


class Exploit:
    def __reduce__(self):
        import os

        return (os.system, ("touch pwned-by-pickle",))


def test_damaged_checkpoints_are_refused_by_name(saved, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match=r"is not a directory"):
        load_checkpoint(tmp_path / "nowhere")

    target = saved / "target.safetensors"
    good = target.read_bytes()
    target.write_bytes(good[: len(good) // 2])
    with pytest.raises(ValueError, match=r"target.safetensors is missing or not a readable"):
        load_checkpoint(saved)

    target.write_bytes(pickle.dumps(Exploit()))
    with pytest.raises(ValueError, match=r"target.safetensors is missing or not a readable"):
        load_checkpoint(saved)
    assert not (tmp_path / "pwned-by-pickle").exists()
    target.write_bytes(good)

    config = json.loads((saved / "config.json").read_text())
    bad = dict(config, model=dict(config["model"], dim=64), draft=dict(config["draft"], dim=64))
    (saved / "config.json").write_text(json.dumps(bad))
    with pytest.raises(
        ValueError,
        match=r"tensor 'embed.weight' has shape \(300, 32\); the config needs \(300, 64\)",
    ):
        load_checkpoint(saved)
    bad = dict(config, model=dict(config["model"], experts=4))
    (saved / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"config.json 'model': unknown keys \['experts'\]"):
        load_checkpoint(saved)
    bad = dict(config, model=dict(config["model"], top_k=9))
    (saved / "config.json").write_text(json.dumps(bad))
    with pytest.raises(ValueError, match=r"top_k=9 must be <= n_experts=8"):
        load_checkpoint(saved)
    (saved / "config.json").write_text("{not json")
    with pytest.raises(ValueError, match=r"config.json is missing or not valid JSON"):
        load_checkpoint(saved)
    (saved / "config.json").write_text(json.dumps(dict(config, format="other/9")))
    with pytest.raises(ValueError, match=r"has format 'other/9'; expected 'moe-spec-checkpoint/1'"):
        load_checkpoint(saved)
    (saved / "config.json").write_text(json.dumps(config))

    (saved / "tokenizer.json").write_text("{}")
    with pytest.raises(ValueError, match=r"tokenizer.json is missing or malformed"):
        load_checkpoint(saved)


def test_missing_tensor_is_named(saved, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(saved / "draft.safetensors"))
    tensors.pop("fc.weight")
    save_file(tensors, str(saved / "draft.safetensors"))
    with pytest.raises(
        ValueError, match=r"draft.safetensors does not match the config: missing \['fc.weight'\]"
    ):
        load_checkpoint(saved)


def test_nan_weights_are_refused(saved):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(saved / "target.safetensors"))
    tensors["norm.weight"][0] = float("nan")
    save_file(tensors, str(saved / "target.safetensors"))
    with pytest.raises(ValueError, match=r"tensor 'norm.weight' has NaN or inf values"):
        load_checkpoint(saved)
    shutil.rmtree(saved)


@pytest.mark.parametrize("dtype", [torch.int8, torch.uint8, torch.int32])
def test_integer_weights_are_refused(saved, dtype):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(saved / "draft.safetensors"))
    tensors["fc.weight"] = (tensors["fc.weight"].float() * 100).to(dtype)
    save_file(tensors, str(saved / "draft.safetensors"))
    with pytest.raises(ValueError, match=rf"tensor .fc.weight. is {dtype}; weights must be float"):
        load_checkpoint(saved)
