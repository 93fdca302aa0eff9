"""`moe-spec ab` input mistakes: clear errors (or warnings) naming the value and its source."""

from __future__ import annotations

import json
import re
from pathlib import Path
from types import SimpleNamespace

import pytest

from moe_spec.ab.configs import RunConfig, finalize, parse_config, unbudgeted_arms
from moe_spec.ab.engine_backend import EngineBackend
from moe_spec.ab.prompts import PromptsError, load_prompts
from moe_spec.cli import main
from moe_spec.costmodel import get_cost_model, get_shape


@pytest.mark.parametrize(
    "name, text", [("c.json", "[]"), ("c.json", '{"configs": []}'), ("c.toml", "config = []")]
)
def test_an_empty_config_list_is_refused_not_run_as_the_reference_alone(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=re.escape(f"{path}: no configurations (the list is")):
        parse_config(str(path))


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ({"policy": "none", "label": 5}, "c.json entry 1: label=5: a label must be a non-empty"),
        ({"policy": "none", "label": " "}, "c.json entry 1: label=' ': a label must be"),
        ({"policy": "token-priority", "B": 8, "options": [1]}, "entry 1: options=[1] is not an"),
        ({"policy": "token-priority", "B": 8, "options": 5}, "entry 1: options=5 is not an object"),
        ({"policy": "router-mass", "B": 8, "budget": 12}, "entry 1: budget and B both set budget"),
        ({"policy": "router-mass", "B": 8.7}, "c.json entry 1: budget=8.7 is not an integer"),
        ({"policy": "none", "T": "hot"}, "entry 1: temperature='hot' is not a number"),
        ({"policy": "none", "width": True}, "entry 1: width=True is not an integer"),
        (
            {"policy": "token-priority", "B": 8, "options": {"decay": 0.5}, "opt.decay": 0.7},
            "entry 1: option decay is given twice (options and opt.decay)",
        ),
    ],
)
def test_bad_json_config_entries_name_the_file_and_entry(tmp_path, entry, message):
    path = tmp_path / "c.json"
    path.write_text(json.dumps([entry]))
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(str(path))


NUMBERS_AS_TEXT = [
    ("B", "8", "budget='8' is not an integer but a string"),
    ("tokens", "16", "num_tokens='16' is not an integer but a string"),
    ("repair_min", "2", "repair_min_tokens='2' is not an integer but a string"),
    ("T", "0.5", "temperature='0.5' is not a number but a string"),
]


def write_configs(path: Path, entry: dict) -> str:
    """``entry`` as a one-entry JSON list or TOML ``[[config]]`` table at ``path``."""
    if path.suffix == ".json":
        path.write_text(json.dumps([entry]))
    else:  # JSON's scalars are TOML's: "8", 8, 0.5, true
        path.write_text(
            "[[config]]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in entry.items())
        )
    return str(path)


@pytest.mark.parametrize(("key", "value", "message"), NUMBERS_AS_TEXT)
@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_file_number_given_as_a_string_is_refused_not_parsed(
    tmp_path, suffix, key, value, message
):
    """A file's numbers are numbers: ``"B": "8"`` is refused naming the field, the value and
    the type wanted, while ``NAME:B=8`` text, where every value is a string, is parsed; the
    file with the number unquoted gives the text's configuration."""
    entry = {"policy": "draft-path", "B": 8, "repair": True}
    path = tmp_path / f"c{suffix}"
    where = f"c{suffix} entry 1: {message}; in a JSON or TOML file write the number without quotes"
    with pytest.raises(ValueError, match=re.escape(where)):
        parse_config(write_configs(path, {**entry, key: value}))
    pairs = {"B": "8", "repair": "true", key: value}  # text: every value a string
    (text,) = parse_config("draft-path:" + ",".join(f"{k}={v}" for k, v in pairs.items()))
    number = float(value) if key == "T" else int(value)
    (typed,) = parse_config(write_configs(path, {**entry, key: number}))
    assert typed == text and getattr(text, message.partition("=")[0]) == number


@pytest.mark.parametrize("suffix", [".json", ".toml"])
def test_a_file_flag_given_as_a_string_is_refused_not_parsed(tmp_path, suffix):
    """``"repair": "true"`` in a file is refused as a quoted number is; ``repair=true`` text
    and the unquoted boolean give the same configuration."""
    path = tmp_path / f"c{suffix}"
    entry = {"policy": "draft-path", "B": 8}
    message = (
        f"c{suffix} entry 1: repair='true' is not a boolean but a string; in a JSON or TOML "
        "file write true or false without quotes"
    )
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(write_configs(path, {**entry, "repair": "true"}))
    (typed,) = parse_config(write_configs(path, {**entry, "repair": True}))
    assert typed == parse_config("draft-path:B=8,repair=true")[0] and typed.repair is True


