"""``moe-spec serve``: validation and refusals before anything starts; the launch itself."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

from moe_spec.cli import main
from moe_spec.integration.sglang.compat import (
    check_adaptive_chain,
    check_server_args,
    check_sglang_version,
    check_topk_layer,
)
from moe_spec.integration.sglang.serve import parse_sglang_args

EAGLE3 = ["--speculative-algorithm", "EAGLE3", "--speculative-draft-model-path", "/drafts/e3"]
TREE = ["--speculative-eagle-topk", "8", "--speculative-num-steps", "6",
        "--speculative-num-draft-tokens", "64"]  # fmt: skip


@pytest.fixture
def qwen3_dir(tmp_path):
    config = {"model_type": "qwen3_moe", "num_experts": 128, "num_experts_per_tok": 8}
    (tmp_path / "config.json").write_text(json.dumps(config))
    return str(tmp_path)


def serve(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(["serve", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_dry_run_prints_the_environment_and_the_command(capsys, qwen3_dir, monkeypatch):
    monkeypatch.delenv("SGLANG_PLUGINS", raising=False)
    code, out, err = serve(
        capsys, "--policy", "token-priority", "--budget", "64", "--mode", "truncation",
        "--policy-option", "decay=0.7", "--dry-run", "--",
        "--model-path", qwen3_dir, *EAGLE3, *TREE, "--tp", "4",
    )  # fmt: skip
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[:6] == [
        "MOE_SPEC_BUDGET=64",
        "MOE_SPEC_COUNTERS=1",
        "MOE_SPEC_LOG_INTERVAL=30",
        "MOE_SPEC_MODE=truncation",
        "MOE_SPEC_POLICY=token-priority",
        "MOE_SPEC_POLICY_OPTIONS='{\"decay\": 0.7}'",
    ]
    assert lines[6].split()[1:4] == ["-m", "sglang.launch_server", "--model-path"]
    assert lines[6].endswith("--tp 4")
    # A tree, a local MoE model: nothing to warn about, but that a GPU setup cannot be
    # resolved by SGLang on a machine without one (CI), so it is checked as given.
    assert all("SGLang could not resolve its settings" in w for w in err.splitlines())


def test_allow_list_gets_the_plugin_added(capsys, qwen3_dir, monkeypatch):
    monkeypatch.setenv("SGLANG_PLUGINS", "vendor_plugin")
    code, out, _ = serve(
        capsys, "--policy", "router-mass", "--budget", "32", "--dry-run", "--",
        "--model-path", qwen3_dir, *EAGLE3, *TREE,
    )  # fmt: skip
    assert code == 0
    assert "SGLANG_PLUGINS=vendor_plugin,moe_spec" in out


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--policy", "nope", "--budget", "32"], "unknown policy 'nope'"),
        (["--policy", "token-priority", "--budget", "32", "--policy-option", "decay=7"],
         "decay is 7; allowed: 0 < decay <= 1"),
        (["--policy", "router-mass", "--budget", "4"], "budget B=4 is below top-k=8"),
    ],
)  # fmt: skip
def test_policy_and_budget_are_checked_against_the_model(capsys, qwen3_dir, argv, words):
    code, _, err = serve(capsys, *argv, "--", "--model-path", qwen3_dir, *EAGLE3, *TREE)
    assert code == 2
    assert words in err


def test_refusals_are_listed_together(capsys, qwen3_dir):
    code, _, err = serve(
        capsys, "--policy", "router-mass", "--budget", "32", "--",
        "--model-path", qwen3_dir, "--speculative-algorithm", "NGRAM",
        "--moe-a2a-backend", "deepep", "--moe-runner-backend", "triton_kernel",
        "--enable-eplb", "--enable-torch-compile", "--pp-size", "2",
    )  # fmt: skip
    assert code == 2
    assert "refusing to start SGLang" in err
    for words in ("'NGRAM'; MoE-Spec budgets", "--moe-a2a-backend deepep",
                  "--moe-runner-backend triton_kernel", "EPLB",
                  "--enable-torch-compile", "--pp-size 2: pipeline parallelism"):  # fmt: skip
        assert words in err


def test_a_chain_and_a_remote_model_are_warned_about(capsys):
    code, out, err = serve(
        capsys, "--policy", "router-mass", "--budget", "32", "--dry-run", "--",
        "--model-path", "Qwen/Qwen3-30B-A3B", *EAGLE3,
    )  # fmt: skip
    assert code == 0
    assert "draft is a chain" in err
    assert "not a local directory" in err


def test_dense_or_unreadable_models_are_refused(capsys, tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama"}))
    code, _, err = serve(
        capsys, "--policy", "router-mass", "--budget", "32", "--",
        "--model-path", str(tmp_path), *EAGLE3, *TREE,
    )  # fmt: skip
    assert code == 2 and "Mixture-of-Experts models only" in err
    (tmp_path / "config.json").write_text("{not json")
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "32", "--",
                         "--model-path", str(tmp_path), *EAGLE3)  # fmt: skip
    assert code == 2 and "cannot read" in err


def test_missing_sglang_arguments(capsys):
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "32")
    assert code == 2 and "no SGLang arguments" in err
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "32", "--", "--bogus")
    assert code == 2 and "SGLang rejected its arguments" in err


def test_sglang_version_range():
    assert check_sglang_version("0.5.23").errors == []
    assert check_sglang_version("0.5.30.post1").errors == []
    for version in ("0.5.22", "0.6.0", "1.0"):
        (error,) = check_sglang_version(version).errors
        assert f"sglang {version} is installed" in error and ">=0.5.23,<0.6" in error
    assert "not installed" in check_sglang_version(None).errors[0]


def test_server_args_checks_read_sglangs_own_parser():
    ok = check_server_args(parse_sglang_args(["--model-path", "m", *EAGLE3, *TREE, "--tp", "8"]))
    assert ok.errors == [] and ok.warnings == []
    dp = check_server_args(parse_sglang_args(["--model-path", "m", *EAGLE3, *TREE,
                                              "--attn-dp-size", "2"]))  # fmt: skip
    assert any("DP-attention" in e for e in dp.errors)


def test_a_chain_is_warned_about_unless_autos_guard_chooses_its_depth():
    """On a chain budgeting saves little; with --speculative-adaptive and ``auto`` the chain
    is what the guard is for (README's recipe): no warning there."""
    chain = parse_sglang_args(["--model-path", "m", *EAGLE3, *CHAIN])
    adaptive = parse_sglang_args(["--model-path", "m", *EAGLE3, *CHAIN, "--speculative-adaptive"])
    warned = lambda found: any("the draft is a chain" in w for w in found.warnings)  # noqa: E731
    assert warned(check_server_args(chain)) and warned(check_server_args(chain, True))
    assert warned(check_server_args(adaptive))  # a policy without a guard
    assert not warned(check_server_args(adaptive, guards_chains=True))


def test_topk_layer_checks():
    from types import SimpleNamespace

    cfg = SimpleNamespace(
        output_format=None, fused_gate_packed_ids=False, num_shared_topk_slots=0,
        custom_routing_function=None, use_grouped_topk=True, topk_group=1, num_expert_group=1,
        scoring_func="sigmoid", apply_routed_scaling_factor_on_output=False,
        routed_scaling_factor=2.5, correction_bias=None,
    )  # fmt: skip
    assert check_topk_layer(SimpleNamespace(topk_config=cfg, layer_id=3)).errors == []
    # a selection bias: SGLang scores a grouped top-k by sigmoid whatever scoring_func says
    cfg.correction_bias, cfg.scoring_func = torch.zeros(1, 8), "softmax"
    assert check_topk_layer(SimpleNamespace(topk_config=cfg, layer_id=3)).errors == []
    cfg.use_grouped_topk = False  # a plain softmax router with a bias: refused
    (error,) = check_topk_layer(SimpleNamespace(topk_config=cfg, layer_id=3)).errors
    assert "MoE layer 3: a selection bias (correction_bias) on a softmax router" in error
    cfg.use_grouped_topk, cfg.correction_bias, cfg.scoring_func = True, None, "sigmoid"
    cfg.topk_group, cfg.num_expert_group, cfg.scoring_func = 4, 8, "sqrtsoftplus"
    cfg.apply_routed_scaling_factor_on_output = True
    errors = check_topk_layer(SimpleNamespace(topk_config=cfg, layer_id=3)).errors
    assert len(errors) == 3 and all(e.startswith("MoE layer 3:") for e in errors)


def launcher(server_code: str) -> list[str]:
    """A process that runs ``run_launch`` on a Python server given as source."""
    code = (
        "import sys\n"
        "from moe_spec.integration.sglang.serve import Launch, run_launch\n"
        f"run_launch(Launch([sys.executable, '-c', {server_code!r}], {{'SEEN': 'yes'}}, []))\n"
    )
    return [sys.executable, "-c", code]


def test_launch_becomes_the_server():
    """Same pid, the plugin's environment added, the server's exit status as its own."""
    server = "import os, sys; print(os.getpid(), os.environ['SEEN']); sys.exit(3)"
    proc = subprocess.run(launcher(server), capture_output=True, text=True, timeout=60)
    assert proc.returncode == 3, proc.stderr
    assert proc.stdout.split()[1] == "yes"
    killed = subprocess.run(launcher("import os; os.kill(os.getpid(), 9)"), timeout=60)
    assert killed.returncode == -9  # killed by the signal itself, as a shell would see 137


def test_sigterm_reaches_the_server(tmp_path):
    server = (
        "import os, signal, sys, time\n"
        "signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))\n"
        "print(os.getpid(), flush=True)\n"
        "time.sleep(60)\n"
    )
    proc = subprocess.Popen(launcher(server), stdout=subprocess.PIPE, text=True)
    assert int(proc.stdout.readline()) == proc.pid  # exec: the launcher is the server
    time.sleep(0.2)
    os.kill(proc.pid, signal.SIGTERM)
    assert proc.wait(timeout=30) == 7


def test_readme_serve_command_passes_validation(capsys):
    """The README's full command line for Qwen3-30B-A3B + EAGLE-3 is accepted as written."""
    import re
    import shlex
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[3] / "README.md").read_text()
    section = readme.split("## Serve with SGLang", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, flags=re.S).group(1)
    command = block.split("moe-spec serve", 1)[1].replace("\\\n", " ")
    argv = shlex.split(command, comments=True)
    code, out, err = serve(
        capsys, *argv[: argv.index("--")], "--dry-run", *argv[argv.index("--") :]
    )
    assert code == 0, err
    assert "--speculative-eagle-topk 8" in out
    assert "not a local directory" in err  # /models/... does not exist here


