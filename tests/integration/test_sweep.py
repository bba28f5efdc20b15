"""run_eval.sh's sweep runner (minilmv2.scoring.sweep): runs side by side, one GPU per run, a run's identity, Ctrl-C.

The fine-tuning runs are a stand-in PYTHON (a script that records what each run saw, sleeps, and writes an
eval_results.json whose accuracy follows the learning rate); the sweep itself, the model and the task data are
real. test_run_eval.py runs real fine-tuning through run_eval.sh.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fixtures.glue.tiny_bert import write_tiny_bert

REPO_ROOT = Path(__file__).resolve().parents[2]
GLUE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "glue"

STAND_IN = """#!{python}
import json, os, sys, time
if sys.argv[1] in ("-m", "-c"):  # the sweep itself (run_eval.sh runs it with PYTHON too): the real interpreter
    os.execv("{python}", ["{python}", *sys.argv[1:]])
if os.environ.get("MINILMV2_VALIDATE_ONLY") == "1":
    if "--fp17" in sys.argv:
        sys.exit("error: unknown argument(s) --fp17; see --help for the valid ones")
    sys.exit(0)
out = sys.argv[sys.argv.index("--output_dir") + 1]
lr = float(sys.argv[sys.argv.index("--learning_rate") + 1])
started = time.time()
time.sleep(float(os.environ.get("STAND_IN_SECONDS", "0.5")))
os.makedirs(out, exist_ok=True)
with open(os.path.join(out, "eval_results.json"), "w") as handle:
    json.dump({{"eval_accuracy": 0.5 + lr}}, handle)
line = json.dumps({{"out": out, "gpu": os.environ.get("CUDA_VISIBLE_DEVICES"), "start": started, "end": time.time(),
                   "threads": os.environ.get("OMP_NUM_THREADS")}})
with open(os.environ["STAND_IN_LOG"], "a") as handle:
    handle.write(line + "\\n")
