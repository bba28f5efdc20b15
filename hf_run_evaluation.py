#!/usr/bin/env python
"""Fine-tune and score a model (the distilled student, or any encoder directory) on a GLUE or offline task.

It reads like Hugging Face's examples/pytorch/text-classification/run_glue.py, rewritten for transformers 5
and for machines without the hub: GLUE comes from the standard TSV folder, csv/json files or (online) the hub,
metrics are the repository's evaluate modules (metrics/glue, ...: scikit-learn/scipy underneath, loaded by path
offline), and two real tasks need no GLUE at all.

    # GLUE from the TSV layout (GLUE_DIR/SST-2/{train,dev}.tsv, ...)
    python hf_run_evaluation.py --model_name_or_path runs/student --task_name sst2 --glue_dir GLUE_DIR \\
        --do_train --do_eval --max_seq_length 128 --per_device_train_batch_size 32 --learning_rate 2e-5 \\
        --num_train_epochs 3 --warmup_steps 0.1 --weight_decay 0.01 --seed 42 --output_dir runs/eval/sst2

    # offline tasks, no GLUE needed: tweet_sentiment (3 classes) or bbc_news (5 topics)
    python hf_run_evaluation.py --model_name_or_path runs/student --task_name bbc_news --do_train --do_eval \\
        --max_train_samples 512 --output_dir runs/eval/bbc_news

    # all arguments from one json file
    python hf_run_evaluation.py args.json

Results go to <output_dir>/eval_results.json and all_results.json with run_glue's keys (eval_accuracy,
eval_f1, eval_matthews_correlation, eval_pearson, ...; mnli adds the mismatched set's keys with an `_mm`
suffix). A directory that already holds a finished run is refused unless --overwrite_output_dir is given;
one holding checkpoints of an unfinished run is resumed from the last one. run_eval.sh sweeps this script
over learning rates and epochs.

Transformers-5 notes for run_glue users: `--eval_strategy` (not --evaluation_strategy), `--warmup_steps 0.1`
is a ratio (--warmup_ratio is gone), `--overwrite_output_dir` is ours (TrainingArguments dropped it).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402

from minilmv2.arguments import one_device_without_torchrun, parse_script_arguments  # noqa: E402
from minilmv2.errors import UsageError, exit_on_usage_error  # noqa: E402
from minilmv2.scoring import finetune, sentence_tasks  # noqa: E402
from minilmv2.scoring.finetune import (  # noqa: E402
    check_eval_batch,
    check_model_arguments,
    check_sample_limits,
    check_something_to_do,
    check_training_values,
    first_rows,
    fit_to_tokenizer,
    hub_kwargs,
    last_checkpoint_to_resume,
    load_config,
    load_tokenizer,
    pick_data_collator,
    refuse_finished_run,
    refuse_load_errors,
    remove_finished_results,
    run_training,
    save_results,
    validate_only,
)


@dataclass
class ModelArguments(finetune.ModelArguments):
    """The shared model options, and what to do with a classification head of another size."""

    ignore_mismatched_sizes: bool = field(
        default=False, metadata={"help": "Re-initialise a classification head whose size does not match."}
    )


@dataclass
class DataTrainingArguments:
    """Which data to fine-tune and score on, and how to feed it."""

    task_name: str | None = field(
        default=None,
        metadata={
            "help": "GLUE task ("
            + ", ".join(sentence_tasks.GLUE_TASKS)
            + ") or offline task ("
            + ", ".join(sentence_tasks.OFFLINE_TASKS)
            + ")."
        },
    )
    glue_dir: str | None = field(
        default=None, metadata={"help": "GLUE root in the standard TSV layout (SST-2/, MRPC/, CoLA/, ...)."}
    )
    offline_data_dir: str | None = field(
        default=None,
        metadata={"help": "Raw files of the offline tasks (default: $MINILMV2_ASSETS/tasks or .assets/tasks)."},
    )
    train_file: str | None = field(default=None, metadata={"help": "csv/json training file (run_glue style)."})
    validation_file: str | None = field(default=None, metadata={"help": "csv/json validation file."})
    max_seq_length: int = field(default=128, metadata={"help": "Longer inputs are truncated."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every input to max_seq_length instead of per batch (dynamic)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N dev examples."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenising."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir instead of refusing."}
    )
    save_final_model: bool = field(
        default=True, metadata={"help": "Save the fine-tuned model to output_dir (sweeps may turn it off)."}
    )


def parse_arguments(argv: list[str] | None):
    """(ModelArguments, DataTrainingArguments, TrainingArguments) from argv or from one .json file."""
    from transformers import TrainingArguments

    return parse_script_arguments((ModelArguments, DataTrainingArguments, TrainingArguments), argv)


def check_arguments(
    model_args: ModelArguments, data_args: DataTrainingArguments, training_args
) -> sentence_tasks.TaskSpec | None:
    """Every start-up check on user input; UsageError on the first bad value. Writes nothing.

    Returns the task spec (None when the task is defined by csv/json files alone).
    """
    check_something_to_do(
        training_args, "--do_predict is not supported (GLUE test labels are hidden); use --do_eval on dev"
    )
    spec = sentence_tasks.get_task(data_args.task_name) if data_args.task_name else None
    files = data_files(data_args)
    if spec is None and not files:
        raise UsageError(
            "no task: pass --task_name (" + ", ".join(sentence_tasks.TASKS) + ") or --train_file/--validation_file"
        )
    if files and training_args.do_train and "train" not in files:
        raise UsageError("--do_train needs --train_file next to --validation_file")
    if files and training_args.do_eval and "validation" not in files:
        raise UsageError("--do_eval needs --validation_file next to --train_file")

    if files:
        sentence_tasks.check_data_files(files)
        if data_args.glue_dir:
            raise UsageError("pass either --glue_dir or --train_file/--validation_file, not both")
    elif spec.name in sentence_tasks.OFFLINE_TASKS:
        if data_args.glue_dir:
            raise UsageError(f"task {spec.name!r} is not a GLUE task; it reads --offline_data_dir, not --glue_dir")
        sentence_tasks.offline_task_paths(spec, data_args.offline_data_dir or sentence_tasks.default_offline_data_dir())
    elif data_args.glue_dir:
        sentence_tasks.glue_tsv_paths(spec, data_args.glue_dir, needed_splits(spec, training_args))
    else:
        sentence_tasks.check_hub_online(spec)

    check_model_arguments(model_args)

    check_training_values(training_args)
    check_eval_batch(training_args)
    if data_args.max_seq_length < 1:
        raise UsageError(f"--max_seq_length {data_args.max_seq_length} must be a positive number of tokens")
    check_sample_limits(data_args, "examples")
    refuse_finished_run(training_args.output_dir, data_args.overwrite_output_dir)
    return spec


def data_files(data_args: DataTrainingArguments) -> dict[str, str]:
    """{split: path} of the csv/json files given (--train_file, --validation_file)."""
    files = {}
    if data_args.train_file:
        files["train"] = data_args.train_file
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    return files


def needed_splits(spec: sentence_tasks.TaskSpec, training_args) -> list[str]:
    """Splits this run reads: train when training, the task's dev split(s) when evaluating."""
    return (["train"] if training_args.do_train else []) + (list(spec.eval_splits) if training_args.do_eval else [])


