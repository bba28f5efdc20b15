"""Resume checks what it reads (issue 22): every checkpoint file the Trainer loads, what kind of folder was named, and
a --max_steps the checkpoint has already reached or passed.

One real 4-step run (checkpoints at steps 2 and 4) on the tiny local teacher serves every case; each case works on
a copy of it and runs the real entry point in-process.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from fixtures.distill.tiny_teacher import distill_argv
from safetensors.torch import load_file
from test_reliability_training import _truncate, edit, run_main, setup, with_training_options  # noqa: F401 (setup)

from minilmv2.checkpoints import CorruptCheckpointError, validate_checkpoint
from minilmv2.run_distillation import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ADVICE = "resume from an earlier checkpoint or start afresh"


@pytest.fixture(scope="module")
def finished(setup, tmp_path_factory):  # noqa: F811 (the imported fixture)
    """A finished 4-step run with checkpoints at steps 2 and 4, and its command line."""
    out = tmp_path_factory.mktemp("resume") / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=4, training=("--save_steps", "2"))
    assert main(argv) == 0
    return out, argv


def copy_run(finished, tmp_path: Path, *parts: str) -> Path:
    """A copy of the finished run's output folder (only `parts` of it, when given)."""
    reference, _ = finished
    out = tmp_path / "out"
    if not parts:
        return Path(shutil.copytree(reference, out))
    for part in parts:
        shutil.copytree(reference / part, out / part)
    return out


def resume(finished, out: Path, checkpoint: str = "latest", max_steps: int = 4) -> list[str]:
    _, argv = finished
    argv = edit(edit(argv, "--output_dir", str(out)), "--max_steps", str(max_steps))
    return with_training_options(argv, "--resume_from_checkpoint", checkpoint)


def snapshot(folder: Path) -> dict[str, tuple[int, int] | None]:
    """Every path under `folder`, with each file's size and modification time (a folder's changes with the
    start-up's write probe, which leaves nothing)."""
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
        for p in folder.rglob("*")
    }


def student_weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(folder / "student" / "model.safetensors")


def same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[name], b[name]) for name in a)


# ---- every file the Trainer's resume loads is checked ----


def test_latest_skips_a_truncated_rng_state_and_resumes_from_the_checkpoint_before(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path, "checkpoint-2", "checkpoint-4")
    newest = out / "checkpoint-4"
    _truncate(newest / "rng_state.pth")  # the Trainer's torch.load of it was a traceback on rank 0, exit 1
    status, stdout, stderr = run_main(resume(finished, out), capsys)
    assert status == 0, stderr
    assert (
        f"note: skipping {newest}: checkpoint {newest} is corrupt: rng_state.pth is truncated or not a torch file "
        f"(BadZipFile); {ADVICE}"
    ) in stdout.splitlines()
    assert f"resuming from {out / 'checkpoint-2'}, the newest intact checkpoint (skipped: checkpoint-4)" in stdout
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4]  # 1, 2 from checkpoint-2; 3, 4 trained now
    reference, _ = finished
    assert same_weights(student_weights(out), student_weights(reference))  # the resume was exact


def test_a_named_checkpoint_with_a_truncated_rng_state_is_refused_in_one_line(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path, "checkpoint-2", "checkpoint-4")
    checkpoint = out / "checkpoint-4"
    _truncate(checkpoint / "rng_state.pth")
    before = snapshot(tmp_path)
    status, stdout, stderr = run_main(resume(finished, out, str(checkpoint), max_steps=6), capsys)
    assert status == 2
    assert stderr == (
        f"error: checkpoint {checkpoint} is corrupt: rng_state.pth is truncated or not a torch file (BadZipFile); "
        f"{ADVICE}\n"
    )
    assert "loading the teacher" not in stdout and snapshot(tmp_path) == before


def _damage_rng_of_rank_1(checkpoint: Path) -> None:
    shutil.copy(checkpoint / "rng_state.pth", checkpoint / "rng_state_1.pth")
    _truncate(checkpoint / "rng_state_1.pth")


def _truncated_scaler(checkpoint: Path) -> None:
    torch.save({"scale": 65536.0}, checkpoint / "scaler.pt")
    _truncate(checkpoint / "scaler.pt")


