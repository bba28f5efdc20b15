"""run_eval.sh end to end: a short real sweep (2 learning rates x 1 epoch, tiny BERT, GLUE TSV fixtures) in which
one task's data is broken (a label it does not know), so its runs fail; the sweep must go on and summarise."""

from __future__ import annotations

import csv
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import datasets.config
import pytest
from fixtures.glue.offline_raw import write_bbc_folders
from fixtures.glue.tiny_bert import write_tiny_bert

REPO_ROOT = Path(__file__).resolve().parents[2]
GLUE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "glue"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def run_sweep(env_overrides: dict[str, str], drop: tuple[str, ...] = ()) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable, **env_overrides}
    for name in drop:
        env.pop(name, None)
    return subprocess.run(
        ["bash", str(REPO_ROOT / "run_eval.sh")], env=env, capture_output=True, text=True, timeout=300, cwd=REPO_ROOT
    )


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """One sweep: sst2 (data fine) and rte (its files exist, but train.tsv has a label RTE does not know, so
    every rte run fails when it reads the data), lrs 1e-3 and 3e-2, 1 epoch."""
    root = tmp_path_factory.mktemp("sweep")
    model = write_tiny_bert(root / "student")
    shutil.copytree(GLUE_FIXTURES / "SST-2", root / "glue" / "SST-2")
    shutil.copytree(GLUE_FIXTURES / "RTE", root / "glue" / "RTE")
    with open(root / "glue" / "RTE" / "train.tsv", "a") as handle:
        handle.write("99\tA b.\tA.\tcontradiction\n")
    env = {
        "MODEL_DIR": str(model),
        "TASKS": "sst2 rte",
        "GLUE_DIR": str(root / "glue"),
        "LEARNING_RATES": "1e-3 3e-2",
        "EPOCHS": "1",
        "SEEDS": "7",
        "OUTPUT_DIR": str(root / "out"),
        "EXTRA_ARGS": "--per_device_train_batch_size 4 --max_seq_length 32 --disable_tqdm true",
    }
    return root / "out", env, run_sweep(env)


def test_failed_runs_are_marked_and_the_sweep_goes_on(sweep):
    out, _, result = sweep
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # some runs failed
    assert "2 of 4 runs failed" in result.stdout
    records = [json.loads(p.read_text()) for p in out.glob("*/*/sweep_run.json")]
    statuses = {(r["task"], r["learning_rate"]): r["status"] for r in records}
    assert statuses == {
        ("sst2", "1e-3"): "ok",
        ("sst2", "3e-2"): "ok",
        ("rte", "1e-3"): "failed",
        ("rte", "3e-2"): "failed",
    }
    assert all(r["exit_code"] == 2 for r in records if r["status"] == "failed")  # refused: bad RTE label
    assert "label 'contradiction' is not one of" in (out / "rte" / "lr1e-3_ep1_seed7" / "run.log").read_text()
    results = json.loads((out / "sst2" / "lr3e-2_ep1_seed7" / "all_results.json").read_text())
    assert results["train_samples"] == 8 and "eval_accuracy" in results


def test_summary_holds_the_best_row(sweep):
    out, _, _ = sweep
    scores = {}
    for lr in ("1e-3", "3e-2"):
        results = json.loads((out / "sst2" / f"lr{lr}_ep1_seed7" / "eval_results.json").read_text())
        scores[lr] = 100 * results["eval_accuracy"]
    # best = highest accuracy; on a tie the lower learning rate (epochs are equal here)
    best_lr = max(scores, key=lambda lr: (scores[lr], -float(lr)))

    with open(out / "summary.csv", newline="") as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle)}
    assert list(rows) == ["sst2", "rte", "average"]
    assert rows["sst2"]["metric"] == "accuracy"
    assert float(rows["sst2"]["best_dev_score"]) == pytest.approx(scores[best_lr], abs=1e-4)
    assert (rows["sst2"]["learning_rate"], rows["sst2"]["epochs"]) == (best_lr, "1")
    assert (rows["sst2"]["runs_ok"], rows["sst2"]["runs_failed"]) == ("2", "0")
    assert rows["rte"]["best_dev_score"] == "failed" and rows["rte"]["runs_failed"] == "2"
    assert float(rows["average"]["best_dev_score"]) == pytest.approx(scores[best_lr], abs=1e-4)  # rte has none

    markdown = (out / "summary.md").read_text()
    # the reference README's shape: tasks as columns, the model as the row, Avg last
    assert "| | sst2 | rte | Avg |" in markdown
    assert f"| student | {scores[best_lr]:.2f} | failed | {scores[best_lr]:.2f} |" in markdown
    assert f"| sst2 | accuracy | {scores[best_lr]:.2f} | {best_lr} | 1 | 1 | 2 | 0 |" in markdown
    assert "| **average** (over 1 of 2 tasks) |" in markdown
    assert "Runs that did not finish (2)" in markdown