def load_raw_datasets(spec, data_args, model_args, training_args):
    """(DatasetDict in glue's schema, task spec) from whichever source the arguments name."""
    files = data_files(data_args)
    if files:
        return sentence_tasks.load_data_files(files, spec, cache_dir=model_args.cache_dir)
    if spec.name in sentence_tasks.OFFLINE_TASKS:
        return sentence_tasks.load_offline_task(
            spec, data_args.offline_data_dir or sentence_tasks.default_offline_data_dir()
        ), spec
    splits = needed_splits(spec, training_args)
    if data_args.glue_dir:
        return sentence_tasks.load_glue_dir(spec, data_args.glue_dir, splits), spec
    with refuse_load_errors("--task_name", spec.name):  # the hub's GLUE copy: no network, a proxy error, ...
        return sentence_tasks.load_glue_hub(spec, splits, cache_dir=model_args.cache_dir), spec


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the script; returns the metrics written to all_results.json."""
    model_args, data_args, training_args = parse_arguments(argv)
    spec = check_arguments(model_args, data_args, training_args)
    if validate_only():
        return {}
    one_device_without_torchrun(training_args)

    # Heavy imports only after the arguments passed, so a typo costs no start-up time.
    import transformers
    from transformers import AutoModelForSequenceClassification, EvalPrediction, Trainer, set_seed

    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)

    raw_datasets, spec = load_raw_datasets(spec, data_args, model_args, training_args)
    print(sentence_tasks.task_summary(spec), flush=True)

    # ---- model and tokenizer (adapt here for architectures that need more than Auto* classes) ----------------
    config = load_config(model_args, num_labels=spec.num_labels, finetuning_task=spec.name)
    if not spec.is_regression:
        config.label2id = {name: index for index, name in enumerate(spec.label_names)}
        config.id2label = dict(enumerate(spec.label_names))
    else:
        config.problem_type = "regression"
    tokenizer = load_tokenizer(model_args, **hub_kwargs(model_args))
    with refuse_load_errors("--model_name_or_path", model_args.model_name_or_path):
        model = AutoModelForSequenceClassification.from_pretrained(
            model_args.model_name_or_path,
            config=config,
            ignore_mismatched_sizes=model_args.ignore_mismatched_sizes,
            **hub_kwargs(model_args),
        )
    max_seq_length = fit_to_tokenizer(data_args.max_seq_length, tokenizer)

    # ---- tokenise -------------------------------------------------------------------------------------------------
    first_key, second_key = spec.text_keys
    padding = "max_length" if data_args.pad_to_max_length else False

    def tokenize(batch):
        texts = (batch[first_key],) if second_key is None else (batch[first_key], batch[second_key])
        return tokenizer(*texts, padding=padding, max_length=max_seq_length, truncation=True)

    def prepare(split: str, limit: int | None):
        dataset = first_rows(raw_datasets[split], limit)
        text_columns = [key for key in spec.text_keys if key is not None]
        return dataset.map(
            tokenize,
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=text_columns,
            desc=f"Tokenising {split}",
        )

    train_dataset = prepare("train", data_args.max_train_samples) if training_args.do_train else None
    eval_datasets = {}
    if training_args.do_eval:
        eval_datasets = {split: prepare(split, data_args.max_eval_samples) for split in spec.eval_splits}

    # As run_glue's `evaluate.load("glue", task)`, from the repository's metrics/ folder (works offline).
    metric = sentence_tasks.load_task_metric(spec)

    def compute_metrics(prediction: EvalPrediction) -> dict[str, float]:
        logits = prediction.predictions[0] if isinstance(prediction.predictions, tuple) else prediction.predictions
        predicted = np.squeeze(logits, axis=-1) if spec.is_regression else np.argmax(logits, axis=-1)
        return metric.compute(predictions=predicted, references=prediction.label_ids)

    # An unfinished run's checkpoints are resumed; a finished run being overwritten loses its result files now.
    checkpoint = last_checkpoint_to_resume(training_args, data_args.overwrite_output_dir)
    if data_args.overwrite_output_dir:
        remove_finished_results(training_args.output_dir)

    first_eval_split = spec.eval_splits[0]
    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_datasets.get(first_eval_split),
        compute_metrics=compute_metrics,
        processing_class=tokenizer,
        data_collator=pick_data_collator(tokenizer, data_args.pad_to_max_length, training_args),
    )

    # ---- train ----------------------------------------------------------------------------------------------------
    train_metrics: dict[str, float] = {}
    if training_args.do_train:
        train_metrics = run_training(trainer, train_dataset, checkpoint, data_args.save_final_model)

    # ---- evaluate (mnli: matched, then mismatched with an _mm suffix, as run_glue) ---------------------------------
    eval_metrics: dict[str, float] = {}
    for split, dataset in eval_datasets.items():
        metrics = trainer.evaluate(eval_dataset=dataset)
        metrics["eval_samples"] = len(dataset)
        if split == "validation_mismatched":
            metrics = {f"{key}_mm": value for key, value in metrics.items()}
        trainer.log_metrics("eval", metrics)
        eval_metrics.update(metrics)

    return save_results(trainer, train_metrics, eval_metrics)


if __name__ == "__main__":
    main()
