"""Start-up checks shared by the fine-tuning scripts (hf_run_evaluation.py, hf_run_squad.py, hf_run_seq2seq.py)
and run_eval.sh.

Everything here reads only flags, configs and file listings, so a bad value costs no model load: each
failure is one `UsageError` line naming the flag and what would be valid.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path

from minilmv2.errors import UsageError, one_line
from minilmv2.hub import hub_offline, offline_switches

# Any of these holds a model's weights (single file or sharded index, safetensors or the older .bin).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "vocab.json",
    "spiece.model",
    "sentencepiece.bpe.model",
)


def check_model_dir(name_or_path: str, option: str = "--model_name_or_path", need_weights: bool = False) -> None:
    """UsageError unless `name_or_path` is a model directory with a readable config.json (and, with
    need_weights, a weights file: a config alone would load as a randomly initialised model).

    A string that is not an existing path and does not look like one is a hub id: refused only when offline.
    It looks like a path when it starts with ".", "/" or "~", has more than one "/" (hub ids have at most
    one), or its first component exists here (`runs/student` with a `runs/` folder): such a string is
    checked as a local directory, never sent to the hub.
    """
    path = Path(name_or_path)
    first_component = name_or_path.replace(os.sep, "/").split("/")[0]
    looks_like_path = (
        path.exists()
        or name_or_path.startswith((".", "/", "~", os.sep))
        or name_or_path.count("/") > 1
        or (first_component != name_or_path.replace(os.sep, "/") and Path(first_component).exists())
    )
    if not looks_like_path:
        if hub_offline():
            raise UsageError(
                f"{option} {name_or_path!r} is not a local directory and the hub is offline "
                f"({offline_switches()}); pass a model directory holding config.json"
            )
        return
    if not path.is_dir():
        raise UsageError(f"{option} {name_or_path!r} is not a directory; pass a model directory holding config.json")
    config_path = path / "config.json"
    if not config_path.is_file():
        raise UsageError(
            f"{option} {name_or_path!r} has no config.json; pass a directory written by "
            "save_pretrained (e.g. the distilled student)"
        )
    try:
        config = json.loads(config_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{config_path} is not valid JSON ({one_line(err)})") from None
    if not isinstance(config, dict) or "model_type" not in config:
        raise UsageError(f"{config_path} has no 'model_type'; it is not a transformers model config")
    if need_weights and not any((path / name).is_file() for name in WEIGHT_FILES):
        raise UsageError(
            f"{option} {name_or_path!r} has a config.json but no weights ({', '.join(WEIGHT_FILES)}); "
            "fine-tuning it would score a randomly initialised model"
        )


def find_tokenizer_files(directory: Path) -> bool:
    """True when a directory holds any tokenizer file AutoTokenizer can load."""
    return any((directory / name).is_file() for name in TOKENIZER_FILES)


def check_training_values(training_args) -> None:
    """UsageError for values that would make a training run meaningless (its score would be that of an
    untrained head): no epochs and no steps, a learning rate that is not positive, an empty batch."""
    if not training_args.do_train:
        return
    if training_args.max_steps <= 0 and training_args.num_train_epochs <= 0:
        raise UsageError(
            f"--num_train_epochs {training_args.num_train_epochs:g} trains nothing; give a positive number of "
            "epochs (or --max_steps N)"
        )
    if training_args.learning_rate <= 0:
        raise UsageError(f"--learning_rate {training_args.learning_rate:g} must be positive (e.g. 2e-5)")
    if training_args.per_device_train_batch_size < 1:
        batch_size = training_args.per_device_train_batch_size
        raise UsageError(f"--per_device_train_batch_size {batch_size} must be at least 1")


def check_eval_batch(training_args) -> None:
    if training_args.do_eval and training_args.per_device_eval_batch_size < 1:
        raise UsageError(f"--per_device_eval_batch_size {training_args.per_device_eval_batch_size} must be at least 1")


@contextlib.contextmanager
def refuse_load_errors(option: str, name_or_path: str):
    """Turn a failed hub lookup or download (unknown model id, no network, private repo without --token) into
    one UsageError line. transformers and huggingface_hub raise these as OSError subclasses, with several
    lines of advice; local directories were checked at start-up, so what reaches here is mostly the hub."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"{option} {name_or_path!r} could not be loaded: {one_line(err)}") from None
