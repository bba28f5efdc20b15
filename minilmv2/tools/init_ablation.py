"""What relation distillation adds, from a random start and from the teacher's embeddings (`make init-ablation`).

At the quickstart's shape and budget (the packaged 6 x 384 teacher -> 4 x 256, 600 steps; values in
minilmv2/tools/quickstart.py), this:

1. distils twice through run.sh, `STUDENT_INIT=random` and `STUDENT_INIT=teacher_embeddings`, with the held-out
   distillation loss every 100 steps;
2. saves the two undistilled starting points: a random student and a teacher-embedding student;
3. fine-tunes and scores the teacher, both undistilled students and both distilled ones on the two offline tasks
   through run_eval.sh with 3 fine-tuning seeds (median and min-max), beside the majority class;
4. writes `init_ablation.md` (the table, the held-out losses, the steps the teacher-embedding start saves to reach
   the random start's final loss, the wall times) and `heldout_loss.png` into --output_dir.

    python -m minilmv2.tools.init_ablation [--output_dir runs/init_ablation] [--seeds "1 2 3"]
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import time
from pathlib import Path

from minilmv2.errors import exit_on_usage_error
from minilmv2.tools.assets import default_dest
from minilmv2.tools.quickstart import (
    COMMON_EXTRA_ARGS,
    DISTILLATION,
    EVALUATION,
    TASK_EXTRA_ARGS,
    check_assets,
    majority_class_scores,
    repo,
    save_random_student,
)

EVAL_EVERY = "100"
INITS = ("random", "teacher_embeddings")


def run(command: list[str], env: dict, log: Path) -> float:
    """Run `command` from the checkout with `env` added, its output to `log`; its wall time in seconds."""
    started = time.perf_counter()
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "w") as handle:
        done = subprocess.run(command, cwd=repo(), env={**os.environ, **env}, stdout=handle, stderr=subprocess.STDOUT)
    if done.returncode != 0:
        raise SystemExit(f"error: {' '.join(command)} failed ({done.returncode}); see {log}")
    return time.perf_counter() - started


def save_embedding_student(distilled_dir: Path, teacher_dir: Path, out_dir: Path) -> None:
    """The teacher-embedding start, undistilled: the distilled student's config, fresh weights, the teacher's
    embeddings (as STUDENT_INIT=teacher_embeddings sets them before the first step)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from minilmv2 import build_student
    from minilmv2.student_init import init_from_teacher_embeddings

    torch.manual_seed(42)
    student = build_student(AutoConfig.from_pretrained(distilled_dir))
    init_from_teacher_embeddings(student, AutoModel.from_pretrained(teacher_dir))
    student.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(distilled_dir).save_pretrained(out_dir)


def held_out_losses(distill_dir: Path) -> list[tuple[int, float]]:
    history = json.loads((distill_dir / "trainer_state.json").read_text())["log_history"]
    return [(entry["step"], entry["eval_loss"]) for entry in history if "eval_loss" in entry]


def scores_with_spread(eval_dir: Path) -> dict[str, tuple[float, float | None, float | None]]:
    """{task: (median, min, max)} from run_eval.sh's summary.csv."""
    with (eval_dir / "summary.csv").open(newline="") as handle:
        rows = [row for row in csv.DictReader(handle) if row["metric"]]
    return {
        row["task"]: (
            float(row["best_dev_score"]),
            float(row["seed_min"]) if row["seed_min"] else None,
            float(row["seed_max"]) if row["seed_max"] else None,
        )
        for row in rows
    }


