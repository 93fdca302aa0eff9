"""`moe-spec ab --resume` reuses a stored run only if model, code and arm are unchanged."""

from __future__ import annotations

import json
import shutil

import pytest
from safetensors.torch import load_file, save_file

from moe_spec.ab.configs import RunConfig, finalize, parse_config
from moe_spec.ab.provenance import config_sha, model_sha, tree_sha
from moe_spec.ab.records import ResumeError, RunRecord, Store
from moe_spec.ab.runner import run_all
from moe_spec.cli import main
from tests.ab.test_runner_stats import CONFIGS, HEADER, FakeBackend

ARMS = {c.label: config_sha(c) for c in CONFIGS}
FULL = {**HEADER, "model": "m1", "code": "c1", "arms": ARMS, "prompts": 3}


def finished(tmp_path, header=FULL, prompts=("a", "bb", "ccc")):
    run_all(FakeBackend(), CONFIGS, list(prompts), Store(tmp_path, header, False), 7, 4, False)


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("model", "m2", r"another model \(model: stored 'm1', now 'm2'\)"),
        ("code", "c2", r"another moe-spec code \(code: stored 'c1', now 'c2'\)"),
        ("code", "c2", r"resume with the moe-spec that wrote it \(c1\)"),
        ("prompts_sha", "y", r"other prompts .*resume with the prompts it was started with"),
        ("prompts_sha", "y", r"\(3 runs: the same --prompts, --num-prompts and --seeds\)"),
        ("max_new_tokens", 8, r"another --max-new-tokens \(max_new_tokens: stored 4, now 8\)"),
        ("seed", 1, r"another seed \(seed: stored 0, now 1\)"),
    ],
)
def test_a_changed_model_code_or_prompt_set_is_refused_with_a_way_on(tmp_path, key, value, message):
    finished(tmp_path)
    with pytest.raises(ResumeError, match=message + r".*choose another --out or delete"):
        Store(tmp_path, {**FULL, key: value}, resume=True)


def test_a_folder_from_an_older_moe_spec_is_refused(tmp_path):
    finished(tmp_path, HEADER)  # no model/code fingerprints
    with pytest.raises(ResumeError, match="does not record the model .*older moe-spec"):
        Store(tmp_path, FULL, resume=True)


def test_an_arm_whose_configuration_changed_runs_again_and_the_rest_is_reused(tmp_path):
    finished(tmp_path)
    changed = RunConfig("token-priority", 12, label="token-priority B=8")  # same label, new B
    configs = [*CONFIGS[:2], changed]
    header = {**FULL, "arms": {c.label: config_sha(c) for c in configs}}
    store = Store(tmp_path, header, resume=True)
    assert store.stale == {"token-priority B=8": 3}
    assert any("configuration changed since 3 stored runs" in n for n in store.notices())
    again = FakeBackend()
    records = run_all(again, configs, ["a", "bb", "ccc"], store, 7, 4, False)
    assert sorted(again.calls) == [("token-priority B=8", i, 7 + i) for i in range(3)]
    assert len(records) == 9
    reloaded = Store(tmp_path, header, resume=True)  # what a later resume sees
    assert reloaded.stale == {"token-priority B=8": 3} and len(reloaded.done) == 9
    shas = {r.config_sha for (label, _), r in reloaded.done.items() if label == changed.label}
    assert shas == {config_sha(changed)}


def test_a_cut_last_line_is_dropped_and_the_store_reloads_cleanly(tmp_path):
    finished(tmp_path)
    with (tmp_path / "runs.jsonl").open("a") as f:
        f.write('{"label": "none", "prom')  # a line cut short by a kill
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    dropped = json.loads(lines[0])
    (tmp_path / "runs.jsonl").write_text("\n".join(lines[1:-1]) + "\n" + lines[-1])
    store = Store(tmp_path, FULL, resume=True)
    assert store.cut_line and any("cut short" in n for n in store.notices())
    again = FakeBackend()
    run_all(again, CONFIGS, ["a", "bb", "ccc"], store, 7, 4, False)
    assert again.calls == [(dropped["label"], dropped["prompt"], dropped["seed"])]
    text = (tmp_path / "runs.jsonl").read_text()
    assert text.endswith("\n") and '"prom{' not in text
    reloaded = Store(tmp_path, FULL, resume=True)
    assert len(reloaded.done) == 9 and not reloaded.cut_line