def test_one_heatmap_per_task(sweep):
    import matplotlib.image

    out, _, _ = sweep
    for task in ("sst2", "rte"):
        path = out / f"heatmap_{task}.png"
        assert path.read_bytes()[:8] == PNG_MAGIC
        height, width, _ = matplotlib.image.imread(path).shape
        assert height > 50 and width > 50


def test_a_stopped_sweep_resumes_and_keeps_finished_runs(sweep):
    out, env, _ = sweep
    before = (out / "sst2" / "lr1e-3_ep1_seed7" / "eval_results.json").read_bytes()
    again = run_sweep({**env, "TASKS": "sst2"})
    assert again.returncode == 0, again.stdout[-3000:] + again.stderr[-3000:]
    assert again.stdout.count("finished earlier, kept") == 2
    with open(out / "summary.csv", newline="") as handle:
        assert [row["task"] for row in csv.DictReader(handle)] == ["sst2", "average"]  # only the tasks asked for
    assert (out / "sst2" / "lr1e-3_ep1_seed7" / "eval_results.json").read_bytes() == before


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"MODEL_DIR": "/nonexistent/student"}, "MODEL_DIR '/nonexistent/student' is not a directory"),
        ({"TASKS": "sst2 glue_everything"}, "unknown task 'glue_everything'"),
        ({"LEARNING_RATES": "2e-5 fast"}, "learning rate 'fast'"),
    ],
)
def test_bad_settings_are_refused_in_one_line(sweep, tmp_path, overrides, fragment):
    _, env, _ = sweep
    result = run_sweep({**env, "OUTPUT_DIR": str(tmp_path / "out"), **overrides})
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_missing_task_data_is_refused_before_any_run(sweep, tmp_path):
    """Each task's data is checked up front: one line and status 2, not a sweep of failed runs."""
    _, env, _ = sweep
    only_sst2 = tmp_path / "glue"
    shutil.copytree(GLUE_FIXTURES / "SST-2", only_sst2 / "SST-2")
    shutil.copytree(GLUE_FIXTURES / "RTE", only_sst2 / "RTE")
    (only_sst2 / "SST-2" / "dev.tsv").unlink()
    result = run_sweep({**env, "OUTPUT_DIR": str(tmp_path / "out"), "TASKS": "rte sst2", "GLUE_DIR": str(only_sst2)})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1, lines
    assert lines[0].startswith("error: GLUE folder") and "SST-2/dev.tsv" in lines[0] and "task 'sst2' needs" in lines[0]
    assert "Sweep:" not in result.stdout and not (tmp_path / "out").exists()


