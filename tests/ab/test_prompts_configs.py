"""Prompts files and configuration syntax: what parses, and the errors for what does not."""

from __future__ import annotations

import json
import re

import pytest

from moe_spec.ab.configs import RunConfig, finalize, parse_config
from moe_spec.ab.prompts import (
    CHAT_QUESTIONS,
    PromptsError,
    chat_prompts,
    chat_template_of,
    held_out_benchmark_prompts,
    held_out_deep_prompts,
    load_prompts,
)
from moe_spec.engine.data import HELD_OUT, read_text, stdlib_root


def test_jsonl_and_plain_text_prompts(tmp_path):
    jl = tmp_path / "p.jsonl"
    jl.write_text(json.dumps({"prompt": "def f(x):\n", "id": 1}) + "\n\n" + '{"prompt": "b"}\n')
    assert load_prompts(jl) == ["def f(x):\n", "b"]
    txt = tmp_path / "p.txt"
    txt.write_text("first line\n\n  second\n")
    assert load_prompts(txt) == ["first line", "  second"]


@pytest.mark.parametrize(
    "content",
    [
        '["def f(x):\\n", {"prompt": "b", "id": 1}]',
        '[\n  "def f(x):\\n",\n\n  {"prompt": "b"}\n]\n',
        '\n  [{"prompt": "def f(x):\\n"}, "b"]',
    ],
)
def test_a_json_array_of_strings_or_prompt_objects_is_read_whole(tmp_path, content):
    path = tmp_path / "p.json"
    path.write_text(content)
    assert load_prompts(path) == ["def f(x):\n", "b"]


def test_text_that_merely_starts_with_a_bracket_is_plain_text(tmp_path):
    path = tmp_path / "p.txt"
    path.write_text("[INST] hello [/INST]\n[1, 2\n")
    assert load_prompts(path) == ["[INST] hello [/INST]", "[1, 2"]


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("", "p.json: no prompts (the file is empty)"),
        ("\n  \n\t\n", "p.json: no prompts (the file holds only blank lines)"),
        ('{"prompt": "a"}\n{"prompt": \n', "p.json:2: not valid JSON"),  # JSONL
        ('{"text": "a"}\n', 'p.json:1: expected an object with a string "prompt" field'),
        ('{"prompt": ""}\n', "p.json:1: the prompt is empty"),
        ('["a",\n "b"\n', "p.json:3: not valid JSON (Expecting ',' delimiter"),  # an array
        ('[\n  {"prompt": "a"},\n', "p.json:3: not valid JSON (Expecting value"),
        ('[ "a" "b"]', "p.json:1: not valid JSON (Expecting ',' delimiter, column 7)"),
        ("[]", "p.json: no prompts (the JSON array is empty)"),
        ('["a", ""]', "p.json: item 2: the prompt is empty"),
        ('[{"prompt": "a"}, {"text": "b"}]', "item 2: expected a string or an object with a"),
        ("[1, 2]", 'p.json: item 1: expected a string or an object with a string "prompt"'),
    ],
)
def test_a_malformed_prompts_file_names_the_file_and_the_line_or_item(tmp_path, content, message):
    path = tmp_path / "p.json"
    path.write_text(content)
    with pytest.raises(PromptsError, match=re.escape(message)):
        load_prompts(path)


def test_missing_prompts_file(tmp_path):
    with pytest.raises(PromptsError, match="does not exist"):
        load_prompts(tmp_path / "nope.jsonl")


def test_held_out_prompts_extend_deterministically_to_twenty():
    prompts = held_out_benchmark_prompts(20)
    assert len(prompts) == 20 and len(set(prompts)) == 20
    assert prompts == held_out_benchmark_prompts(20)
    assert prompts[:12] == held_out_benchmark_prompts(12)
    with pytest.raises(PromptsError, match="available"):
        held_out_benchmark_prompts(500)


def test_deep_held_out_prompts_are_whole_lines_from_inside_each_file():
    deep = held_out_deep_prompts()
    assert len(deep) == 11 and len(set(deep)) == 11  # bisect.py is too short for it
    files = [read_text(stdlib_root() / name) for name in HELD_OUT if name != "bisect.py"]
    for prompt, text in zip(deep, files, strict=True):
        at = text.index(prompt)  # a slice of its own file, once past 4,800 characters
        code = min(i for i in (text.find("\ndef "), text.find("\nclass ")) if i >= 0) + 1
        assert at - code >= 4800 - 200 and text[at - 1] == "\n" and prompt.endswith("\n")
        assert 1000 < len(prompt) < 1400  # 1,200 characters, moved to whole lines
    assert held_out_deep_prompts(3) == deep[:3]
    assert not set(deep) & set(held_out_benchmark_prompts(20))


