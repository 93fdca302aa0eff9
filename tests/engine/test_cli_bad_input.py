"""`moe-spec demo` and `generate`: bad values are refused before any work, naming the flag."""

from __future__ import annotations

import pytest

from moe_spec.cli import main
from moe_spec.engine.checkpoint import save_checkpoint


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory, tiny_checkpoint):
    path = tmp_path_factory.mktemp("ckpt")
    c = tiny_checkpoint
    save_checkpoint(path, c.target, c.draft, c.tokenizer, {"note": "tiny"})
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--budgets", "3,3"], "--budgets names 3 more than once"),
        (["--policies", "router-mass,router-mass"], "--policies names router-mass more than once"),
        (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
        (["--max-new-tokens", "-4"], "--max-new-tokens must be >= 1, got -4"),
    ],
)
def test_demo_refuses_before_running(tiny_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "demo"
    assert main(["demo", "--checkpoint", str(tiny_dir), "--out", str(out), *extra]) == 2
    captured = capsys.readouterr()
    assert message in captured.err
    assert "ran " not in captured.err  # nothing ran


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_demo_and_ab_refuse_an_output_path_that_cannot_be_a_folder(
    tiny_dir, tmp_path, capsys, where
):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    out = a_file if where == "file" else a_file / "nested" / "out"
    for command in (["demo"], ["ab", "--num-prompts", "1", "--no-progress"]):
        assert main([*command, "--checkpoint", str(tiny_dir), "--out", str(out)]) == 2
        err = capsys.readouterr().err
        assert f"--out {str(out)!r}" in err, err
        assert "Traceback" not in err
    assert a_file.read_text() == "not a folder"


GENERATE_ERRORS = [
    (["--policy", "router-mass"], "--policy router-mass needs --budget B"),
    (["--budget", "4"], "--budget 4 has no effect with --policy none"),
    (["--mode", "truncation"], "--mode truncation has no effect with --policy none"),
    (["--max-new-tokens", "0"], "--max-new-tokens must be >= 1, got 0"),
    (["--temperature", "1e-300"], "--temperature is 1e-300; allowed: 0 (greedy) or a finite"),
    (["--temperature", "nan"], "--temperature is nan"),
    (["--temperature", "-1"], "--temperature is -1.0"),
    (["--seed", str(10**23)], f"--seed is {10**23}; allowed: 0 <= seed < 2**63"),
    (["--seed", "-1"], "--seed is -1"),
]


@pytest.mark.parametrize(("extra", "message"), GENERATE_ERRORS)
def test_generate_refuses_bad_values_naming_the_flag(tiny_dir, capsys, extra, message):
    args = ["generate", "def f(x):", "--checkpoint", str(tiny_dir), "--max-new-tokens", "4"]
    assert main([*args, *extra]) == 2
    assert message in capsys.readouterr().err
