"""Distil a teacher into a small student with MiniLMv2 on a streamed corpus, and save the student.

Arguments as in Hugging Face's examples: three dataclasses (DataArguments, ModelArguments below, and
transformers' TrainingArguments) parsed by `HfArgumentParser`, from the command line or from one .json file
holding them all (`python -m minilmv2.run_distillation args.json`); `--help` lists every option with its
default. The reference's group words (data_params, training_params, model_params) may still separate them,
in any order, so its command lines and `bash run.sh` (which wraps this with the paper's recipe) run unchanged:

    python -m minilmv2.run_distillation \\
        data_params --train_config train_config.json [--val_config val.json] [--max_seq_len 512] [--no_packing] \\
        training_params --output_dir out --max_steps 400000 --per_device_train_batch_size 256 ... \\
                        (any transformers TrainingArguments; plus --overwrite_output_dir) \\
        model_params --input_model_dir ./model/bert-base-uncased --student_hidden_size 384 \\
                     --student_num_layers 6 --student_attention_heads 12 --L 12 --num_relation_heads 48 \\
                     [--student_intermediate_size N] [--minilm_relations "{(1, 1): 1, (2, 2): 1, (3, 3): 1}"] \\
                     [--minilm_v1] [--tokenizer_dir D] [--checkpoint_dir D]

One node, all GPUs:  torchrun --standalone --nproc-per-node gpu -m minilmv2.run_distillation <groups>
Several nodes:       srun torchrun --nnodes $SLURM_NNODES --nproc-per-node gpu --rdzv-backend c10d \\
                         --rdzv-endpoint $HEAD:29500 -m minilmv2.run_distillation <groups>
CPU (gloo):          torchrun --standalone --nproc-per-node 2 -m minilmv2.run_distillation <groups>
Check the arguments only (no model is loaded): add --validate_only anywhere; outside torchrun, set
MINILMV2_WORLD_SIZE to the number of processes the run will have (run.sh does) so a resume is checked for it.

Outputs in --output_dir: `student/` (config.json, model.safetensors, tokenizer: `AutoModel.from_pretrained`
loads it), `loss_curve.png`, `trainer_state.json` (every logged loss), and `checkpoint-N/` every --save_steps
(trainer state, optimizer, scheduler, RNG, stream position, and the student; never the teacher). Resume with
`--resume_from_checkpoint latest` (or a path; the reference's `--checkpoint_dir` works too). SIGTERM/SIGINT
(SLURM preemption, Ctrl-C) writes a checkpoint and the student, then exits with status 128 + signal.
Every value a user can get wrong is checked before a model is loaded: one line, exit status 2. That covers
configs, weight-file headers, the tokenizer against the teacher, the first records and first tokens of each
rank's share of the corpus, the output folder's permissions and lock (one run per --output_dir), the
checkpoint to resume (intact, same student shape, same stream values) and the installed trackers.
`--resume_from_checkpoint latest` takes the newest checkpoint that is complete and intact, naming any it skips.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import json
import os
import shutil
import sys
import time
from pathlib import Path

from minilmv2.errors import UsageError, exit_on_usage_error, one_line, user_names
from minilmv2.model_files import (
    SINGLE_WEIGHT_FILES,
    TOKENIZER_FILES,
    WEIGHT_INDEX_FILES,
    has_tokenizer,
    has_weights,
)
from minilmv2.relations import DEFAULT_RELATIONS, relations_literal

# The reference's group words: optional separators, dropped before parsing (its command lines and run.sh have them).
GROUPS = ("data_params", "training_params", "model_params")
VALIDATE_ONLY_FLAG = "--validate_only"
LATEST = ("latest", "last", "true", "True")


@dataclasses.dataclass
class DataArguments:
    """The corpus (data_params in the reference's command line)."""

    train_config: str = dataclasses.field(
        metadata={"help": 'corpus config, JSON: {"urls": [...], "format": ..., "columns": ...} (or {"hub": ...})'}
    )
    val_config: str | None = dataclasses.field(
        default=None, metadata={"help": "the same for held-out text: its distillation loss at eval steps"}
    )
    max_seq_len: int = dataclasses.field(default=512, metadata={"help": "tokens per sequence"})
    no_packing: bool = dataclasses.field(
        default=False,
        metadata={"help": "one line per sequence, truncated, padded per batch (the reference) instead of packing"},
    )
    shuffle_buffer: int = dataclasses.field(default=1000, metadata={"help": "sequences in the seeded shuffle buffer"})
    prefetch_batches: int = dataclasses.field(
        default=4,
        metadata={"help": "batches tokenised ahead of the training step in a background thread (0: in the step)"},
    )


@dataclasses.dataclass
class ModelArguments:
    """Teacher, student shape and relations (model_params in the reference's command line)."""

    input_model_dir: str = dataclasses.field(metadata={"help": "teacher: a folder with config.json and weights"})
    student_hidden_size: int = dataclasses.field(metadata={"help": "student hidden size"})
    student_num_layers: int = dataclasses.field(metadata={"help": "student layers"})
    student_attention_heads: int = dataclasses.field(metadata={"help": "student attention heads"})
    L: int = dataclasses.field(metadata={"help": "teacher layer to distil (1-based)"})
    num_relation_heads: int | None = dataclasses.field(
        default=None,
        metadata={
            "help": "A_r, dividing both hidden sizes; required, except with --minilm_v1 (one per attention head)"
        },
    )
    minilm_relations: str = dataclasses.field(
        default=relations_literal(DEFAULT_RELATIONS),
        metadata={"help": "{(i, j): weight} with 1=Query, 2=Key, 3=Value"},
    )
    student_intermediate_size: int | None = dataclasses.field(
        default=None, metadata={"help": "student FFN size (default 4 x hidden)"}
    )
    tokenizer_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "tokenizer folder (default: --input_model_dir)"}
    )
    checkpoint_dir: str | None = dataclasses.field(
        default=None, metadata={"help": "a checkpoint to resume from (same as --resume_from_checkpoint)"}
    )
    relation_kernel: str = dataclasses.field(
        default="auto",
        metadata={"help": "relation-loss implementation: auto (Triton on CUDA when installed, else torch), torch, "
                          "compile, triton"},
    )  # fmt: skip
    minilm_v1: bool = dataclasses.field(
        default=False,
        metadata={"help": "MiniLM v1: Q-K attention + V-V relations, one relation head per attention head"},
    )


