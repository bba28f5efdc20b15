#!/usr/bin/env python
"""Fine-tune and score a model (the distilled student, or any encoder directory) on SQuAD v1.1 or 2.0.

It reads like Hugging Face's examples/pytorch/question-answering/run_qa.py, and takes the command line of the
MiniLM README's run_squad.py where it still makes sense:

    # SQuAD 2.0 from the official JSON files (the MiniLM recipe; 4 GPUs x 12 = batch 48 in the paper)
    python hf_run_squad.py --model_name_or_path runs/student --do_train --do_eval \\
        --data_dir SQUAD_DIR --train_file train-v2.0.json --predict_file dev-v2.0.json \\
        --version_2_with_negative --do_lower_case --max_seq_length 384 --doc_stride 128 \\
        --learning_rate 4e-5 --num_train_epochs 4 --per_device_train_batch_size 12 \\
        --warmup_steps 0.1 --weight_decay 0.01 --output_dir runs/squad2

    # online: the hub's copies instead of files
    python hf_run_squad.py --model_name_or_path runs/student --dataset_name squad_v2 --version_2_with_negative \\
        --do_train --do_eval --output_dir runs/squad2

    # all arguments from one json file
    python hf_run_squad.py args.json

Outputs in --output_dir: eval_results.json / all_results.json (eval_exact, eval_f1, eval_HasAns_*, eval_NoAns_*,
eval_best_exact, eval_best_f1 and their thresholds for 2.0; eval_exact_match, eval_f1 for v1.1),
predictions.json ({id: answer text}, "" = no answer), null_odds.json ({id: null score - best span score},
2.0 only), nbest_predictions.json, and the fine-tuned model. Scores come from the repository's evaluate module
metrics/squad_v2 (or metrics/squad), our own implementation of the official evaluation.

Differences from run_qa a user should know: `--doc_stride` is the step between window starts, as in the seed's
run_squad (run_qa uses it as the overlap); `--max_query_length` cuts long questions as run_squad did; padding is
per batch by default; evaluation runs once, after training (--eval_strategy other than "no" is refused).
`--do_lower_case` is a no-op kept for the seed's command line: the tokenizer lower-cases (or not) by itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


from minilmv2.arguments import one_device_without_torchrun, parse_script_arguments  # noqa: E402
from minilmv2.errors import UsageError, exit_on_usage_error  # noqa: E402
from minilmv2.scoring import finetune, squad  # noqa: E402
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

# Flags of the seed's run_squad.py that transformers 5 does not have, with what to use instead.
RENAMED_FLAGS = {
    "--per_gpu_train_batch_size": "use --per_device_train_batch_size (the batch per GPU)",
    "--per_gpu_eval_batch_size": "use --per_device_eval_batch_size",
    "--model_type": "not needed; the model's config.json names its type",
    "--evaluate_during_training": "evaluation runs after training; leave it out",
    "--overwrite_cache": "datasets caches nothing here; leave it out",
    "--fp16_opt_level": "use --fp16 or --bf16 (native mixed precision, no apex)",
    "--version_2_with_negative_threshold": "use --null_score_diff_threshold",
}


@dataclass
class ModelArguments(finetune.ModelArguments):
    """The shared model options, and the seed's --do_lower_case."""

    do_lower_case: bool = field(
        default=False,
        metadata={"help": "Seed flag, a no-op: an uncased tokenizer lower-cases by itself (tokenizer_config.json)."},
    )