def test_a_file_option_is_taken_as_written_text_is_read_as_json(tmp_path):
    """``opt.NAME`` text is read as JSON when it parses (``opt.decay=0.7`` is 0.7); in a file
    the value keeps its type (as in ``options``), so a quoted number stays a string, which
    the policy refuses naming the file, entry and value."""
    (text,) = parse_config("token-priority:B=8,opt.decay=0.7")
    assert text.options == {"decay": 0.7}
    path = tmp_path / "c.json"
    entry = {"policy": "token-priority", "B": 8}
    assert parse_config(write_configs(path, {**entry, "opt.decay": 0.7})) == [text]
    message = "c.json entry 1: token-priority: decay is '0.7'; allowed: 0 < decay <= 1"
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(write_configs(path, {**entry, "opt.decay": "0.7"}))


def test_a_toml_entry_with_a_fractional_budget_names_file_and_entry(tmp_path):
    path = tmp_path / "c.toml"
    path.write_text('[[config]]\npolicy = "none"\n\n[[config]]\npolicy = "router-mass"\nB = 8.7\n')
    with pytest.raises(ValueError, match=r"c.toml entry 2: budget=8.7 is not an integer"):
        parse_config(str(path))


def test_a_json_key_repeated_in_one_object_is_refused(tmp_path):
    path = tmp_path / "c.json"
    path.write_text('[{"policy": "router-mass", "budget": 8, "budget": 12}]')
    with pytest.raises(ValueError, match="c.json: key 'budget' is given twice"):
        parse_config(str(path))


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("router-mass:B=8,B=12", "config 'router-mass:B=8,B=12': B is given twice; give it once"),
        ("router-mass:B=8,budget=12", "budget and B both set budget; give it once"),
        ("router-mass:T=0,temperature=1,B=8", "temperature and T both set temperature"),
        ("draft-path:B=8,opt.order=path,opt.order=logprob", "opt.order is given twice"),
        ("none:label=", "label='': a label must be a non-empty string"),
    ],
)
def test_a_repeated_or_empty_key_on_the_command_line_is_refused(text, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse_config(text)


def test_fixed_budgets_at_or_above_e_are_flagged_but_an_adaptive_cap_is_not():
    arms = [RunConfig("router-mass", 32), RunConfig("router-mass", 8), RunConfig("auto", 32)]
    assert unbudgeted_arms(arms, 32) == [arms[0]]
    assert unbudgeted_arms(arms, None) == []  # the model's E is unknown (sglang)


def test_the_reference_arm_takes_its_tree_from_a_tree_arm_not_autoregressive():
    (ar,) = parse_config("autoregressive", {"width": 4})  # a --width default: held, unused
    (tp,) = parse_config("token-priority:B=8,tokens=16")
    configs, reference = finalize([ar, tp], None)
    assert reference == "none tree=16/8/6"
    assert (configs[-1].num_tokens, configs[-1].width, configs[-1].depth) == (16, 8, 6)


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda tmp: tmp, "is a directory; name a file"),
        (lambda tmp: "/dev/null", "is not a regular file"),
    ],
)
def test_a_prompts_or_config_path_that_is_not_a_file_says_what_it_is(tmp_path, make, message):
    with pytest.raises(PromptsError, match=f"prompts file .* {message}"):
        load_prompts(make(tmp_path))
    config = tmp_path / "c.json"
    config.mkdir()
    with pytest.raises(ValueError, match="config file .*c.json' is a directory"):
        parse_config(str(config))


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resume", "--config", "none"], "--resume: nothing to resume in {out}"),
        (
            ["--num-prompts", "5", "--config", "none"],
            "--num-prompts 5, but {prompts} holds only 2 prompts",
        ),
    ],
)
def test_cli_refuses_what_would_silently_run_something_else(ab_args, capsys, extra, message):
    out, prompts = ab_args[ab_args.index("--out") + 1], ab_args[ab_args.index("--prompts") + 1]
    assert main([*ab_args, *extra]) == 2
    assert message.format(out=out, prompts=prompts) in capsys.readouterr().err
    assert not Path(out).exists()  # refused before its folder is made


