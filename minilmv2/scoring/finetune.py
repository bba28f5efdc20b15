"""What the fine-tuning scripts (hf_run_evaluation.py, hf_run_squad.py, hf_run_seq2seq.py) share.

Each script keeps its own command line and its `main()` in the order of Hugging Face's run_glue.py / run_qa.py
(parse -> check -> data -> model -> Trainer -> train -> evaluate -> results); this module holds the pieces they
would otherwise repeat:

- start-up checks, each failure one `UsageError` line naming the flag and what would be valid. They read only
  flags, configs and file listings, so a bad value costs no model load;
- the model options of the encoder scripts (`ModelArguments`) and the loaders that turn a failed hub lookup
  into such a line;
- the output directory's life: a finished run is refused unless overwritten, an unfinished one is resumed,
  and the result files are written last, so that their presence means the run got to its end.

transformers is imported inside the functions that need it, so that a bad flag is refused without its start-up.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from minilmv2.errors import UsageError, one_line
from minilmv2.hub import hub_offline, offline_switches
from minilmv2.model_files import WEIGHT_FILES, has_tokenizer, has_weights

# Files whose presence means a run in that output directory got to the end (they are written last).
FINISHED_RUN_FILES = ("all_results.json", "eval_results.json", "train_results.json")


@dataclass
class ModelArguments:
    """Which model/config/tokenizer to fine-tune from."""

    model_name_or_path: str = field(
        metadata={"help": "Model directory (e.g. the distilled student) or, online, a hub model id."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path, if not the model's."})
    tokenizer_name: str | None = field(
        default=None, metadata={"help": "Tokenizer name or path, if not the model's (students carry theirs)."}
    )
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache hub downloads."})
    model_revision: str = field(default="main", metadata={"help": "Hub revision (branch, tag or commit)."})
    token: str | None = field(default=None, metadata={"help": "Hub token for private models."})
    trust_remote_code: bool = field(default=False, metadata={"help": "Allow custom model code from the hub."})


# Set by run_eval.sh's sweep: check the arguments (EXTRA_ARGS included) once, then stop before any model loads.
VALIDATE_ONLY_ENV = "MINILMV2_VALIDATE_ONLY"


def validate_only() -> bool:
    """After the start-up checks: whether to stop there (the sweep's check of its arguments); says so."""
    if os.environ.get(VALIDATE_ONLY_ENV) == "1":
        print("arguments OK", flush=True)
        return True
    return False


# ---- start-up checks ---------------------------------------------------------------------------------------------


def check_something_to_do(training_args, do_predict_refusal: str) -> None:
    """UsageError without --do_train and --do_eval, and for --do_predict (do_predict_refusal says what instead)."""
    if not (training_args.do_train or training_args.do_eval):
        raise UsageError("nothing to do: pass --do_train and/or --do_eval")
    if training_args.do_predict:
        raise UsageError(do_predict_refusal)


def check_sample_limits(data_args, unit: str = "examples") -> None:
    """UsageError when --max_train_samples or --max_eval_samples is given but below 1 (unit: what a sample is)."""
    for option in ("max_train_samples", "max_eval_samples"):
        value = getattr(data_args, option)
        if value is not None and value < 1:
            raise UsageError(f"--{option} {value} must be at least 1 (or left out for all {unit})")


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
    if need_weights and not has_weights(path):
        raise UsageError(
            f"{option} {name_or_path!r} has a config.json but no weights ({', '.join(WEIGHT_FILES)}); "
            "fine-tuning it would score a randomly initialised model"
        )


def tokenizer_source(model_args) -> tuple[str, str]:
    """(option, name or path) of the tokenizer: --tokenizer_name when given, else the model's own."""
    if model_args.tokenizer_name:
        return "--tokenizer_name", model_args.tokenizer_name
    return "--model_name_or_path", model_args.model_name_or_path


def check_tokenizer_files(model_args) -> None:
    """UsageError when the tokenizer's source is a local directory without tokenizer files."""
    _, source = tokenizer_source(model_args)
    if Path(source).is_dir() and not has_tokenizer(source):
        raise UsageError(
            f"{source!r} holds no tokenizer files (tokenizer.json, vocab.txt, ...); pass --tokenizer_name DIR"
        )


def check_model_arguments(model_args: ModelArguments) -> None:
    """UsageError unless the model has weights, and the config and tokenizer sources are loadable folders."""
    check_model_dir(model_args.model_name_or_path, need_weights=True)
    if model_args.config_name:
        check_model_dir(model_args.config_name, "--config_name")
    check_tokenizer_files(model_args)


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
    """UsageError for an empty evaluation batch."""
    if training_args.do_eval and training_args.per_device_eval_batch_size < 1:
        raise UsageError(f"--per_device_eval_batch_size {training_args.per_device_eval_batch_size} must be at least 1")


def refuse_finished_run(output_dir: str, overwrite: bool) -> None:
    """UsageError when output_dir holds a finished run's result files and --overwrite_output_dir is not given."""
    output_dir = Path(output_dir)
    finished = [name for name in FINISHED_RUN_FILES if (output_dir / name).is_file()]
    if finished and not overwrite:
        raise UsageError(
            f"--output_dir {str(output_dir)!r} already holds a finished run ({finished[0]}); "
            "pass --overwrite_output_dir to replace it or choose another directory"
        )


# ---- loading -----------------------------------------------------------------------------------------------------


@contextlib.contextmanager
def refuse_load_errors(option: str, name_or_path: str):
    """Turn a failed hub lookup or download (unknown model id, no network, private repo without --token) into
    one UsageError line. transformers and huggingface_hub raise these as OSError subclasses, with several
    lines of advice; local directories were checked at start-up, so what reaches here is mostly the hub."""
    try:
        yield
    except OSError as err:
        raise UsageError(f"{option} {name_or_path!r} could not be loaded: {one_line(err)}") from None


def hub_kwargs(model_args: ModelArguments) -> dict:
    """The from_pretrained arguments that say where and how to fetch from the hub."""
    return dict(
        cache_dir=model_args.cache_dir,
        revision=model_args.model_revision,
        token=model_args.token,
        trust_remote_code=model_args.trust_remote_code,
    )


def load_config(model_args: ModelArguments, **overrides):
    """AutoConfig of --config_name, else of the model, with `overrides` (num_labels, ...) set."""
    from transformers import AutoConfig

    source = model_args.config_name or model_args.model_name_or_path
    with refuse_load_errors("--config_name" if model_args.config_name else "--model_name_or_path", source):
        return AutoConfig.from_pretrained(source, **overrides, **hub_kwargs(model_args))


def load_tokenizer(model_args, **from_pretrained_kwargs):
    """AutoTokenizer of --tokenizer_name, else of the model."""
    from transformers import AutoTokenizer

    option, source = tokenizer_source(model_args)
    with refuse_load_errors(option, source):
        return AutoTokenizer.from_pretrained(source, **from_pretrained_kwargs)


def fit_to_tokenizer(max_seq_length: int, tokenizer) -> int:
    """max_seq_length, or the tokenizer's model_max_length (said in one printed line) when that is shorter."""
    if max_seq_length > tokenizer.model_max_length:
        print(f"--max_seq_length {max_seq_length} exceeds the tokenizer's {tokenizer.model_max_length}; using that")
        return tokenizer.model_max_length
    return max_seq_length


def first_rows(dataset, limit: int | None):
    """The first `limit` rows of a datasets.Dataset (--max_train_samples, ...); all of them for None."""
    if limit is None:
        return dataset
    return dataset.select(range(min(limit, len(dataset))))


def pick_data_collator(tokenizer, pad_to_max_length: bool, training_args):
    """Stacks inputs already padded to max_seq_length, or pads each batch to its longest input (dynamic)."""
    from transformers import DataCollatorWithPadding, default_data_collator

    if pad_to_max_length:
        return default_data_collator
    # Lengths that are multiples of 8 keep the tensor cores busy under mixed precision.
    multiple = 8 if (training_args.fp16 or training_args.bf16) else None
    return DataCollatorWithPadding(tokenizer, pad_to_multiple_of=multiple)


# ---- the output directory and the run ----------------------------------------------------------------------------


def last_checkpoint_to_resume(training_args, overwrite: bool) -> str | None:
    """The newest checkpoint-N of an unfinished run in output_dir (run_glue's and run_qa's behaviour), unless
    overwriting; --resume_from_checkpoint wins over both."""
    from transformers.trainer_utils import get_last_checkpoint

    if training_args.resume_from_checkpoint is not None:
        return training_args.resume_from_checkpoint
    if overwrite or not training_args.do_train or not os.path.isdir(training_args.output_dir):
        return None
    return get_last_checkpoint(training_args.output_dir)


def remove_finished_results(output_dir: str | Path, *other_names: str) -> None:
    """Delete a finished run's result files (and other_names) before it is overwritten, so that a crash in the
    new run cannot leave the old results looking like the new ones."""
    for name in (*FINISHED_RUN_FILES, *other_names):
        Path(output_dir, name).unlink(missing_ok=True)


def run_training(trainer, train_dataset, checkpoint: str | None, save_model: bool) -> dict[str, float]:
    """Train (from `checkpoint` when resuming), save the model and the trainer state; the train metrics."""
    if checkpoint is not None:
        print(f"Resuming from {checkpoint}", flush=True)
    train_result = trainer.train(resume_from_checkpoint=checkpoint)
    metrics = {**train_result.metrics, "train_samples": len(train_dataset)}
    if save_model:
        trainer.save_model()  # saves the tokenizer too
    trainer.save_state()
    trainer.log_metrics("train", metrics)
    return metrics


def save_results(trainer, train_metrics: dict[str, float], eval_metrics: dict[str, float]) -> dict[str, float]:
    """Write train_results.json, eval_results.json and all_results.json; called last, as their presence marks
    a finished run (FINISHED_RUN_FILES). Returns all_results."""
    if train_metrics:
        trainer.save_metrics("train", train_metrics)
    if eval_metrics:
        trainer.save_metrics("eval", eval_metrics)
    all_results = {**train_metrics, **eval_metrics}
    if trainer.is_world_process_zero():
        print(f"Results written to {os.path.join(trainer.args.output_dir, 'all_results.json')}", flush=True)
    return all_results