DAMAGE = {
    "another rank's RNG state": (_damage_rng_of_rank_1, "rng_state_1.pth is truncated or not a torch file"),
    "the fp16 gradient scaler": (_truncated_scaler, "scaler.pt is truncated or not a torch file"),
    "a trainer state that is a list": (
        lambda c: (c / "trainer_state.json").write_text("[]"), "trainer_state.json does not hold a trainer state"),
    "a trainer state with an unknown key": (
        lambda c: (c / "trainer_state.json").write_text('{"global_step": 4, "steps": 4}'),
        "trainer_state.json does not hold a trainer state (TrainerState.__init__() got an unexpected keyword"),
    "a trainer state whose step is text": (
        lambda c: (c / "trainer_state.json").write_text('{"global_step": "4", "train_batch_size": 4}'),
        "trainer_state.json does not hold a trainer state (no whole global_step or train_batch_size)"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(DAMAGE))
def test_each_file_the_trainer_loads_on_resume_is_validated(finished, tmp_path, case):
    damage, expected = DAMAGE[case]
    checkpoint = copy_run(finished, tmp_path, "checkpoint-4") / "checkpoint-4"
    damage(checkpoint)
    with pytest.raises(CorruptCheckpointError) as caught:
        validate_checkpoint(checkpoint, world_size=1, restore_data=True)
    assert str(caught.value).startswith(f"checkpoint {checkpoint} is corrupt: {expected}"), caught.value


# ---- a folder that is not a checkpoint is named for what it is ----


@pytest.mark.parametrize("named", ["output folder", "student folder"])
def test_a_folder_that_is_not_a_checkpoint_is_refused_for_what_it_is(finished, tmp_path, capsys, named):
    out = copy_run(finished, tmp_path)
    newest = out / "checkpoint-4"
    if named == "output folder":
        folder = out
        expected = (
            f"is a run's output folder, not a checkpoint; give one of its checkpoint-N folders (newest: {newest})"
        )
    else:
        folder = out / "student"
        expected = (
            "is a saved model, not a checkpoint (no trainer state, optimizer or stream position to resume); give one "
            f"of its run's checkpoint-N folders (newest: {newest})"
        )
    before = snapshot(tmp_path)
    status, stdout, stderr = run_main(resume(finished, out, str(folder), max_steps=6), capsys)
    assert status == 2
    assert stderr == f"error: the checkpoint to resume --resume_from_checkpoint {folder} {expected} or latest\n"
    assert "loading the teacher" not in stdout and snapshot(tmp_path) == before


# ---- --max_steps against the checkpoint's step ----


def test_max_steps_below_the_checkpoint_step_is_refused(finished, tmp_path, capsys):
    out = copy_run(finished, tmp_path, "checkpoint-2", "checkpoint-4")
    before = snapshot(tmp_path)
    status, stdout, stderr = run_main(resume(finished, out, max_steps=3), capsys)
    assert status == 2
    assert stderr == (
        "error: the number of optimizer steps --max_steps 3 is below the step of checkpoint "
        f"{out / 'checkpoint-4'} (4); give 4 or more, or start afresh\n"
    )
    assert "loading the teacher" not in stdout and snapshot(tmp_path) == before


def test_max_steps_equal_to_the_checkpoint_step_exports_the_student_and_trains_nothing(finished, tmp_path, capsys):
    """A requeued job whose run was stopped after its last checkpoint (before the export), then requeued again."""
    from transformers import AutoModel

    reference, _ = finished
    out = copy_run(finished, tmp_path, "checkpoint-2", "checkpoint-4")
    checkpoint = out / "checkpoint-4"
    checkpoints = snapshot(out)
    status, stdout, stderr = run_main(resume(finished, out), capsys)
    assert status == 0, stderr
    assert f"nothing to train: --max_steps 4 is the step of {checkpoint}; exported its student: {out / 'student'}" in (
        stdout.splitlines()
    )
    assert {
        k: v for k, v in snapshot(out).items() if k.startswith("checkpoint-")
    } == checkpoints  # none new, none moved
    AutoModel.from_pretrained(out / "student")
    assert same_weights(student_weights(out), student_weights(checkpoint))
    assert same_weights(student_weights(out), student_weights(reference))
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 4 and [e["step"] for e in state["log_history"] if "loss" in e] == [1, 2, 3, 4]
    assert "| training | finished after 4 optimizer steps |" in (out / "student" / "README.md").read_text()

    # Requeued once more: the run has finished, nothing is done.
    finished_run = snapshot(out)
    status, stdout, stderr = run_main(resume(finished, out), capsys)
    assert status == 0, stderr
    assert stdout == (
        f"nothing to train: --max_steps 4 is the step of {checkpoint}; the run already finished there "
        f"(student: {out / 'student'})\n"
    )
    assert snapshot(out) == finished_run
