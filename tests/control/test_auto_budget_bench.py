"""bench/auto_budget.py's summary of modeled cells: the table row and the line against the
Cascade-style depth-width baseline, on a cell given by hand."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
import auto_budget  # noqa: E402

AUTO = "auto:opt.shape=OLMoE-1B-7B,opt.gpu=H200,opt.cost_model=measured"


def arm(tok_s: float, agree: float = 1.0, guard_ar: float = 0.0) -> dict:
    return {"tok_s": tok_s, "agree": agree, "guard_ar": guard_ar}


ROW = {
    "autoregressive": 230.0,
    "none": arm(200.0),
    "token-priority:B=8": arm(380.0, 0.5),
    "token-priority:B=8,repair=true": arm(180.0),
    "token-priority:B=16": arm(270.0, 0.75),
    "token-priority:B=16,repair=true": arm(190.0),
    AUTO: arm(240.0, 0.8, 0.5),
    f"{AUTO},repair=true": arm(220.0, 1.0, 0.25),
    "depth-width": arm(200.0),
    f"{AUTO} warm": arm(260.0, 0.9),
    f"{AUTO},repair=true warm": arm(250.0),
}


def test_auto_arm_finds_each_variant():
    assert auto_budget.auto_arm(ROW, True, False)["tok_s"] == 220.0
    assert auto_budget.auto_arm(ROW, False, False)["tok_s"] == 240.0
    assert auto_budget.auto_arm(ROW, True, True)["tok_s"] == 250.0
    assert auto_budget.auto_arm(ROW, False, True)["tok_s"] == 260.0


def test_the_line_against_depth_width_gives_both_ratios_and_agreement():
    line = auto_budget.against_depth_width("B (code)", "OLMoE-1B-7B", ROW)
    assert line == (
        "- depth-width (Cascade-style, 100% agreement), set B (code), OLMoE-1B-7B: 200 tok/s; "
        "auto repair 1.100x it fresh, 1.250x warm (agreement 100%, 100%)"
    )


def test_the_table_row_takes_the_best_fixed_budgets_and_the_floor():
    (row,) = auto_budget.summary("A", {"OLMoE-1B-7B": ROW})
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[:6] == ["A", "OLMoE-1B-7B", "230", "200", "200", "190 (B=16,repair=true)"]
    # auto repair 220: x best fixed 220/190, x max(AR, none) 220/230, 25% decoded steps
    assert cells[6:10] == ["220", "1.158", "0.957", "25%"]
    assert cells[10] == "380 (B=8, 50%)"  # the best lossy budget, with its agreement
    assert cells[12:15] == ["250", "1.316", "1.087"]  # warm repair


def test_prompt_sets_picks_the_named_held_out_sets():
    sets = auto_budget.prompt_sets(3, names=["C", "A"])
    assert list(sets) == ["A (file starts)", "C (deep in the files)"]  # in A, B, C order
    assert sets["A (file starts)"] == auto_budget.prompt_sets(3)["A (file starts)"]
    assert [len(p) for p in sets.values()] == [3, 3]
    a_and_b = [p for ps in auto_budget.prompt_sets(8, names="AB").values() for p in ps]
    assert len(a_and_b) == 16 and not set(sets["C (deep in the files)"]) & set(a_and_b)
    with pytest.raises(ValueError, match=r"\['E'\] unknown; allowed: A, B, C, D"):
        auto_budget.prompt_sets(3, names="AE")


def test_prompt_set_d_is_chat_requests_in_the_models_chat_template():
    from types import SimpleNamespace

    from moe_spec.ab.prompts import CHAT_QUESTIONS, PromptsError

    class Tokenizer:
        chat_template = "set"

        def apply_chat_template(self, messages, tokenize, add_generation_prompt):
            return f"[{messages[0]['role']}] {messages[0]['content']} [assistant]"

    sets = auto_budget.prompt_sets(2, names="DA", engine=SimpleNamespace(tokenizer=Tokenizer()))
    assert list(sets) == ["A (file starts)", "D (chat requests)"]
    assert sets["D (chat requests)"] == [f"[user] {q} [assistant]" for q in CHAT_QUESTIONS[:2]]
    toy = auto_budget.load(SimpleNamespace(model=None, checkpoint=None))
    with pytest.raises(PromptsError, match="chat template"):  # the toy model: Python only
        auto_budget.prompt_sets(2, names="D", engine=toy)


def test_a_set_the_model_cannot_run_exits_with_the_reason(capsys):
    from argparse import ArgumentParser
    from types import SimpleNamespace

    toy = auto_budget.load(SimpleNamespace(model=None, checkpoint=None))
    args = SimpleNamespace(prompts=2, chars=1200, sets=["A", "D"])
    with pytest.raises(SystemExit):
        auto_budget.sets_or_exit(ArgumentParser(prog="bench"), args, toy)
    assert "--sets A D: chat prompts need a model whose tokenizer has a chat template" in (
        capsys.readouterr().err
    )
    args.sets = ["C"]
    assert list(auto_budget.sets_or_exit(ArgumentParser(), args, toy)) == ["C (deep in the files)"]