class TemplatedTokenizer:
    """A tokenizer with a chat template that writes the messages it is given out plainly."""

    def __init__(self, chat_template: str | None = "{{ messages }}") -> None:
        self.chat_template = chat_template

    def apply_chat_template(self, messages, tokenize=True, add_generation_prompt=False):
        assert tokenize is False and add_generation_prompt is True
        return "".join(f"<{m['role']}>{m['content']}</{m['role']}>" for m in messages) + "<bot>"


def test_chat_prompts_are_the_questions_in_order_each_one_user_turn_in_the_template():
    prompts = chat_prompts(chat_template_of(TemplatedTokenizer()), 3)
    assert prompts == [f"<user>{q}</user><bot>" for q in CHAT_QUESTIONS[:3]]
    assert len(set(CHAT_QUESTIONS)) == len(CHAT_QUESTIONS) == 12
    assert len(chat_prompts(lambda messages: messages[0]["content"], 12)) == 12
    for count in (0, 13):
        with pytest.raises(PromptsError, match=f"count must be 1 to 12, got {count}"):
            chat_prompts(lambda messages: "", count)


@pytest.mark.parametrize("tokenizer", [None, object(), TemplatedTokenizer(chat_template=None)])
def test_chat_prompts_refuse_a_tokenizer_without_a_chat_template(tokenizer):
    name = type(tokenizer).__name__
    with pytest.raises(
        PromptsError, match=f"need a model whose tokenizer has a chat template.*{name} has none"
    ):
        chat_template_of(tokenizer)


def test_config_syntax_and_aliases():
    (c,) = parse_config("router-mass:B=8,mode=truncation,tokens=16,width=4,depth=3,T=0.5")
    assert (c.policy, c.budget, c.mode, c.num_tokens, c.width, c.depth, c.temperature) == (
        "router-mass",
        8,
        "truncation",
        16,
        4,
        3,
        0.5,
    )
    assert c.label == "router-mass B=8 truncation tree=16/4/3 T=0.5"
    assert c.spec().policy == "router-mass" and c.spec().budget == 8
    (base,) = parse_config("depth-width", {"num_tokens": 16})
    assert base.kind == "depth-width" and base.spec().policy == "none" and base.num_tokens == 16
    (ar,) = parse_config("autoregressive:label=AR")
    assert ar.kind == "autoregressive" and ar.label == "AR"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("token-priority", "a budget is required"),
        ("none:B=8", "takes no budget"),
        ("token-priority:B=eight", "budget='eight' is not an integer"),
        ("token-priority:B=8,colour=red", "unknown keys"),
        ("token-priority:B=8,mode=drop", "allowed: substitution, truncation"),
        ("token-priority:B=8,depth=0", "depth must be an integer >= 1"),
        ("token-priority:B8", "expected key=value"),
        ("token-priority:B=8,repair=maybe", "repair='maybe' is not a flag; allowed: true, false"),
        ("none:repair=1", "none is a baseline: repair applies to budgeted policies"),
    ],
)
def test_bad_configs_say_what_is_allowed(text, message):
    with pytest.raises(ValueError, match=message):
        parse_config(text)


def test_json_and_toml_config_files(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps({"configs": [{"policy": "token-priority", "budget": 8}]}))
    toml = tmp_path / "c.toml"
    toml.write_text('[[config]]\npolicy = "none"\n\n[[config]]\npolicy = "router-mass"\nB = 16\n')
    assert [c.label for c in parse_config(str(js))] == ["token-priority B=8"]
    assert [c.label for c in parse_config(str(toml))] == ["none", "router-mass B=16"]
    js.write_text("[1, 2]")
    with pytest.raises(ValueError, match="list of configuration objects"):
        parse_config(str(js))
    with pytest.raises(ValueError, match="does not exist"):
        parse_config(str(tmp_path / "missing.toml"))


def test_finalize_adds_the_unbudgeted_run_and_checks_labels():
    configs, ref = finalize([RunConfig("token-priority", 8, num_tokens=16)], None)
    assert [c.label for c in configs] == ["token-priority B=8 tree=16/8/6", "none tree=16/8/6"]
    assert ref == "none tree=16/8/6"
    with pytest.raises(ValueError, match="share labels"):
        finalize([RunConfig("none"), RunConfig("none")], None)
    with pytest.raises(ValueError, match="reference 'x' is not a configuration"):
        finalize([RunConfig("none")], "x")
    configs, _ = finalize([RunConfig("autoregressive")], None, add_unbudgeted=False)
    assert [c.label for c in configs] == ["autoregressive"]


