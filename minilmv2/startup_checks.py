"""Start-up checks of the distillation: everything a user can get wrong, checked before any model loads.

`make_plan` runs them, cheapest first, and returns a frozen `Plan` that the entry point (run_distillation.py)
builds, trains and exports from. Each check raises `UsageError` with one line naming the option, its value and
what would be valid. The corpus is probed last: its first records, then the first tokens of each rank's share:
every rank's in the single-process pre-check (run.sh's, MINILMV2_WORLD_SIZE), only its own in a torchrun worker.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from minilmv2.errors import UsageError, given, one_line, option, refuse, setting
from minilmv2.model_files import SINGLE_WEIGHT_FILES, TOKENIZER_FILES, WEIGHT_INDEX_FILES, has_tokenizer, has_weights
from minilmv2.relations import DEFAULT_RELATIONS, relations_literal
from minilmv2.shapes import NO_VALUE

if TYPE_CHECKING:
    from transformers import PretrainedConfig, PreTrainedTokenizerBase, TrainingArguments

    from minilmv2.corpus import CorpusConfig
    from minilmv2.run_distillation import DataArguments, ModelArguments, RunOptions

LATEST = ("latest", "last", "true", "True")


def parse_relations(text: str) -> dict[tuple[int, int], float]:
    from minilmv2.shapes import validate_relations

    try:
        relations = ast.literal_eval(text)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        raise refuse(
            "minilm_relations", f'"{text}"', f'is not a literal like "{relations_literal(DEFAULT_RELATIONS)}"'
        ) from None
    try:
        relations = validate_relations(relations)
    except ValueError as err:
        raise refuse("minilm_relations", repr(text), f"is not valid: {err}") from None
    if not any(weight > 0 for weight in relations.values()):
        raise refuse(
            "minilm_relations",
            repr(text),
            "gives every relation weight 0: nothing would be distilled; give at least one a positive weight",
        )
    return relations


def env_rank() -> int:
    return int(os.environ.get("RANK", "0"))


def print0(*args) -> None:
    """print on rank 0 only (every rank runs the same checks and says the same)."""
    if env_rank() == 0:
        print(*args, flush=True)


def env_world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def planned_world_size() -> int:
    """The run's number of processes: torchrun's WORLD_SIZE, else MINILMV2_WORLD_SIZE (run.sh's pre-check)."""
    value = os.environ.get("WORLD_SIZE") or os.environ.get("MINILMV2_WORLD_SIZE") or "1"
    try:
        return int(value)
    except ValueError:
        raise UsageError(f"WORLD_SIZE/MINILMV2_WORLD_SIZE {value!r} is not a number of processes") from None


def check_positive(field: str, value: int | None) -> None:
    if value is not None and value < 1:
        raise refuse(field, value, "is not valid: give a positive whole number")


def load_teacher_config(model_dir: str):
    """The teacher's config, after checking the folder holds a supported encoder with weights."""
    from transformers import AutoConfig

    from minilmv2.encoder_layouts import ENCODER_LAYOUTS

    path = Path(model_dir)
    if not path.is_dir():
        raise refuse(
            "input_model_dir",
            model_dir,
            "does not exist; give a folder with the teacher's config.json and weights, e.g. "
            f"AutoModel.from_pretrained('bert-base-uncased').save_pretrained('{model_dir}') (and the tokenizer's) "
            "where the hub can be reached",
        )
    if not (path / "config.json").is_file():
        raise refuse("input_model_dir", model_dir, "has no config.json; give a folder written by save_pretrained")
    if not has_weights(path):
        raise refuse("input_model_dir", model_dir, f"has no weights ({' or '.join(SINGLE_WEIGHT_FILES)})")
    problem = teacher_weights_problem(path)
    if problem:
        raise refuse("input_model_dir", model_dir, f"is damaged: {problem}; save or download the teacher again")
    try:
        config = AutoConfig.from_pretrained(path)
    except (OSError, ValueError, KeyError) as err:
        raise refuse("input_model_dir", model_dir, f"has a config.json that cannot be read ({one_line(err)})") from None
    if config.model_type not in ENCODER_LAYOUTS:
        raise refuse(
            "input_model_dir",
            model_dir,
            f"is a {config.model_type!r} model; supported teachers: {', '.join(sorted(ENCODER_LAYOUTS))}",
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

    from minilmv2.data import framing_tokens

    field, directory = tokenizer_option(model_args)
    try:
        tokenizer = AutoTokenizer.from_pretrained(directory)
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise refuse(field, directory, f"has a tokenizer that cannot be loaded ({one_line(err)})") from None
    vocab = getattr(teacher_config, "vocab_size", None)
    if vocab and len(tokenizer) > vocab:
        raise refuse(
            field,
            directory,
            f"has {len(tokenizer)} tokens but the teacher's embeddings have {vocab}; use the tokenizer the teacher "
            "was trained with (or one with at most that many tokens)",
        )
    try:
        framing_tokens(tokenizer)
    except ValueError as err:
        raise refuse(field, directory, f"cannot be used: {err}") from None
    return tokenizer


def tokenizer_option(model_args) -> tuple[str, str]:
    """The tokenizer's option and folder: --tokenizer_dir, else the teacher's folder."""
    if model_args.tokenizer_dir:
        return "tokenizer_dir", model_args.tokenizer_dir
    return "input_model_dir", model_args.input_model_dir


def check_training_values(args) -> None:
    """Optimizer and interval values that make no sense (or crash later), checked as given, before
    TrainingArguments' own checks (run_distillation.DistillationTrainingArguments calls this first)."""
    import math

    def invalid(field: str, valid: str):
        raise refuse(field, getattr(args, field), f"is not valid: {valid}")

    if not (math.isfinite(args.learning_rate) and args.learning_rate > 0):
        invalid("learning_rate", "give a positive learning rate such as 6e-4")
    if not args.adam_epsilon > 0:
        invalid("adam_epsilon", "give a small positive value such as 1e-6")
    for field in ("adam_beta1", "adam_beta2"):
        if not 0 <= getattr(args, field) < 1:
            invalid(field, "it must be in [0, 1)")
    if not args.weight_decay >= 0:
        invalid("weight_decay", "it must be 0 or more")
    if args.max_grad_norm is not None and not args.max_grad_norm >= 0:
        invalid("max_grad_norm", "it must be 0 (no clipping) or more")
    if args.warmup_steps is not None and args.warmup_steps < 0:
        invalid("warmup_steps", "give 0 or more steps (or a fraction of the run below 1)")
    for field in ("save_steps", "logging_steps", "eval_steps"):
        value = getattr(args, field)
        if value is not None and not value > 0:
            invalid(field, "give a positive number of steps")


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
            raise refuse("report_to", name, f"is not a tracker; valid: none, all, {known}")
        if name not in available:
            installed = ", ".join(sorted(available)) or "none"
            raise refuse(
                "report_to", name, f"is not installed; install it, or report to an installed one ({installed}) or none"
            )


def check_writable(output_dir: Path) -> None:
    """The output folder (or the nearest existing folder above it, where it will be made) accepts new files."""
    import tempfile

    existing = output_dir
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        raise refuse("output_dir", output_dir, f"cannot be made: {existing} is a file, not a folder")
    try:  # a real probe: permission bits say nothing for root, nor on a read-only mount
        descriptor, probe = tempfile.mkstemp(prefix=".minilmv2-probe-", dir=existing)
        os.close(descriptor)
        os.unlink(probe)
    except OSError as err:
        where = "" if existing == output_dir else f" ({existing}, where it would be made)"
        raise refuse(
            "output_dir", output_dir, f"is not writable{where}: {err.strerror}; choose a folder you can write to"
        ) from None


def check_student_matches(checkpoint: Path, model_args, teacher_config) -> None:
    """A resumed checkpoint's student has the shape this run asks for (its weights must load into it)."""
    try:
        saved = json.loads((checkpoint / "student" / "config.json").read_text())
    except (OSError, ValueError):
        return  # validate_checkpoint names a missing or unreadable student
    asked = {
        "student_num_layers": ("num_hidden_layers", model_args.student_num_layers),
        "student_hidden_size": ("hidden_size", model_args.student_hidden_size),
        "student_attention_heads": ("num_attention_heads", model_args.student_attention_heads),
        "student_intermediate_size": (
            "intermediate_size",
            model_args.student_intermediate_size or 4 * model_args.student_hidden_size,
        ),
    }
    if model_args.student_intermediate_size is None and saved.get("hidden_size") != model_args.student_hidden_size:
        del asked["student_intermediate_size"]  # its default follows the hidden size: that difference says it
    differing = [f"{given(field, value)} (it has {saved.get(key)})" for field, (key, value) in asked.items()
                 if key in saved and saved[key] != value]  # fmt: skip
    from minilmv2.student_init import INIT_FIELD

    if saved.get(INIT_FIELD, "random") != model_args.student_init:
        differing.append(f"{given('student_init', model_args.student_init)} (it has {saved.get(INIT_FIELD, 'random')})")
    if saved.get("vocab_size") not in (None, getattr(teacher_config, "vocab_size", None)):
        differing.append(f"the teacher's vocabulary of {teacher_config.vocab_size} (it has {saved['vocab_size']})")
    if differing:
        raise UsageError(
            f"checkpoint {checkpoint} holds a different student than this run asks for: {'; '.join(differing)}; "
            f"resume with the checkpoint's shape, or start afresh in another {option('output_dir')}"
        )


def check_tokenizer_dir(model_args) -> None:
    """The tokenizer folder (--tokenizer_dir, else the teacher's) must hold a tokenizer's files."""
    field, directory = tokenizer_option(model_args)
    if not Path(directory).is_dir():
        raise refuse(field, directory, "does not exist")
    if not has_tokenizer(directory):
        raise refuse(
            field,
            directory,
            f"has no tokenizer (none of {', '.join(TOKENIZER_FILES)}); save one there with tokenizer.save_pretrained "
            f"or give {option('tokenizer_dir')}",
        )


# The option that sets each value the shape check names (minilmv2.shapes' fields).
SHAPE_OPTIONS = {
    "L": "L",
    "A_r": "num_relation_heads",
    "hidden_size": "student_hidden_size",
    "num_layers": "student_num_layers",
    "num_attention_heads": "student_attention_heads",
    "intermediate_size": "student_intermediate_size",
    "minilm_v1": "minilm_v1",
}


def shape_option_name(field: str, value: object = NO_VALUE) -> str:
    """How the shape check names a value on this command line: its option (minilmv2.errors' vocabulary)."""
    return option(SHAPE_OPTIONS[field]) if value is NO_VALUE else given(SHAPE_OPTIONS[field], value)


def check_shapes(model_args, teacher_config, max_seq_len: int, relations=None) -> None:
    """Student shape, teacher layer, relation heads and relations (the distiller's own check, minilmv2.shapes,
    on configs, its messages naming this command line's flags), then the sequence length."""
    from minilmv2.shapes import StudentShape, check_distillation_shapes

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
            name=shape_option_name,
        )
    except ValueError as err:
        raise UsageError(one_line(err)) from None
    from minilmv2.data import MIN_SEQ_LEN
    from minilmv2.encoder_layouts import usable_positions

    max_positions = usable_positions(teacher_config)
    if max_seq_len < MIN_SEQ_LEN or (max_positions and max_seq_len > max_positions):
        raise refuse(
            "max_seq_len",
            max_seq_len,
            f"is out of range: use {MIN_SEQ_LEN}..{max_positions} ([CLS] a token [SEP] at least; the teacher has "
            f"{max_positions} positions)",
        )


def check_student_init(model_args, tokenizer) -> None:
    """--student_init is known; teacher_embeddings needs the tokenizer the teacher's embeddings were trained with
    (their rows must mean the same tokens). tokenizer: this run's, already loaded (load_tokenizer)."""
    from minilmv2.student_init import STUDENT_INITS

    init = model_args.student_init
    if init not in STUDENT_INITS:
        raise refuse("student_init", init, f"is not valid: give {' or '.join(STUDENT_INITS)}")
    if init != "teacher_embeddings":
        return
    field, directory = tokenizer_option(model_args)
    if field == "tokenizer_dir" and has_tokenizer(model_args.input_model_dir):
        from transformers import AutoTokenizer

        if tokenizer.get_vocab() != AutoTokenizer.from_pretrained(model_args.input_model_dir).get_vocab():
            raise refuse(
                "student_init",
                init,
                f"needs the teacher's own vocabulary, but {given(field, directory)} differs from the teacher "
                f"folder's tokenizer; use that tokenizer, or {option('student_init')} random",
            )


def check_relation_kernel(kernel: str, training_args) -> None:
    """--relation_kernel names an implementation that can run on the device this run will use."""
    import torch

    from minilmv2.relations import resolve_kernel

    device = "cuda" if torch.cuda.is_available() and not getattr(training_args, "use_cpu", False) else "cpu"
    try:
        resolve_kernel(kernel, device)
    except ValueError as err:
        raise refuse("relation_kernel", kernel, f"cannot run here: {err}") from None


def check_output_dir(output_dir: Path, resuming: bool, overwrite: bool) -> None:
    """Refuse to mix a new run into a folder that holds an earlier one (finished or not)."""
    from minilmv2.checkpoints import CHECKPOINT_PREFIX, finished_run

    if not output_dir.exists() or resuming or overwrite:
        return
    if not output_dir.is_dir():
        raise refuse("output_dir", output_dir, "is a file; give a folder")
    if finished_run(output_dir):
        raise refuse(
            "output_dir",
            output_dir,
            f"already holds a finished run; pass {option('overwrite_output_dir')} to replace it or choose another "
            f"{option('output_dir')}",
        )
    if any(output_dir.glob(f"{CHECKPOINT_PREFIX}*")):
        raise refuse(
            "output_dir",
            output_dir,
            f"holds checkpoints of an earlier run; resume it with {setting('resume_from_checkpoint', 'latest')} or "
            f"start afresh with {option('overwrite_output_dir')}",
        )


def resolve_checkpoint(requested: str | None, output_dir: Path, check, field="resume_from_checkpoint") -> Path | None:
    """The checkpoint to resume: the given path (a checkpoint, checked by `check`), or for `latest` the newest one that
    is complete and intact, each damaged one skipped and named with its reason. `check` raises
    `CorruptCheckpointError` for damage and UsageError for a checkpoint that does not fit the run (refused)."""
    from minilmv2.checkpoints import CorruptCheckpointError, complete_checkpoints, not_a_checkpoint_problem

    if requested is None:
        return None
    if requested not in LATEST:
        problem = not_a_checkpoint_problem(Path(requested), output_dir)
        if problem:
            raise refuse(field, requested, problem)
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
    raise refuse(field, requested, f"finds no complete, intact checkpoint in {output_dir}{detail}")


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the entry point needs, checked: what `make_plan` returns."""

    data_args: DataArguments
    model_args: ModelArguments
    training_args: TrainingArguments
    run_options: RunOptions
    train_config: CorpusConfig
    val_config: CorpusConfig | None
    teacher_config: PretrainedConfig
    relations: dict[tuple[int, int], float]
    checkpoint: Path | None  # the checkpoint to resume from
    restore_data: bool  # resume the corpus stream's position too (not with --ignore_data_skip)
    tokenizer: PreTrainedTokenizerBase
    command: list[str]  # for the student's model card


def stream_options(data_args, training_args, tokenizer) -> dict:
    """What `TokenStream.options()` will say for this run's training stream (compared with a checkpoint's)."""
    return {
        "max_seq_len": data_args.max_seq_len,
        "packing": not data_args.no_packing,
        "shuffle_buffer": max(1, data_args.shuffle_buffer),
        "seed": training_args.seed,
        "vocab_size": len(tokenizer),
    }


def make_plan(
    data_args: DataArguments,
    model_args: ModelArguments,
    training_args: TrainingArguments,
    run_options: RunOptions,
    command: list[str],
) -> Plan:
    """Every check, cheapest first; reads configs, headers, the tokenizer and the corpus's first records only.

    `command` is the command line, for the student's model card.
    """
    from minilmv2.corpus import load_corpus_config

    corpora = {"train_config": data_args.train_config, "val_config": data_args.val_config}
    train_config = load_corpus_config(corpora["train_config"], given("train_config", corpora["train_config"]))
    val_config = None
    if corpora["val_config"]:
        val_config = load_corpus_config(corpora["val_config"], given("val_config", corpora["val_config"]))
    check_run_length(data_args, training_args)
    teacher_config = load_teacher_config(model_args.input_model_dir)
    check_tokenizer_dir(model_args)
    relations = parse_relations(model_args.minilm_relations)
    if model_args.minilm_v1 and relations != DEFAULT_RELATIONS:
        # Relations equal to the default cannot be told from no relations given; any others are a contradiction.
        raise refuse(
            "minilm_relations",
            repr(model_args.minilm_relations),
            f"does not apply with {option('minilm_v1')}, whose relations are Q-K and V-V; drop one of the two",
        )
    check_shapes(model_args, teacher_config, data_args.max_seq_len, relations)
    check_relation_kernel(model_args.relation_kernel, training_args)
    check_evaluation(training_args, has_val=val_config is not None)
    check_report_to(training_args)
    tokenizer = load_tokenizer(model_args, teacher_config)
    check_student_init(model_args, tokenizer)

    output_dir = Path(training_args.output_dir or "trainer_output")
    training_args.output_dir = str(output_dir)
    check_writable(output_dir)
    # Rank 0 takes the lock later; other ranks would find their own run's. Of several nodes' pre-checks (run.sh's,
    # NNODES > 1) none knows whether its node will hold rank 0, and a quicker node's may hold it already.
    if env_rank() == 0 and int(os.environ.get("MINILMV2_LAUNCH_NNODES") or 1) == 1:
        from minilmv2.launch import check_output_lock

        check_output_lock(output_dir)
    requested = training_args.resume_from_checkpoint or model_args.checkpoint_dir
    restore_data = requested is not None and not training_args.ignore_data_skip
    options = stream_options(data_args, training_args, tokenizer)

    def check(candidate: Path) -> None:
        from minilmv2.checkpoints import check_steps_left, validate_checkpoint

        validate_checkpoint(candidate, planned_world_size(), restore_data, train_config, options)
        check_student_matches(candidate, model_args, teacher_config)
        check_steps_left(candidate, training_args.max_steps)

    field = "resume_from_checkpoint" if training_args.resume_from_checkpoint else "checkpoint_dir"
    checkpoint = resolve_checkpoint(requested, output_dir, check, field)
    restore_data = checkpoint is not None and restore_data
    check_output_dir(output_dir, checkpoint is not None, run_options.overwrite_output_dir)

    # The corpus last (it reads files).
    check_corpus("train_config", corpora["train_config"], train_config, tokenizer)
    if val_config is not None:
        check_corpus("val_config", corpora["val_config"], val_config, tokenizer)
    return Plan(
        data_args, model_args, training_args, run_options, train_config, val_config, teacher_config, relations,
        checkpoint, restore_data, tokenizer, command,
    )  # fmt: skip


def check_run_length(data_args, training_args) -> None:
    """Steps, batch, accumulation and the stream's buffers."""
    check_positive("shuffle_buffer", data_args.shuffle_buffer)
    if data_args.prefetch_batches < 0:
        raise refuse("prefetch_batches", data_args.prefetch_batches, "is not valid: give 0 (no prefetch) or more")
    if training_args.max_steps is None or training_args.max_steps < 1:
        raise refuse(
            "max_steps", training_args.max_steps, "is not valid: give a positive number (the corpus is a stream)"
        )
    check_positive("per_device_train_batch_size", training_args.per_device_train_batch_size)
    check_positive("gradient_accumulation_steps", training_args.gradient_accumulation_steps)


