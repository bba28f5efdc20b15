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
import dataclasses
import json
import os
import shutil
import sys
import time
import types
from pathlib import Path

from transformers import TrainingArguments

from minilmv2.errors import UsageError, exit_on_usage_error, given, one_line, option, setting
from minilmv2.launch import check_launch_values
from minilmv2.prefetch import DEFAULT_DEPTH as DEFAULT_PREFETCH_BATCHES
from minilmv2.relations import DEFAULT_RELATIONS, relations_literal
from minilmv2.startup_checks import (
    Plan,
    check_training_values,
    env_rank,
    env_world_size,
    make_plan,
    print0,
)

# The reference's group words: optional separators, dropped before parsing (its command lines and run.sh have them).
GROUPS = ("data_params", "training_params", "model_params")
VALIDATE_ONLY_FLAG = "--validate_only"


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
        default=DEFAULT_PREFETCH_BATCHES,
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
    student_init: str = dataclasses.field(
        default="random",
        metadata={"help": "random (the paper's recipe) or teacher_embeddings: the student's token, position and "
                          "token-type embeddings from the teacher's (copied, or projected onto their top principal "
                          "components when narrower)"},
    )  # fmt: skip


@dataclasses.dataclass
class RunOptions:
    """Options of this script that transformers 5's TrainingArguments does not have."""

    overwrite_output_dir: bool = dataclasses.field(
        default=False, metadata={"help": "start afresh in an --output_dir that holds an earlier run"}
    )


@dataclasses.dataclass
class DistillationTrainingArguments(TrainingArguments):
    """transformers' TrainingArguments, our checks of its values first: the library's own messages (on
    warmup_steps = -1, logging_steps = 0) name neither the option as the user set it nor what is valid."""

    def __post_init__(self):
        check_training_values(self)
        super().__post_init__()


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as written, then every option with its default."""


def parse_args(argv: list[str]):
    """(DataArguments, ModelArguments, TrainingArguments, RunOptions) from a command line or one .json file.

    The reference's group words (data_params, training_params, model_params, in any order) and run.sh's leading
    `--` are separators only: they are dropped, and the options parsed as one list.
    """
    import torch

    from minilmv2.arguments import parse_script_arguments

    argv = [arg for arg in argv if arg not in GROUPS and arg != "--"]
    unless_given = {}
    if not (torch.cuda.is_available() or torch.backends.mps.is_available()):
        # On a CPU-only machine transformers 5 wants use_cpu for --bf16 and, without it, sets up no DDP (each
        # torchrun process would train alone). It must be known at parse time: __post_init__ sets up devices.
        unless_given["use_cpu"] = True
    return parse_script_arguments(
        (DataArguments, ModelArguments, DistillationTrainingArguments, RunOptions),
        argv,
        unless_given=unless_given,
        # No abbreviations: a typo such as --learning_rat must be an error, not silently --learning_rate.
        allow_abbrev=False,
        prog="python -m minilmv2.run_distillation",
        description=__doc__,
        formatter_class=_HelpFormatter,
    )


def configure_training_args(training_args, has_val: bool) -> None:
    """Settings this entry point needs, whatever the user passed."""
    import torch

    from minilmv2.arguments import one_device_without_torchrun

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
    one_device_without_torchrun(training_args)  # `python -m` by hand on a multi-GPU node: not DataParallel
    if training_args.dataloader_num_workers:
        print0("note: --dataloader_num_workers is ignored: the token stream runs in the main process")
        training_args.dataloader_num_workers = 0


def clear_previous_run(output_dir: Path) -> None:
    """--overwrite_output_dir: remove this script's earlier outputs (only those) from `output_dir`."""
    from minilmv2.checkpoints import CHECKPOINT_PREFIX, STUDENT_DIR

    for path in [*output_dir.glob(f"{CHECKPOINT_PREFIX}*"), output_dir / STUDENT_DIR]:
        shutil.rmtree(path, ignore_errors=True)
    for name in ("trainer_state.json", "loss_curve.png", "train_results.json", "all_results.json"):
        (output_dir / name).unlink(missing_ok=True)


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


def build_distiller(plan: Plan):
    """The teacher (loaded, computing in the run's precision), a fresh student in the planned shape, and the
    MiniLM module that distils one into the other."""
    import torch
    from transformers import AutoModel

    from minilmv2 import MiniLM, build_student, student_config_from_teacher
    from minilmv2.student import ffn_size

    model_args, args = plan.model_args, plan.training_args
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
    if model_args.student_init == "teacher_embeddings":
        from minilmv2.student_init import init_from_teacher_embeddings

        for line in init_from_teacher_embeddings(student, teacher):
            print0(f"student init from the teacher's embeddings: {line}")
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
    return distiller


