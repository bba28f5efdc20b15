"""Trainer -> saved student: the HF Trainer, taught to save the student (not the distiller) and to stop safely.

`DistillationTrainer` is a `transformers.Trainer` whose model is the `MiniLM` distiller. It changes these things:

- Data: the `TokenStream` already holds only this rank's share, so the train loader is a plain `DataLoader`.
  `accelerator.prepare` would shard it a second time (accelerate 1.15 wraps any torch IterableDataset in
  `IterableDatasetShard`, or, with the default `dispatch_batches`, has rank 0 read everything) and lose
  data. The loader has no workers, so the stream's position is exactly what the optimizer has consumed.
- Checkpoints keep the Trainer layout (`checkpoint-N/` with trainer_state.json, optimizer, scheduler, RNG)
  but hold the student export in `checkpoint-N/student/` (config, safetensors, tokenizer) instead of the
  distiller, so no second copy of the frozen teacher; plus `data_state/rank-R.json` (the stream position)
  and, written last, `checkpoint_complete.json`. Resuming loads the student back from `student/`.
  `--save_total_limit` deletes old checkpoints only after the new one is complete, and only complete
  ones older than it, so a crash while saving never leaves the run without a complete checkpoint.
- Every micro-step, all ranks agree (one tiny all-reduce) whether the loss is finite and whether a
  SIGTERM/SIGINT arrived: a non-finite loss stops before the optimizer step (the last checkpoint stays the
  last good one); a signal makes every rank save a checkpoint at the end of the current step and stop.
- Evaluation reports the distillation loss (there are no labels) as the mean over held-out sequences: each
  rank scores its own share (`TokenStream(sequence_shard=...)`), sums and counts are all-reduced, so every
  sequence counts once with equal weight and the figure does not depend on the number of processes.
- `--load_best_model_at_end` loads the best checkpoint's student; logging, eval and save intervals given
  on a resumed run win over the checkpoint's.
- Logs carry the resident memory of rank 0 (`rss_mb`) so long runs show any growth.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import zipfile
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import Trainer

from minilmv2.errors import UsageError

STUDENT_DIR = "student"
DATA_STATE_DIR = "data_state"
COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_PREFIX = "checkpoint-"


class CorruptCheckpointError(UsageError):
    """A checkpoint that is incomplete or damaged (as opposed to one that does not fit this run)."""


class NonFiniteLossError(RuntimeError):
    """The distillation loss became NaN or inf; training stopped before applying that step."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"the distillation loss became {loss} at step {step}")
        self.step, self.loss = step, loss


def export_student(student: torch.nn.Module, tokenizer, target: str | os.PathLike) -> Path:
    """Write `student` + `tokenizer` to `target` (loadable by AutoModel/AutoTokenizer), never half-written.

    Everything is written (and fsynced) to a scratch folder beside `target` and renamed into place, so
    `target` never holds a mix of old and new files. Replacing an existing export takes two renames (POSIX
    cannot swap a non-empty folder in one): between them `target` does not exist and the previous export
    lies beside it as `.<name>.previous-<pid>`. Resuming never reads this export (checkpoints hold their own).
    """
    target = Path(target)
    scratch = target.with_name(f".{target.name}.partial-{os.getpid()}")
    shutil.rmtree(scratch, ignore_errors=True)
    try:
        student.save_pretrained(scratch, safe_serialization=True)
        tokenizer.save_pretrained(scratch)
        for file in scratch.iterdir():  # the data must be on disk before the rename makes it visible
            with open(file, "rb") as handle:
                os.fsync(handle.fileno())
    except BaseException:
        shutil.rmtree(scratch, ignore_errors=True)
        raise
    if target.exists():
        previous = target.with_name(f".{target.name}.previous-{os.getpid()}")
        shutil.rmtree(previous, ignore_errors=True)
        os.replace(target, previous)
        os.replace(scratch, target)
        shutil.rmtree(previous, ignore_errors=True)
    else:
        os.replace(scratch, target)
    return target