def test_sweep_data_check_names_what_is_missing(tmp_path, monkeypatch):
    from huggingface_hub import constants

    from minilmv2.errors import UsageError
    from minilmv2.scoring.sweep_summary import check_sweep_tasks

    glue_dir = tmp_path / "glue"
    shutil.copytree(GLUE_FIXTURES / "RTE", glue_dir / "RTE")
    shutil.copytree(GLUE_FIXTURES / "MNLI", glue_dir / "MNLI")
    (glue_dir / "MNLI" / "dev_mismatched.tsv").unlink()
    write_bbc_folders(tmp_path / "tasks")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    check_sweep_tasks(["rte", "bbc_news"], str(glue_dir), str(tmp_path / "tasks"))  # all there: no error
    cases = [
        (["rte", "mnli"], str(glue_dir), "", ["MNLI/dev_mismatched.tsv", "task 'mnli' needs"]),
        (["rte", "qnli"], str(glue_dir), "", ["QNLI/train.tsv", "QNLI/dev.tsv"]),
        (["rte"], str(tmp_path / "nowhere"), "", ["GLUE_DIR", "nowhere", "not a directory"]),
        (["bbc_news"], "", str(tmp_path), ["OFFLINE_DATA_DIR", "topic folder"]),
        (["bbc_news", "tweet_sentiment"], "", str(tmp_path / "tasks"), ["OFFLINE_DATA_DIR", "tweet_sentiment/"]),
        (["bbc_news", "rte"], "", str(tmp_path / "tasks"), ["task 'rte' needs GLUE data", "the hub is offline ("]),
        (["rte", "sst-3"], str(glue_dir), "", ["unknown task 'sst-3'"]),
    ]
    for tasks, glue_root, offline_root, fragments in cases:
        with pytest.raises(UsageError) as error:
            check_sweep_tasks(tasks, glue_root, offline_root)
        message = str(error.value)
        assert "\n" not in message and "--glue_dir" not in message and "--offline_data_dir" not in message
        assert all(fragment in message for fragment in fragments), (fragments, message)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    check_sweep_tasks(["rte", "sst2"], "", "")  # online: GLUE from the hub, nothing to check locally


def test_hub_mode_is_left_to_the_user(sweep, tmp_path):
    """run_eval.sh must not set HF_HUB_OFFLINE itself: without GLUE_DIR the GLUE tasks come from the hub.

    PYTHON is a wrapper that records the HF_HUB_OFFLINE each fine-tuning run sees, then fails the run (this
    test needs no network); everything else (pre-check, summary) goes to the real interpreter."""
    _, env, _ = sweep
    seen = tmp_path / "seen.txt"
    wrapper = tmp_path / "python"
    wrapper.write_text(
        "#!/usr/bin/env bash\n"
        'if [[ "${1:-}" == *hf_run_evaluation.py && "${MINILMV2_VALIDATE_ONLY:-}" != 1 ]]; then\n'
        f'    echo "${{HF_HUB_OFFLINE-unset}}" >> "{seen}"; exit 3\n'
        "fi\n"
        f'exec "{sys.executable}" "$@"\n'
    )
    wrapper.chmod(0o755)
    overrides = {"OUTPUT_DIR": str(tmp_path / "out"), "TASKS": "sst2", "GLUE_DIR": "", "PYTHON": str(wrapper)}
    result = run_sweep({**env, **overrides}, drop=("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE"))
    assert result.returncode == 1, result.stdout[-3000:] + result.stderr[-3000:]  # both runs "failed" (exit 3)
    assert seen.read_text().split() == ["unset", "unset"]


def write_record(sweep_dir: Path, task: str, lr: str, epochs: str, seed: str, accuracy: float | None) -> None:
    """A run folder as run_eval.sh leaves it; accuracy None = a failed run (no results)."""
    run_dir = sweep_dir / task / f"lr{lr}_ep{epochs}_seed{seed}"
    run_dir.mkdir(parents=True)
    status = "failed" if accuracy is None else "ok"
    record = {"task": task, "learning_rate": lr, "epochs": epochs, "seed": seed, "status": status, "exit_code": 0}
    (run_dir / "sweep_run.json").write_text(json.dumps(record))
    if accuracy is not None:
        (run_dir / "eval_results.json").write_text(json.dumps({"eval_accuracy": accuracy, "eval_loss": 0.5}))