def build_streams(plan: Plan):
    """(this rank's training stream, resumed where the checkpoint left it; the held-out stream or None)."""
    from minilmv2.checkpoints import DATA_STATE_DIR
    from minilmv2.data import TokenStream

    data_args, args, tokenizer = plan.data_args, plan.training_args, plan.tokenizer
    rank, world_size = env_rank(), env_world_size()
    stream_options = {"packing": not data_args.no_packing, "seed": args.seed}
    train_stream = TokenStream(
        plan.train_config, tokenizer, data_args.max_seq_len, shuffle_buffer=data_args.shuffle_buffer,
        rank=rank, world_size=world_size, infinite=True, name=given("train_config", data_args.train_config),
        **stream_options,
    )  # fmt: skip
    val_stream = None
    if plan.val_config is not None:
        # Every rank packs the whole held-out text the same way and scores its own sequences (i = rank mod world).
        val_stream = TokenStream(
            plan.val_config, tokenizer, data_args.max_seq_len, shuffle_buffer=1, infinite=False,
            sequence_shard=(rank, world_size), name=given("val_config", data_args.val_config), **stream_options,
        )  # fmt: skip
    if plan.restore_data:
        state_file = plan.checkpoint / DATA_STATE_DIR / f"rank-{rank}.json"
        try:
            train_stream.load_state_dict(json.loads(state_file.read_text())["stream"])
        except ValueError as err:
            raise UsageError(
                f"{state_file}: {err}; pass {option('ignore_data_skip')} to restart the data stream"
            ) from None
        seeks = all(unit.mode == "bytes" for unit in train_stream.units)
        how = "nothing is re-read or re-tokenised" if seeks else "row-wise files skip their consumed rows untokenised"
        print0(f"resuming the corpus stream where {plan.checkpoint} left it ({how})")
    return train_stream, val_stream