def resident_memory_mb() -> float:
    """Current resident set size of this process in MiB (Linux /proc; peak RSS elsewhere)."""
    try:
        with open("/proc/self/statm") as handle:
            return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except OSError:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class StopSignal:
    """Remembers a SIGTERM/SIGINT so training can checkpoint and stop at the end of the current step.

    One stop request often arrives twice: Ctrl-C reaches every process of the group and torchrun also
    forwards it to its workers; SLURM signals both the step and torchrun. So the second signal is ignored
    (the checkpoint is being written) and only a third interrupts at once (KeyboardInterrupt, no checkpoint).
    """

    ABORT_AFTER = 3  # signals: the third one aborts

    def __init__(self):
        self.received: int | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def install(self) -> StopSignal:
        for signum in (signal.SIGTERM, signal.SIGINT):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def restore(self) -> None:
        """Put back the handlers that were there before `install` (the caller's Ctrl-C keeps working)."""
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.count += 1
        name = signal.Signals(signum).name
        if self.count >= self.ABORT_AFTER:
            raise KeyboardInterrupt
        if self.received is not None:
            print(f"received {name} again: still saving the checkpoint; one more signal aborts without it", flush=True)
            return
        self.received = signum
        print(f"received {name}: saving a checkpoint at the end of this step, then stopping", flush=True)