def test_policy_options_reach_the_engine_and_the_label(tmp_path):
    from moe_spec.ab.configs import parse_config

    (c,) = parse_config("draft-path:B=16,opt.order=logprob,opt.tokens=4")
    assert c.options == {"order": "logprob", "tokens": 4}  # JSON values: 4 is an int
    assert c.spec().policy_options == {"order": "logprob", "tokens": 4}
    assert c.label == "draft-path B=16 order=logprob tokens=4"
    path = tmp_path / "arms.json"
    path.write_text('[{"policy": "token-priority", "budget": 8, "options": {"decay": 0.7}}]')
    (f,) = parse_config(str(path))
    assert f.spec().policy_options == {"decay": 0.7}


@pytest.mark.parametrize(
    "text, words",
    [
        ("draft-path:B=16,opt.order=sideways", "order is 'sideways'; allowed: path, logprob"),
        ("none:opt.decay=0.5", "none is a baseline and takes no policy options"),
        ("token-priority:B=8,opt.nope=1", "unknown option 'nope'; allowed: decay"),
    ],
)
def test_bad_policy_options_are_refused_by_the_policy(text, words):
    from moe_spec.ab.configs import parse_config

    with pytest.raises(ValueError, match=re.escape(words)):
        parse_config(text)


@pytest.mark.parametrize(
    "text, words",
    [
        ("none:mode=truncation", "mode cannot change none (it runs unbudgeted); leave it out"),
        ("depth-width:mode=truncation", "mode cannot change depth-width"),
        (
            "autoregressive:tokens=16,width=4",
            "num_tokens, width cannot change autoregressive (it drafts no tree); leave them out",
        ),
    ],
)
def test_a_key_written_for_an_arm_it_cannot_change_is_refused(text, words):
    """As ``generate`` refuses --mode truncation with --policy none; the same values as
    command-line defaults are held quietly (every arm takes them)."""
    with pytest.raises(ValueError, match=re.escape(f"config {text!r}: {words}")):
        parse_config(text)
    (none,) = parse_config("none", {"mode": "truncation", "num_tokens": 16})
    assert (none.mode, none.num_tokens) == ("substitution", 16)
    (ar,) = parse_config("autoregressive:mode=substitution,tokens=32", {"num_tokens": 16})
    assert (ar.mode, ar.num_tokens) == ("substitution", 32)  # written at their defaults: kept


def test_repair_flag_reaches_the_engine_and_the_label(tmp_path):
    (c,) = parse_config("draft-path:B=12,repair=true")
    assert c.repair and c.spec().repair and c.label == "draft-path B=12 repair"
    (off,) = parse_config("draft-path:B=12,repair=0")
    assert not off.repair and off.label == "draft-path B=12"
    (cut,) = parse_config("draft-path:B=12,repair=1,repair_min=3")
    assert cut.spec().repair_min_tokens == 3 and cut.label == "draft-path B=12 repair>=3"
    with pytest.raises(ValueError, match="repair_min applies only with repair=true"):
        parse_config("draft-path:B=12,repair_min=3")
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"policy": "token-priority", "budget": 8, "repair": 1}]))
    with pytest.raises(ValueError, match="repair must be True or False, got 1"):
        parse_config(str(js))


def test_a_json_config_without_a_policy_is_named(tmp_path):
    js = tmp_path / "c.json"
    js.write_text(json.dumps([{"policy": "none"}, {"B": 8, "mode": "truncation"}]))
    with pytest.raises(ValueError, match=r"c.json entry 2: no policy; each configuration names"):
        parse_config(str(js))


@pytest.mark.parametrize(
    "text, message",
    [
        ("arms.yaml", "config 'arms.yaml' looks like a file; allowed: a .json or .toml"),
        ("runs/arms", "looks like a file"),
        ("token-priority,B=8", "the policy name ends at ':' (e.g. token-priority:B=8)"),
        ("tokenpriority", "unknown policy 'tokenpriority' (did you mean 'token-priority'?)"),
    ],
)
def test_a_config_that_is_no_policy_says_what_it_looks_like(text, message):
    """These read 'a budget is required' before (an A/B walkthrough): the file or the typo
    is named instead."""
    with pytest.raises(ValueError) as got:
        parse_config(text)
    assert message in str(got.value) and "a budget is required" not in str(got.value)


def test_a_budgeted_policy_known_here_still_asks_for_its_budget():
    with pytest.raises(ValueError, match=r"token-priority: a budget is required"):
        parse_config("token-priority")


@pytest.mark.parametrize(
    "name, text",
    [
        ("arms.json", '{"configs": [{"policy": "none"}], "extra": 1}'),
        ("arms.toml", '[[config]]\npolicy = "none"\n\n[[other]]\npolicy = "none"\n'),
    ],
)
def test_a_config_file_with_keys_beside_its_list_is_refused(tmp_path, name, text):
    """They were ignored: a second list or a misspelt key ran nothing, without a word."""
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=r"unknown top-level keys \['(extra|other)'\]; allowed"):
        parse_config(str(path))
