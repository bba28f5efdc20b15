"""User-facing errors: one plain line, exit status 2, no traceback.

Anything a user can get wrong (a path, a shape, a config value) is raised as `UsageError` at start-up,
before a model is loaded or an output file is written. Entry points wrap `main` in `exit_on_usage_error`
so the user sees `error: <message>` and the shell sees status 2. Tracebacks are reserved for our bugs.

A message names an option through one vocabulary: `OPTIONS` maps each option's field to what its value means
and to run.sh's variable for it. `given("L", 9)` writes "the teacher layer --L 9", or "the teacher layer L=9" in
a run started by run.sh (which sets MINILMV2_VIA_RUN_SH=1 and sets its values through its variables); `option`
writes the bare name ("--output_dir" / "OUTPUT_DIR") for advice such as "choose another OUTPUT_DIR".
"""

from __future__ import annotations

import functools
import os
import re
import sys
from collections.abc import Callable
from typing import NamedTuple, TypeVar

T = TypeVar("T")

USAGE_EXIT_CODE = 2


class Option(NamedTuple):
    meaning: str  # what the value is, in words
    variable: str | None = None  # run.sh's variable that sets it (None: only through EXTRA_ARGS)


# The distillation's options that messages name (the flag is always "--" + the field).
OPTIONS = {
    "input_model_dir": Option("the teacher folder", "TEACHER_DIR"),
    "tokenizer_dir": Option("the tokenizer folder", "TOKENIZER_DIR"),
    "train_config": Option("the corpus config", "TRAIN_CONFIG"),
    "val_config": Option("the held-out corpus config", "VAL_CONFIG"),
    "output_dir": Option("the output folder", "OUTPUT_DIR"),
    "student_hidden_size": Option("the student hidden size", "STUDENT_HIDDEN_SIZE"),
    "student_num_layers": Option("the student's number of layers", "STUDENT_NUM_LAYERS"),
    "student_attention_heads": Option("the student's attention heads", "STUDENT_ATTENTION_HEADS"),
    "student_intermediate_size": Option("the student FFN size", "STUDENT_INTERMEDIATE_SIZE"),
    "L": Option("the teacher layer", "L"),
    "num_relation_heads": Option("the number of relation heads A_r", "NUM_RELATION_HEADS"),
    "minilm_relations": Option("the relations", "RELATIONS"),
    "minilm_v1": Option("the MiniLM v1 preset"),
    "student_init": Option("the student's initialisation", "STUDENT_INIT"),
    "relation_kernel": Option("the relation-loss kernel", "RELATION_KERNEL"),
    "per_device_train_batch_size": Option("the batch per process", "BATCH_SIZE"),
    "gradient_accumulation_steps": Option("the gradient accumulation", "GRAD_ACCUM"),
    "learning_rate": Option("the learning rate", "LR"),
    "adam_epsilon": Option("Adam's epsilon", "ADAM_EPS"),
    "adam_beta1": Option("Adam's beta1", "ADAM_BETA1"),
    "adam_beta2": Option("Adam's beta2", "ADAM_BETA2"),
    "weight_decay": Option("the weight decay", "WEIGHT_DECAY"),
    "max_grad_norm": Option("the gradient-clipping norm"),
    "max_steps": Option("the number of optimizer steps", "MAX_STEPS"),
    "warmup_steps": Option("the warm-up", "WARMUP_STEPS"),
    "save_steps": Option("the checkpoint interval", "SAVE_STEPS"),
    "logging_steps": Option("the logging interval", "LOGGING_STEPS"),
    "eval_steps": Option("the evaluation interval", "EVAL_STEPS"),
    "eval_strategy": Option("the evaluation schedule"),
    "load_best_model_at_end": Option("keeping the best checkpoint"),
    "metric_for_best_model": Option("the metric ranking checkpoints"),
    "max_seq_len": Option("the sequence length", "MAX_SEQ_LEN"),
    "no_packing": Option("one line per sequence"),
    "shuffle_buffer": Option("the shuffle buffer"),
    "prefetch_batches": Option("the batches prefetched"),
    "seed": Option("the seed", "SEED"),
    "report_to": Option("the tracker", "REPORT_TO"),
    "resume_from_checkpoint": Option("the checkpoint to resume", "RESUME"),
    "checkpoint_dir": Option("the checkpoint to resume"),
    "ignore_data_skip": Option("restarting the data stream"),
    "overwrite_output_dir": Option("starting afresh"),
}


def via_run_sh() -> bool:
    return os.environ.get("MINILMV2_VIA_RUN_SH") == "1"


def option(field: str) -> str:
    """The name a user sets `field` by: run.sh's variable in a run.sh run (where it has one), else the flag."""
    entry = OPTIONS.get(field)
    if via_run_sh() and entry is not None and entry.variable:
        return entry.variable
    return f"--{field}"


def setting(field: str, value: object) -> str:
    """The option with a value, as the user writes it: "--L 9", or "L=9" through run.sh."""
    entry = OPTIONS.get(field)
    name = option(field)
    return f"{name}={value}" if entry is not None and name == entry.variable else f"{name} {value}"


def given(field: str, value: object) -> str:
    """What the value means, then its setting: "the teacher layer --L 9" (through run.sh "the teacher layer L=9")."""
    entry = OPTIONS.get(field)
    return f"{entry.meaning} {setting(field, value)}" if entry else setting(field, value)


def refuse(field: str, value: object, problem: str) -> UsageError:
    """The UsageError for a bad value: `given(field, value)` then `problem` (what is wrong, what is valid)."""
    separator = "" if problem.startswith((":", ";", ",")) else " "
    return UsageError(f"{given(field, value)}{separator}{problem}")


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


def exit_on_usage_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI `main` so a `UsageError` prints one line to stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT_CODE) from None

    return wrapper