@dataclass
class DataTrainingArguments:
    """Which data to fine-tune and score on, and how to cut it into windows and read answers back."""

    data_dir: str | None = field(default=None, metadata={"help": "Folder holding --train_file and --predict_file."})
    train_file: str | None = field(default=None, metadata={"help": "SQuAD JSON for training, e.g. train-v2.0.json."})
    predict_file: str | None = field(default=None, metadata={"help": "SQuAD JSON to score, e.g. dev-v2.0.json."})
    validation_file: str | None = field(default=None, metadata={"help": "run_qa's name for --predict_file."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Online instead of files: squad or squad_v2 (or a hub id in that schema)."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset config, if any."})
    version_2_with_negative: bool = field(
        default=False, metadata={"help": "SQuAD 2.0: some questions have no answer; predict '' for them."}
    )
    null_score_diff_threshold: float = field(
        default=0.0,
        metadata={"help": "Answer '' when null score - best span score exceeds this (2.0; see best_f1_thresh)."},
    )
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per window: question + context + specials."})
    doc_stride: int = field(default=128, metadata={"help": "Tokens between the starts of consecutive windows."})
    max_query_length: int = field(default=64, metadata={"help": "Questions are cut to this many tokens."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer span in tokens."})
    n_best_size: int = field(default=20, metadata={"help": "Start/end candidates per window; answers in nbest."})
    pad_to_max_length: bool = field(
        default=False, metadata={"help": "Pad every window to max_seq_length instead of per batch (dynamic)."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train questions."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N dev questions."})
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

    return parse_script_arguments(
        (ModelArguments, DataTrainingArguments, TrainingArguments), argv, renamed=RENAMED_FLAGS
    )


def data_file_path(data_args: DataTrainingArguments, name: str) -> str:
    """A --train_file / --predict_file as the seed's run_squad reads it: relative to --data_dir when given."""
    return str(Path(data_args.data_dir) / name) if data_args.data_dir else name


def check_arguments(model_args: ModelArguments, data_args: DataTrainingArguments, training_args):
    """Every start-up check on user input; UsageError on the first bad value. Writes nothing.

    Returns {"train"/"validation": SquadFile} for local files (read once here and reused), {} for the hub.
    """
    check_something_to_do(
        training_args, "--do_predict is not used here; --do_eval scores --predict_file and writes predictions.json"
    )
    if training_args.eval_strategy != "no":
        strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
        raise UsageError(
            f"--eval_strategy {strategy} is not supported: SQuAD is scored once, after training (leave it at 'no')"
        )
    if data_args.validation_file and data_args.predict_file and data_args.validation_file != data_args.predict_file:
        raise UsageError("--validation_file and --predict_file name the same input; pass one of them")
    predict_file = data_args.predict_file or data_args.validation_file

    # ---- window sizes (the doc_stride >= max_seq_length, and what leaves no room for a context) ----
    if data_args.max_seq_length < 8:
        raise UsageError(f"--max_seq_length {data_args.max_seq_length} is too short for a question and a context")
    if not 1 <= data_args.doc_stride < data_args.max_seq_length:
        raise UsageError(
            f"--doc_stride {data_args.doc_stride} must be at least 1 and below --max_seq_length "
            f"{data_args.max_seq_length} (the step between windows; the seed uses 128 with 384)"
        )
    if not 1 <= data_args.max_query_length <= data_args.max_seq_length - 5:
        raise UsageError(
            f"--max_query_length {data_args.max_query_length} must be between 1 and --max_seq_length - 5 "
            f"({data_args.max_seq_length - 5}) so that every window keeps room for the context"
        )
    for option in ("max_answer_length", "n_best_size"):
        if getattr(data_args, option) < 1:
            raise UsageError(f"--{option} {getattr(data_args, option)} must be at least 1")
    check_sample_limits(data_args, "questions")
    check_training_values(training_args)
    check_eval_batch(training_args)

    # ---- data ---------------------------------------------------------------------------------------------
    files = {}
    if data_args.dataset_name:
        if data_args.train_file or predict_file or data_args.data_dir:
            raise UsageError("pass either --dataset_name or --data_dir/--train_file/--predict_file, not both")
        check_hub_dataset(data_args)
    else:
        if training_args.do_train and not data_args.train_file:
            raise UsageError("--do_train needs --train_file (e.g. train-v2.0.json) or --dataset_name")
        if training_args.do_eval and not predict_file:
            raise UsageError("--do_eval needs --predict_file (e.g. dev-v2.0.json) or --dataset_name")
        if data_args.data_dir and not Path(data_args.data_dir).is_dir():
            raise UsageError(f"--data_dir {data_args.data_dir!r} is not a directory")
        wanted = []
        if training_args.do_train:
            wanted.append(("train", "--train_file", data_args.train_file))
        if training_args.do_eval:
            wanted.append(("validation", "--predict_file", predict_file))
        for split, option, name in wanted:
            path = data_file_path(data_args, name)
            files[split] = squad.read_squad_json(path, option)
            squad.check_version(files[split], option, path, data_args.version_2_with_negative)

    # ---- model, tokenizer, output directory ---------------------------------------------------------------
    check_model_arguments(model_args)
    refuse_finished_run(training_args.output_dir, data_args.overwrite_output_dir)
    return files


def check_window_fits(data_args: DataTrainingArguments, max_seq_length: int, whose: str) -> None:
    """UsageError when doc_stride or max_query_length leave a window of max_seq_length no room."""
    if data_args.doc_stride >= max_seq_length:
        raise UsageError(f"--doc_stride {data_args.doc_stride} must be below {whose} max length {max_seq_length}")
    if data_args.max_query_length > max_seq_length - 5:
        raise UsageError(
            f"--max_query_length {data_args.max_query_length} leaves no room for the context in {whose} "
            f"max length {max_seq_length}; pass at most {max_seq_length - 5}"
        )


def check_hub_dataset(data_args: DataTrainingArguments) -> None:
    """UsageError when --dataset_name needs the hub but it is offline, or disagrees with the version flag."""
    from minilmv2.hub import hub_offline, offline_switches

    if hub_offline():
        raise UsageError(
            f"--dataset_name {data_args.dataset_name!r} needs the hub, which is offline ({offline_switches()}); "
            "pass --data_dir with --train_file/--predict_file in the SQuAD JSON layout"
        )
    short_name = data_args.dataset_name.split("/")[-1]
    if short_name == "squad_v2" and not data_args.version_2_with_negative:
        raise UsageError(f"--dataset_name {data_args.dataset_name!r} is SQuAD 2.0; pass --version_2_with_negative")
    if short_name == "squad" and data_args.version_2_with_negative:
        raise UsageError(f"--dataset_name {data_args.dataset_name!r} is SQuAD v1.1; drop --version_2_with_negative")


def check_tokenizer(tokenizer, model_args: ModelArguments) -> None:
    """Span extraction needs character offsets, which only fast (Rust) tokenizers give."""
    if not tokenizer.is_fast:
        raise UsageError(
            f"the tokenizer of {model_args.tokenizer_name or model_args.model_name_or_path!r} is not a fast "
            "tokenizer (no character offsets); pass a folder with tokenizer.json via --tokenizer_name"
        )


def lower_case_note(tokenizer) -> str:
    """What --do_lower_case means for this tokenizer (the flag never changes the input)."""
    lowers = tokenizer.tokenize("Paris LONDON") == tokenizer.tokenize("paris london")
    if lowers:
        return "--do_lower_case: a no-op, the tokenizer already lower-cases its input"
    return (
        "--do_lower_case: ignored; this tokenizer is cased and lower-casing its input would not match its "
        "vocabulary (use an uncased model's tokenizer to lower-case)"
    )


def load_raw_datasets(files, data_args, model_args):
    """DatasetDict {train?, validation?} in the hub's squad schema, from the files read at start-up or the hub."""
    import datasets

    if files:
        return datasets.DatasetDict({split: squad.to_dataset(data) for split, data in files.items()})
    name = squad.HUB_NAMES.get(data_args.dataset_name, data_args.dataset_name)
    with refuse_load_errors("--dataset_name", data_args.dataset_name):
        return datasets.load_dataset(name, data_args.dataset_config_name, cache_dir=model_args.cache_dir)


def write_json(path: Path, value) -> None:
    path.write_text(json.dumps(value, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the script; returns the metrics written to all_results.json."""
    model_args, data_args, training_args = parse_arguments(argv)
    files = check_arguments(model_args, data_args, training_args)
    if validate_only():
        return {}
    one_device_without_torchrun(training_args)

    # Heavy imports only after the arguments passed, so a typo costs no start-up time.
    import transformers
    from transformers import AutoModelForQuestionAnswering, Trainer, set_seed

    from minilmv2.scoring.metrics import load_metric

    transformers.utils.logging.set_verbosity_warning()
    tokenizer = load_tokenizer(model_args, **hub_kwargs(model_args))
    check_tokenizer(tokenizer, model_args)
    if model_args.do_lower_case:
        print(lower_case_note(tokenizer), flush=True)
    # Windows are [CLS] question [SEP] context [SEP] with padding after them; the [CLS] position and the
    # per-feature logit slices below rely on right padding.
    tokenizer.padding_side = "right"
    max_seq_length = fit_to_tokenizer(data_args.max_seq_length, tokenizer)
    check_window_fits(data_args, max_seq_length, "the tokenizer's")

    set_seed(training_args.seed)
    raw_datasets = load_raw_datasets(files, data_args, model_args)

    # ---- model (adapt here for architectures that need more than Auto* classes) --------------------------------
    config = load_config(model_args)
    # A window longer than the position table would fail in the first forward pass, after the data work.
    from minilmv2.architectures import usable_positions

    positions = usable_positions(config)
    if positions is not None and max_seq_length > positions:
        raise UsageError(
            f"--max_seq_length {max_seq_length} exceeds the model's {positions} positions; pass at most {positions}"
        )
    with refuse_load_errors("--model_name_or_path", model_args.model_name_or_path):
        model = AutoModelForQuestionAnswering.from_pretrained(
            model_args.model_name_or_path, config=config, **hub_kwargs(model_args)
        )

    # ---- windows ---------------------------------------------------------------------------------------------------
    window_args = (tokenizer, max_seq_length, data_args.doc_stride, data_args.max_query_length)
    padding_kwargs = {"padding": "max_length"} if data_args.pad_to_max_length else {}

    def prepare(split: str, limit: int | None, make_features):
        examples = first_rows(raw_datasets[split], limit)
        features = examples.map(
            lambda batch: pad(make_features(batch, *window_args)),
            batched=True,
            num_proc=data_args.preprocessing_num_workers,
            remove_columns=examples.column_names,
            desc=f"Windows of {split}",
        )
        return examples, features

    def pad(columns):
        if not padding_kwargs:
            return columns
        model_keys = [key for key in tokenizer.model_input_names if key in columns]
        padded = tokenizer.pad({key: columns[key] for key in model_keys}, max_length=max_seq_length, **padding_kwargs)
        return {**columns, **{key: padded[key] for key in model_keys}}

    train_dataset = None
    if training_args.do_train:
        _, train_dataset = prepare("train", data_args.max_train_samples, squad.train_features)
        print(f"train: {len(train_dataset)} windows", flush=True)
    if training_args.do_eval:
        eval_examples, eval_features = prepare("validation", data_args.max_eval_samples, squad.eval_features)
        print(f"dev: {len(eval_examples)} questions in {len(eval_features)} windows", flush=True)

    # An unfinished run's checkpoints are resumed; a finished run being overwritten loses its result files now.
    checkpoint = last_checkpoint_to_resume(training_args, data_args.overwrite_output_dir)
    if data_args.overwrite_output_dir:
        remove_finished_results(training_args.output_dir)

    trainer = Trainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        processing_class=tokenizer,
        data_collator=pick_data_collator(tokenizer, data_args.pad_to_max_length, training_args),
    )

    # ---- train ----------------------------------------------------------------------------------------------------
    train_metrics: dict[str, float] = {}
    if training_args.do_train:
        train_metrics = run_training(trainer, train_dataset, checkpoint, data_args.save_final_model)

    # ---- evaluate: logits from the Trainer, answers picked here, scored by the squad / squad_v2 module -------------
    eval_metrics: dict[str, float] = {}
    if training_args.do_eval:
        model_columns = [key for key in tokenizer.model_input_names if key in eval_features.column_names]
        output = trainer.predict(eval_features.select_columns(model_columns), metric_key_prefix="eval")
        start_logits, end_logits = output.predictions[:2]
        predictions = squad.postprocess(
            eval_examples,
            eval_features,
            start_logits,
            end_logits,
            data_args.version_2_with_negative,
            n_best_size=data_args.n_best_size,
            max_answer_length=data_args.max_answer_length,
            null_score_diff_threshold=data_args.null_score_diff_threshold,
        )
        references = [{"id": row["id"], "answers": row["answers"]} for row in eval_examples]
        if data_args.version_2_with_negative:
            # The null odds stand in for the no-answer probability and the script's threshold for the metric's:
            # the metric then answers "" exactly where predictions.json does, so its exact/f1 are those of the
            # file, and best_f1_thresh is directly a value for --null_score_diff_threshold.
            formatted = [
                {"id": qid, "prediction_text": p.text, "no_answer_probability": p.null_odds}
                for qid, p in predictions.items()
            ]
            scores = load_metric("squad_v2").compute(
                predictions=formatted,
                references=references,
                no_answer_threshold=data_args.null_score_diff_threshold,
            )
        else:
            formatted = [{"id": qid, "prediction_text": p.text} for qid, p in predictions.items()]
            scores = load_metric("squad").compute(predictions=formatted, references=references)
        eval_metrics = {
            **{f"eval_{key}": value for key, value in scores.items()},
            **{key: value for key, value in output.metrics.items() if key != "eval_loss"},
            "eval_samples": len(eval_examples),
            "eval_windows": len(eval_features),
        }
        if trainer.is_world_process_zero():
            output_dir = Path(training_args.output_dir)
            output_dir.mkdir(parents=True, exist_ok=True)
            write_json(output_dir / "predictions.json", {qid: p.text for qid, p in predictions.items()})
            write_json(output_dir / "nbest_predictions.json", {qid: p.nbest for qid, p in predictions.items()})
            if data_args.version_2_with_negative:
                write_json(output_dir / "null_odds.json", {qid: p.null_odds for qid, p in predictions.items()})
        trainer.log_metrics("eval", eval_metrics)

    return save_results(trainer, train_metrics, eval_metrics)


if __name__ == "__main__":
    main()
