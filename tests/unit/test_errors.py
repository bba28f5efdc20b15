"""The one vocabulary of user errors (minilmv2.errors): what a value means, its flag or run.sh's variable."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from minilmv2.arguments import argparse_message
from minilmv2.errors import OPTIONS, UsageError, given, option, refuse, setting

RUN_SH = Path(__file__).resolve().parents[2] / "run.sh"


@pytest.mark.parametrize(
    "via_run_sh, expected",
    [
        (False, ("--L", "--L 9", "the teacher layer --L 9", "the teacher layer --L 9 is out of range")),
        (True, ("L", "L=9", "the teacher layer L=9", "the teacher layer L=9 is out of range")),
    ],
)
def test_an_option_is_named_as_the_user_set_it(monkeypatch, via_run_sh, expected):
    if via_run_sh:
        monkeypatch.setenv("MINILMV2_VIA_RUN_SH", "1")
    else:
        monkeypatch.delenv("MINILMV2_VIA_RUN_SH", raising=False)
    error = refuse("L", 9, "is out of range")
    assert (option("L"), setting("L", 9), given("L", 9), str(error)) == expected
    assert isinstance(error, UsageError)


def test_through_run_sh_an_option_without_a_variable_keeps_its_flag(monkeypatch):
    monkeypatch.setenv("MINILMV2_VIA_RUN_SH", "1")
    assert given("eval_strategy", "steps") == "the evaluation schedule --eval_strategy steps"  # set in EXTRA_ARGS
    assert setting("output_dir", "out") == "OUTPUT_DIR=out"
    assert given("dataloader_num_workers", 2) == "--dataloader_num_workers 2"  # not in the table: the flag alone


def test_a_problem_opening_with_punctuation_follows_the_value_directly():
    assert str(refuse("train_config", "c.json", ": corpus file x is empty")) == (
        "the corpus config --train_config c.json: corpus file x is empty"
    )


def test_every_run_sh_variable_in_the_table_is_one_run_sh_sets():
    """The table's variables are run.sh's: each is read there (so a message never names a variable that is not)."""
    text = RUN_SH.read_text()
    for field, entry in OPTIONS.items():
        if entry.variable:
            assert re.search(rf"\b{entry.variable}\b", text), (field, entry.variable)
            assert re.search(rf"--{field}\b", text), (field, "run.sh does not pass the option it names")


@pytest.mark.parametrize(
    "message, expected",
    [
        ("argument --max_steps/--max-steps: invalid int value: 'many'",
         "the number of optimizer steps --max_steps many is not valid: give a whole number"),
        ("argument --learning_rate/--learning-rate: invalid float value: 'x'",
         "the learning rate --learning_rate x is not valid: give a number"),
        ("argument --eval_strategy/--eval-strategy: invalid choice: 'sometimes' (choose from 'no', 'steps', 'epoch')",
         "the evaluation schedule --eval_strategy sometimes is not valid: choose from no, steps, epoch"),
        ("the following arguments are required: --train_config/--train-config, --L",
         "required but not given: --train_config, --L"),
        ("something argparse says that we do not rewrite", "something argparse says that we do not rewrite"),
    ],
)  # fmt: skip
def test_argparse_complaints_are_rewritten_in_the_vocabulary(monkeypatch, message, expected):
    monkeypatch.delenv("MINILMV2_VIA_RUN_SH", raising=False)
    assert argparse_message(message) == expected


def test_argparse_complaints_through_run_sh_name_the_variable(monkeypatch):
    monkeypatch.setenv("MINILMV2_VIA_RUN_SH", "1")
    assert argparse_message("argument --max_steps/--max-steps: invalid int value: 'many'") == (
        "the number of optimizer steps MAX_STEPS=many is not valid: give a whole number"
    )
    assert argparse_message("the following arguments are required: --train_config/--train-config") == (
        "required but not given: TRAIN_CONFIG"
    )
