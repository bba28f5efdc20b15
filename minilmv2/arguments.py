"""Command lines the Hugging Face examples' way, for every entry point (run_distillation and the hf_run_* scripts).

Dataclasses through `HfArgumentParser`, from argv or from one .json file; any error is one `UsageError` line
(argparse would print the whole usage), so a bad flag costs no model load.
"""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

from minilmv2.errors import UsageError, given, one_line, option

# argparse's words for a value of the wrong type, and what a valid one is.
_ARGPARSE_BAD_VALUE = re.compile(r"argument --(\w+)(?:/\S+)?: invalid (.+?) value: '(.*)'$")
_ARGPARSE_BAD_CHOICE = re.compile(r"argument --(\w+)(?:/\S+)?: invalid choice: '(.*)' \(choose from (.*)\)$")
_ARGPARSE_REQUIRED = "the following arguments are required: "
_KINDS = {"int": "a whole number", "float": "a number", "string_to_bool": "true or false"}


def argparse_message(message: str) -> str:
    """argparse's complaint about a value in our vocabulary (the option as the user set it, what is valid)."""
    if match := _ARGPARSE_BAD_VALUE.match(message):
        field, kind, value = match.groups()
        return f"{given(field, value)} is not valid: give {_KINDS.get(kind, f'a {kind} value')}"
    if match := _ARGPARSE_BAD_CHOICE.match(message):
        field, value, choices = match.groups()
        return f"{given(field, value)} is not valid: choose from {choices.replace(chr(39), '')}"
    if message.startswith(_ARGPARSE_REQUIRED):
        flags = message[len(_ARGPARSE_REQUIRED) :].split(", ")
        missing = [option(flag.split("/")[0].removeprefix("--")) for flag in flags]
        return f"required but not given: {', '.join(missing)}"
    return message


def parse_script_arguments(
    dataclass_types,
    argv: list[str] | None,
    renamed: dict[str, str] | None = None,
    unless_given: dict[str, object] | None = None,
    **parser_kwargs,
):
    """Dataclasses from argv, or from one .json file, through HfArgumentParser; every error is one UsageError.

    renamed: {flag: advice} for the seed scripts' flags that transformers 5 lacks (--per_gpu_train_batch_size...).
    unless_given: {field: value} set when neither the command line nor the .json file sets it (values that
    must be known at parse time, such as TrainingArguments' use_cpu). parser_kwargs go to HfArgumentParser.
    """
    from transformers import HfArgumentParser

    parser = HfArgumentParser(dataclass_types, **parser_kwargs)

    def refuse(message: str):  # argparse would print the whole usage; we print one line
        raise UsageError(argparse_message(message))

    parser.error = refuse
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if len(argv) == 1 and argv[0].endswith(".json"):
            if not Path(argv[0]).is_file():
                raise UsageError(f"argument file {argv[0]!r} does not exist")
            if not unless_given:
                return parser.parse_json_file(json_file=os.path.abspath(argv[0]))
            try:
                values = json.loads(Path(argv[0]).read_text(encoding="utf-8"))
            except (OSError, UnicodeDecodeError, ValueError) as err:
                raise UsageError(f"argument file {argv[0]!r} is not readable JSON ({one_line(err)})") from None
            if not isinstance(values, dict):
                raise UsageError(f"argument file {argv[0]!r} must hold one JSON object of option names and values")
            return parser.parse_dict({**unless_given, **values})
        for name, value in (unless_given or {}).items():
            if not any(arg == f"--{name}" or arg.startswith(f"--{name}=") for arg in argv):
                argv = [*argv, f"--{name}", str(value)]
        *arguments, unknown = parser.parse_args_into_dataclasses(args=argv, return_remaining_strings=True)
        if unknown:
            for flag in unknown:
                if flag.split("=")[0] in (renamed or {}):
                    raise UsageError(f"{flag.split('=')[0]} is gone: {renamed[flag.split('=')[0]]}")
            raise UsageError(f"unknown argument(s) {' '.join(unknown)}; see --help for the valid ones")
        return tuple(arguments)
    except UsageError:
        raise
    except (ValueError, TypeError) as err:  # TrainingArguments.__post_init__ validates its own values
        raise UsageError(one_line(err)) from None


def one_device_without_torchrun(training_args) -> None:
    """Plain `python` with several visible GPUs: one of them, not DataParallel; said in one line.

    The Trainer would wrap the model in DataParallel and multiply the batch (and divide the steps and warm-up) by
    the number of GPUs, silently changing the recipe. Under torchrun each process has its GPU (DDP).
    """
    import torch

    if "LOCAL_RANK" in os.environ or "WORLD_SIZE" in os.environ:
        return
    count = torch.cuda.device_count()
    if count > 1:
        _ = training_args.n_gpu  # sets up the devices first (cuda:0), then keeps one of them
        training_args._n_gpu = 1
        print(
            f"note: {count} GPUs are visible to this one process: it uses one (cuda:0), not DataParallel over "
            f"{count}, so the batch is the recipe's; pick the GPU with CUDA_VISIBLE_DEVICES, or start one process "
            "per GPU with torchrun",
            flush=True,
        )
