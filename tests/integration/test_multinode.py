"""Beyond one node: run.sh with NNODES=2 (both "nodes" on 127.0.0.1, c10d rendezvous) against NPROC=2 on one node,
and the SLURM batch scripts with stand-in `srun`, `scontrol` and `PYTHON` that record the commands they build."""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.distill.tiny_teacher import first_lines, write_corpus_config, write_tiny_teacher
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
STEPS = 4


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_sh_env(setup: dict, out: Path, **launch) -> dict:
    """run.sh's variables for a tiny CPU run with held-out loss at the start and the end."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable, "OMP_NUM_THREADS": "1",
           "TEACHER_DIR": str(setup["teacher"]), "TRAIN_CONFIG": str(setup["train"]), "VAL_CONFIG": str(setup["val"]),
           "OUTPUT_DIR": str(out), "STUDENT_HIDDEN_SIZE": "32", "STUDENT_NUM_LAYERS": "2",
           "STUDENT_ATTENTION_HEADS": "2", "L": "2", "NUM_RELATION_HEADS": "4", "MAX_SEQ_LEN": "32", "BATCH_SIZE": "4",
           "MAX_STEPS": str(STEPS), "WARMUP_STEPS": "0", "SAVE_STEPS": "1000", "LOGGING_STEPS": "1",
           "EVAL_STEPS": str(STEPS), "REPORT_TO": "none", "PRECISION": "none", "STOP_TIMEOUT": "30",
           "EXTRA_ARGS": "--disable_tqdm true --eval_on_start true --per_device_eval_batch_size 4"}  # fmt: skip
    for name in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "RANK", "WORLD_SIZE", "LOCAL_RANK"):
        env.pop(name, None)
    env.update(launch)
    return env


@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("multinode")
    return {
        "root": root,
        "teacher": write_tiny_teacher(root / "teacher"),
        "train": write_corpus_config(
            root / "train.json", [first_lines(corpus_dir / "books-01.txt", root / "b.txt", 200)]
        ),
        "val": write_corpus_config(root / "val.json", [first_lines(corpus_dir / "val-00.txt", root / "v.txt", 12)]),
    }


def eval_losses(out: Path) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]


def test_two_nodes_on_one_host_distil_like_two_processes_on_one_node(setup, tmp_path):
    """The multi-node path (NNODES, c10d rendezvous) gives the held-out loss and student of NPROC=2 on one node."""
    one_node = subprocess.run(["bash", str(REPO / "run.sh")], env=run_sh_env(setup, tmp_path / "one", NPROC="2"),
                              cwd=tmp_path, capture_output=True, text=True, timeout=300)  # fmt: skip
    assert one_node.returncode == 0, one_node.stdout[-2000:] + one_node.stderr[-3000:]

    launch = {"NPROC": "1", "NNODES": "2", "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(free_port()),
              "RDZV_ID": "minilmv2-test"}  # fmt: skip
    nodes = [subprocess.Popen(["bash", str(REPO / "run.sh")], env=run_sh_env(setup, tmp_path / "two", **launch),
                              cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]  # fmt: skip
    outputs = [node.communicate(timeout=300) for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(o[0][-2000:] + o[1][-3000:] for o in outputs)
    assert sum(out.count("student:    ") for out, _ in outputs) == 1  # one rank 0 over both nodes

    one, two = eval_losses(tmp_path / "one"), eval_losses(tmp_path / "two")
    assert [step for step, _ in one] == [step for step, _ in two] == [0, STEPS]
    for (_, a), (_, b) in zip(one, two, strict=True):
        assert abs(a - b) <= 1e-6 * abs(a), (one, two)
    students = [load_file(run / "student" / "model.safetensors") for run in (tmp_path / "one", tmp_path / "two")]
    assert students[0].keys() == students[1].keys()
    assert all((students[0][k] - students[1][k]).abs().max() <= 1e-6 for k in students[0])


# ---- the SLURM scripts, with stand-ins that record ----


def stand_ins(tmp_path: Path) -> tuple[Path, Path]:
    """A bin folder with `srun` and `scontrol`, and a `python` that records its calls (run.sh's and the sweep's)."""
    bin_dir, record = tmp_path / "bin", tmp_path / "calls.jsonl"
    bin_dir.mkdir()
    recorder = (
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        f"with open({str(record)!r}, 'a') as handle:\n"
        "    keep = ('NNODES', 'MASTER_ADDR', 'MASTER_PORT', 'RDZV_ID', 'STOP_TIMEOUT', 'RESUME', 'OUTPUT_DIR',\n"
        "            'MINILMV2_LAUNCH_NNODES', 'MINILMV2_VIA_RUN_SH')\n"
        "    env = {k: os.environ[k] for k in keep if k in os.environ}\n"
        "    call = {'tool': os.path.basename(sys.argv[0]), 'argv': sys.argv[1:], 'env': env}\n"
        "    handle.write(json.dumps(call) + '\\n')\n"
    )
    (bin_dir / "srun").write_text(recorder + "os.execvp(sys.argv[-2], sys.argv[-2:])\n")  # runs `bash run.sh`
    (bin_dir / "scontrol").write_text(
        recorder + "print('node1\\nnode2' if sys.argv[1:3] == ['show', 'hostnames'] else '')\n"
    )
    # python: the launcher's GPU and precision probes (-c) go to the real interpreter; the rest is recorded.
    (bin_dir / "python").write_text(
        recorder + f"if sys.argv[1] == '-c': os.execv({sys.executable!r}, [{sys.executable!r}, *sys.argv[1:]])\n"
    )
    for tool in ("srun", "scontrol", "python"):
        (bin_dir / tool).chmod(0o755)
    return bin_dir, record


def test_distill_sbatch_builds_one_torchrun_per_node_with_the_c10d_rendezvous(tmp_path):
    bin_dir, record = stand_ins(tmp_path)
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "4242",
           "SLURM_SUBMIT_DIR": str(REPO), "OUTPUT_DIR": str(tmp_path / "out"), "NPROC": "8"}  # fmt: skip
    for name in ("MASTER_ADDR", "MASTER_PORT", "NNODES", "RESUME", "STOP_TIMEOUT", "PRECISION"):
        env.pop(name, None)
    done = subprocess.run(["bash", str(REPO / "slurm" / "distill.sbatch")], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    calls = [json.loads(line) for line in record.read_text().splitlines()]
    srun = next(c for c in calls if c["tool"] == "srun")
    assert srun["argv"] == ["--kill-on-bad-exit=1", "bash", "run.sh"]
    # No RESUME: there is no checkpoint yet.
    assert srun["env"] == {"NNODES": "2", "MASTER_ADDR": "node1", "MASTER_PORT": "29500", "RDZV_ID": "4242",
                           "STOP_TIMEOUT": "100", "OUTPUT_DIR": str(tmp_path / "out")}  # fmt: skip
    pythons = [c for c in calls if c["tool"] == "python" and c["argv"][0] == "-m"]
    precheck, launch = pythons
    assert precheck["argv"][:2] == ["-m", "minilmv2.run_distillation"] and precheck["argv"][-1] == "--validate_only"
    assert precheck["env"]["MINILMV2_LAUNCH_NNODES"] == "2"
    expected = ("-m minilmv2.launch --stop-timeout 100 --nnodes 2 --rdzv-id 4242 --rdzv-backend c10d "
                "--rdzv-endpoint node1:29500 --nproc-per-node 8 -m minilmv2.run_distillation")  # fmt: skip
    assert shlex.join(launch["argv"]).startswith(expected)
    assert launch["argv"][launch["argv"].index("-m", 2) + 2 :] == precheck["argv"][2:-1]  # the same arguments


def test_distill_sbatch_resumes_a_requeued_job(tmp_path):
    bin_dir, record = stand_ins(tmp_path)
    (tmp_path / "out" / "checkpoint-5").mkdir(parents=True)
    (tmp_path / "out" / "checkpoint-5" / "checkpoint_complete.json").write_text("{}")
    env = {**os.environ, "PATH": f"{bin_dir}:{os.environ['PATH']}", "PYTHON": str(bin_dir / "python"),
           "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node[1-2]", "SLURM_JOB_ID": "4243",
           "SLURM_SUBMIT_DIR": str(REPO), "OUTPUT_DIR": str(tmp_path / "out"), "NPROC": "1"}  # fmt: skip
    env.pop("RESUME", None)
    done = subprocess.run(["bash", str(REPO / "slurm" / "distill.sbatch")], env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip
    assert done.returncode == 0, done.stderr
    launch = [json.loads(line) for line in record.read_text().splitlines()][-1]
    assert launch["env"]["RESUME"] == "latest" and "--resume_from_checkpoint" in launch["argv"]


def test_eval_sbatch_needs_a_shared_output_dir(tmp_path):
    env = {**os.environ, "MODEL_DIR": str(tmp_path), "SLURM_SUBMIT_DIR": str(REPO)}
    env.pop("OUTPUT_DIR", None)
    done = subprocess.run(["bash", str(REPO / "slurm" / "eval.sbatch")], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stderr) == (
        2,
        "error: set MODEL_DIR and OUTPUT_DIR (a folder on the shared filesystem that every array task writes to)\n",
    )