class DistillationTrainer(Trainer):
    """HF Trainer for a `MiniLM` distiller fed by a rank-aware `TokenStream` (see module docstring)."""

    def __init__(self, *args, stop_signal: StopSignal | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_signal = stop_signal or StopSignal()
        self.stopped_by_signal: int | None = None

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            logs["rss_mb"] = round(resident_memory_mb(), 1)  # this process's resident memory: growth shows here
        super().log(logs, *args, **kwargs)

    # -- data --

    def get_train_dataloader(self) -> DataLoader:
        # No accelerator.prepare: the stream is already this rank's share (see the module docstring), and no
        # workers, so the stream's state_dict() is exactly the position after the consumed batches.
        return DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=0,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
        )

    # -- exact resume --

    def _load_rng_state(self, checkpoint: str | None) -> None:
        # The Trainer restores the RNG before it creates the loader's iterator, and creating it draws a seed
        # from the torch RNG, so the first dropout masks after a resume would differ from the uninterrupted
        # run's. Restore it after the first batches are fetched instead (as the Trainer itself does when it
        # skips batches): the RNG then stands exactly where the interrupted run left it.
        self._rng_checkpoint = checkpoint

    def get_batch_samples(self, epoch_iterator, num_batches, device):
        batches = super().get_batch_samples(epoch_iterator, num_batches, device)
        checkpoint, self._rng_checkpoint = getattr(self, "_rng_checkpoint", None), None
        if checkpoint is not None:
            super()._load_rng_state(checkpoint)
        return batches

    def _init_training_state(self, max_steps, *args, **kwargs):
        result = super()._init_training_state(max_steps, *args, **kwargs)
        # A resumed TrainerState brings the checkpoint's logging/eval/save intervals; the ones given now win.
        self.state.compute_steps(self.args, max_steps)
        return result

    # -- faults --

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        flags = torch.tensor(
            [0.0 if torch.isfinite(loss) else 1.0, 1.0 if self.stop_signal.received is not None else 0.0],
            device=loss.device,
        )
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(flags, op=dist.ReduceOp.MAX)  # all ranks stop together, or none does
        non_finite, stop = flags.tolist()
        if non_finite:
            raise NonFiniteLossError(self.state.global_step + 1, loss.item())
        # Stop only after a whole optimizer step (the last micro-batch of an accumulation), so the checkpoint
        # holds no half-accumulated gradient; the flag is sticky, so every rank sees it at the same micro-step.
        if stop and self.accelerator.sync_gradients and self.stopped_by_signal is None:
            self.stopped_by_signal = self.stop_signal.received or signal.SIGTERM
            self.control.should_save = True
            self.control.should_training_stop = True
        return loss

    # -- evaluation: the distillation loss on held-out text --

    def evaluate(self, eval_dataset=None, ignore_keys=None, metric_key_prefix: str = "eval") -> dict[str, float]:
        """Mean distillation loss over the held-out sequences, each counted once, whatever the number of ranks.

        The Trainer's loop averages batch means (a last batch of one sequence weighs as much as a full one) and,
        on several ranks, fills the last global batch by cycling back, scoring some sequences twice. Here each
        rank scores its own sequences (the stream is sharded by sequence) and the sums are all-reduced.
        """
        dataset = eval_dataset if eval_dataset is not None else self.eval_dataset
        loader = DataLoader(dataset, batch_size=self.args.per_device_eval_batch_size, collate_fn=self.data_collator)
        model = self.model  # the distiller itself, not the DDP wrapper: no gradient, nothing to synchronise
        was_training = model.training
        model.eval()
        totals = torch.zeros(2, dtype=torch.float64, device=self.args.device)  # (sum of losses, sequences)
        with torch.no_grad(), self.compute_loss_context_manager():
            for batch in loader:
                batch = self._prepare_inputs(batch)
                size = batch["input_ids"].shape[0]
                # The distiller's loss is the batch mean of per-sequence losses: times the batch size, their sum.
                totals[0] += model(**batch)["loss"].double() * size
                totals[1] += size
        model.train(was_training)
        if dist.is_available() and dist.is_initialized():
            dist.all_reduce(totals)
        total, count = totals.tolist()
        if count == 0:
            raise UsageError("the held-out corpus (--val_config) yields no sequence to evaluate")
        metrics = {f"{metric_key_prefix}_loss": total / count, f"{metric_key_prefix}_sequences": int(count)}
        self.log(metrics)
        self.control = self.callback_handler.on_evaluate(self.args, self.state, self.control, metrics)
        return metrics

    def _load_best_model(self) -> None:
        if self.stopped_by_signal is not None:
            return  # a stop keeps the student that matches the checkpoint just written
        print(f"loading the best student ({self.state.best_metric}) from {self.state.best_model_checkpoint}")
        self._load_from_checkpoint(self.state.best_model_checkpoint)

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = model(**inputs)["loss"].detach()
        return loss, None, None

    # -- checkpoints: the student, not the distiller --

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        if not self.args.should_save:
            return
        output_dir = Path(output_dir or self.args.output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        student = self.accelerator.unwrap_model(self.model).student
        export_student(student, self.processing_class, output_dir / STUDENT_DIR)
        torch.save(self.args, output_dir / "training_args.bin")

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model=None) -> None:
        model = model if model is not None else self.model
        weights = load_file(Path(resume_from_checkpoint) / STUDENT_DIR / "model.safetensors")
        self.accelerator.unwrap_model(model).student.load_state_dict(weights, strict=True)

    def _save_checkpoint(self, model, trial) -> None:
        # The Trainer rotates (deletes old checkpoints) at the end of its own save, before our data state and
        # completion marker exist; with --save_total_limit 1 a crash there would leave no complete checkpoint.
        # So it saves with no limit and `rotate_complete_checkpoints` runs once the marker is written.
        save_total_limit, self.args.save_total_limit = self.args.save_total_limit, None
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self.args.save_total_limit = save_total_limit
        run_dir = Path(self._get_output_dir(trial))
        checkpoint = run_dir / f"{CHECKPOINT_PREFIX}{self.state.global_step}"
        state_dir = checkpoint / DATA_STATE_DIR
        state_dir.mkdir(parents=True, exist_ok=True)
        state_file = state_dir / f"rank-{self.args.process_index}.json"
        scratch = state_file.with_suffix(".partial")
        student = self.accelerator.unwrap_model(self.model).student
        record = {
            "global_step": self.state.global_step,
            "stream": self.train_dataset.state_dict(),
            # Each rank's fingerprint of its student replica: DDP keeps them identical, and this shows it.
            "student_sha256": parameters_sha256(student),
        }
        scratch.write_text(json.dumps(record))
        os.replace(scratch, state_file)
        if dist.is_available() and dist.is_initialized():
            dist.barrier()  # every rank's stream position is on disk before the checkpoint counts as complete
        if self.args.should_save:
            marker = {"global_step": self.state.global_step, "world_size": self.args.world_size}
            (checkpoint / COMPLETE_MARKER).write_text(json.dumps(marker))
            rotate_complete_checkpoints(run_dir, save_total_limit, self.state.best_model_checkpoint)


