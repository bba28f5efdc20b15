"""User-facing errors: one plain line, exit status 2, no traceback.

Anything a user can get wrong (a path, a shape, a config value) is raised as `UsageError` at start-up,
before a model is loaded or an output file is written. Entry points wrap `main` in `exit_on_usage_error`
so the user sees `error: <message>` and the shell sees status 2. Tracebacks are reserved for our bugs.

A run started by run.sh (which sets MINILMV2_VIA_RUN_SH=1) sets its values through run.sh's variables, so
messages name those: `--learning_rate -1.0 must be ...` is printed as `LR=-1.0 must be ...`.
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

USAGE_EXIT_CODE = 2

# run.sh's variable for each option it sets (see run.sh).
RUN_SH_VARIABLES = {
    "--input_model_dir": "TEACHER_DIR",
    "--tokenizer_dir": "TOKENIZER_DIR",
    "--train_config": "TRAIN_CONFIG",
    "--val_config": "VAL_CONFIG",
    "--output_dir": "OUTPUT_DIR",
    "--student_hidden_size": "STUDENT_HIDDEN_SIZE",
    "--student_num_layers": "STUDENT_NUM_LAYERS",
    "--student_attention_heads": "STUDENT_ATTENTION_HEADS",
    "--student_intermediate_size": "STUDENT_INTERMEDIATE_SIZE",
    "--L": "L",
    "--num_relation_heads": "NUM_RELATION_HEADS",
    "--minilm_relations": "RELATIONS",
    "--per_device_train_batch_size": "BATCH_SIZE",
    "--gradient_accumulation_steps": "GRAD_ACCUM",
    "--learning_rate": "LR",
    "--adam_epsilon": "ADAM_EPS",
    "--adam_beta1": "ADAM_BETA1",
    "--adam_beta2": "ADAM_BETA2",
    "--weight_decay": "WEIGHT_DECAY",
    "--max_steps": "MAX_STEPS",
    "--warmup_steps": "WARMUP_STEPS",
    "--save_steps": "SAVE_STEPS",
    "--logging_steps": "LOGGING_STEPS",
    "--eval_steps": "EVAL_STEPS",
    "--max_seq_len": "MAX_SEQ_LEN",
    "--seed": "SEED",
    "--report_to": "REPORT_TO",
    "--resume_from_checkpoint": "RESUME",
}
# Words that follow an option's name in our messages when no value does ("--max_steps must be ...").
_NOT_VALUES = {"must", "is", "are", "does", "needs", "has", "differs", "and", "or", "to", "of", "with", "was", "cannot"}
_OPTION = re.compile(r"(?<![\w-])(--[A-Za-z]\w*)(?![\w-])( (\S+))?")


class UsageError(ValueError):
    """A bad value supplied by the user; the message names the value and what would be valid."""


def one_line(err: BaseException | str) -> str:
    """An error message (ours or a library's) as one line: its first non-empty line, whitespace collapsed.

    Library messages (TrainingArguments, the hub, tokenizers) often run to several lines of advice; our policy
    is one line per error. A bulleted list right after the first line (`- Save strategy: ...`, as
    TrainingArguments writes the values it compares) is kept, joined on. An empty message gives the type's name.
    """
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    if not lines:
        return type(err).__name__
    kept = [lines[0]]
    for line in lines[1:]:
        if not line.startswith(("- ", "* ")):
            break
        kept.append(line)
    return re.sub(r"\s+", " ", " ".join(kept))


def via_run_sh() -> bool:
    return os.environ.get("MINILMV2_VIA_RUN_SH") == "1"


def user_names(message: str) -> str:
    """`message` with each option run.sh sets written as run.sh's variable (`--learning_rate 2` -> `LR=2`)."""
    if not via_run_sh():
        return message

    def rename(match: re.Match) -> str:
        flag, value = match.group(1), match.group(3)
        variable = RUN_SH_VARIABLES.get(flag)
        if variable is None:
            return match.group(0)
        if value is None or value.rstrip(",;:.").lower() in _NOT_VALUES:
            return variable + (match.group(2) or "")
        return f"{variable}={value}"

    return _OPTION.sub(rename, message)


def exit_on_usage_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI `main` so a `UsageError` prints one line to stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            print(f"error: {user_names(str(err))}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT_CODE) from None

    return wrapper