@pytest.mark.parametrize(
    "bad",
    [
        '{"label": "none", "prom',
        "[1, 2]",
        '{"label": "x"}',
        '{"label": "none", "prompt": 0, "seed": 7, "tokens": null, "seconds": 0.5}',
        '{"label": "none", "prompt": 0, "seed": 7, "tokens": [1, "2"], "seconds": 0.5}',
        '{"label": "none", "prompt": 0, "seed": 7, "tokens": [1], "seconds": 0.5, "steps": '
        '[{"committed": 1, "num_tokens": 8, "width": 4, "depth": 3, "before_L": null, '
        '"after_L": [1], "path_L": [1]}]}',
    ],
)
def test_a_broken_line_before_the_last_names_the_file_and_line(tmp_path, bad):
    finished(tmp_path)
    lines = (tmp_path / "runs.jsonl").read_text().splitlines()
    lines.insert(2, bad)
    (tmp_path / "runs.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(ResumeError, match=r"runs.jsonl:3 is not a run record"):
        Store(tmp_path, FULL, resume=True)


def test_a_non_utf8_byte_in_runs_jsonl_names_the_file_and_line(tmp_path):
    finished(tmp_path)
    lines = (tmp_path / "runs.jsonl").read_bytes().splitlines(keepends=True)
    lines[1] = lines[1].replace(b'"label"', b'"lab\xffel"')
    (tmp_path / "runs.jsonl").write_bytes(b"".join(lines))
    with pytest.raises(ResumeError, match=r"runs.jsonl:2 is not a run record \('utf-8' codec"):
        Store(tmp_path, FULL, resume=True)


@pytest.mark.parametrize("content", ["{not json", "[1]"])
def test_a_corrupt_run_json_is_named(tmp_path, content):
    finished(tmp_path)
    (tmp_path / "run.json").write_text(content)
    with pytest.raises(ResumeError, match=r"run.json (is not valid JSON|must hold a JSON object)"):
        Store(tmp_path, FULL, resume=True)


def test_records_carry_their_arm_hash(tmp_path):
    finished(tmp_path)
    records = [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]
    assert {r["config_sha"] for r in records} == set(ARMS.values())
    assert RunRecord.from_dict(records[0]).config_sha == ARMS[records[0]["label"]]


def test_fingerprints_follow_content(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    (a / "w.bin").write_bytes(b"\0" * 100)
    shutil.copytree(a, b)
    assert model_sha([a]) == model_sha([b])
    (b / "w.bin").write_bytes(b"\0" * 99 + b"\1")
    assert model_sha([a]) != model_sha([b])
    assert tree_sha([a]) != tree_sha([a, b])
    with pytest.raises(ValueError, match="does not exist"):
        model_sha([tmp_path / "missing"])
    x, y = RunConfig("token-priority", 8), RunConfig("token-priority", 8, options={"decay": 0.7})
    assert config_sha(x) == config_sha(RunConfig("token-priority", 8)) != config_sha(y)


def test_the_automatic_reference_arm_may_not_reuse_a_label():
    configs = parse_config("router-mass:B=8,label=none")
    with pytest.raises(ValueError, match=r"share labels \['none'\] \(automatic reference arms"):
        finalize(configs, None)


def test_list_valued_policy_options_can_be_written_on_the_command_line():
    (config,) = parse_config("layer-adaptive:B=8,opt.budgets=[4,6,8],mode=truncation")
    assert config.options == {"budgets": [4, 6, 8]} and config.mode == "truncation"
    with pytest.raises(ValueError, match="unbalanced"):
        parse_config("layer-adaptive:B=8,opt.budgets=[4,6")


def test_a_bad_value_names_its_config():
    with pytest.raises(
        ValueError, match=r"config 'router-mass:B=8.5': budget='8.5' is not an integer"
    ):
        parse_config("router-mass:B=8.5")


def perturbed_copy(src, dst):
    shutil.copytree(src, dst)
    weights = load_file(dst / "target.safetensors")
    name = next(iter(weights))
    weights[name] = weights[name] * 1.01 + 0.01
    save_file(weights, dst / "target.safetensors")


def test_cli_resume_refuses_another_checkpoint(ab_args, tiny_dir, tmp_path, capsys):
    args = [*ab_args, "--config", "none"]
    assert main(args) == 0
    other = tmp_path / "other"
    perturbed_copy(tiny_dir, other)
    args[args.index(str(tiny_dir))] = str(other)
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert "results for another model" in err
    assert f"resume with the model it ran (--checkpoint {tiny_dir})" in err  # not hashes alone


def test_cli_resume_reruns_an_arm_whose_budget_changed_under_the_same_label(ab_args, capsys):
    assert main([*ab_args, "--config", "router-mass:B=2,label=rm"]) == 0
    out = ab_args[ab_args.index("--out") + 1]
    capsys.readouterr()
    assert main([*ab_args, "--config", "router-mass:B=4,label=rm", "--resume"]) == 0
    assert "'rm': its configuration changed since 2 stored runs" in capsys.readouterr().err
    budget_kept = [*ab_args, "--config", "router-mass:B=4,label=rm", "--resume"]
    assert main([*budget_kept, "--mode", "truncation"]) == 0  # its label kept, its mode not
    # (4: the B=2 runs and the B=4 ones)
    assert (
        "'rm': its configuration changed since 4 stored runs (a key of its own, or a default "
        "it takes from --mode, --num-tokens, --width, --depth or --temperature); they run again"
    ) in capsys.readouterr().err
    results = json.loads((__import__("pathlib").Path(out) / "results.json").read_text())
    row = next(c for c in results["configs"] if c["label"] == "rm")
    assert row["config"]["budget"] == 4
    assert row["distinct_after"]["p99"] > 2  # the B=4 runs, not the stored B=2 ones


def test_cli_resume_without_configs_refuses_a_run_of_other_arms(ab_args, capsys):
    """Re-pricing with ``--resume`` alone runs the default arms: where the folder holds
    others, that would drop them from the report and run the defaults; it is refused."""
    assert main([*ab_args, "--config", "none", "--config", "router-mass:B=2,label=rm"]) == 0
    capsys.readouterr()
    assert main([*ab_args, "--resume", "--cost-model", "roofline"]) == 2
    err = capsys.readouterr().err
    assert "--resume without --config runs the default arms" in err
    assert "holds the arms ['none tree=8/4/3', 'rm']" in err
    # the stored arms given again: re-priced, nothing runs again
    again = [*ab_args, "--config", "none", "--config", "router-mass:B=2,label=rm", "--resume"]
    assert main(again) == 0


def test_cli_interrupt_keeps_the_runs_and_says_how_to_resume(ab_args, monkeypatch, capsys):
    import moe_spec.ab.runner as runner

    def interrupted(backend, configs, prompts, store, *rest):
        store.add(RunRecord(configs[0].label, 0, 0, [1], 0.1))
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "run_all", interrupted)
    assert main([*ab_args, "--config", "none"]) == 130
    err = capsys.readouterr().err
    assert "interrupted; 1 of 2 runs are finished and kept in" in err
    assert "--resume" in err and "Traceback" not in err


def test_cli_refuses_zero_new_tokens(ab_args, capsys):
    args = [*ab_args, "--config", "none"]
    args[args.index("--max-new-tokens") + 1] = "0"
    assert main(args) == 2
    assert "--max-new-tokens must be >= 1, got 0" in capsys.readouterr().err


def stored_labels(out) -> list[str]:
    """The labels of the records in ``out``'s runs.jsonl, one per run, in file order."""
    lines = (__import__("pathlib").Path(out) / "runs.jsonl").read_text().splitlines()
    return [json.loads(line)["label"] for line in lines]


def test_mode_and_tree_defaults_keep_the_baselines_names_and_stored_runs(ab_args, capsys):
    """`--mode truncation` renamed the baselines ("none truncation": the mode means nothing
    unbudgeted) and a resume ran them again; `--num-tokens` reran autoregressive, which drafts
    no tree. Only the arms those flags change run again."""
    arms = ["--config", "autoregressive", "--config", "depth-width", "--config", "none"]
    arms += ["--config", "token-priority:B=3"]
    out = ab_args[ab_args.index("--out") + 1]
    assert main([*ab_args, *arms]) == 0
    first = len(stored_labels(out))
    assert main([*ab_args, *arms, "--mode", "truncation", "--resume"]) == 0
    assert stored_labels(out)[first:] == ["token-priority B=3 truncation tree=8/4/3"] * 2
    results = json.loads((__import__("pathlib").Path(out) / "results.json").read_text())
    assert [c["label"] for c in results["configs"]] == [
        "autoregressive",
        "depth-width tree=8/4/3",
        "none tree=8/4/3",
        "token-priority B=3 truncation tree=8/4/3",
    ]
    assert all(c["config"]["mode"] == "substitution" for c in results["configs"][:3])
    capsys.readouterr()
    second = len(stored_labels(out))
    assert main([*ab_args, *arms, "--num-tokens", "6", "--resume"]) == 0
    assert "autoregressive" not in stored_labels(out)[second:]
    assert "configuration changed" not in capsys.readouterr().err


def test_a_baselines_mode_and_autoregressives_tree_change_neither_label_nor_hash():
    defaults = {"mode": "truncation", "num_tokens": 16, "width": 4, "depth": 3}
    for name in ("autoregressive", "none", "depth-width"):
        (plain,) = parse_config(name, {k: v for k, v in defaults.items() if k != "mode"})
        (flagged,) = parse_config(name, defaults)
        assert flagged.label == plain.label and "truncation" not in flagged.label
        assert config_sha(flagged) == config_sha(plain)
    (ar,) = parse_config("autoregressive", defaults)
    assert config_sha(ar) == config_sha(RunConfig("autoregressive"))
    (budgeted,) = parse_config("token-priority:B=8", defaults)
    assert budgeted.mode == "truncation" and budgeted.num_tokens == 16  # these still apply


def test_cli_resume_says_what_it_reuses_and_which_stored_arms_it_leaves_out(ab_args, capsys):
    """A resume ran silently; one naming a subset of the stored arms rewrote the report
    without them and did not say so."""
    out = ab_args[ab_args.index("--out") + 1]
    assert main([*ab_args, "--config", "none", "--config", "router-mass:B=2,label=rm"]) == 0
    capsys.readouterr()
    assert main([*ab_args, "--config", "none", "--config", "router-mass:B=3", "--resume"]) == 0
    err = capsys.readouterr().err
    assert "resuming: 2 of 4 runs are stored and reused; the stored arms ['rm'] are not " in err
    assert "named, so the report leaves them out" in err
    results = json.loads((__import__("pathlib").Path(out) / "results.json").read_text())
    assert [c["label"] for c in results["configs"]] == [
        "none tree=8/4/3",
        "router-mass B=3 tree=8/4/3",
    ]
    assert "rm" in stored_labels(out)  # its runs stay in runs.jsonl
