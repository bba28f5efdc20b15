"""The package installed (not editable, not the checkout): `pip install --no-deps --target` into a folder, then used
from another directory with only that folder on the path, as a user who ran `pip install .` would."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from fixtures.distill.tiny_teacher import distill_argv, first_lines, write_corpus_config, write_tiny_teacher

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def installed(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("installed")
    # Built from a copy of what the package is made of, so no build/ left in the checkout can slip stale files in.
    source = root / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, source / name)
    shutil.copytree(REPO / "minilmv2", source / "minilmv2", ignore=shutil.ignore_patterns("__pycache__"))
    site = root / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(site), "."],
        cwd=source,
        check=True,
        capture_output=True,
    )
    elsewhere = root / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MINILMV2_ASSETS")}
    env.update(PYTHONPATH=str(site), XDG_CACHE_HOME=str(root / "cache"), HF_HUB_OFFLINE="1")
    return {"root": root, "site": site, "cwd": elsewhere, "env": env}


def run(installed, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, *args], cwd=installed["cwd"], env=installed["env"], capture_output=True, text=True
    )


def test_the_installed_copy_is_the_one_imported_and_its_metrics_load_offline(installed):
    code = (
        "import minilmv2; from minilmv2.scoring.metrics import available_metrics, load_metric; "
        "print(minilmv2.__file__); print(','.join(available_metrics())); "
        "print(load_metric('accuracy').compute(predictions=[0, 1, 1], references=[0, 1, 0])['accuracy'])"
    )
    done = run(installed, "-c", code)
    assert done.returncode == 0, done.stderr
    where, metrics, accuracy = done.stdout.split()
    assert Path(where).is_relative_to(installed["site"])
    shipped = sorted(p.name for p in (REPO / "minilmv2" / "metrics").iterdir() if (p / f"{p.name}.py").is_file())
    assert metrics.split(",") == shipped and len(shipped) == 8
    assert float(accuracy) == pytest.approx(2 / 3)


def test_help_runs_and_assets_default_to_the_user_cache(installed):
    done = run(installed, "-m", "minilmv2.run_distillation", "--help")
    assert done.returncode == 0 and "--train_config" in done.stdout, done.stderr
    done = run(installed, "-c", "from minilmv2.tools.assets import default_dest; print(default_dest())")
    assert done.stdout.strip() == str(installed["root"] / "cache" / "minilmv2" / "assets"), done.stderr


def test_tools_that_need_the_checkout_say_so_in_one_line(installed):
    for tool, scripts, target in (
        ("quickstart", "run.sh and run_eval.sh", "make quickstart"),
        ("headlines", "run.sh and hf_run_seq2seq.py", "make headlines"),
    ):
        done = run(installed, "-m", f"minilmv2.tools.{tool}")
        assert done.returncode == 2, done.stderr
        assert done.stderr.startswith(f"error: python -m minilmv2.tools.{tool} runs the repository's {scripts}, ")
        assert done.stderr.endswith(f"clone the repository and run `{target}` there\n")
        assert done.stderr.count("\n") == 1


def test_a_tiny_distillation_runs_from_the_installed_package(installed, corpus_dir):
    root = installed["root"]
    teacher = write_tiny_teacher(root / "teacher")
    train = write_corpus_config(root / "train.json", [first_lines(corpus_dir / "wiki-00.txt", root / "w.txt", 60)])
    out = root / "out"
    done = run(installed, "-m", "minilmv2.run_distillation", *distill_argv(teacher, train, out, max_steps=2))
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((out / "student" / "config.json").read_text())["num_hidden_layers"] == 2