def test_cli_warns_about_greedy_seeds_and_a_budget_that_cuts_nothing(ab_args, capsys):
    out = Path(ab_args[ab_args.index("--out") + 1])
    args = [*ab_args, "--seeds", "2", "--config", "router-mass:B=8", "--cost-model", "roofline"]
    assert main(args) == 0
    err = capsys.readouterr().err
    assert "--cost-model without --model-shape/--gpu price nothing" in err
    assert "router-mass B=8 tree=8/4/3: B=8 is not below the model's 8 experts" in err
    assert "budgeting is off" in err
    assert "--seeds 2 at temperature 0: greedy decoding gives the same tokens" in err
    assert "2 configurations x 2 prompts x 2 seeds, backend engine" in err
    report = (out / "report.md").read_text()
    assert report.startswith("# moe-spec ab: 2 configurations on 2 prompts x 2 seeds\n")
    assert json.loads((out / "results.json").read_text())["prompts"] == 2
    resumed = [*ab_args, "--seeds", "2", "--config", "router-mass:B=4", "--resume"]
    assert main(resumed) == 0  # the folder holds a run: --resume goes on
    assert "is not below" not in capsys.readouterr().err


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (
            ["--server", "http://gpu1:30000", "--config", "none"],
            "--server http://gpu1:30000 applies to --backend sglang, not engine; add --backend",
        ),
        (
            ["--config", "none:server=http://gpu1:30000"],
            "none tree=8/4/3: server='http://gpu1:30000' applies to --backend sglang, not engine",
        ),
    ],
)
def test_the_engine_backend_refuses_a_server(ab_args, capsys, extra, message):
    out = Path(ab_args[ab_args.index("--out") + 1])
    assert main([*ab_args, *extra]) == 2
    assert message in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("label", [5, None, " ", "\t"])
def test_a_run_config_built_in_python_refuses_a_bad_label_as_the_parser_does(label):
    message = f"label={label!r}: a label must be a non-empty string"
    with pytest.raises(ValueError, match=re.escape(message)):
        RunConfig("none", label=label)
    assert RunConfig("none", label="").label == "none"  # empty: the default label


@pytest.mark.parametrize(
    "config", ["no-such-policy:B=4", "router-mass:B=1", "none:label=", "router-mass:B=4,repair=x"]
)
def test_a_refused_config_leaves_no_out_folder(ab_args, capsys, config):
    out = Path(ab_args[ab_args.index("--out") + 1])
    assert main([*ab_args, "--config", config]) == 2
    assert "moe-spec: error: " in capsys.readouterr().err
    assert not out.exists()


def long_prompts(tmp_path: Path, tiny_engine) -> tuple[Path, int]:
    """A prompts file whose second prompt is the longer; that prompt's token count."""
    path = tmp_path / "long.jsonl"
    long = "def apply(budget, ids):\n    return [i for i in ids if i < budget]\n" * 4
    path.write_text(json.dumps({"prompt": "x = 1"}) + "\n" + json.dumps({"prompt": long}) + "\n")
    return path, len(tiny_engine.encode(long))


def test_ab_refuses_a_tree_that_does_not_fit_a_prompt_before_any_run(
    ab_args, tmp_path, tiny_engine, capsys
):
    path, tokens = long_prompts(tmp_path, tiny_engine)
    assert tokens > 15  # width and depth cannot fit at tokens=1000: only tokens is named
    args = [*ab_args, "--prompts", str(path), "--config", "none:tokens=1000"]
    assert main(args) == 2
    err = capsys.readouterr().err
    top = 1024 - tokens - 6 - 4 * 3  # positions, prompt, new tokens, the draft's width x depth
    assert (
        f"none tree=1000/4/3: prompt 2: tokens is 1000; allowed here: at most {top} "
        f"(the {tokens}-token prompt, the new tokens and the tree's scratch must fit the "
        "model's 1024 positions)"
    ) in err
    assert not Path(ab_args[ab_args.index("--out") + 1]).exists()  # nothing ran


def test_ab_refuses_new_tokens_that_do_not_fit_beside_a_prompt(
    ab_args, tmp_path, tiny_engine, capsys
):
    path, tokens = long_prompts(tmp_path, tiny_engine)
    args = [*ab_args, "--prompts", str(path), "--max-new-tokens", "2000"]
    assert main([*args, "--config", "autoregressive", "--config", "none"]) == 2
    err = capsys.readouterr().err
    assert (
        f"autoregressive: prompt 2: --max-new-tokens is 2000; allowed here: at most "
        f"{1024 - tokens} (the {tokens}-token prompt and the new tokens must fit the model's "
        "1024 positions)"
    ) in err
    assert not Path(ab_args[ab_args.index("--out") + 1]).exists()