def parameters_sha256(model: torch.nn.Module) -> str:
    """SHA-256 of every parameter's bytes, in state-dict order: equal iff the weights are bitwise equal."""
    return tensors_sha256(model.state_dict().items())


def tensors_sha256(named_tensors) -> str:
    """SHA-256 of (name, tensor) pairs in the given order (names and raw bytes)."""
    digest = hashlib.sha256()
    for name, tensor in named_tensors:
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def student_fingerprint_problem(checkpoint: str | os.PathLike) -> str | None:
    """Why `checkpoint`'s student weights differ from the sha256 its ranks recorded when saving, or None.

    Catches bytes changed at the right file size, which the header checks cannot. The hash runs in the
    student's state-dict order, which a weightless (meta-device) model of the saved config gives.
    """
    from transformers import AutoConfig, AutoModel

    checkpoint = Path(checkpoint)
    try:
        expected = json.loads((checkpoint / DATA_STATE_DIR / "rank-0.json").read_text()).get("student_sha256")
    except (OSError, ValueError, AttributeError):
        return None  # the stream position checks report a missing or unreadable record
    if not expected:
        return None
    try:
        config = AutoConfig.from_pretrained(checkpoint / STUDENT_DIR)
        with torch.device("meta"):
            names = list(AutoModel.from_config(config).state_dict())
        weights = load_file(checkpoint / STUDENT_DIR / "model.safetensors")
    except (OSError, ValueError, KeyError, RuntimeError) as err:
        return f"{STUDENT_DIR}/ cannot be read ({err.__class__.__name__})"
    if sorted(names) != sorted(weights):
        return f"{STUDENT_DIR}/model.safetensors does not hold the parameters of its config"
    if tensors_sha256((name, weights[name]) for name in names) != expected:
        return f"{STUDENT_DIR}/model.safetensors does not match the sha256 recorded when it was saved (bytes changed)"
    return None


# ---- checkpoint discovery and validation (run before any model is loaded) ----


def checkpoint_step(path: Path) -> int:
    try:
        return int(path.name[len(CHECKPOINT_PREFIX) :])
    except ValueError:
        return -1


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-step `checkpoint-N` in `output_dir` whose save finished, or None."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    candidates = [p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and checkpoint_step(p) >= 0]
    complete = [p for p in candidates if (p / COMPLETE_MARKER).is_file()]
    return max(complete, key=checkpoint_step) if complete else None


def rotate_complete_checkpoints(
    output_dir: str | os.PathLike, save_total_limit: int | None, keep: str | os.PathLike | None = None
) -> list[Path]:
    """Delete the oldest complete checkpoints until `save_total_limit` complete ones remain; returns them.

    Only complete checkpoints older than the newest complete one are candidates: an incomplete one (a save
    that crashed, or one being written) is never deleted nor counted, and neither is `keep` (the best model).
    """
    if not save_total_limit or save_total_limit <= 0:
        return []
    root = Path(output_dir)
    complete = sorted(
        (p for p in root.glob(f"{CHECKPOINT_PREFIX}*") if checkpoint_step(p) >= 0 and (p / COMPLETE_MARKER).is_file()),
        key=checkpoint_step,
    )
    protected = {Path(keep).resolve()} if keep else set()
    deleted = []
    for path in complete[:-1]:
        if len(complete) - len(deleted) <= save_total_limit:
            break
        if path.resolve() not in protected:
            shutil.rmtree(path, ignore_errors=True)
            deleted.append(path)
    return deleted


