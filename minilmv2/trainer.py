"""Trainer -> saved student: the HF Trainer, taught to save the student (not the distiller) and to stop safely.

`DistillationTrainer` is a `transformers.Trainer` whose model is the `MiniLM` distiller. It changes these things:

- Data: the `TokenStream` already holds only this rank's share, so the train loader is ours, a
  `PrefetchLoader` (minilmv2.prefetch: batches made ahead in a thread, the stream's position kept per batch).
  `accelerator.prepare` would shard it a second time (accelerate 1.15 wraps any torch IterableDataset in
  `IterableDatasetShard`, or, with the default `dispatch_batches`, has rank 0 read everything) and lose
  data. Batches go to the device from pinned memory without blocking.
- No step reads a device value on the host (each read waits for the device, so the next batch could not be
  made while the device works). Between logging and save steps:
  - a non-finite loss or gradient sets a flag on the device that makes the fused AdamW's update a no-op (its
    `found_inf`, as a gradient scaler uses it), so the weights stay those before the first bad step; the flag
    is read at logging, evaluation and save steps and at the end, which stop the run before anything is saved
    (an optimizer without that input, or fp16's gradient scaler, falls back to a read every step);
  - a SIGTERM/SIGINT is agreed by all ranks at the end of the step in which it arrived, through a host-side
    collective (a gloo group on CPU tensors), and every rank then saves at that same step;
  - tokens seen are counted on the host from the examples' lengths and summed across ranks at logging steps.
- Checkpoints (their files: `minilmv2.checkpoints`) keep the Trainer layout (`checkpoint-N/` with
  trainer_state.json, optimizer, scheduler, RNG) but hold the student export in `checkpoint-N/student/`
  (config, safetensors, tokenizer) instead of the distiller, so no second copy of the frozen teacher; plus
  `data_state/rank-R.json` (the stream position) and, written last, `checkpoint_complete.json`. Resuming
  loads the student back from `student/`. `--save_total_limit` deletes old checkpoints only after the new
  one is complete, and only complete ones older than it, so a crash while saving never leaves the run
  without a complete checkpoint.
- A non-finite loss stops the run with the first bad step named; the last checkpoint stays the last good
  one. A signal makes every rank save a checkpoint at the end of the current step and stop.
- Evaluation reports the distillation loss (there are no labels) as the mean over held-out sequences: each
  rank scores its own share (`TokenStream(sequence_shard=...)`), sums and counts are all-reduced, so every
  sequence counts once with equal weight and the figure does not depend on the number of processes.
- `--load_best_model_at_end` loads the best checkpoint's student; logging, eval and save intervals given
  on a resumed run win over the checkpoint's.
- Logs carry the resident memory of rank 0 (`rss_mb`) so long runs show any growth, and `data_wait_s`, the
  seconds per step the loop waited for its batch (near 0 when the prefetch keeps up).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file
from torch.utils.data import DataLoader
from transformers import Trainer

from minilmv2.checkpoints import (
    CHECKPOINT_PREFIX,
    COMPLETE_MARKER,
    DATA_STATE_DIR,
    STUDENT_DIR,
    export_student,
    parameters_sha256,
    rotate_complete_checkpoints,
)
from minilmv2.errors import UsageError, option
from minilmv2.prefetch import DEFAULT_DEPTH, PrefetchLoader


class NonFiniteLossError(RuntimeError):
    """The distillation loss became NaN or inf; training stopped before applying that step."""

    def __init__(self, step: int, loss: float):
        super().__init__(f"the distillation loss became {loss} at step {step}")
        self.step, self.loss = step, loss


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


class RankAgreement:
    """Host values combined across ranks without touching a device: a gloo group on CPU tensors (the default group
    when it is gloo already). With one process, the values themselves."""

    def __init__(self):
        self.group = None
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            # new_group is collective: every rank builds its trainer, so every rank comes here.
            self.group = dist.group.WORLD if dist.get_backend() == "gloo" else dist.new_group(backend="gloo")

    def reduce(self, values: Sequence[float], op=dist.ReduceOp.SUM) -> list[float]:
        if self.group is None:
            return list(values)
        combined = torch.tensor(values, dtype=torch.float64)
        dist.all_reduce(combined, op=op, group=self.group)
        return combined.tolist()  # a CPU tensor: no device is waited for


class DistillationTrainer(Trainer):
    """HF Trainer for a `MiniLM` distiller fed by a rank-aware `TokenStream` (see module docstring)."""

    def __init__(self, *args, stop_signal: StopSignal | None = None, prefetch_batches: int = DEFAULT_DEPTH, **kwargs):
        super().__init__(*args, **kwargs)
        self.stop_signal = stop_signal or StopSignal()
        self.stopped_by_signal: int | None = None
        self.prefetch_batches = prefetch_batches
        self.ranks = RankAgreement()
        self.train_loader: PrefetchLoader | None = None
        self._tokens_counted = 0  # this rank's tokens already added to state.num_input_tokens_seen
        self._last_log = (time.perf_counter(), 0, 0, 0.0)  # (time, global step, tokens seen, loader wait) then
        # The non-finite guard's device tensors (see _before_optimizer_step), made with the optimizer.
        self._update_guard = False
        self._nonfinite = self._loss_nonfinite = self._updates = self._first_bad = self._first_bad_loss = None
        self._last_loss = None
        self._first_guarded_step = 0

    def log(self, logs: dict[str, float], *args, **kwargs) -> None:
        if "loss" in logs:
            logs["rss_mb"] = round(resident_memory_mb(), 1)  # this process's resident memory: growth shows here
            # Since the last log line (the loss read there waited for the device, so the interval is exact):
            # tokens/s of all ranks, and the seconds per step this rank waited for its batch.
            now, wait = time.perf_counter(), self.train_loader.wait_seconds if self.train_loader else 0.0
            then, step, tokens, waited = self._last_log
            steps = max(1, self.state.global_step - step)
            logs["tokens_per_s"] = round((self.state.num_input_tokens_seen - tokens) / (now - then))
            logs["data_wait_s"] = round((wait - waited) / steps, 4)
            logs["num_input_tokens_seen"] = self.state.num_input_tokens_seen
            self._last_log = (now, self.state.global_step, self.state.num_input_tokens_seen, wait)
        super().log(logs, *args, **kwargs)

    def train(self, *args, **kwargs):
        self._last_log = (time.perf_counter(), self.state.global_step, self.state.num_input_tokens_seen, 0.0)
        try:
            return super().train(*args, **kwargs)
        finally:
            if self.train_loader is not None:
                self.train_loader.close()  # whatever ended training: the end, a signal, an error

    # -- data --

    def get_train_dataloader(self) -> PrefetchLoader:
        # No accelerator.prepare: the stream is already this rank's share (see the module docstring).
        self.train_loader = PrefetchLoader(
            self.train_dataset,
            self.data_collator,
            self._train_batch_size,
            depth=self.prefetch_batches,
            pin_memory=self.args.dataloader_pin_memory and torch.cuda.is_available(),
        )
        return self.train_loader

    def _prepare_input(self, data):
        if isinstance(data, torch.Tensor) and data.is_pinned():
            return data.to(self.args.device, non_blocking=True)  # the loader pinned it: the copy need not block
        return super()._prepare_input(data)

    def count_tokens(self) -> None:
        """Add the tokens every rank was handed since the last call to the run's count (a host collective)."""
        handed = self.train_loader.tokens if self.train_loader is not None else 0
        (new,) = self.ranks.reduce([handed - self._tokens_counted])
        self._tokens_counted = handed
        self.state.num_input_tokens_seen += int(new)

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

    def create_optimizer(self, *args, **kwargs):
        optimizer = super().create_optimizer(*args, **kwargs)
        # Fused Adam(W) skips its update, on the device, while `optimizer.found_inf` is non-zero; fp16's gradient
        # scaler sets that input itself, so it keeps the per-step check.
        self._update_guard = bool(getattr(optimizer, "_step_supports_amp_scaling", False)) and not self.args.fp16
        if self._update_guard:
            optimizer.register_step_pre_hook(self._before_optimizer_step)
        return optimizer

    def _before_optimizer_step(self, optimizer, args, kwargs) -> None:
        """Before each update, on the device: set the sticky non-finite flag from this step's losses and gradients
        (the gradients are the same on every rank), remember the first bad step, and make the update a no-op
        from that step on."""
        if self._nonfinite is None:  # the first step of this process: the guard's state, from constants only
            device = self._last_loss.device
            self._nonfinite = torch.zeros((), dtype=torch.bool, device=device)
            self._updates = torch.zeros((), dtype=torch.long, device=device)
            self._first_bad = torch.full((), -1, dtype=torch.long, device=device)
            self._first_bad_loss = torch.zeros((), dtype=torch.float32, device=device)
            self._first_guarded_step = self.state.global_step + 1
        grads = [p.grad for group in optimizer.param_groups for p in group["params"] if p.grad is not None]
        bad = self._loss_nonfinite.clone()
        if grads:
            bad |= ~torch.stack(torch._foreach_norm(grads)).isfinite().all()
        newly = bad & ~self._nonfinite
        self._first_bad = torch.where(newly, self._updates, self._first_bad)
        self._first_bad_loss = torch.where(newly, self._last_loss.float(), self._first_bad_loss)
        self._nonfinite |= bad
        self._loss_nonfinite.zero_()
        self._updates += 1
        optimizer.found_inf = self._nonfinite.float()

    def raise_if_nonfinite(self) -> None:
        """NonFiniteLossError naming the first bad step, if any rank had one (one read of the device flags)."""
        if self._nonfinite is None:
            return
        bad, first, loss = torch.stack(
            [self._nonfinite.double(), self._first_bad.double(), self._first_bad_loss.double()]
        ).tolist()
        any_bad, latest_good = self.ranks.reduce([bad, -first if bad else float("-inf")], op=dist.ReduceOp.MAX)
        if any_bad:
            step = self._first_guarded_step + int(-latest_good)
            raise NonFiniteLossError(step, loss if bad else float("nan"))

    def training_step(self, model, inputs, num_items_in_batch=None):
        loss = super().training_step(model, inputs, num_items_in_batch)
        if self._update_guard:
            finite = torch.isfinite(loss)
            if self._loss_nonfinite is None:
                self._loss_nonfinite = ~finite
            else:
                self._loss_nonfinite |= ~finite  # summed over the micro-steps of one update
            self._last_loss = loss.detach()
        elif not torch.isfinite(loss):  # no device-side guard for this optimizer: one read per step
            raise NonFiniteLossError(self.state.global_step + 1, loss.item())
        # A signal is agreed on the host, so every rank stops at the same step. Stop only after a whole optimizer
        # step (the last micro-batch of an accumulation), so the checkpoint holds no half-accumulated gradient.
        (stop,) = self.ranks.reduce([self.stop_signal.received is not None], op=dist.ReduceOp.MAX)
        if stop and self.accelerator.sync_gradients and self.stopped_by_signal is None:
            self.stopped_by_signal = self.stop_signal.received or signal.SIGTERM
            self.control.should_save = True
            self.control.should_training_stop = True
        return loss

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        # Before anything is logged, evaluated or saved: the device flags, and the tokens of every rank.
        if self.control.should_log or self.control.should_save or self.control.should_evaluate:
            self.raise_if_nonfinite()
            self.count_tokens()
        return super()._maybe_log_save_evaluate(*args, **kwargs)

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
            raise UsageError(f"the held-out corpus ({option('val_config')}) yields no sequence to evaluate")
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
            "stream": self.train_loader.state_dict() if self.train_loader else self.train_dataset.state_dict(),
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
