"""load_engine: local safetensors checkpoint directories only, with clear errors."""

from __future__ import annotations

import json

import pytest
import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from moe_spec.engine.generate import SpecConfig
from moe_spec.integration.transformers import (
    ModelPathError,
    TransformersEngine,
    UnsupportedModelError,
    load_engine,
)
from moe_spec.integration.transformers.loading import experts_implementation

from .conftest import COMMON, VOCAB, build, tiny_config


def word_tokenizer() -> PreTrainedTokenizerFast:
    """A whitespace word-level tokenizer over ``VOCAB`` words ``w0 .. w95``."""
    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="w0", pad_token="w0")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    root = tmp_path_factory.mktemp("ckpt")
    target = build(tiny_config("qwen3_moe")).to(torch.float32)
    target.save_pretrained(root / "target", safe_serialization=True)
    word_tokenizer().save_pretrained(root / "target")
    from transformers import Qwen3Config  # imports Triton: not at collection (see conftest)

    draft = build(Qwen3Config(**COMMON, head_dim=8, intermediate_size=32), seed=1)
    draft.to(torch.float32).save_pretrained(root / "draft", safe_serialization=True)
    return root


def test_load_engine_from_local_directories(checkpoints):
    engine = load_engine(str(checkpoints / "target"), str(checkpoints / "draft"), device="cpu")
    assert isinstance(engine, TransformersEngine)
    assert engine.target.config.model_type == "qwen3_moe" and engine.n_experts == 8
    prompt = engine.encode("w5 w17 w42 w8")
    assert prompt == [5, 17, 42, 8]
    assert engine.decode(prompt) == "w5 w17 w42 w8"
    result = engine.generate_speculative(prompt, 10, SpecConfig(width=2, depth=3, num_tokens=6))
    assert result.tokens == engine.generate_autoregressive(prompt, 10).tokens
    budgeted = SpecConfig(2, 3, 6, policy="router-mass", budget=3)
    steps = engine.generate_speculative(prompt, 10, budgeted).steps
    assert steps and all(max(s.distinct_after_L) <= 3 for s in steps)


def test_the_experts_implementation_is_a_choice(checkpoints):
    target, draft = str(checkpoints / "target"), str(checkpoints / "draft")
    default = load_engine(target, draft, device="cpu")
    dense = load_engine(target, draft, device="cpu", experts="dense")
    assert dense.target.config._experts_implementation == "dense"
    prompt = default.encode("w5 w17 w42 w8")
    budgeted = SpecConfig(2, 3, 6, policy="router-mass", budget=3)
    want, got = (e.generate_speculative(prompt, 10, budgeted) for e in (default, dense))
    assert got.tokens == want.tokens
    assert [s.distinct_after_L for s in got.steps] == [s.distinct_after_L for s in want.steps]
    with pytest.raises(ValueError, match="'sparse' is not one of eager, grouped_mm, batched_mm"):
        load_engine(target, draft, device="cpu", experts="sparse")


def test_a_bf16_checkpoint_with_narrow_experts_runs_on_a_cpu(tmp_path):
    # transformers' default grouped_mm refuses bf16 experts of 12 neurons (24-byte rows) on
    # a CPU ("strides should be multiple of 16 bytes"); smollm2-moe's are such experts.
    config = tiny_config("qwen2_moe")
    config.moe_intermediate_size = 12
    build(config).to(torch.bfloat16).save_pretrained(tmp_path / "t", safe_serialization=True)
    word_tokenizer().save_pretrained(tmp_path / "t")
    assert experts_implementation(config, "cpu", torch.bfloat16) == "batched_mm"
    assert experts_implementation(config, "cpu", torch.float32) is None
    assert experts_implementation(config, "cuda", torch.bfloat16) is None
    path = str(tmp_path / "t")
    engine = load_engine(path, path, device="cpu", dtype="auto")  # the checkpoint's bf16
    assert engine.target.dtype == torch.bfloat16
    assert engine.target.config._experts_implementation == "batched_mm"
    prompt = engine.encode("w5 w17 w42 w8")
    assert len(engine.generate_autoregressive(prompt, 4).tokens) == 4