"""


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("sweep_assets")
    shutil.copytree(GLUE_FIXTURES / "SST-2", root / "glue" / "SST-2")
    stand_in = root / "python"
    stand_in.write_text(STAND_IN.format(python=sys.executable))
    stand_in.chmod(0o755)
    return {"model": write_tiny_bert(root / "a" / "student"), "other_model": write_tiny_bert(root / "b" / "student",
            seed=1), "glue": root / "glue", "stand_in": stand_in}  # fmt: skip


def sweep_env(assets, tmp_path, **overrides) -> dict:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": str(assets["stand_in"]), "MODEL_DIR": str(assets["model"]),
           "TASKS": "sst2", "GLUE_DIR": str(assets["glue"]), "LEARNING_RATES": "1e-3 2e-3 3e-3 4e-3", "EPOCHS": "1",
           "SEEDS": "7", "OUTPUT_DIR": str(tmp_path / "out"), "STAND_IN_LOG": str(tmp_path / "runs.jsonl"),
           "MINILMV2_VISIBLE_GPUS": "0", "PYTHONPATH": str(REPO_ROOT)}  # fmt: skip
    env.pop("CUDA_VISIBLE_DEVICES", None)
    env.update(overrides)
    return env


def run_sweep(env: dict, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "minilmv2.scoring.sweep"], env=env, cwd=cwd or REPO_ROOT,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def stand_in_runs(tmp_path: Path) -> list[dict]:
    return [json.loads(line) for line in (tmp_path / "runs.jsonl").read_text().splitlines()]


def overlapping(runs: list[dict]) -> list[tuple[dict, dict]]:
    return [
        (a, b) for i, a in enumerate(runs) for b in runs[i + 1 :] if a["start"] < b["end"] and b["start"] < a["end"]
    ]


def test_parallel_runs_overlap_and_summarise_as_one_at_a_time(assets, tmp_path):
    one = run_sweep(sweep_env(assets, tmp_path / "one", OUTPUT_DIR=str(tmp_path / "one" / "out"),
                              STAND_IN_LOG=str(tmp_path / "one.jsonl"), PARALLEL="1"))  # fmt: skip
    two = run_sweep(sweep_env(assets, tmp_path / "two", OUTPUT_DIR=str(tmp_path / "two" / "out"),
                              STAND_IN_LOG=str(tmp_path / "two.jsonl"), PARALLEL="2"))  # fmt: skip
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    runs_one = [json.loads(line) for line in (tmp_path / "one.jsonl").read_text().splitlines()]
    runs_two = [json.loads(line) for line in (tmp_path / "two.jsonl").read_text().splitlines()]
    assert len(runs_one) == len(runs_two) == 4
    assert overlapping(runs_one) == [] and len(overlapping(runs_two)) >= 2
    # Two CPU runs side by side share the cores; one alone is left the default.
    cores = os.cpu_count() or 1
    assert {run["threads"] for run in runs_two} == {str(max(1, cores // 2))}
    assert {run["threads"] for run in runs_one} == {os.environ.get("OMP_NUM_THREADS")}
    summaries = [(tmp_path / which / "out" / "summary.csv").read_text() for which in ("one", "two")]
    assert summaries[0] == summaries[1] and "4e-3" in summaries[0]  # the best learning rate: the highest accuracy
    assert "[4/4 done, 0 running, 0 failed]" in two.stdout


def test_each_run_sees_exactly_one_gpu_and_no_gpu_serves_two_runs_at_once(assets, tmp_path):
    env = sweep_env(assets, tmp_path, MINILMV2_VISIBLE_GPUS="2", GPUS="0 1", STAND_IN_SECONDS="0.8")
    result = run_sweep(env)
    assert result.returncode == 0, result.stderr
    runs = stand_in_runs(tmp_path)
    assert len(runs) == 4 and {run["gpu"] for run in runs} == {"0", "1"}
    assert all(a["gpu"] != b["gpu"] for a, b in overlapping(runs))
    assert overlapping(runs)  # two GPUs: two runs at a time
    with open(tmp_path / "out" / "runs.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    by_dir = {run["out"]: run["gpu"] for run in runs}
    assert all(row["device"] == by_dir[row["run_dir"]] for row in rows) and len(rows) == 4
    assert {row["batch"] for row in rows} == {"32"}


def test_gpu_ids_are_passed_verbatim(assets, tmp_path):
    """The caller's CUDA_VISIBLE_DEVICES entries (SLURM's ids, UUIDs) are what the runs get, one each."""
    env = sweep_env(assets, tmp_path, CUDA_VISIBLE_DEVICES="GPU-aaaa,GPU-bbbb", LEARNING_RATES="1e-3 2e-3")
    result = run_sweep(env)
    assert result.returncode == 0, result.stderr
    assert sorted(run["gpu"] for run in stand_in_runs(tmp_path)) == ["GPU-aaaa", "GPU-bbbb"]


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"MINILMV2_VISIBLE_GPUS": "2", "GPUS": "0 3"}, "GPUS names GPU 3, which is not visible here (visible: 0, 1); "
         "give some of those"),
        ({"GPUS": "0"}, "GPUS names GPU 0, which is not visible here (visible: none); give some of those"),
        ({"PARALLEL": "0"}, "PARALLEL=0 must be a whole number of runs at a time, 1 or more"),
        ({"PARALLEL": "two"}, "PARALLEL=two must be a whole number of runs at a time, 1 or more"),
        ({"EXTRA_ARGS": "--max_seq_length 256"}, "EXTRA_ARGS asks for --max_seq_length 256, but the model has 128 "
         "positions; give at most 128"),
        ({"SEEDS": "7 8 7"}, "SEEDS gives '7' twice; give each value once"),
        ({"SEEDS": "7 07"}, "SEEDS gives '7' and '07', the same value; give each value once"),
        ({"LEARNING_RATES": "1e-3 0.001"}, "LEARNING_RATES gives '1e-3' and '0.001', the same value; give each value "
         "once"),
        ({"EPOCHS": "1 1.0"}, "EPOCHS gives '1' and '1.0', the same value; give each value once"),
    ],
)  # fmt: skip
def test_bad_devices_and_lengths_are_refused_before_any_run(assets, tmp_path, overrides, message):
    result = run_sweep(sweep_env(assets, tmp_path, **overrides))
    assert (result.returncode, result.stderr) == (2, f"error: {message}\n")
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs.jsonl").exists()


def test_more_parallel_than_gpus_is_capped_and_said(assets, tmp_path):
    result = run_sweep(sweep_env(assets, tmp_path, MINILMV2_VISIBLE_GPUS="2", PARALLEL="4", LEARNING_RATES="1e-3"))
    assert result.returncode == 0, result.stderr
    assert "note: PARALLEL=4 is more than the 2 GPU(s) in GPUS; running 2 at a time" in result.stdout


def test_a_bad_extra_arg_is_refused_once_before_the_first_run(assets, tmp_path):
    """The real script's own check, once: --fp17 failed every run one by one, then an all-failed summary."""
    result = run_sweep(sweep_env(assets, tmp_path, PYTHON=sys.executable, EXTRA_ARGS="--fp17"))
    assert (result.returncode, result.stderr) == (
        2,
        "error: hf_run_evaluation.py refuses the sweep's arguments (EXTRA_ARGS included): unknown argument(s) "
        "--fp17; see --help for the valid ones\n",
    )
    assert not (tmp_path / "out").exists()