def validate_checkpoint(
    checkpoint: str | os.PathLike,
    world_size: int,
    restore_data: bool,
    train_config=None,
    stream_options: dict | None = None,
    verify_student: bool = True,
) -> None:
    """UsageError naming what is missing or damaged in `checkpoint`, so a resume never dies half-way.

    Damage (incomplete, truncated, bytes changed) raises `CorruptCheckpointError`, a checkpoint that does not
    fit this run (world size, corpus, stream values) a plain `UsageError`.

    The student's weights must match the sha256 recorded when they were saved (`verify_student`). With
    `restore_data`, every rank's saved stream position must exist and, given the run's `train_config` (a
    `CorpusConfig`) and `stream_options` (`TokenStream.options()`), belong to the same corpus split the same way
    and to a stream that yields the same sequences.
    """
    from minilmv2.data import rank_units, stream_state_mismatch, unit_records

    checkpoint = Path(checkpoint)
    advice = "resume from an earlier checkpoint or start afresh"
    if not checkpoint.is_dir():
        raise UsageError(f"checkpoint {checkpoint} does not exist")
    if not (checkpoint / COMPLETE_MARKER).is_file():
        raise CorruptCheckpointError(
            f"checkpoint {checkpoint} is incomplete (no {COMPLETE_MARKER}: the run stopped while saving it); {advice}"
        )
    for name in ("trainer_state.json", COMPLETE_MARKER):
        try:
            json.loads((checkpoint / name).read_text())
        except (OSError, ValueError) as err:
            raise CorruptCheckpointError(
                f"checkpoint {checkpoint} is corrupt: {name} cannot be read ({err}); {advice}"
            ) from None
    for name in (f"{STUDENT_DIR}/config.json", f"{STUDENT_DIR}/model.safetensors", "optimizer.pt", "scheduler.pt"):
        if not (checkpoint / name).is_file():
            raise CorruptCheckpointError(f"checkpoint {checkpoint} is incomplete: {name} is missing; {advice}")
    problem = safetensors_problem(checkpoint / STUDENT_DIR / "model.safetensors")
    for name in ("optimizer.pt", "scheduler.pt"):
        problem = problem or torch_file_problem(checkpoint / name)
    if not problem and verify_student:
        problem = student_fingerprint_problem(checkpoint)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {checkpoint} is corrupt: {problem}; {advice}")
    if restore_data:
        saved_world = json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("world_size")
        if saved_world != world_size:
            raise UsageError(
                f"checkpoint {checkpoint} was written by {saved_world} process(es) but this run has {world_size}; "
                f"resume with {saved_world}, or pass --ignore_data_skip to restart the data stream"
            )
        for rank in range(world_size):
            state_file = checkpoint / DATA_STATE_DIR / f"rank-{rank}.json"
            try:
                state = json.loads(state_file.read_text())["stream"]
                state.get("units")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise CorruptCheckpointError(
                    f"checkpoint {checkpoint} is corrupt: {state_file.relative_to(checkpoint)} is missing or "
                    f"unreadable; {advice}, or pass --ignore_data_skip to restart the data stream"
                ) from None
            if train_config is not None:
                units = unit_records(rank_units(train_config, rank, world_size))
                problem = stream_state_mismatch(state, units, world_size, stream_options)
                if problem:
                    raise UsageError(
                        f"checkpoint {checkpoint}: the saved stream position of rank {rank} does not fit this run: "
                        f"{problem}; resume with the checkpoint's corpus config and values, or pass "
                        "--ignore_data_skip to restart the data stream"
                    )


def safetensors_problem(path: Path) -> str | None:
    """Why a .safetensors file is truncated or malformed, or None: its header must describe every byte."""
    try:
        size = path.stat().st_size
        with open(path, "rb") as handle:
            (header_length,) = struct.unpack("<Q", handle.read(8))
            if header_length > size - 8:
                return f"{path.name} is truncated ({size} bytes, header claims {header_length})"
            header = json.loads(handle.read(header_length))
    except (OSError, struct.error, ValueError, UnicodeDecodeError) as err:
        return f"{path.name} is unreadable ({err.__class__.__name__})"
    data_end = max((t["data_offsets"][1] for k, t in header.items() if k != "__metadata__"), default=0)
    if 8 + header_length + data_end != size:
        return f"{path.name} is truncated or padded ({size} bytes, expected {8 + header_length + data_end})"
    return None


def torch_file_problem(path: Path) -> str | None:
    """Why a torch.save (zip) file is truncated or damaged, or None (checks every member's CRC)."""
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        return f"{path.name} is truncated or not a torch file ({err.__class__.__name__})"
    return f"{path.name} is damaged (bad CRC in {bad})" if bad else None