def test_paths_that_are_not_model_directories(checkpoints, tmp_path):
    draft = str(checkpoints / "draft")
    with pytest.raises(ModelPathError, match="not a local model directory"):
        load_engine("Qwen/Qwen3-30B-A3B", draft)  # a hub id is never downloaded
    a_file = tmp_path / "model.safetensors"
    a_file.write_bytes(b"")
    with pytest.raises(ModelPathError, match="not a local model directory"):
        load_engine(str(a_file), draft)
    with pytest.raises(ModelPathError, match="no config.json"):
        load_engine(str(tmp_path), draft)
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "qwen3_moe"}))
    a_file.unlink()
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(ModelPathError, match="no \\*.safetensors"):
        load_engine(str(tmp_path), draft)


@pytest.mark.parametrize(
    ("option", "message"),
    [
        ({"device": "mps"}, r"device is 'mps'; allowed: 'cpu', 'cuda' or 'cuda:N'"),
        ({"device": "gpu"}, r"device is 'gpu'; allowed"),
        ({"dtype": "bf16"}, r"dtype is 'bf16'; allowed: 'auto', a torch.dtype, or a name"),
        ({"max_len": 0}, r"max_len is 0; allowed: None \(the model's\) or an int >= 2"),
    ],
)
def test_bad_device_dtype_and_length_are_refused_before_any_weight(
    checkpoints, monkeypatch, option, message
):
    from moe_spec.integration.transformers import loading

    def no_weights(*_args, **_kwargs):
        raise AssertionError("weights were read before the options were checked")

    monkeypatch.setattr(loading, "load_causal_lm", no_weights)
    with pytest.raises(ValueError, match=message):
        load_engine(str(checkpoints / "target"), str(checkpoints / "draft"), **option)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match=r"device is 'cuda', but torch sees no CUDA GPU"):
            load_engine(str(checkpoints / "target"), str(checkpoints / "draft"), device="cuda")


def test_a_draft_of_a_larger_vocabulary_is_refused_before_any_weight(
    checkpoints, tmp_path, monkeypatch
):
    import shutil

    from moe_spec.integration.transformers import loading

    draft = tmp_path / "draft"
    shutil.copytree(checkpoints / "draft", draft)
    config = json.loads((draft / "config.json").read_text())
    config["vocab_size"] += 1
    (draft / "config.json").write_text(json.dumps(config))

    def no_weights(*_args, **_kwargs):
        raise AssertionError("weights were read before the draft's vocabulary was checked")

    monkeypatch.setattr(loading, "load_causal_lm", no_weights)
    with pytest.raises(ValueError, match=r"draft vocab_size=\d+ exceeds the target's \d+: the"):
        load_engine(str(checkpoints / "target"), str(draft), device="cpu")


def test_a_target_without_a_tokenizer_is_refused(checkpoints, tmp_path):
    """transformers builds an empty tokenizer when none is there: every prompt encodes to
    nothing, and the first generate fails far from the cause."""
    import shutil

    target = tmp_path / "target"
    shutil.copytree(checkpoints / "target", target)
    for path in target.glob("tokenizer*"):
        path.unlink()
    with pytest.raises(ModelPathError, match=r"target directory .* has no usable tokenizer"):
        load_engine(str(target), str(checkpoints / "draft"), device="cpu")


def test_a_damaged_weight_file_names_its_directory(checkpoints, tmp_path):
    import shutil

    target = tmp_path / "target"
    shutil.copytree(checkpoints / "target", target)
    weights = next(target.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])  # cut short, as by a full disk
    with pytest.raises(ModelPathError, match=rf"{target}: a weight file is damaged"):
        load_engine(str(target), str(checkpoints / "draft"), device="cpu")


def test_unsupported_target_lists_supported_types(checkpoints):
    draft = str(checkpoints / "draft")
    with pytest.raises(UnsupportedModelError, match="qwen3_moe") as err:
        load_engine(draft, draft)  # a dense model as the target
    assert "'qwen3'" in str(err.value) and "mixtral" in str(err.value)