def test_a_second_model_never_reports_the_firsts_results(assets, tmp_path):
    """Both students are called student/: the default OUTPUT_DIR was runs/eval/student for both, and the second
    sweep "kept" the first model's runs."""
    first = run_sweep(sweep_env(assets, tmp_path, LEARNING_RATES="1e-3", OUTPUT_DIR=""), cwd=tmp_path)
    second = run_sweep(sweep_env(assets, tmp_path, LEARNING_RATES="1e-3", OUTPUT_DIR="",
                                 MODEL_DIR=str(assets["other_model"])), cwd=tmp_path)  # fmt: skip
    assert first.returncode == second.returncode == 0, first.stderr + second.stderr
    folders = sorted(p.name for p in (tmp_path / "runs" / "eval").iterdir())
    assert len(folders) == 2 and all(name.startswith("student-") for name in folders)
    assert "kept" not in second.stdout and len(stand_in_runs(tmp_path)) == 2


def test_a_changed_model_or_extra_args_is_run_again_not_kept(assets, tmp_path):
    env = sweep_env(assets, tmp_path, LEARNING_RATES="1e-3")
    assert run_sweep(env).returncode == 0
    again = run_sweep(env)
    assert "finished earlier, kept" in again.stdout and len(stand_in_runs(tmp_path)) == 1
    changed_args = run_sweep({**env, "EXTRA_ARGS": "--max_train_samples 4"})
    other_model = run_sweep({**env, "MODEL_DIR": str(assets["other_model"])})
    for result in (changed_args, other_model):
        assert result.returncode == 0, result.stderr
        assert "its earlier result was made with another model or other arguments: run again" in result.stdout
    assert len(stand_in_runs(tmp_path)) == 3