def plot_losses(curves: dict[str, list[tuple[int, float]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for init, points in curves.items():
        axes.plot([s for s, _ in points], [v for _, v in points], marker="o", label=f"STUDENT_INIT={init}")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("held-out distillation loss (relation KL)")
    axes.set_title("4 x 256 student of the 6 x 384 teacher")
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def steps_saved(curves: dict[str, list[tuple[int, float]]]) -> str:
    """How many steps the teacher-embedding start needs to reach the random start's final held-out loss."""
    target = curves["random"][-1]
    reached = next((step for step, loss in curves["teacher_embeddings"] if loss <= target[1]), None)
    if reached is None:
        return f"the teacher-embedding start did not reach the random start's final loss {target[1]:.4f}"
    return (
        f"the teacher-embedding start reached the random start's final held-out loss ({target[1]:.4f} at step "
        f"{target[0]}) at step {reached} (held-out loss measured every {EVAL_EVERY} steps)"
    )


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("runs/init_ablation"))
    parser.add_argument("--assets", type=Path, default=default_dest())
    parser.add_argument("--seeds", default="1 2 3", help="fine-tuning seeds (median and min-max over them)")
    args = parser.parse_args(argv)
    parts = check_assets(args.assets.resolve())
    out = args.output_dir.resolve()
    out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}

    corpus = parts["corpus"]
    for init in INITS:
        distill_dir = out / f"distill_{init}"
        if not (distill_dir / "trainer_state.json").is_file():
            env = {**DISTILLATION, "TEACHER_DIR": str(parts["teacher"]), "STUDENT_INIT": init,
                   "TRAIN_CONFIG": str(corpus / "train_config.json"), "VAL_CONFIG": str(corpus / "val_config.json"),
                   "EVAL_STEPS": EVAL_EVERY, "OUTPUT_DIR": str(distill_dir)}  # fmt: skip
            print(f"distilling with STUDENT_INIT={init} ...", flush=True)
            seconds[f"distillation, {init}"] = run(["bash", "run.sh"], env, out / f"distill_{init}.log")
    distilled = {init: out / f"distill_{init}" / "student" for init in INITS}
    if not (out / "random_student" / "model.safetensors").is_file():
        save_random_student(distilled["random"], out / "random_student")
    if not (out / "embedding_student" / "model.safetensors").is_file():
        save_embedding_student(distilled["random"], parts["teacher"], out / "embedding_student")
    models = {
        "teacher (6 x 384)": parts["teacher"],
        "random student, not distilled": out / "random_student",
        "teacher-embedding student, not distilled": out / "embedding_student",
        "distilled from random init": distilled["random"],
        "distilled from teacher-embedding init": distilled["teacher_embeddings"],
    }
    tasks = list(TASK_EXTRA_ARGS)
    scores: dict[str, dict[str, tuple]] = {}
    for index, (model, model_dir) in enumerate(models.items()):
        eval_dir = out / "eval" / f"model{index}"
        for task in tasks:
            env = {**EVALUATION, "SEEDS": args.seeds, "TASKS": task, "MODEL_DIR": str(model_dir),
                   "EXTRA_ARGS": f"{TASK_EXTRA_ARGS[task]} {COMMON_EXTRA_ARGS}", "PARALLEL": "2",
                   "OFFLINE_DATA_DIR": str(parts["tasks"]), "OUTPUT_DIR": str(eval_dir)}  # fmt: skip
            print(f"fine-tuning {model} on {task} ...", flush=True)
            seconds[f"fine-tuning, {model}, {task}"] = run(
                ["bash", "run_eval.sh"], env, eval_dir.with_suffix(f".{task}.log")
            )
            scores.setdefault(model, {})[task] = scores_with_spread(eval_dir)[task]
    floor = majority_class_scores(tasks, parts["tasks"])
    curves = {init: held_out_losses(out / f"distill_{init}") for init in INITS}
    plot_losses(curves, out / "heldout_loss.png")

    def cell(value: tuple) -> str:
        median, low, high = value
        return f"{median:.2f} ({low:.2f}-{high:.2f})" if low is not None else f"{median:.2f}"

    lines = [
        "# Student initialisation x relation distillation (quickstart shape)",
        "",
        f"Dev scores x100: median over fine-tuning seeds {args.seeds} (min-max in brackets: the fine-tuning spread).",
        "",
        "| model | " + " | ".join(tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    lines += [f"| {model} | " + " | ".join(cell(scores[model][t]) for t in tasks) + " |" for model in models]
    lines.append("| majority class | " + " | ".join(f"{floor[t]:.2f}" for t in tasks) + " |")
    lines += ["", "Held-out distillation loss (step: loss):", ""]
    lines += [f"- {init}: " + ", ".join(f"{s}: {v:.4f}" for s, v in points) for init, points in curves.items()]
    lines += ["", steps_saved(curves) + ".", "", "![held-out loss](heldout_loss.png)", "", "Wall times:", ""]
    lines += [f"- {name}: {value / 60:.1f} min" for name, value in seconds.items()]
    (out / "init_ablation.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