@dataclasses.dataclass
class RunOptions:
    """Options of this script that transformers 5's TrainingArguments does not have."""

    overwrite_output_dir: bool = dataclasses.field(
        default=False, metadata={"help": "start afresh in an --output_dir that holds an earlier run"}
    )


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, then every option with its default."""


def parse_args(argv: list[str]):
    """(DataArguments, ModelArguments, TrainingArguments, RunOptions) from a command line or one .json file.

    The reference's group words (data_params, training_params, model_params, in any order) and run.sh's leading
    `--` are separators only: they are dropped, and the options parsed as one list.
    """
    import torch
    from transformers import TrainingArguments

    from minilmv2.arguments import parse_script_arguments

    argv = [arg for arg in argv if arg not in GROUPS and arg != "--"]
    unless_given = {}
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        # On a CPU-only machine transformers 5 wants use_cpu for --bf16 and, without it, sets up no DDP (each
        # torchrun process would train alone). It must be known at parse time: __post_init__ sets up devices.
        unless_given["use_cpu"] = True
    return parse_script_arguments(
        (DataArguments, ModelArguments, TrainingArguments, RunOptions),
        argv,
        unless_given=unless_given,
        # No abbreviations: a typo such as --learning_rat must be an error, not silently --learning_rate.
        allow_abbrev=False,
        prog="python -m minilmv2.run_distillation",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )


def parse_relations(text: str) -> dict[tuple[int, int], float]:
    from minilmv2.shapes import validate_relations

    try:
        relations = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise UsageError(
            f'--minilm_relations "{text}" is not a literal like "{relations_literal(DEFAULT_RELATIONS)}"'
        ) from None
    try:
        relations = validate_relations(relations)
    except ValueError as err:
        raise UsageError(f"--minilm_relations {text!r}: {err}") from None
    if not any(weight > 0 for weight in relations.values()):
        raise UsageError(
            f"--minilm_relations {text!r} gives every relation weight 0: nothing would be distilled; give at "
            "least one a positive weight"
        )
    return relations


# ---- start-up checks: everything a user can get wrong, before any model is loaded ----


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def planned_world_size() -> int:
    """The run's number of processes: torchrun's WORLD_SIZE, else MINILMV2_WORLD_SIZE (run.sh's pre-check)."""
    value = os.environ.get("WORLD_SIZE") or os.environ.get("MINILMV2_WORLD_SIZE") or "1"
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"WORLD_SIZE/MINILMV2_WORLD_SIZE {value!r} is not a number of processes") from None


