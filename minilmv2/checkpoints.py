"""Checkpoint files on disk: the student export, the completeness marker, fingerprints and verification.

A checkpoint is `checkpoint-N/` in the Trainer's layout (trainer_state.json, optimizer, scheduler, RNG) with the
student export in `student/` instead of the distiller, the stream positions in `data_state/rank-R.json` and,
written last, `checkpoint_complete.json`. `minilmv2.trainer` writes them; `run_distillation` checks them at
start-up (before any weights load) and on resume.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import struct
import zipfile
from pathlib import Path

import torch
from safetensors.torch import load_file

from minilmv2.errors import UsageError, one_line, option, refuse
from minilmv2.model_files import has_weights

STUDENT_DIR = "student"
DATA_STATE_DIR = "data_state"
COMPLETE_MARKER = "checkpoint_complete.json"
CHECKPOINT_PREFIX = "checkpoint-"
TRAINER_STATE = "trainer_state.json"
# The torch.save files the Trainer's resume loads: always the optimizer and the scheduler; the gradient scaler
# (fp16) and the RNG (rng_state.pth, or rng_state_<rank>.pth with several processes) when the checkpoint has them.
REQUIRED_TORCH_FILES = ("optimizer.pt", "scheduler.pt")
OPTIONAL_TORCH_FILES = ("scaler.pt", "rng_state*.pth")


class CorruptCheckpointError(UsageError):
    """A checkpoint that is incomplete or damaged (as opposed to one that does not fit this run)."""


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
        return f"{DATA_STATE_DIR}/rank-0.json records no student fingerprint"
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


def complete_checkpoints(output_dir: str | os.PathLike) -> list[Path]:
    """The `checkpoint-N` folders in `output_dir` whose save finished (completion marker written), oldest first."""
    found = [p for p in Path(output_dir).glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and checkpoint_step(p) >= 0]
    return sorted((p for p in found if (p / COMPLETE_MARKER).is_file()), key=checkpoint_step)


def finished_run(output_dir: str | os.PathLike) -> bool:
    """Whether `output_dir` holds a distillation that got to its end: the exported student with trainer_state.json
    beside it. A run stopped by a signal exports its student too, but only a run that was not interrupted writes
    trainer_state.json there (last)."""
    output_dir = Path(output_dir)
    return (output_dir / "trainer_state.json").is_file() and (output_dir / STUDENT_DIR).is_dir()


def last_complete_checkpoint(output_dir: str | os.PathLike) -> Path | None:
    """The highest-step `checkpoint-N` in `output_dir` whose save finished, or None."""
    complete = complete_checkpoints(output_dir)
    return complete[-1] if complete else None


def rotate_complete_checkpoints(
    output_dir: str | os.PathLike, save_total_limit: int | None, keep: str | os.PathLike | None = None
) -> list[Path]:
    """Delete the oldest complete checkpoints until `save_total_limit` complete ones remain; returns them.

    Only complete checkpoints older than the newest complete one are candidates: an incomplete one (a save
    that crashed, or one being written) is never deleted nor counted, and neither is `keep` (the best model).
    """
    if not save_total_limit or save_total_limit <= 0:
        return []
    complete = complete_checkpoints(output_dir)
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

    Every file the Trainer's resume loads is checked before it does: trainer_state.json (a TrainerState), the
    optimizer, scheduler, and any gradient scaler and RNG states (torch zip files: every member's CRC), the
    student's safetensors header. The student's weights must match the sha256 recorded when they were saved
    (`verify_student`). With `restore_data`, every rank's saved stream position must exist and, given the run's
    `train_config` (a `CorpusConfig`) and `stream_options` (`TokenStream.options()`), belong to the same corpus
    split the same way and to a stream that yields the same sequences.
    """
    from minilmv2.corpus import rank_units, stream_state_mismatch, unit_records

    checkpoint = Path(checkpoint)
    advice = "resume from an earlier checkpoint or start afresh"
    if not checkpoint.is_dir():
        raise UsageError(f"checkpoint {checkpoint} does not exist")
    if not (checkpoint / COMPLETE_MARKER).is_file():
        raise CorruptCheckpointError(
            f"checkpoint {checkpoint} is incomplete (no {COMPLETE_MARKER}: the run stopped while saving it); {advice}"
        )
    try:
        json.loads((checkpoint / COMPLETE_MARKER).read_text())
    except (OSError, ValueError) as err:
        raise CorruptCheckpointError(
            f"checkpoint {checkpoint} is corrupt: {COMPLETE_MARKER} cannot be read ({err}); {advice}"
        ) from None
    problem = trainer_state_problem(checkpoint / TRAINER_STATE)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {checkpoint} is corrupt: {problem}; {advice}")
    required = (f"{STUDENT_DIR}/config.json", f"{STUDENT_DIR}/model.safetensors", *REQUIRED_TORCH_FILES)
    for name in required:
        if not (checkpoint / name).is_file():
            raise CorruptCheckpointError(f"checkpoint {checkpoint} is incomplete: {name} is missing; {advice}")
    problem = safetensors_problem(checkpoint / STUDENT_DIR / "model.safetensors")
    optional = sorted(path for pattern in OPTIONAL_TORCH_FILES for path in checkpoint.glob(pattern))
    for path in [*(checkpoint / name for name in REQUIRED_TORCH_FILES), *optional]:
        problem = problem or torch_file_problem(path)
    if not problem and verify_student:
        problem = student_fingerprint_problem(checkpoint)
    if problem:
        raise CorruptCheckpointError(f"checkpoint {checkpoint} is corrupt: {problem}; {advice}")
    if restore_data:
        saved_world = json.loads((checkpoint / COMPLETE_MARKER).read_text()).get("world_size")
        if saved_world != world_size:
            raise UsageError(
                f"checkpoint {checkpoint} was written by {saved_world} process(es) but this run has {world_size}; "
                f"resume with {saved_world}, or pass {option('ignore_data_skip')} to restart the data stream"
            )
        for rank in range(world_size):
            state_file = checkpoint / DATA_STATE_DIR / f"rank-{rank}.json"
            try:
                state = json.loads(state_file.read_text())["stream"]
                state.get("units")
            except (OSError, ValueError, KeyError, TypeError, AttributeError):
                raise CorruptCheckpointError(
                    f"checkpoint {checkpoint} is corrupt: {state_file.relative_to(checkpoint)} is missing or "
                    f"unreadable; {advice}, or pass {option('ignore_data_skip')} to restart the data stream"
                ) from None
            if train_config is not None:
                units = unit_records(rank_units(train_config, rank, world_size))
                problem = stream_state_mismatch(state, units, world_size, stream_options)
                if problem:
                    raise UsageError(
                        f"checkpoint {checkpoint}: the saved stream position of rank {rank} does not fit this run: "
                        f"{problem}; resume with the checkpoint's corpus config and values, or pass "
                        f"{option('ignore_data_skip')} to restart the data stream"
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


def trainer_state_problem(path: Path) -> str | None:
    """Why `path` (a checkpoint's trainer_state.json) is not the TrainerState the Trainer's resume loads, or None."""
    from transformers import TrainerState

    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        return f"{path.name} cannot be read ({err})"
    try:
        state = TrainerState(**data)
    except TypeError as err:  # not an object, or keys a TrainerState does not have
        return f"{path.name} does not hold a trainer state ({one_line(err)})"
    if not (type(state.global_step) is int and state.global_step >= 0 and type(state.train_batch_size) is int):
        return f"{path.name} does not hold a trainer state (no whole global_step or train_batch_size)"
    if not isinstance(state.log_history, list):
        return f"{path.name} does not hold a trainer state (its log_history is not a list)"
    return None


def checkpoint_global_step(checkpoint: str | os.PathLike) -> int:
    """The optimizer step a (validated) checkpoint was saved at, from its trainer_state.json."""
    return int(json.loads((Path(checkpoint) / TRAINER_STATE).read_text())["global_step"])


def check_steps_left(checkpoint: Path, max_steps: int) -> None:
    """A resume must not end before the checkpoint's step (the Trainer would run one more step at learning rate 0
    and write a checkpoint past --max_steps); ending at it trains nothing (run_distillation exports the student)."""
    step = checkpoint_global_step(checkpoint)
    if max_steps < step:
        problem = f"is below the step of checkpoint {checkpoint} ({step}); give {step} or more, or start afresh"
        raise refuse("max_steps", max_steps, problem)


def not_a_checkpoint_problem(folder: Path, output_dir: Path) -> str | None:
    """Why `folder`, given as the checkpoint to resume, is no checkpoint at all (a run's output folder, a saved
    model, anything else), with where to resume instead; None when it is one, even a damaged one (or is missing:
    `validate_checkpoint` says that). `output_dir` is this run's: `latest` resumes from its checkpoints."""
    if not folder.exists():
        return None
    if not folder.is_dir():
        return f"is a file, not a checkpoint folder; {resume_advice(folder.parent, output_dir)}"
    own_files = (COMPLETE_MARKER, *REQUIRED_TORCH_FILES, *OPTIONAL_TORCH_FILES, DATA_STATE_DIR)
    if checkpoint_step(folder) >= 0 or any(any(folder.glob(pattern)) for pattern in own_files):
        return None  # a checkpoint, maybe one whose save never finished: validate_checkpoint names what is wrong
    subfolders = [p for p in folder.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and checkpoint_step(p) >= 0]
    if subfolders or finished_run(folder):
        if not subfolders:
            return "is a run's output folder, not a checkpoint, and holds no checkpoint-N folder to resume from"
        if not complete_checkpoints(folder):
            return "is a run's output folder, not a checkpoint, and none of its checkpoint-N folders is complete"
        where = resume_advice(folder, output_dir, "one of its checkpoint-N folders")
        return f"is a run's output folder, not a checkpoint; {where}"
    if (folder / "config.json").is_file() and has_weights(folder):
        parent = folder.parent
        if (parent / COMPLETE_MARKER).is_file():  # a checkpoint's own student/
            where = f"give the checkpoint that holds it, {parent}"
        else:
            where = resume_advice(parent, output_dir, "one of its run's checkpoint-N folders")
        return f"is a saved model, not a checkpoint (no trainer state, optimizer or stream position to resume); {where}"
    names = f"{TRAINER_STATE}, {COMPLETE_MARKER} or optimizer.pt"
    return f"is not a checkpoint folder (no {names}); {resume_advice(output_dir, output_dir)}"


def resume_advice(run_dir: Path, output_dir: Path, which: str = "a checkpoint-N folder") -> str:
    """Where to resume: `which` (a checkpoint-N folder), naming the newest complete one of the run in `run_dir`, and
    `latest` where that run is this one (its checkpoints are the ones `latest` looks at)."""
    newest = last_complete_checkpoint(run_dir) if run_dir.is_dir() else None
    if newest is None:
        return "give a checkpoint-N folder"
    latest = " or latest" if run_dir.resolve() == output_dir.resolve() else ""
    return f"give {which} (newest: {newest}){latest}"