def test_moe_spec_ab_runs_on_local_transformers_checkpoints(checkpoints, tmp_path, capsys):
    from moe_spec.cli import main

    prompts = tmp_path / "p.txt"
    prompts.write_text("w5 w17 w42 w8\nw60 w3 w77\n")
    out = tmp_path / "out"
    args = ["ab", "--target", str(checkpoints / "target"), "--draft", str(checkpoints / "draft")]
    args += ["--prompts", str(prompts), "--out", str(out), "--no-progress"]
    args += ["--config", "autoregressive", "--config", "router-mass:B=3", "--config", "none"]
    args += ["--num-tokens", "6", "--width", "2", "--depth", "3", "--max-new-tokens", "8"]
    assert main(args) == 0
    rows = {c["label"]: c for c in json.loads((out / "results.json").read_text())["configs"]}
    none, budgeted = rows["none tree=6/2/3"], rows["router-mass B=3 tree=6/2/3"]
    assert none["metrics"]["agreement"] == 1.0  # lossless against autoregressive
    assert budgeted["distinct_after"]["p99"] <= 3 < none["distinct_before"]["p99"]
    assert "router-mass B=3" in capsys.readouterr().out


def test_float64_checkpoints_load_and_generate_with_an_moe_draft_too(tmp_path):
    """transformers' default grouped_mm has no double kernel: a float64 target, or an MoE
    draft, crashed in its first forward ("Expected mat_a to be Float32 ..."), though the
    docs test exactness in float64."""
    model = build(tiny_config("qwen3_moe"))  # float64
    model.save_pretrained(tmp_path / "t", safe_serialization=True)
    word_tokenizer().save_pretrained(tmp_path / "t")
    assert experts_implementation(model.config, "cpu", torch.float64) == "eager"
    assert experts_implementation(model.config, "cuda", "float64") == "eager"
    for dtype in ("auto", torch.float64):
        engine = load_engine(str(tmp_path / "t"), str(tmp_path / "t"), device="cpu", dtype=dtype)
        assert engine.target.dtype == torch.float64
        prompt = engine.encode("w5 w17 w42 w8")
        spec = SpecConfig(2, 3, 6, policy="router-mass", budget=3, repair=True)
        result = engine.generate_speculative(prompt, 8, spec)
        assert result.tokens == engine.generate_autoregressive(prompt, 8).tokens


def test_a_draft_with_a_smaller_vocabulary_reads_ids_past_it():
    """The docs allow a smaller draft vocabulary; a committed id past it crashed the draft's
    embedding (IndexError). The draft now reads such an id as its last one; the output is
    still the target's own."""
    from transformers import Qwen3Config

    target = build(tiny_config("qwen3_moe"))
    small = {**COMMON, "vocab_size": VOCAB // 2}
    draft = build(Qwen3Config(**small, head_dim=8, intermediate_size=32), seed=1)
    engine = TransformersEngine(target, draft, word_tokenizer())
    prompt = [5, 17, 90, 8, 63, 29]  # 90 and 63 are past the draft's 48 ids
    expected = engine.generate_autoregressive(prompt, 12).tokens
    for spec in (SpecConfig(2, 3, 6), SpecConfig(2, 3, 6, policy="router-mass", budget=3,
                                                 repair=True)):  # fmt: skip
        assert engine.generate_speculative(prompt, 12, spec).tokens == expected


def test_a_cpu_engine_defaults_to_float32_and_auto_keeps_the_checkpoints(tmp_path):
    """bf16 on a CPU is slow and flips near-tied greedy choices (repair then leaves the
    unbudgeted output): the README's load_engine(..., device="cpu") loaded bf16 while the
    CLI used float32. Both use float32 now; dtype="auto" still means the checkpoint's."""
    build(tiny_config("qwen3_moe")).to(torch.bfloat16).save_pretrained(
        tmp_path / "t", safe_serialization=True
    )
    word_tokenizer().save_pretrained(tmp_path / "t")
    path = str(tmp_path / "t")
    assert load_engine(path, path, device="cpu").target.dtype == torch.float32
    assert load_engine(path, path, device="cpu", dtype="auto").target.dtype == torch.bfloat16