def check_positive(name: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise UsageError(f"{name} must be a positive integer, got {value}")


def load_teacher_config(model_dir: str):
    """The teacher's config, after checking the folder holds a supported encoder with weights."""
    from transformers import AutoConfig

    from minilmv2.architectures import ENCODER_LAYOUTS

    path = Path(model_dir)
    if not path.is_dir():
        raise UsageError(
            f"--input_model_dir {model_dir} does not exist; give a folder with the teacher's config.json and "
            "weights (e.g. the output of save_pretrained)"
        )
    if not (path / "config.json").is_file():
        raise UsageError(f"--input_model_dir {model_dir} has no config.json; give a folder written by save_pretrained")
    if not has_weights(path):
        raise UsageError(f"--input_model_dir {model_dir} has no weights ({' or '.join(SINGLE_WEIGHT_FILES)})")
    problem = teacher_weights_problem(path)
    if problem:
        raise UsageError(
            f"--input_model_dir {model_dir}: {problem}; save or download the teacher again (save_pretrained)"
        )
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise UsageError(f"--input_model_dir {model_dir}: config.json cannot be read ({one_line(err)})") from None
    if config.model_type not in ENCODER_LAYOUTS:
        raise UsageError(
            f"--input_model_dir {model_dir} is a {config.model_type!r} model; supported teachers: "
            f"{', '.join(sorted(ENCODER_LAYOUTS))}"
        )
    return config


def teacher_weights_problem(path: Path) -> str | None:
    """Why the teacher's weight files are truncated or damaged (from headers and sizes, no weights loaded)."""
    from minilmv2.checkpoints import safetensors_problem, torch_file_problem

    files = []
    for index_name in WEIGHT_INDEX_FILES:
        if (path / index_name).is_file():
            try:
                shards = sorted(set(json.loads((path / index_name).read_text())["weight_map"].values()))
            except (OSError, ValueError, KeyError, AttributeError):
                return f"{index_name} cannot be read"
            files += [path / shard for shard in shards]
    files += [path / name for name in SINGLE_WEIGHT_FILES if (path / name).is_file()]
    for file in files:
        if not file.is_file():
            return f"{file.name} (listed in the weight index) is missing"
        problem = safetensors_problem(file) if file.suffix == ".safetensors" else torch_file_problem(file)
        if problem:
            return problem
    return None


def load_tokenizer(model_args, teacher_config):
    """The tokenizer (files only, no weights), checked against the teacher's embeddings."""
    from transformers import AutoTokenizer

    option, directory = tokenizer_option(model_args)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise UsageError(f"{option} {directory}: the tokenizer cannot be loaded ({one_line(err)})") from None
    vocab = getattr(teacher_config, "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        raise UsageError(
            f"{option} {directory} has {len(tokenizer)} tokens but the teacher's embeddings have {vocab}; use the "
            "tokenizer the teacher was trained with (or one with at most that many tokens)"
        )
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise UsageError(f"{option} {directory}: the tokenizer has no [CLS]/[SEP] (or BOS/EOS) tokens")
    return tokenizer


def tokenizer_option(model_args) -> tuple[str, str]:
    if model_args.tokenizer_dir:
        return "--tokenizer_dir", model_args.tokenizer_dir
    return "--input_model_dir", model_args.input_model_dir


def check_training_values(args) -> None:
    """Optimizer and interval values TrainingArguments accepts but that make no sense (or crash later)."""
    import math

    def refuse(flag: str, value, valid: str):
        raise UsageError(f"{flag} {value} is not valid; {valid}")

    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        refuse("--learning_rate", args.learning_rate, "give a positive learning rate such as 6e-4")
    if not args.adam_epsilon > 0:
        refuse("--adam_epsilon", args.adam_epsilon, "give a small positive value such as 1e-6")
    for flag, beta in (("--adam_beta1", args.adam_beta1), ("--adam_beta2", args.adam_beta2)):
        if not 0 <= beta < 1:
            refuse(flag, beta, "it must be in [0, 1)")
    if not args.weight_decay >= 0:
        refuse("--weight_decay", args.weight_decay, "it must be 0 or more")
    if args.max_grad_norm is not None and not args.max_grad_norm >= 0:
        refuse("--max_grad_norm", args.max_grad_norm, "it must be 0 (no clipping) or more")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        refuse("--warmup_steps", args.warmup_steps, "it must be 0 or more")
    for kind in ("save", "logging", "eval"):
        value = getattr(args, f"{kind}_steps")
        if value is not None and not value > 0:
            refuse(f"--{kind}_steps", value, "give a positive number of steps")


def check_report_to(args) -> None:
    """Every tracker in --report_to is known and installed (the Trainer would fail only once models are loaded)."""
    from transformers.integrations import integration_utils as trackers

    requested = [name for name in (args.report_to or []) if name not in ("none", "all")]
    available = set(trackers.get_available_reporting_integrations())
    if trackers.is_azureml_available():
        available.add("azure_ml")
    if trackers.is_flytekit_available() and trackers.is_flyte_deck_standard_available():
        available.add("flyte")
    for name in requested:
        if name not in trackers.INTEGRATION_TO_CALLBACK:
            known = ", ".join(sorted(trackers.INTEGRATION_TO_CALLBACK))
            raise UsageError(f"--report_to {name} is not a tracker; valid: none, all, {known}")
        if name not in available:
            installed = ", ".join(sorted(available)) or "none"
            raise UsageError(
                f"--report_to {name}: {name} is not installed; install it, or report to an installed one "
                f"({installed}) or none"
            )


def check_writable(output_dir: Path) -> None:
    """The output folder (or the nearest existing folder above it, where it will be made) accepts new files."""
    import tempfile

    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise UsageError(f"--output_dir {output_dir}: {existing} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, nor on a read-only mount
        descriptor, probe = tempfile.mkstemp(prefix=".minilmv2-probe-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        where = "" if existing == output_dir else f" ({existing}, where it would be made)"
        raise UsageError(
            f"--output_dir {output_dir} is not writable{where}: {err.strerror}; choose a folder you can write to"
        ) from None


def check_student_matches(checkpoint: Path, model_args, teacher_config) -> None:
    """A resumed checkpoint's student has the shape this run asks for (its weights must load into it)."""
    try:
        saved = json.loads((checkpoint / "student" / "config.json").read_text())
    except (OSError, ValueError):
        return  # validate_checkpoint names a missing or unreadable student
    asked = {
        "--student_num_layers": ("num_hidden_layers", model_args.student_num_layers),
        "--student_hidden_size": ("hidden_size", model_args.student_hidden_size),
        "--student_attention_heads": ("num_attention_heads", model_args.student_attention_heads),
        "--student_intermediate_size": (
            "intermediate_size",
            model_args.student_intermediate_size or 4 * model_args.student_hidden_size,
        ),
    }
    if model_args.student_intermediate_size is None and saved.get("hidden_size") != model_args.student_hidden_size:
        del asked["--student_intermediate_size"]  # its default follows the hidden size: that difference says it
    differing = [f"{flag} {value} (it has {saved.get(key)})" for flag, (key, value) in asked.items()
                 if key in saved and saved[key] != value]  # fmt: skip
    if saved.get("vocab_size") not in (None, getattr(teacher_config, "vocab_size", None)):
        differing.append(f"the teacher's vocabulary of {teacher_config.vocab_size} (it has {saved['vocab_size']})")
    if differing:
        raise UsageError(
            f"checkpoint {checkpoint} holds a different student than this run asks for: {'; '.join(differing)}; "
            "resume with the checkpoint's shape, or start afresh in another --output_dir"
        )


def check_tokenizer_dir(model_args) -> None:
    """The tokenizer folder (--tokenizer_dir, else the teacher's) must hold a tokenizer's files."""
    option, directory = (
        ("--tokenizer_dir", model_args.tokenizer_dir)
        if model_args.tokenizer_dir
        else ("--input_model_dir", model_args.input_model_dir)
    )
    if not Path(directory).is_dir():
        raise UsageError(f"{option} {directory} does not exist")
    if not has_tokenizer(directory):
        raise UsageError(
            f"{option} {directory} has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one there with "
            "tokenizer.save_pretrained or pass --tokenizer_dir"
        )


def shape_flag_names():
    """The distiller's shape check names its values by this command line's flags (minilmv2.shapes.ShapeNames)."""
    from minilmv2.shapes import ShapeNames

    return ShapeNames(
        L="--L",
        A_r="--num_relation_heads",
        hidden_size="--student_hidden_size",
        num_layers="--student_num_layers",
        num_attention_heads="--student_attention_heads",
        intermediate_size="--student_intermediate_size",
        minilm_v1="--minilm_v1",
        separator=" ",
    )


def check_shapes(model_args, teacher_config, max_seq_len: int, relations=None) -> None:
    """Student shape, teacher layer, relation heads and relations (the distiller's own check, minilmv2.shapes,
    on configs, its messages naming this command line's flags), then the sequence length."""
    from minilmv2.shapes import StudentShape, check_distillation_shapes

    flag_names = shape_flag_names()
    student = StudentShape(
        model_args.student_hidden_size,
        model_args.student_num_layers,
        model_args.student_attention_heads,
        model_args.student_intermediate_size,
    )
    try:
        check_distillation_shapes(
            teacher_config,
            student,
            L=model_args.L,
            A_r=model_args.num_relation_heads,
            relations=relations,
            minilm_v1=model_args.minilm_v1,
            names=flag_names,
        )
    except ValueError as err:
        raise UsageError(one_line(err)) from None
    from minilmv2.architectures import usable_positions

    max_positions = usable_positions(teacher_config)
    if max_seq_len < 3 or (max_positions and max_seq_len > max_positions):
        raise UsageError(f"--max_seq_len {max_seq_len} must be in 3..{max_positions} (the teacher's positions)")


def check_relation_kernel(kernel: str, training_args) -> None:
    """--relation_kernel names an implementation that can run on the device this run will use."""
    import torch

    from minilmv2.relations import resolve_kernel

    device = "cuda" if torch.cuda.is_available() and not getattr(training_args, "use_cpu", False) else "cpu"
    try:
        resolve_kernel(kernel, device)
    except ValueError as err:
        raise UsageError(f"--relation_kernel: {err}") from None


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into a folder that holds an earlier one (finished or not)."""
    from minilmv2.checkpoints import CHECKPOINT_PREFIX, STUDENT_DIR

    if not output_dir.exists() or resuming or overwrite:
        return
    if not output_dir.is_dir():
        raise UsageError(f"--output_dir {output_dir} is a file; give a folder")
    if (output_dir / "trainer_state.json").is_file() and (output_dir / STUDENT_DIR).is_dir():
        raise UsageError(
            f"--output_dir {output_dir} already holds a finished run; pass --overwrite_output_dir to replace it "
            "or choose another --output_dir"
        )
    if any(output_dir.glob(f"{CHECKPOINT_PREFIX}*")):
        raise UsageError(
            f"--output_dir {output_dir} holds checkpoints of an earlier run; pass --resume_from_checkpoint latest "
            "to continue it or --overwrite_output_dir to start afresh"
        )


def clear_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: remove this script's earlier outputs (only those) from `output_dir`."""
    from minilmv2.checkpoints import CHECKPOINT_PREFIX, STUDENT_DIR

    for path in [*output_dir.glob(f"{CHECKPOINT_PREFIX}*"), output_dir / STUDENT_DIR]:
        shutil.rmtree(path, ignore_errors=True)
    for name in ("trainer_state.json", "loss_curve.png", "train_results.json", "all_results.json"):
        (output_dir / name).unlink(missing_ok=True)


def resolve_checkpoint(requested: str | None, output_dir: Path, check) -> Path | None:
    """The checkpoint to resume: the given path (checked by `check`), or for `latest` the newest one that is
    complete and intact, each damaged one skipped and named with its reason. `check` raises
    `CorruptCheckpointError` for damage and UsageError for a checkpoint that does not fit the run (refused)."""
    from minilmv2.checkpoints import CorruptCheckpointError, complete_checkpoints

    if requested is None:
        return None
    if requested not in LATEST:
        check(Path(requested))
        return Path(requested)
    skipped = []
    for checkpoint in reversed(complete_checkpoints(output_dir)):  # a save that never finished is no candidate
        try:
            check(checkpoint)
        except CorruptCheckpointError as err:  # damaged: an older one may be intact (one that does not fit: no)
            print0(f"note: skipping {checkpoint}: {err}")
            skipped.append(checkpoint.name)
            continue
        if skipped:
            print0(f"resuming from {checkpoint}, the newest intact checkpoint (skipped: {', '.join(skipped)})")
        return checkpoint
    detail = f" ({len(skipped)} skipped as damaged: {', '.join(skipped)})" if skipped else ""
    raise UsageError(f"--resume_from_checkpoint {requested}: no complete, intact checkpoint in {output_dir}{detail}")


@dataclasses.dataclass
class Plan:
    """Everything main() needs, checked."""

    data_args: DataArguments
    model_args: ModelArguments
    training_args: object
    run_options: RunOptions
    train_config: object
    val_config: object
    teacher_config: object
    relations: dict
    checkpoint: Path | None
    restore_data: bool
    tokenizer: object = None
    command: list[str] = dataclasses.field(default_factory=list)  # for the student's model card


def stream_options(data_args, training_args, tokenizer) -> dict:
    """What `TokenStream.options()` will say for this run's training stream (compared with a checkpoint's)."""
    return {
        "max_seq_len": data_args.max_seq_len,
        "packing": not data_args.no_packing,
        "shuffle_buffer": max(1, data_args.shuffle_buffer),
        "seed": training_args.seed,
        "vocab_size": len(tokenizer),
    }


def make_plan(argv: list[str]) -> Plan:
    """Every check, cheapest first; reads configs, headers, the tokenizer and the corpus's first records only."""
    from minilmv2.checkpoints import validate_checkpoint
    from minilmv2.data import first_record_problem, first_tokens_problem, load_corpus_config, missing_reader_problem
    from minilmv2.launch import check_output_lock

    data_args, model_args, training_args, run_options = parse_args(argv)
    train_config = load_corpus_config(data_args.train_config, "--train_config")
    val_config = load_corpus_config(data_args.val_config, "--val_config") if data_args.val_config else None
    check_positive("--shuffle_buffer", data_args.shuffle_buffer)
    if data_args.prefetch_batches < 0:
        raise UsageError(f"--prefetch_batches {data_args.prefetch_batches} must be 0 (no prefetch) or more")
    if training_args.max_steps is None or training_args.max_steps < 1:
        raise UsageError("--max_steps must be a positive number of optimizer steps (the corpus is a stream)")
    check_positive("--per_device_train_batch_size", training_args.per_device_train_batch_size)
    check_positive("--gradient_accumulation_steps", training_args.gradient_accumulation_steps)
    check_training_values(training_args)
    teacher_config = load_teacher_config(model_args.input_model_dir)
    check_tokenizer_dir(model_args)
    relations = parse_relations(model_args.minilm_relations)
    if model_args.minilm_v1 and relations != DEFAULT_RELATIONS:
        # run.sh always passes the default, so only relations the user changed can be told from it.
        raise UsageError(
            f"--minilm_relations {model_args.minilm_relations!r} does not apply with --minilm_v1, whose relations "
            "are Q-K and V-V; drop one of the two"
        )
    check_shapes(model_args, teacher_config, data_args.max_seq_len, relations)
    check_relation_kernel(model_args.relation_kernel, training_args)
    if training_args.load_best_model_at_end:
        if val_config is None:
            raise UsageError("--load_best_model_at_end needs held-out text to rank checkpoints: pass --val_config")
        if training_args.metric_for_best_model not in (None, "loss", "eval_loss"):
            raise UsageError(
                f"--metric_for_best_model {training_args.metric_for_best_model} is not reported; the held-out "
                "metric is loss (eval_loss)"
            )
    eval_strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if val_config is None and eval_strategy != "no":
        raise UsageError(
            f"--eval_strategy {eval_strategy} needs held-out text: pass data_params --val_config "
            "(or drop --eval_strategy)"
        )
    check_report_to(training_args)
    tokenizer = load_tokenizer(model_args, teacher_config)

    output_dir = Path(training_args.output_dir or "trainer_output")
    training_args.output_dir = str(output_dir)
    check_writable(output_dir)
    if env_rank() == 0:
        check_output_lock(output_dir)  # rank 0 takes the lock later; other ranks would find their own run's
    requested = training_args.resume_from_checkpoint or model_args.checkpoint_dir
    restore_data = requested is not None and not training_args.ignore_data_skip
    options = stream_options(data_args, training_args, tokenizer)

    def check(candidate: Path) -> None:
        validate_checkpoint(candidate, planned_world_size(), restore_data, train_config, options)
        check_student_matches(candidate, model_args, teacher_config)

    checkpoint = resolve_checkpoint(requested, output_dir, check)
    restore_data = checkpoint is not None and restore_data
    check_output_dir(output_dir, checkpoint is not None, run_options.overwrite_output_dir)

    # The corpus last (it reads files): the declared format and columns, then each rank's first tokens.
    world_size = planned_world_size()
    for option, config in (("--train_config", train_config), ("--val_config", val_config)):
        if config is None:
            continue
        path = data_args.train_config if option == "--train_config" else data_args.val_config
        problem = first_record_problem(config) or missing_reader_problem(config)
        if problem:
            raise UsageError(f"{option} {path}: {problem}")
        ranks = range(world_size) if option == "--train_config" else [0]  # held-out text is read whole by all
        for rank in ranks:
            shares = world_size if len(ranks) > 1 else 1
            problem = first_tokens_problem(config, tokenizer, rank, shares, f"{option} {path}")
            if problem:
                raise UsageError(problem)
    return Plan(
        data_args, model_args, training_args, run_options, train_config, val_config, teacher_config, relations,
        checkpoint, restore_data, tokenizer, ["python", "-m", "minilmv2.run_distillation", *argv],
    )  # fmt: skip


def configure_training_args(training_args, has_val: bool) -> None:
    """Settings this entry point needs, whatever the user passed."""
    import torch

    if has_val and str(training_args.eval_strategy) in ("no", "IntervalStrategy.NO"):
        training_args.eval_strategy = "steps"
        training_args.eval_steps = training_args.eval_steps or training_args.logging_steps
    # The stream position comes from the checkpoint; never fast-forward the loader by reading batches.
    training_args.ignore_data_skip = True
    # MiniLM freezes every parameter that gets no gradient, so DDP need not search the graph for unused ones
    # each step (the Trainer's default for a model that is not a PreTrainedModel is to search).
    if training_args.ddp_find_unused_parameters is None:
        training_args.ddp_find_unused_parameters = False
    # No loader of ours goes through accelerate (DistillationTrainer builds both), but should one ever be prepared,
    # rank 0 must not read and dispatch every batch: each rank's stream is already its own share.
    training_args.accelerator_config.dispatch_batches = False
    # No step reads a device value (DistillationTrainer): the trainer counts tokens on the host itself, instead of
    # the Trainer's per-step count on the device; no per-step check of the logged loss (the trainer's device-side
    # guard stops a non-finite run); DDP need not broadcast buffers (the student has none that change).
    training_args.include_num_input_tokens_seen = "no"
    training_args.logging_nan_inf_filter = False
    training_args.ddp_broadcast_buffers = False
    if not torch.cuda.is_available():
        training_args.dataloader_pin_memory = False  # pinning needs an accelerator
    if training_args.dataloader_num_workers:
        print0("note: --dataloader_num_workers is ignored: the token stream runs in the main process")
        training_args.dataloader_num_workers = 0


def newest_intact_checkpoint(output_dir: Path) -> Path | None:
    """The newest complete checkpoint whose files and student fingerprint check out, or None."""
    from minilmv2.checkpoints import complete_checkpoints, validate_checkpoint

    for checkpoint in reversed(complete_checkpoints(output_dir)):
        try:
            validate_checkpoint(checkpoint, 1, restore_data=False)
        except UsageError:
            continue
        return checkpoint
    return None


def print0(*args) -> None:
    if env_rank() == 0:
        print(*args, flush=True)


def run(plan: Plan) -> int:
    """Load, train, export; the SIGTERM/SIGINT handlers live only as long as training."""
    from minilmv2.launch import acquire_output_lock, release_output_lock, watch_parent
    from minilmv2.trainer import StopSignal

    watch_parent()
    output_dir = plan.training_args.output_dir
    lock = acquire_output_lock(output_dir) if env_rank() == 0 else None
    stop_signal = StopSignal().install()
    try:
        return train_and_export(plan, stop_signal)
    finally:
        stop_signal.restore()
        release_output_lock(lock, output_dir)


def train_and_export(plan: Plan, stop_signal) -> int:
    import torch
    from transformers import AutoModel, set_seed

    from minilmv2 import MiniLM, build_student, student_config_from_teacher
    from minilmv2.checkpoints import DATA_STATE_DIR, STUDENT_DIR, last_complete_checkpoint
    from minilmv2.data import PadCollator, TokenStream
    from minilmv2.model_card import write_model_card
    from minilmv2.plots import plot_loss_curve
    from minilmv2.student import ffn_size
    from minilmv2.trainer import DistillationTrainer, NonFiniteLossError

    data_args, model_args, args = plan.data_args, plan.model_args, plan.training_args
    output_dir = Path(args.output_dir)
    if plan.run_options.overwrite_output_dir and plan.checkpoint is None and env_rank() == 0:
        clear_previous_run(output_dir)
    configure_training_args(args, plan.val_config is not None)
    set_seed(args.seed)

    tokenizer = plan.tokenizer
    print0(f"loading the teacher from {model_args.input_model_dir}")
    teacher = AutoModel.from_pretrained(model_args.input_model_dir)
    student_config = student_config_from_teacher(
        teacher.config,
        hidden_size=model_args.student_hidden_size,
        num_layers=model_args.student_num_layers,
        num_attention_heads=model_args.student_attention_heads,
        intermediate_size=model_args.student_intermediate_size,
    )
    student = build_student(student_config)
    try:
        if model_args.minilm_v1:
            distiller = MiniLM.v1(teacher, student, L=model_args.L, kernel=model_args.relation_kernel)
        else:
            distiller = MiniLM(
                teacher,
                student,
                L=model_args.L,
                relations=plan.relations,
                A_r=model_args.num_relation_heads,
                kernel=model_args.relation_kernel,
            )
    except ValueError as err:
        raise UsageError(one_line(err)) from None
    # The frozen teacher computes in the run's precision, whatever dtype its weights were saved in (a bf16
    # checkpoint loads as bf16): fp32 unless --bf16 / --fp16.
    distiller.cast_teacher(torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32)
    trainable = sum(p.numel() for p in student.parameters() if p.requires_grad)
    print0(
        f"student: {student_config.num_hidden_layers} layers x {student_config.hidden_size} hidden x "
        f"{student_config.num_attention_heads} heads, FFN {ffn_size(student_config)}: "
        f"{sum(p.numel() for p in student.parameters()):,} parameters ({trainable:,} get a gradient)"
    )

    rank, world_size = env_rank(), env_world_size()
    stream_options = {"packing": not data_args.no_packing, "seed": args.seed}
    train_stream = TokenStream(
        plan.train_config, tokenizer, data_args.max_seq_len, shuffle_buffer=data_args.shuffle_buffer,
        rank=rank, world_size=world_size, infinite=True, name=f"--train_config {data_args.train_config}",
        **stream_options,
    )  # fmt: skip
    val_stream = None
    if plan.val_config is not None:
        # Every rank packs the whole held-out text the same way and scores its own sequences (i = rank mod world).
        val_stream = TokenStream(
            plan.val_config, tokenizer, data_args.max_seq_len, shuffle_buffer=1, infinite=False,
            sequence_shard=(rank, world_size), name=f"--val_config {data_args.val_config}", **stream_options,
        )  # fmt: skip
    if plan.restore_data:
        state_file = plan.checkpoint / DATA_STATE_DIR / f"rank-{rank}.json"
        try:
            train_stream.load_state_dict(json.loads(state_file.read_text())["stream"])
        except ValueError as err:
            raise UsageError(f"{state_file}: {err}; pass --ignore_data_skip to restart the data stream") from None
        seeks = all(unit.mode == "bytes" for unit in train_stream.units)
        how = "nothing is re-read or re-tokenised" if seeks else "row-wise files skip their consumed rows untokenised"
        print0(f"resuming the corpus stream where {plan.checkpoint} left it ({how})")

    trainer = DistillationTrainer(
        model=distiller,
        args=args,
        train_dataset=train_stream,
        eval_dataset=val_stream,
        data_collator=PadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        processing_class=tokenizer,
        stop_signal=stop_signal,
        prefetch_batches=data_args.prefetch_batches,
    )
    tokens_before = 0
    if plan.checkpoint is not None:
        tokens_before = json.loads((plan.checkpoint / "trainer_state.json").read_text()).get("num_input_tokens_seen", 0)
    started = time.perf_counter()
    try:
        trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan.checkpoint else None)
        trainer.raise_if_nonfinite()  # before the student is exported: its last updates were finite
        trainer.count_tokens()
    except NonFiniteLossError as err:
        if env_rank() == 0:
            good = newest_intact_checkpoint(output_dir)
            advice = "Lower --learning_rate" + (" or use --bf16 instead of --fp16" if args.fp16 else "")
            print(
                f"error: {err}; stopped before applying it. Last good checkpoint: "
                f"{good or 'none (no checkpoint yet)'}. {advice}, then resume from it.",
                file=sys.stderr,
                flush=True,
            )
        return 1
    elapsed = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen - tokens_before

    trainer.save_model(str(output_dir))  # the student export, atomically, on the main process
    curve = None
    if trainer.is_world_process_zero():
        curve = plot_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png")
        write_model_card(output_dir / STUDENT_DIR, summarise_run(plan, distiller, trainer, tokens_seen=tokens), curve)
    if trainer.stopped_by_signal is not None:
        print0(
            f"stopped by signal {trainer.stopped_by_signal} at step {trainer.state.global_step}; "
            f"checkpoint: {last_complete_checkpoint(output_dir)}; student: {output_dir / STUDENT_DIR}; "
            "resume with --resume_from_checkpoint latest"
        )
        return 128 + int(trainer.stopped_by_signal)
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json beside the student: marks the run finished
        print(f"throughput: {tokens / elapsed:,.0f} tokens/s over {world_size} process(es) ({tokens:,} tokens)")
        print(f"student:    {output_dir / STUDENT_DIR}")
        print(f"loss curve: {curve}")
        print(f"log:        {output_dir / 'trainer_state.json'}")
        if any(Path(output_dir).glob("checkpoint-*")):
            print(f"checkpoints: {output_dir}/checkpoint-*")
        for callback in trainer.callback_handler.callbacks:
            if type(callback).__name__ == "TensorBoardCallback" and getattr(callback, "logging_dir", None):
                print(f"tensorboard: {callback.logging_dir}")
    return 0


def summarise_run(plan: Plan, distiller, trainer, tokens_seen: int):
    """What the student's model card reports about this run (rank 0, after the export)."""
    from minilmv2.architectures import encoder_layers
    from minilmv2.model_card import DistillationSummary
    from minilmv2.student import ffn_size

    teacher, student = distiller.teacher, distiller.student
    config = student.config
    return DistillationSummary(
        teacher=plan.model_args.input_model_dir,
        teacher_layers=len(encoder_layers(teacher)),
        teacher_hidden_size=teacher.config.hidden_size,
        model_type=config.model_type,
        num_layers=config.num_hidden_layers,
        hidden_size=config.hidden_size,
        num_attention_heads=config.num_attention_heads,
        intermediate_size=ffn_size(config),
        num_parameters=sum(p.numel() for p in student.parameters()),
        teacher_layer=distiller.L,
        student_layer=distiller.M,
        num_relation_heads=distiller.A_r,
        relations=distiller.relations,
        steps=trainer.state.global_step,
        # The whole run's tokens, resumed parts included (the throughput line counts this process's part only).
        tokens_seen=int(trainer.state.num_input_tokens_seen or tokens_seen),
        command=plan.command,
        log_history=trainer.state.log_history,
        stopped_by_signal=None if trainer.stopped_by_signal is None else int(trainer.stopped_by_signal),
    )


def _main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if "-h" in argv or "--help" in argv:
        try:
            parse_args(argv)  # prints this docstring and every option with its default
        except SystemExit as exit_:
            return int(exit_.code or 0)
    validate_only = VALIDATE_ONLY_FLAG in argv
    argv = [arg for arg in argv if arg != VALIDATE_ONLY_FLAG]
    plan = make_plan(argv)
    if validate_only:
        print0("arguments OK")
        return 0
    try:
        return run(plan)
    except UsageError as err:
        err.after_plan = True
        raise


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    try:
        return _main(argv)
    except UsageError as err:
        if env_rank() == 0:
            raise  # printed once, as one line, by exit_on_usage_error
        if getattr(err, "after_plan", False):
            # Raised while training (e.g. this rank's stream position): rank 0 may never see it.
            print(f"rank {env_rank()}: error: {user_names(str(err))}", file=sys.stderr, flush=True)
        # Start-up checks fail alike on every rank: rank 0 has said it.
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