def test_the_engine_backend_checks_the_longest_prompt_encoding_each_once():
    encoded = []

    def encode(text: str) -> list[int]:
        encoded.append(text)
        return list(range(len(text)))  # a token per character

    engine = SimpleNamespace(
        encode=encode, max_len=20, tree_scratch=lambda s: s.num_tokens + s.width * s.depth
    )
    backend = EngineBackend(engine, get_cost_model("roofline", "H200"), get_shape("OLMoE-1B-7B"))
    tree = RunConfig("none", num_tokens=4, width=2, depth=2)  # 8 positions of scratch
    backend.check_room([RunConfig("autoregressive"), tree], ["ab", "abcdefgh", "abc"], 4)
    assert encoded == ["ab", "abcdefgh", "abc"] and backend.encoded("ab") == [0, 1]
    assert encoded == ["ab", "abcdefgh", "abc"]  # cached, not encoded again
    with pytest.raises(ValueError, match=re.escape("none tree=4/2/2: prompt 2: tokens 4, ")):
        backend.check_room([tree], ["ab", "abcdefgh", "abc"], 5)
    with pytest.raises(ValueError, match=re.escape("or width <= 1 or depth <= 1")):
        backend.check_room([tree], ["ab", "abcdefgh"], 5)
    with pytest.raises(ValueError, match="autoregressive: prompt 1: --max-new-tokens is 13; allo"):
        backend.check_room([RunConfig("autoregressive")], ["abcdefgh"], 13)
    message = "ar: prompt 1: the 20-token prompt and the new tokens must fit the model's 20 "
    with pytest.raises(ValueError, match=re.escape(message + "positions; allowed: prompts of at")):
        backend.check_room([RunConfig("autoregressive", label="ar")], ["x" * 20], 1)
    bare = EngineBackend(SimpleNamespace(encode=encode), backend.cost, backend.shape)
    bare.check_room([tree], ["x" * 100], 100)  # no max_len or tree_scratch: not checked


def test_a_cost_model_without_a_shape_is_warned_about_with_or_without_a_depth_width_arm(tmp_path):
    from argparse import Namespace

    from moe_spec.ab.cli import warnings_for
    from moe_spec.ab.configs import RunConfig

    args = Namespace(cost_model="roofline", overhead_us=None, model_shape=None, gpu=None,
                     seeds=1, resume=False, out=str(tmp_path))  # fmt: skip
    (alone,) = warnings_for(args, [RunConfig("none")], 8)
    assert alone.startswith("--cost-model without --model-shape/--gpu price nothing")
    (with_dw,) = warnings_for(args, [RunConfig("none"), RunConfig("depth-width")], 8)
    assert "only the depth-width arm chooses its trees with it" in with_dw  # it was silent


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--temperature", "-1"], "--temperature is -1.0; allowed: 0 (greedy)"),
        (["--num-tokens", "1"], "--num-tokens must be an integer >= 2, got 1"),
        (["--width", "0"], "--width must be an integer >= 1, got 0"),
        (["--depth", "8"], "--depth 8 needs at least 9 tree tokens (--num-tokens 8)"),
    ],
)
def test_a_default_flag_out_of_range_is_named_as_the_flag(ab_args, capsys, flags, message):
    """They were reported against the automatic 'none' arm, which the user did not write."""
    assert main([*ab_args, *flags]) == 2
    err = capsys.readouterr().err
    assert message in err and "config 'none'" not in err


@pytest.mark.parametrize(
    ("seed", "runs", "seeds", "message"),
    [
        (-5, 3, 1, "--seed is -5; allowed: 0 <= seed < 2**63"),  # the first run, not -3
        (2**63 - 2, 3, 1, f"--seed {2**63 - 2} + 2 (prompt 3) is {2**63}; allowed"),
        (2**63 - 2, 6, 2, f"--seed {2**63 - 2} + 2 (prompt 2, seed 1) is {2**63}; allowed"),
    ],
)
def test_a_seed_out_of_range_names_the_first_run_it_fails(seed, runs, seeds, message):
    from moe_spec.ab.cli import check_run_seeds

    with pytest.raises(ValueError, match=re.escape(message)):
        check_run_seeds(seed, runs, seeds)
    check_run_seeds(2**63 - runs, runs, seeds)  # the last run's seed just fits


def test_cli_names_the_first_prompt_whose_seed_is_refused(ab_args, capsys):
    assert main([*ab_args, "--seed", "-5", "--config", "none"]) == 2
    assert "--seed is -5; allowed" in capsys.readouterr().err  # of 2 prompts: not "-4"