def test_summary_takes_the_median_over_seeds_and_breaks_ties_cheaply(tmp_path):
    from minilmv2.scoring.sweep_summary import summarise

    # cell (2e-5, 3): seeds 0.80, 0.90, 0.70 -> median 80.0; (1e-5, 3): 0.95, 0.60, None -> median of two = 77.5;
    # (3e-5, 5): 0.78, 0.82, 0.80 -> 80.0, tied with (2e-5, 3): fewer epochs win.
    for lr, epochs, accuracies in [
        ("2e-5", "3", [0.80, 0.90, 0.70]),
        ("1e-5", "3", [0.95, 0.60, None]),
        ("3e-5", "5", [0.78, 0.82, 0.80]),
    ]:
        for seed, accuracy in zip(("1", "2", "3"), accuracies, strict=True):
            write_record(tmp_path, "qnli", lr, epochs, seed, accuracy)
    summarise(tmp_path, "student", ["qnli"])
    with open(tmp_path / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    assert float(row["best_dev_score"]) == pytest.approx(80.0)
    assert (row["learning_rate"], row["epochs"], row["seeds"]) == ("2e-5", "3", "3")
    assert (row["runs_ok"], row["runs_failed"]) == ("8", "1")
    # The spread of the best cell: min-max over its three fine-tuning seeds, in the csv, the table and the heatmap.
    assert (float(row["seed_min"]), float(row["seed_max"])) == (pytest.approx(70.0), pytest.approx(90.0))
    markdown = (tmp_path / "summary.md").read_text()
    assert "| student | 80.00 (70.00-90.00) | 80.00 |" in markdown
    assert "| qnli | accuracy | 80.00 (70.00-90.00) | 2e-5 | 3 | 3 | 8 | 1 |" in markdown
    assert "in brackets the min-max over the fine-tuning seeds" in markdown


def test_a_corrupt_run_record_marks_that_run_failed(tmp_path, capsys):
    from minilmv2.scoring.sweep_summary import main

    write_record(tmp_path, "qnli", "2e-5", "3", "1", 0.80)
    write_record(tmp_path, "qnli", "3e-5", "3", "1", 0.90)
    (tmp_path / "qnli" / "lr3e-5_ep3_seed1" / "sweep_run.json").write_text('{"task": "qnli", "status": "o')  # cut off
    write_record(tmp_path, "qnli", "1e-5", "3", "1", 0.95)
    (tmp_path / "qnli" / "lr1e-5_ep3_seed1" / "eval_results.json").write_bytes(b"\x00\x00")  # disk filled up
    main([str(tmp_path), "--tasks", "qnli"])
    with open(tmp_path / "runs.csv", newline="") as handle:
        runs = {row["learning_rate"]: row for row in csv.DictReader(handle)}
    assert {lr: (row["task"], row["epochs"], row["seed"], row["status"]) for lr, row in runs.items()} == {
        "2e-5": ("qnli", "3", "1", "ok"),
        "3e-5": ("qnli", "3", "1", "failed"),  # task, lr, epochs, seed read from the folder names
        "1e-5": ("qnli", "3", "1", "failed"),
    }
    with open(tmp_path / "summary.csv", newline="") as handle:
        row = next(csv.DictReader(handle))
    best = (row["best_dev_score"], row["learning_rate"], row["runs_ok"], row["runs_failed"])
    assert best == ("80.0000", "2e-5", "1", "2")
    markdown = (tmp_path / "summary.md").read_text()
    assert "lr3e-5_ep3_seed1 (unreadable sweep_run.json (" in markdown
    assert "lr1e-5_ep3_seed1 (unreadable eval_results.json (" in markdown


SQUAD_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "squad"


@pytest.fixture(scope="module")
def squad_sweep(tmp_path_factory):
    """A real squad_v2 sweep with the default SQuAD grid (one cell: lr 4e-5, 4 epochs), windows shrunk for the
    tiny model through EXTRA_ARGS."""
    from fixtures.squad.tiny_models import write_tiny_squad_bert

    root = tmp_path_factory.mktemp("squad_sweep")
    env = {
        "MODEL_DIR": str(write_tiny_squad_bert(root / "student")),
        "TASKS": "squad_v2",
        "SQUAD_DIR": str(SQUAD_FIXTURES),
        "SEEDS": "7",
        "OUTPUT_DIR": str(root / "out"),
        "EXTRA_ARGS": "--max_seq_length 64 --doc_stride 24 --max_query_length 16 --per_device_train_batch_size 16 "
        "--max_train_samples 6 "
        "--disable_tqdm true",
    }
    for name in ("LEARNING_RATES", "EPOCHS"):
        env[name] = ""  # empty = the task's default grid
    return root / "out", env, run_sweep(env)


@pytest.mark.slow
def test_squad_v2_sweep_runs_the_seed_recipe_and_summarises_f1_and_em(squad_sweep):
    out, _, result = squad_sweep
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run_dir = out / "squad_v2" / "lr4e-5_ep4_seed7"  # the seed's learning rate and epochs
    assert "Sweep: 1 runs" in result.stdout
    results = json.loads((run_dir / "eval_results.json").read_text())
    assert results["eval_total"] == 10 and "eval_best_f1_thresh" in results
    assert (run_dir / "predictions.json").is_file() and (run_dir / "null_odds.json").is_file()
    train = json.loads((run_dir / "train_results.json").read_text())
    assert train["epoch"] == pytest.approx(4.0)
    with open(out / "summary.csv", newline="") as handle:
        rows = {row["task"]: row for row in csv.DictReader(handle)}
    row = rows["squad_v2"]
    assert (row["metric"], row["second_metric"]) == ("f1", "exact")
    assert float(row["best_dev_score"]) == pytest.approx(results["eval_f1"], abs=1e-4)  # already x 100
    assert float(row["second_score"]) == pytest.approx(results["eval_exact"], abs=1e-4)
    markdown = (out / "summary.md").read_text()
    assert "| | squad_v2 F1 | squad_v2 EM | Avg |" in markdown
    f1, em = results["eval_f1"], results["eval_exact"]
    assert f"| student | {f1:.2f} | {em:.2f} | {f1:.2f} |" in markdown
    assert f"| squad_v2 | f1 (EM {em:.2f}) | {f1:.2f} | 4e-5 | 4 |" in markdown
    assert (out / "heatmap_squad_v2.png").read_bytes()[:8] == PNG_MAGIC


@pytest.mark.parametrize(
    ("overrides", "fragment"),
    [
        ({"EPOCHS": "3 0"}, "epochs '0' in EPOCHS is zero; a run would train nothing"),
        ({"EPOCHS": "0.0"}, "epochs '0.0' in EPOCHS is zero"),
        ({"LEARNING_RATES": "0e-5"}, "learning rate '0e-5' in LEARNING_RATES is zero"),
        ({"TASKS": "sst2 squad_v3"}, "unknown task 'squad_v3'; valid tasks: cola"),
        ({"TASKS": "squad_v2", "SQUAD_DIR": ""}, "task 'squad_v2' needs SQuAD data, but SQUAD_DIR is not set"),
        ({"TASKS": "squad", "SQUAD_DIR": "/nonexistent"}, "SQUAD_DIR '/nonexistent' is not a directory"),
    ],
)
def test_meaningless_values_and_missing_squad_data_are_refused(sweep, tmp_path, overrides, fragment):
    _, env, _ = sweep
    result = run_sweep({**env, "OUTPUT_DIR": str(tmp_path / "out"), **overrides})
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], lines
    assert not (tmp_path / "out").exists()