def test_nextn_is_eagle_and_the_megakernel_is_refused():
    nextn = ["--model-path", "m", "--speculative-algorithm", "NEXTN", *TREE]
    assert check_server_args(parse_sglang_args(nextn)).errors == []  # SGLang runs it as EAGLE
    mega = check_server_args(parse_sglang_args([*nextn, "--enable-nvidia-megakernel"]))
    (error,) = mega.errors
    assert "--enable-nvidia-megakernel" in error


def test_a_missing_speculative_algorithm_is_said_so():
    found = check_server_args(parse_sglang_args(["--model-path", "m", *TREE]))
    assert any(e.startswith("--speculative-algorithm not given; ") for e in found.errors)


def test_config_yaml_is_read_as_sglang_reads_it(capsys, qwen3_dir, tmp_path):
    config = tmp_path / "server.yaml"
    config.write_text("speculative-algorithm: NGRAM\nspeculative-eagle-topk: 8\n")
    code, _, err = serve(
        capsys, "--policy", "router-mass", "--budget", "32", "--",
        "--config", str(config), "--model-path", qwen3_dir,
    )  # fmt: skip
    assert code == 2 and "--speculative-algorithm is 'NGRAM'" in err
    missing = str(tmp_path / "missing.yaml")
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "32", "--",
                         "--config", missing, "--model-path", qwen3_dir)  # fmt: skip
    assert code == 2 and "SGLang could not read its --config" in err


