"""bench/gpu_check.sh rehearsed on the CPU, as the GPU machine will run it: from the bundle sent along (bench/
gpu_bundle.py: the teacher in bf16), without an install of the package, and without `datasets` or `evaluate`,
which the GPU machine's image lacks (blocked here by an import hook on PYTHONPATH)."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from safetensors import safe_open

REPO = Path(__file__).resolve().parents[2]
PHASES = ("tests", "relation", "step", "syncs", "e2e")

# Imported by every Python process that has this folder on PYTHONPATH (the script, pytest, torchrun's workers):
# a None in sys.modules makes `import datasets` fail and importlib.util.find_spec say None, as on the GPU image
# (so transformers, which asks find_spec, treats them as not installed).
BLOCKER = "import sys\nsys.modules.update(datasets=None, evaluate=None)\n"


@pytest.fixture(scope="module")
def device_image_env(tmp_path_factory, teacher_dir, corpus_dir) -> dict:
    """The environment of the GPU machine's image, as far as imports go, with the bundle as its assets."""
    root = tmp_path_factory.mktemp("gpu image")
    (root / "blocker").mkdir()
    (root / "blocker" / "sitecustomize.py").write_text(BLOCKER)
    bundle = root / "bundle"
    env = {**os.environ, "MINILMV2_ASSETS": str(teacher_dir.parent)}
    subprocess.run([sys.executable, "bench/gpu_bundle.py", "--dest", str(bundle)], cwd=REPO, env=env, check=True)
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "TRITON_INTERPRET")}
    return {**env, "PYTHONPATH": str(root / "blocker"), "MINILMV2_ASSETS": str(bundle), "PYTHON": sys.executable}


def test_the_import_hook_hides_datasets_and_evaluate(device_image_env):
    for name in ("datasets", "evaluate"):
        found = subprocess.run(
            [sys.executable, "-c", f"import importlib.util as u; assert u.find_spec({name!r}) is None; import {name}"],
            env=device_image_env,
            capture_output=True,
            text=True,
        )
        assert f"ModuleNotFoundError: import of {name} halted" in found.stderr, found


def test_the_bundle_holds_a_bf16_teacher_the_corpus_and_the_code_version(device_image_env):
    bundle = Path(device_image_env["MINILMV2_ASSETS"])
    with safe_open(bundle / "teacher" / "model.safetensors", "pt") as weights:
        dtypes = {weights.get_slice(name).get_dtype() for name in weights.keys()}  # noqa: SIM118
    assert dtypes == {"BF16"} or dtypes == {"BF16", "I64"}
    assert json.loads((bundle / "teacher" / "config.json").read_text())["dtype"] == "bfloat16"
    assert (bundle / "corpus" / "train_config.json").is_file()
    assert re.fullmatch(
        r"commit [0-9a-f]{7,}(-dirty)?, bundled \d{4}-\d\d-\d\d \d\d:\d\d UTC\n", (bundle / "code.txt").read_text()
    )


def test_the_rehearsal_runs_every_phase_and_returns_at_most_8_files(device_image_env, tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    env = {**device_image_env, "GPU_CHECK_WORK": str(work)}
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", "--rehearse", str(results)], cwd=REPO, env=env, capture_output=True, text=True
    )
    summary = (results / "summary.txt").read_text()
    assert done.returncode == 0, summary + done.stderr[-3000:]
    assert sorted(p.name for p in results.iterdir()) == sorted(["summary.txt", *(f"{p}.log" for p in PHASES)])
    for phase in PHASES:
        assert re.search(rf"^== {phase}: ok in \d+ s$", summary, re.M), summary
    assert "datasets absent, evaluate absent" in summary and "failed phases: 0" in summary
    assert re.search(r"^1 passed, \d+ deselected", summary, re.M)  # the tests phase ran a test, and it passed
    for kernel in ("torch", "triton"):  # the relation loss alone and the whole step, per kernel, same loss
        assert re.search(rf"^{kernel} +\d+\.\d+ +\d+\.\d+x .* 1\.24765$", summary, re.M), summary
        assert re.search(rf"^minilmv2 {kernel} +\d+\.\d+ ", summary, re.M), summary
    assert re.search(r"^reference +\d+\.\d+ ", summary, re.M)
    # The real training loop reads no tensor value on the host between logging steps (threads included).
    assert re.search(r"^syncs per step: 0$", summary, re.M), summary
    assert re.search(r"^throughput: [\d,]+ tokens/s", summary, re.M)
    assert re.search(r"^== RELATION_KERNEL=torch: exit status 0; last logging interval \d+ tokens/s$", summary, re.M)
    # Run outputs stay out of the results: the student is in the work folder, fp32 though the teacher was bf16.
    student = work / "run-torch" / "student"
    assert json.loads((student / "config.json").read_text())["dtype"] == "float32"
    with safe_open(student / "model.safetensors", "pt") as weights:
        assert {weights.get_slice(name).get_dtype() for name in weights.keys()} <= {"F32", "I64"}  # noqa: SIM118


def test_without_cuda_and_without_the_switch_it_says_so_in_one_line(device_image_env, tmp_path):
    done = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(tmp_path / "results")],
        cwd=REPO,
        env=device_image_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2
    assert done.stderr.count("\n") == 1 and "--rehearse" in done.stderr, done.stderr
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize(
    ("args", "expected"),
    [([], "usage: bash bench/gpu_check.sh [--rehearse] RESULTS_DIR"), (["R", "speed"], "error: unknown phase speed")],
)
def test_bad_arguments_are_one_line_and_status_2(args, expected, tmp_path):
    done = subprocess.run(
        ["bash", str(REPO / "bench" / "gpu_check.sh"), "--rehearse", *args],
        cwd=tmp_path,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2 and done.stderr.startswith(expected) and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "R").exists()


def test_a_corpus_that_needs_datasets_is_refused_in_one_line_where_it_is_missing(device_image_env, tmp_path):
    bundle = Path(device_image_env["MINILMV2_ASSETS"])
    compressed = tmp_path / "wiki-00.txt.gz"
    compressed.write_bytes(gzip.compress((bundle / "corpus" / "wiki-00.txt").read_bytes()[:20_000]))
    config = tmp_path / "gz.json"
    config.write_text(json.dumps({"urls": [str(compressed)], "format": "text"}))
    argv = ["--train_config", str(config), "--input_model_dir", str(bundle / "teacher"), "--output_dir",
            str(tmp_path / "out"), "--max_steps", "1", "--student_hidden_size", "384", "--student_num_layers", "2",
            "--student_attention_heads", "12", "--L", "6", "--num_relation_heads", "48", "--validate_only"]  # fmt: skip
    done = subprocess.run(
        [sys.executable, "-m", "minilmv2.run_distillation", *argv],
        cwd=REPO,
        env=device_image_env,
        capture_output=True,
        text=True,
    )
    assert done.returncode == 2, done.stderr
    assert done.stderr == (
        f"error: the corpus config --train_config {config}: corpus file {compressed} is read through the datasets "
        f"package, which is "
        "not installed; pip install datasets, or use uncompressed local text or JSON-lines files\n"
    )
    assert not (tmp_path / "out").exists()
