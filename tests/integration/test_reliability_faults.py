"""Faults through run.sh with real processes: SIGTERM, kill -9 of the launcher, and the OUTPUT_DIR lock.

run.sh becomes `minilmv2.launch` (torchrun in-process) with one worker here; these are the cases that need
the real process tree, so they run it, once per fault, on the tiny teacher.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.distill.tiny_teacher import distill_argv, first_lines, write_corpus_config, write_tiny_teacher

from minilmv2.checkpoints import COMPLETE_MARKER, last_complete_checkpoint, parameters_sha256
from minilmv2.launch import LOCK_NAME, acquire_output_lock, check_output_lock, release_output_lock
from minilmv2.run_distillation import main

REPO_ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    teacher = write_tiny_teacher(root / "teacher")
    train = write_corpus_config(root / "train.json", [first_lines(corpus_dir / "wiki-01.txt", root / "w.txt", 80)])
    return {"teacher": teacher, "train": train}


def start_run_sh(setup, out: Path, **overrides) -> subprocess.Popen:
    env = {
        **os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1",
        "PYTHON": sys.executable, "PRECISION": "none", "NPROC": "1", "REPORT_TO": "none",
        "TEACHER_DIR": str(setup["teacher"]), "TRAIN_CONFIG": str(setup["train"]), "OUTPUT_DIR": str(out),
        "STUDENT_HIDDEN_SIZE": "32", "STUDENT_NUM_LAYERS": "2", "STUDENT_ATTENTION_HEADS": "2", "L": "2",
        "NUM_RELATION_HEADS": "4", "BATCH_SIZE": "4", "MAX_SEQ_LEN": "32", "MAX_STEPS": "100000",
        "SAVE_STEPS": "2", "LOGGING_STEPS": "1", "WARMUP_STEPS": "0", "EXTRA_ARGS": "--disable_tqdm true",
        **overrides,
    }  # fmt: skip
    command = ["bash", str(REPO_ROOT / "run.sh")]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def read_until(process: subprocess.Popen, done, output: list[str], timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not done():
        line = process.stdout.readline()
        output.append(line)
        assert line or process.poll() is None, "".join(output)
        assert time.monotonic() < deadline, "".join(output)


def is_gone(pid: int) -> bool:
    """True once every thread of `pid` has exited (a zombie nobody has reaped yet counts as gone).

    The main thread alone is not enough: it can be a zombie while the other threads are still exiting and the
    process's files (its OUTPUT_DIR lock among them) are not yet closed.
    """
    try:
        threads = list(Path(f"/proc/{pid}/task").iterdir())
    except FileNotFoundError:
        return True
    for thread in threads:
        try:
            status = (thread / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue  # exited while we looked
        if "\nState:\tZ" not in status:
            return False
    return True


def test_sigterm_through_run_sh_saves_and_exits_128_plus_signal_and_a_second_run_is_refused(setup, tmp_path, capsys):
    out = tmp_path / "out"
    process = start_run_sh(setup, out)
    output: list[str] = []
    read_until(process, lambda: (out / "checkpoint-2" / COMPLETE_MARKER).is_file(), output)

    # A second run into the same OUTPUT_DIR is refused in one line naming the running one.
    holder = json.loads((out / LOCK_NAME).read_text())
    assert holder["launcher_pid"] == process.pid  # run.sh became the launcher (exec)
    argv = distill_argv(setup["teacher"], setup["train"], out, training=("--resume_from_checkpoint", "latest"))
    with pytest.raises(SystemExit) as refused:
        main([*argv, "--validate_only"])
    stderr = capsys.readouterr().err
    assert refused.value.code == 2 and stderr.count("\n") == 1
    in_use = f"--output_dir {out} is in use by another run (pid {holder['pid']}, launched by pid {process.pid} on"
    assert in_use in stderr

    process.send_signal(signal.SIGTERM)
    rest, _ = process.communicate(timeout=180)
    output.append(rest)
    text = "".join(output)
    assert process.returncode == 128 + signal.SIGTERM, text[-3000:]
    assert "Traceback" not in text and "ChildFailedError" not in text
    (stopped,) = [line for line in text.splitlines() if line.startswith("stopped by signal 15 at step ")]
    checkpoint = last_complete_checkpoint(out)
    assert stopped.startswith(f"stopped by signal 15 at step {checkpoint.name.split('-')[1]}; checkpoint: {checkpoint}")
    from transformers import AutoModel

    exported = parameters_sha256(AutoModel.from_pretrained(out / "student"))
    assert exported == json.loads((checkpoint / "data_state" / "rank-0.json").read_text())["student_sha256"]
    assert not (out / LOCK_NAME).exists()  # released on the way out
    check_output_lock(out)


def test_kill_9_of_run_sh_takes_its_worker_with_it_and_the_lock_is_taken_over(setup, tmp_path, capsys):
    out = tmp_path / "out"
    process = start_run_sh(setup, out)
    output: list[str] = []
    read_until(process, lambda: any("'loss':" in line for line in output), output)
    worker = json.loads((out / LOCK_NAME).read_text())["pid"]
    assert not is_gone(worker)

    process.kill()  # SIGKILL to the process run.sh became: nothing can be passed on
    process.wait(timeout=30)
    deadline = time.monotonic() + 20
    while not is_gone(worker) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert is_gone(worker), "the worker kept running after its launcher was killed"

    # Its lock is stale: no run is refused, and the next run takes it over, saying whose it was.
    check_output_lock(out)
    capsys.readouterr()
    descriptor = acquire_output_lock(out)
    try:
        assert f"taking over the lock of {out} left by pid {worker}, launched by pid {process.pid}" in (
            capsys.readouterr().out
        )
        assert json.loads((out / LOCK_NAME).read_text())["pid"] == os.getpid()
    finally:
        release_output_lock(descriptor, out)