def train_and_export(plan: Plan, stop_signal) -> int:
    """Build, train, export the student (and its model card); the exit status: 0, 1 (non-finite loss) or
    128 + the signal that stopped training."""
    from transformers import set_seed

    from minilmv2.checkpoints import STUDENT_DIR, checkpoint_global_step
    from minilmv2.data import PadCollator
    from minilmv2.model_card import write_model_card
    from minilmv2.plots import plot_loss_curve
    from minilmv2.trainer import DistillationTrainer, NonFiniteLossError

    args, tokenizer = plan.training_args, plan.tokenizer
    output_dir = Path(args.output_dir)
    if plan.checkpoint is not None and checkpoint_global_step(plan.checkpoint) >= args.max_steps:
        return finish_at_checkpoint(plan)  # make_plan refused a --max_steps below the checkpoint's step
    if plan.run_options.overwrite_output_dir and plan.checkpoint is None and env_rank() == 0:
        clear_previous_run(output_dir)
    configure_training_args(args, plan.val_config is not None)
    set_seed(args.seed)
    distiller = build_distiller(plan)
    train_stream, val_stream = build_streams(plan)
    trainer = DistillationTrainer(
        model=distiller,
        args=args,
        train_dataset=train_stream,
        eval_dataset=val_stream,
        data_collator=PadCollator(tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0),
        processing_class=tokenizer,
        stop_signal=stop_signal,
        prefetch_batches=plan.data_args.prefetch_batches,
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
        report_nonfinite(err, output_dir, args.fp16)
        return 1
    elapsed = time.perf_counter() - started
    tokens = trainer.state.num_input_tokens_seen - tokens_before

    trainer.save_model(str(output_dir))  # the student export, atomically, on the main process
    curve = None
    if trainer.is_world_process_zero():
        curve = plot_loss_curve(trainer.state.log_history, output_dir / "loss_curve.png")
        write_model_card(output_dir / STUDENT_DIR, summarise_run(plan, distiller, trainer, tokens_seen=tokens), curve)
    if trainer.stopped_by_signal is not None:
        from minilmv2.checkpoints import last_complete_checkpoint

        print0(
            f"stopped by signal {trainer.stopped_by_signal} at step {trainer.state.global_step}; "
            f"checkpoint: {last_complete_checkpoint(output_dir)}; student: {output_dir / STUDENT_DIR}; "
            f"resume with {setting('resume_from_checkpoint', 'latest')}"
        )
        return 128 + int(trainer.stopped_by_signal)
    if trainer.is_world_process_zero():
        trainer.save_state()  # trainer_state.json beside the student: marks the run finished
        print_outputs(trainer, output_dir, curve, tokens, elapsed)
    return 0


def finish_at_checkpoint(plan: Plan) -> int:
    """Resumed at --max_steps: nothing to train (the Trainer would run one more step at learning rate 0 and save a
    checkpoint past --max_steps). A requeued job whose run already finished at that step does nothing; otherwise
    rank 0 exports the checkpoint's student (the best one's with --load_best_model_at_end), its model card, loss
    curve and trainer_state.json, as the end of training would have."""
    from safetensors.torch import load_file
    from transformers import TrainerState

    from minilmv2.checkpoints import STUDENT_DIR, TRAINER_STATE, export_student, finished_run
    from minilmv2.model_card import write_model_card
    from minilmv2.plots import plot_loss_curve

    args, output_dir = plan.training_args, Path(plan.training_args.output_dir)
    state = TrainerState.load_from_json(str(plan.checkpoint / TRAINER_STATE))
    done = f"nothing to train: {setting('max_steps', args.max_steps)} is the step of {plan.checkpoint}"
    if env_rank() != 0:
        return 0
    if finished_run(output_dir):
        try:
            finished_step = json.loads((output_dir / TRAINER_STATE).read_text()).get("global_step")
        except (OSError, ValueError, AttributeError):
            finished_step = None
        if finished_step == state.global_step:
            print(f"{done}; the run already finished there (student: {output_dir / STUDENT_DIR})", flush=True)
            return 0
    source = plan.checkpoint
    if args.load_best_model_at_end and state.best_model_checkpoint and Path(state.best_model_checkpoint).is_dir():
        source = Path(state.best_model_checkpoint)
    distiller = build_distiller(plan)
    distiller.student.load_state_dict(load_file(source / STUDENT_DIR / "model.safetensors"), strict=True)
    export_student(distiller.student, plan.tokenizer, output_dir / STUDENT_DIR)
    curve = plot_loss_curve(state.log_history, output_dir / "loss_curve.png")
    finished = types.SimpleNamespace(state=state, stopped_by_signal=None)
    write_model_card(output_dir / STUDENT_DIR, summarise_run(plan, distiller, finished, tokens_seen=0), curve)
    scratch = output_dir / f".{TRAINER_STATE}.partial"
    state.save_to_json(str(scratch))
    os.replace(scratch, output_dir / TRAINER_STATE)  # last: marks the run finished
    print(f"{done}; exported its student: {output_dir / STUDENT_DIR}", flush=True)
    return 0


def report_nonfinite(err, output_dir: Path, fp16: bool) -> None:
    """Rank 0 says which step went non-finite, the last good checkpoint and what to change."""
    if env_rank() != 0:
        return
    good = newest_intact_checkpoint(output_dir)
    advice = f"Lower {option('learning_rate')}" + (" or use --bf16 instead of --fp16" if fp16 else "")
    print(
        f"error: {err}; stopped before applying it. Last good checkpoint: {good or 'none (no checkpoint yet)'}. "
        f"{advice}, then resume from it.",
        file=sys.stderr,
        flush=True,
    )


def print_outputs(trainer, output_dir: Path, curve, tokens: int, elapsed: float) -> None:
    """Where a finished run's outputs are, and its throughput (rank 0)."""
    from minilmv2.checkpoints import STUDENT_DIR

    print(f"throughput: {tokens / elapsed:,.0f} tokens/s over {env_world_size()} process(es) ({tokens:,} tokens)")
    print(f"student:    {output_dir / STUDENT_DIR}")
    print(f"loss curve: {curve}")
    print(f"log:        {output_dir / 'trainer_state.json'}")
    if any(Path(output_dir).glob("checkpoint-*")):
        print(f"checkpoints: {output_dir}/checkpoint-*")
    for callback in trainer.callback_handler.callbacks:
        if type(callback).__name__ == "TensorBoardCallback" and getattr(callback, "logging_dir", None):
            print(f"tensorboard: {callback.logging_dir}")


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
        student_init=plan.model_args.student_init,
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
    if validate_only:
        check_launch_values()  # first: PRECISION=bf17 would otherwise be read as an unknown flag --bf17
    plan = make_plan(*parse_args(argv), command=["python", "-m", "minilmv2.run_distillation", *argv])
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
            print(f"rank {env_rank()}: error: {err}", file=sys.stderr, flush=True)
        # Start-up checks fail alike on every rank: rank 0 has said it.
        raise SystemExit(2) from None


if __name__ == "__main__":
    sys.exit(main())