def check_evaluation(training_args, has_val: bool) -> None:
    """Evaluation and best-model options need held-out text, and rank by the one metric reported (its loss)."""
    if training_args.load_best_model_at_end:
        if not has_val:
            raise refuse(
                "load_best_model_at_end", True, f"needs held-out text to rank checkpoints: give {option('val_config')}"
            )
        if training_args.metric_for_best_model not in (None, "loss", "eval_loss"):
            raise refuse(
                "metric_for_best_model",
                training_args.metric_for_best_model,
                "is not reported; the held-out metric is loss (eval_loss)",
            )
    eval_strategy = getattr(training_args.eval_strategy, "value", training_args.eval_strategy)
    if not has_val and eval_strategy != "no":
        raise refuse(
            "eval_strategy",
            eval_strategy,
            f"needs held-out text: give {option('val_config')} (or drop {option('eval_strategy')})",
        )


def check_corpus(field: str, path: str, config: CorpusConfig, tokenizer) -> None:
    """The declared format and columns fit the first records, then the first tokens of each share.

    Training text: every rank's share in the single-process pre-check (run.sh's), only its own in a torchrun
    worker (all of them would cost every rank reads of every share, growing with the square of the number of
    processes). Held-out text is read whole by every rank: one share.
    """
    from minilmv2.corpus import first_record_problem, missing_reader_problem
    from minilmv2.corpus_files import text_problem
    from minilmv2.data import first_tokens_problem

    problem, note = text_problem(config)  # first: bytes that are not text would be shown as "column names"
    problem = problem or first_record_problem(config) or missing_reader_problem(config)
    if problem:
        raise refuse(field, path, f": {problem}")
    for line in (*config.notes, note):
        if line:
            print0(line)
    world_size = planned_world_size()
    if field == "val_config":
        ranks, shares = [0], 1
    elif "WORLD_SIZE" in os.environ:
        ranks, shares = [env_rank()], world_size
    else:
        ranks, shares = range(world_size), world_size
    for rank in ranks:
        problem = first_tokens_problem(config, tokenizer, rank, shares, given(field, path))
        if problem:
            raise UsageError(problem)