def test_a_config_that_is_not_an_object_is_named(capsys, tmp_path):
    (tmp_path / "config.json").write_text("[1, 2]")
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "32", "--dry-run", "--",
                         "--model-path", str(tmp_path), *EAGLE3, *TREE)  # fmt: skip
    assert code == 2 and "holds a JSON list, not an object" in err


def test_a_budget_at_or_above_e_warns_that_budgeting_is_off(capsys, qwen3_dir):
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "128", "--dry-run", "--",
                         "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == 0 and "not below the model's 128 experts" in err and "budgeting is off" in err
    # auto picks each layer's budget below the cap, so a cap of E is not "off"
    code, _, err = serve(capsys, "--policy", "auto", "--budget", "128", "--dry-run", "--",
                         "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == 0 and "budgeting is off" not in err


@pytest.mark.parametrize("option", ["measure", "gate"])
def test_autos_host_side_options_are_refused_not_dropped(capsys, qwen3_dir, option):
    """``Auto.for_server`` turns them off on every rank: asked for, they are refused."""
    code, _, err = serve(capsys, "--policy", "auto", "--budget", "64", "--policy-option",
                         f"{option}=true", "--dry-run", "--", "--model-path", qwen3_dir, *EAGLE3,
                         *TREE)  # fmt: skip
    assert code == 2 and f"{option}=true (auto)" in err and f"leave {option} unset" in err


@pytest.mark.parametrize("value, refused", [("maybe", True), ("1", False), ("0", False)])
def test_the_inherited_off_switch_is_checked_before_sglang_starts(
    capsys, qwen3_dir, monkeypatch, value, refused
):
    """Every rank reads MOE_SPEC_SGLANG_DISABLE only after loading the weights: a typo is
    refused here, and an inherited 1 is said."""
    monkeypatch.setenv("MOE_SPEC_SGLANG_DISABLE", value)
    code, _, err = serve(capsys, "--policy", "token-priority", "--budget", "64", "--dry-run",
                         "--", "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == (2 if refused else 0), err
    assert ("MOE_SPEC_SGLANG_DISABLE='maybe'; allowed: 1, true" in err) is refused
    assert ("MOE_SPEC_SGLANG_DISABLE=1 in this environment" in err) is (value == "1")


def test_sglang_refusing_without_a_message_is_reported(monkeypatch):
    """A bare ``assert`` in SGLang's own checks has no message: the check says so, no crash."""
    from sglang.srt import server_args

    from moe_spec.integration.sglang.serve import resolve_sglang_args

    def refuse(_args):
        raise AssertionError

    monkeypatch.setattr(server_args.ServerArgs, "from_cli_args", staticmethod(refuse))
    args = SimpleNamespace()
    assert resolve_sglang_args(args) == (args, "AssertionError: (no message)")


def test_autos_guard_is_refused_before_sglang_starts(capsys, qwen3_dir):
    code, _, err = serve(capsys, "--policy", "auto", "--budget", "64", "--policy-option",
                         "guard=true", "--", "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == 2 and "guard=true (auto)" in err and "cannot switch to a smaller tree" in err


def test_refused_server_options_come_with_every_other_reason(capsys, qwen3_dir):
    """One refusal lists them all: a server option, a budget below top-k, an SGLang flag."""
    code, _, err = serve(capsys, "--policy", "auto", "--budget", "1", "--policy-option",
                         "measure=true", "--policy-option", "gate=true", "--", "--model-path",
                         qwen3_dir, *EAGLE3, *TREE, "--enable-torch-compile")  # fmt: skip
    assert code == 2
    for reason in ("measure=true (auto)", "gate=true (auto)", "budget B=1 is below top-k",
                   "--enable-torch-compile"):  # fmt: skip
        assert reason in err, (reason, err)


def test_autos_guard_may_be_given_on_an_adaptive_chain(capsys, qwen3_dir):
    """There the guard is what runs: guard=true says so, and is not refused."""
    code, _, err = serve(capsys, "--policy", "auto", "--budget", "64", "--policy-option",
                         "guard=true", "--dry-run", "--", "--model-path", qwen3_dir, *EAGLE3,
                         *CHAIN, "--speculative-adaptive")  # fmt: skip
    assert code == 0, err


CHAIN = ["--speculative-eagle-topk", "1", "--speculative-num-steps", "3",
         "--speculative-num-draft-tokens", "4"]  # fmt: skip


@pytest.mark.parametrize(
    "policy, options, sglang_args, refused",
    [
        ("auto", [], [*CHAIN, "--speculative-adaptive"], False),  # the guard picks the depth
        ("auto", ["guard=false"], [*CHAIN, "--speculative-adaptive"], True),
        ("auto", ["guard=false"], CHAIN, False),
        ("router-mass", [], [*CHAIN, "--speculative-adaptive"], False),  # budgets any verify
        ("auto", ["guard=false"], [*TREE, "--speculative-adaptive"], False),  # SGLang: no tree
    ],
)
def test_auto_without_its_guard_is_refused_on_an_adaptive_chain(
    capsys, qwen3_dir, policy, options, sglang_args, refused
):
    flags = [x for option in options for x in ("--policy-option", option)]
    code, _, err = serve(capsys, "--policy", policy, "--budget", "64", *flags, "--dry-run", "--",
                         "--model-path", qwen3_dir, *EAGLE3, *sglang_args)  # fmt: skip
    assert code == (2 if refused else 0), err
    assert ("guard=false (auto) with --speculative-adaptive" in err) == refused


def test_each_rank_checks_the_adaptive_chain_too():
    # the rank's resolved ServerArgs; arguments SGLang's own check cannot read count as on
    off, on = (SimpleNamespace(speculative_adaptive=v) for v in (False, True))
    assert check_adaptive_chain(off, "auto", {"guard": False}).errors == []
    assert check_adaptive_chain(on, "auto", {}).errors == []
    (error,) = check_adaptive_chain(on, "auto", {"guard": False}).errors
    assert "leave guard unset, or serve without --speculative-adaptive" in error


@pytest.mark.parametrize("value, skips", [("1", True), ("true", True), ("0", False)])
def test_a_depth_0_step_that_skips_the_draft_extend_is_said_to(monkeypatch, value, skips):
    # auto's decodes then skip it except the last of each run (depth.py), priced without it
    monkeypatch.setenv("SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND", value)
    off, on = (SimpleNamespace(speculative_adaptive=v) for v in (False, True))
    assert check_adaptive_chain(off, "auto", {}).warnings == []  # no depth 0 without it
    found = check_adaptive_chain(on, "auto", {})
    assert found.errors == [] and len(found.warnings) == skips
    if skips:
        assert f"SGLANG_SPEC_SKIP_ZERO_STEP_DRAFT_EXTEND={value} with auto" in found.warnings[0]
        assert "except the last of each run" in found.warnings[0]


@pytest.mark.parametrize(
    "argv, words",
    [(["--budget", "0"], "--budget is 0; allowed"), (["--budget", "8", "--log-interval", "-1"],
                                                     "--log-interval is -1; allowed"),
     (["--budget", "8", "--log-interval", "nan"], "--log-interval is nan; allowed")],
)  # fmt: skip
def test_flags_are_named_in_their_errors(capsys, qwen3_dir, argv, words):
    code, _, err = serve(capsys, "--policy", "router-mass", *argv, "--",
                         "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == 2 and words in err and "MOE_SPEC_" not in err


def test_every_bad_policy_option_is_reported(capsys, qwen3_dir):
    code, _, err = serve(
        capsys, "--policy", "draft-path", "--budget", "32", "--policy-option", "decay=7",
        "--policy-option", "order=sideways", "--", "--model-path", qwen3_dir, *EAGLE3, *TREE,
    )  # fmt: skip
    assert code == 2
    assert "decay is 7" in err and "sideways" in err


def test_deepseek_style_routing_is_refused_from_config_json(capsys, tmp_path):
    config = {"model_type": "deepseek_v3", "n_routed_experts": 256, "num_experts_per_tok": 8,
              "n_group": 8, "topk_group": 4, "routed_scaling_factor": 2.5}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "64", "--dry-run", "--",
                         "--model-path", str(tmp_path), *EAGLE3, *TREE)  # fmt: skip
    assert code == 2
    assert "topk_group=4 of n_group=8" in err and "routed_scaling_factor=2.5" in err


def test_sglang_arguments_without_the_separator_get_a_hint(capsys, qwen3_dir):
    code, _, err = serve(capsys, "--policy", "router-mass", "--budget", "32",
                         "--model-path", qwen3_dir, "--tp", "2")  # fmt: skip
    assert code == 2
    assert "SGLang's arguments go after `--`" in err and "--model-path" in err
    assert "did you mean" not in err  # --model-path is SGLang's, not a typo of --mode


def test_a_mistyped_serve_option_is_named_with_a_guess(capsys, qwen3_dir):
    code, _, err = serve(capsys, "--policy", "router-mass", "--budgt", "32", "--dry-run", "--",
                         "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == 2
    assert "serve does not know --budgt (did you mean --budget for --budgt?)" in err
    assert "required" not in err  # not argparse's "the following arguments are required"


def test_missing_policy_or_budget_is_named(capsys, qwen3_dir):
    code, _, err = serve(capsys, "--budget", "32", "--dry-run", "--", "--model-path", qwen3_dir)
    assert code == 2 and "serve needs --policy; usage: moe-spec serve --policy NAME" in err


def test_no_counters_reaches_the_ranks(capsys, qwen3_dir):
    code, out, _ = serve(capsys, "--policy", "router-mass", "--budget", "32", "--no-counters",
                         "--dry-run", "--", "--model-path", qwen3_dir, *EAGLE3, *TREE)  # fmt: skip
    assert code == 0 and "MOE_SPEC_COUNTERS=0" in out.splitlines()


def test_a_layer_budget_table_is_checked_against_config_json(capsys, tmp_path):
    """One budget per MoE layer, counted as SGLang builds them (DeepSeek-style: the first
    ``first_k_dense_replace`` layers dense); refused before SGLang starts, not per pass."""
    config = {"model_type": "deepseek_v2", "n_routed_experts": 64, "num_experts_per_tok": 6,
              "num_hidden_layers": 4, "first_k_dense_replace": 1}  # fmt: skip
    (tmp_path / "config.json").write_text(json.dumps(config))
    argv = ["--policy", "layer-adaptive", "--budget", "16", "--dry-run"]
    code, _, err = serve(capsys, *argv, "--policy-option", "budgets=[8,8]", "--",
                         "--model-path", str(tmp_path), *EAGLE3, *TREE)  # fmt: skip
    assert code == 2
    assert "budgets has 2 entries; the model has 3 MoE layers: give one budget per" in err
    code, _, err = serve(capsys, *argv, "--policy-option", "budgets=[8,8,12]", "--",
                         "--model-path", str(tmp_path), *EAGLE3, *TREE)  # fmt: skip
    assert code == 0, err


@pytest.mark.parametrize(
    "config, layers",
    [
        ({"num_hidden_layers": 48}, 48),  # Qwen3-MoE, OLMoE, Mixtral: every layer
        ({"num_hidden_layers": 48, "mlp_only_layers": [], "decoder_sparse_step": 1}, 48),
        ({"num_hidden_layers": 27, "first_k_dense_replace": 1, "moe_layer_freq": 1}, 26),
        ({"num_hidden_layers": 8, "first_k_dense_replace": 2, "moe_layer_freq": 2}, 3),
        ({"num_hidden_layers": 48, "interleave_moe_layer_step": 2}, None),  # Llama 4
        ({"num_hidden_layers": 28, "moe_layer_start_index": 1}, None),  # ERNIE 4.5
        ({"num_hidden_layers": 48, "mlp_only_layers": [0]}, None),  # SGLang builds all sparse
        ({"num_hidden_layers": 48, "decoder_sparse_step": 2}, None),
        ({}, None),
    ],
)
def test_moe_layer_count_reads_sglangs_layouts_or_says_it_cannot(config, layers):
    from moe_spec.integration.sglang.serve import moe_layer_count

    assert moe_layer_count(config) == layers