def test_model_dir_without_weights_and_wrong_squad_version_are_refused(sweep, tmp_path):
    _, env, _ = sweep
    no_weights = tmp_path / "no_weights"
    shutil.copytree(env["MODEL_DIR"], no_weights)
    (no_weights / "model.safetensors").unlink()
    squad_dir = tmp_path / "squad"
    squad_dir.mkdir()
    shutil.copy(SQUAD_FIXTURES / "train-v2.0.json", squad_dir / "train-v2.0.json")
    shutil.copy(SQUAD_FIXTURES / "dev-v1.1.json", squad_dir / "dev-v2.0.json")  # v1.1 data under a v2.0 name
    cases = [
        ({"MODEL_DIR": str(no_weights)}, "MODEL_DIR '" + str(no_weights) + "' has a config.json but no weights"),
        ({"TASKS": "squad_v2", "SQUAD_DIR": str(squad_dir)}, "dev-v2.0.json' is SQuAD v1.1 data; squad_v2 needs 2.0"),
    ]
    for overrides, fragment in cases:
        result = run_sweep({**env, "OUTPUT_DIR": str(tmp_path / "out"), **overrides})
        lines = result.stderr.strip().splitlines()
        assert result.returncode == 2 and len(lines) == 1 and fragment in lines[0], lines
        assert "Sweep:" not in result.stdout and not (tmp_path / "out").exists()