def test_ctrl_c_stops_every_running_run_marks_them_interrupted_and_a_rerun_resumes(assets, tmp_path):
    env = sweep_env(assets, tmp_path, MINILMV2_VISIBLE_GPUS="2", STAND_IN_SECONDS="60")
    command = [sys.executable, "-m", "minilmv2.scoring.sweep"]
    sweep = subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)  # fmt: skip
    records = tmp_path / "out" / "sst2"
    deadline = time.monotonic() + 60
    while len(list(records.glob("*/run.log"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1.0)  # the stand-ins are sleeping
    os.killpg(sweep.pid, signal.SIGINT)  # what Ctrl-C sends: the whole foreground group
    stdout, _ = sweep.communicate(timeout=60)
    assert sweep.returncode == 130, stdout
    statuses = sorted(json.loads(p.read_text())["status"] for p in records.glob("*/sweep_run.json"))
    assert statuses == ["interrupted", "interrupted"]  # the two running ones; the other two never started
    assert "stopped by signal 2: 2 run(s) interrupted; run the same command again to resume" in stdout
    assert not (tmp_path / "runs.jsonl").exists()  # no stand-in got to its end: each was stopped

    again = run_sweep({**env, "STAND_IN_SECONDS": "0.1"})
    assert again.returncode == 0, again.stderr
    statuses = sorted(json.loads(p.read_text())["status"] for p in records.glob("*/sweep_run.json"))
    assert statuses == ["ok"] * 4 and len(stand_in_runs(tmp_path)) == 4


def test_the_data_parallel_guard_keeps_one_gpu(monkeypatch, capsys):
    import torch
    from transformers import TrainingArguments

    from minilmv2.arguments import one_device_without_torchrun

    for name in ("LOCAL_RANK", "WORLD_SIZE"):
        monkeypatch.delenv(name, raising=False)
    args = TrainingArguments(output_dir="unused", use_cpu=True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    one_device_without_torchrun(args)
    assert args.n_gpu == 1
    assert "note: 4 GPUs are visible to this one process: it uses one (cuda:0), not DataParallel" in (
        capsys.readouterr().out
    )
    under_torchrun = TrainingArguments(output_dir="unused", use_cpu=True)
    monkeypatch.setenv("LOCAL_RANK", "0")
    one_device_without_torchrun(under_torchrun)
    assert under_torchrun.n_gpu == 0 and capsys.readouterr().out == ""


# ---- several sweeps on one OUTPUT_DIR: a lock per cell ----


def test_two_sweeps_started_together_run_every_cell_exactly_once(assets, tmp_path):
    env = sweep_env(assets, tmp_path, STAND_IN_SECONDS="1.0", PARALLEL="1")
    command = [sys.executable, "-m", "minilmv2.scoring.sweep"]
    sweeps = [subprocess.Popen(command, env=env, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True) for _ in range(2)]  # fmt: skip
    outputs = [sweep.communicate(timeout=120) for sweep in sweeps]
    assert [sweep.returncode for sweep in sweeps] == [0, 0], outputs
    runs = stand_in_runs(tmp_path)
    assert sorted(run["out"] for run in runs) == sorted(str(p) for p in (tmp_path / "out" / "sst2").iterdir())
    assert len(runs) == 4  # each cell once, over both sweeps
    assert not list((tmp_path / "out").rglob("sweep.lock"))  # every lock released


def test_an_array_of_three_tasks_covers_every_cell_once_and_the_last_writes_the_summary(assets, tmp_path):
    """slurm/eval.sbatch as a 3-task array (run one after another here): each task takes its share of cells."""
    outputs = []
    for task in range(3):
        env = sweep_env(assets, tmp_path, SLURM_ARRAY_TASK_ID=str(task), SLURM_ARRAY_TASK_COUNT="3",
                        SLURM_ARRAY_TASK_MIN="0", SLURM_SUBMIT_DIR=str(REPO_ROOT), STAND_IN_SECONDS="0.1")  # fmt: skip
        done = subprocess.run(["bash", str(REPO_ROOT / "slurm" / "eval.sbatch")], env=env, capture_output=True,
                              text=True, timeout=120)  # fmt: skip
        assert done.returncode == 0, done.stdout[-2000:] + done.stderr
        outputs.append(done.stdout)
    assert "array task 1 of 3: 2 of the grid's 4 cells" in outputs[0]
    assert "array task 3 of 3: 1 of the grid's 4 cells" in outputs[2]
    assert all("summary deferred: " in out for out in outputs[:2]) and "summary deferred" not in outputs[2]
    runs = stand_in_runs(tmp_path)
    assert len(runs) == len({run["out"] for run in runs}) == 4
    assert "4e-3" in (tmp_path / "out" / "summary.csv").read_text()


def test_a_stale_lock_is_taken_over_and_said(assets, tmp_path):
    """A sweep that died (its pid is gone on this host) or a node that died (no heartbeat): its cells run again."""
    import socket

    dead = subprocess.Popen(["true"])
    dead.wait()
    cells = [tmp_path / "out" / "sst2" / f"lr{lr}_ep1_seed7" for lr in ("1e-3", "2e-3")]
    for cell, holder in zip(cells, ({"host": socket.gethostname(), "pid": dead.pid}, {"host": "node-gone", "pid": 1}),
                            strict=True):  # fmt: skip
        cell.mkdir(parents=True)
        (cell / "sweep.lock").write_text(json.dumps({**holder, "started": 0}))
    old = time.time() - 400  # beyond the 300 s without a heartbeat
    os.utime(cells[1] / "sweep.lock", (old, old))
    result = run_sweep(sweep_env(assets, tmp_path, LEARNING_RATES="1e-3 2e-3"))
    assert result.returncode == 0, result.stderr
    assert (
        f"note: taking over the lock of {cells[0]} (pid {dead.pid} on {socket.gethostname()} is gone)" in result.stdout
    )
    assert f"note: taking over the lock of {cells[1]} (node-gone pid 1 gave no heartbeat for 40" in result.stdout
    assert len(stand_in_runs(tmp_path)) == 2
