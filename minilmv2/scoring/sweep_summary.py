"""Summarise a run_eval.sh sweep: best dev score per task, in the shape of the reference README's table.

run_eval.sh leaves one folder per run, OUTPUT_DIR/<task>/lr<LR>_ep<EPOCHS>_seed<SEED>/, holding
`sweep_run.json` ({"task", "learning_rate", "epochs", "seed", "status": "ok"|"failed", "exit_code"}) and, for
a run that finished, the script's `eval_results.json`. This module reads them all and writes

  OUTPUT_DIR/summary.csv      one row per task (best dev score, its learning rate and epochs) + an average row
  OUTPUT_DIR/summary.md       the same as markdown, plus the README-style row (tasks as columns) and failures
  OUTPUT_DIR/runs.csv         every run with its status and score
  OUTPUT_DIR/heatmap_<task>.png   dev score over learning rate x epochs

Scores are the task's main metric (minilmv2.scoring.sentence_tasks.TaskSpec.main_metric, e.g. accuracy,
Matthews correlation for cola, Pearson for stsb, matched accuracy for mnli; F1 for squad and squad_v2) x 100.
SQuAD tasks also show exact match (EM) beside F1, as SQuAD results are quoted. With several seeds a cell's score is
their median; the best cell is the highest (ties go to fewer epochs, then the lower learning rate).

    python -m minilmv2.scoring.sweep_summary OUTPUT_DIR [--model_name NAME]
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import re
import statistics
from dataclasses import dataclass
from pathlib import Path

from minilmv2.errors import UsageError, exit_on_usage_error
from minilmv2.scoring import sentence_tasks

RUN_RECORD = "sweep_run.json"
# SQuAD tasks (hf_run_squad.py): ranked by F1, with exact match shown beside it; their files under SQUAD_DIR.
SQUAD_TASKS = {"squad_v2": ("f1", "exact"), "squad": ("f1", "exact_match")}
SQUAD_FILES = {"squad_v2": ("train-v2.0.json", "dev-v2.0.json"), "squad": ("train-v1.1.json", "dev-v1.1.json")}


@dataclass
class SweepRun:
    """One fine-tuning run of the sweep. score is None unless the run finished with results."""

    task: str
    learning_rate: str
    epochs: str
    seed: str
    status: str
    score: float | None
    run_dir: Path
    note: str = ""  # why a run counts as failed, when its files say more than its exit status
    second_score: float | None = None  # exact match for SQuAD tasks (x 100); None elsewhere
    device: str = ""  # the GPU (CUDA_VISIBLE_DEVICES entry) it ran on, or "cpu"
    batch: str = ""  # its total batch, in words ("12 x 4 accumulated = 48")


@dataclass
class TaskBest:
    """Best (learning rate, epochs) cell of one task; score None when every run failed."""

    task: str
    metric: str
    score: float | None
    learning_rate: str | None
    epochs: str | None
    num_seeds: int
    runs_ok: int
    runs_failed: int
    second_metric: str | None = None  # "exact" / "exact_match" for SQuAD tasks
    second_score: float | None = None  # its median at the best cell
    spread: tuple[float, float] | None = None  # (min, max) over the fine-tuning seeds at the best cell, if several


def main_metric(task: str) -> str:
    """The metric a task is ranked by; accuracy for tasks we do not know (csv/json runs)."""
    if task in SQUAD_TASKS:
        return SQUAD_TASKS[task][0]
    spec = sentence_tasks.TASKS.get(task)
    return spec.main_metric if spec else "accuracy"


def second_metric(task: str) -> str | None:
    """The metric shown beside the main one (exact match for SQuAD), or None."""
    return SQUAD_TASKS[task][1] if task in SQUAD_TASKS else None


def read_runs(sweep_dir: Path) -> list[SweepRun]:
    """Every run recorded under `sweep_dir`. A run marked ok without a usable score counts as failed.

    A record or result file that cannot be read (a run killed while writing it, a disk filled up) marks that
    run failed with a note, taking task, learning rate, epochs and seed from the folder names, so one bad file
    costs one run, not the summary.
    """
    runs = []
    for record_path in sorted(sweep_dir.glob(f"*/*/{RUN_RECORD}")):
        run_dir = record_path.parent
        try:
            record = json.loads(record_path.read_text(encoding="utf-8"))
            task, lr, epochs, seed, status = (
                str(record[key]) for key in ("task", "learning_rate", "epochs", "seed", "status")
            )
        except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError) as err:
            task, lr, epochs, seed = _run_from_folder(run_dir)
            runs.append(SweepRun(task, lr, epochs, seed, "failed", None, run_dir, f"unreadable {RUN_RECORD} ({err})"))
            continue
        score, note, second = None, "", None
        if status == "ok":
            results_path = run_dir / "eval_results.json"
            try:
                results = json.loads(results_path.read_text(encoding="utf-8")) if results_path.is_file() else {}
                value = results.get(f"eval_{main_metric(task)}")
            except (OSError, UnicodeDecodeError, ValueError, AttributeError) as err:
                value, note = None, f"unreadable eval_results.json ({err})"
            if isinstance(value, int | float) and math.isfinite(value):
                score = 100.0 * value if task not in SQUAD_TASKS else float(value)  # SQuAD scores are x 100
                second_value = results.get(f"eval_{second_metric(task)}") if second_metric(task) else None
                if isinstance(second_value, int | float) and math.isfinite(second_value):
                    second = float(second_value)
            else:
                status = "failed"  # finished but without the metric (e.g. NaN Pearson of constant outputs)
                note = note or f"no finite eval_{main_metric(task)} in eval_results.json"
        device, batch = str(record.get("device", "")), str(record.get("batch", ""))
        runs.append(SweepRun(task, lr, epochs, seed, status, score, run_dir, note, second, device, batch))
    return runs


def _as_number(text: str) -> float:
    """Sort key for learning rates and epochs; a value that is no number (an unreadable run's "?") goes last."""
    try:
        return float(text)
    except ValueError:
        return math.inf


def _run_from_folder(run_dir: Path) -> tuple[str, str, str, str]:
    """(task, learning rate, epochs, seed) from run_eval.sh's folder names <task>/lr<LR>_ep<EPOCHS>_seed<SEED>."""
    match = re.fullmatch(r"lr(.+)_ep(.+)_seed(.+)", run_dir.name)
    lr, epochs, seed = match.groups() if match else ("?", "?", "?")
    return run_dir.parent.name, lr, epochs, seed


def best_per_task(runs: list[SweepRun]) -> list[TaskBest]:
    """One TaskBest per task, in the order tasks first appear in `runs`."""
    bests = []
    for task in dict.fromkeys(run.task for run in runs):
        task_runs = [run for run in runs if run.task == task]
        cells = cell_scores(task_runs)
        seeds = {run.seed for run in task_runs}
        ok = sum(run.status == "ok" for run in task_runs)
        if cells:
            (lr, epochs), score = max(cells.items(), key=lambda item: (item[1], -float(item[0][1]), -float(item[0][0])))
        else:
            lr, epochs, score = None, None, None
        second = cell_scores(task_runs, "second_score").get((lr, epochs))
        counts = dict(num_seeds=len(seeds), runs_ok=ok, runs_failed=len(task_runs) - ok)
        counts["spread"] = cell_spreads(task_runs).get((lr, epochs))
        bests.append(
            TaskBest(
                task,
                main_metric(task),
                score,
                lr,
                epochs,
                **counts,
                second_metric=second_metric(task),
                second_score=second,
            )
        )
    return bests


def cell_scores(task_runs: list[SweepRun], field: str = "score") -> dict[tuple[str, str], float]:
    """{(learning_rate, epochs): median of `field` (score, or second_score) over the seeds that finished};
    cells with none are left out."""
    by_cell: dict[tuple[str, str], list[float]] = {}
    for run in task_runs:
        if getattr(run, field) is not None:
            by_cell.setdefault((run.learning_rate, run.epochs), []).append(getattr(run, field))
    return {cell: statistics.median(scores) for cell, scores in by_cell.items()}


def cell_spreads(task_runs: list[SweepRun]) -> dict[tuple[str, str], tuple[float, float]]:
    """{(learning_rate, epochs): (min, max) of the score over the fine-tuning seeds that finished}, for cells
    with at least two such seeds (the spread of fine-tuning alone: every seed fine-tunes the same model)."""
    by_cell: dict[tuple[str, str], list[float]] = {}
    for run in task_runs:
        if run.score is not None:
            by_cell.setdefault((run.learning_rate, run.epochs), []).append(run.score)
    return {cell: (min(scores), max(scores)) for cell, scores in by_cell.items() if len(scores) > 1}


def _with_spread(score: float | None, spread: tuple[float, float] | None) -> str:
    return _fmt(score) + (f" ({spread[0]:.2f}-{spread[1]:.2f})" if spread and score is not None else "")


def average_score(bests: list[TaskBest]) -> float | None:
    scores = [best.score for best in bests if best.score is not None]
    return sum(scores) / len(scores) if scores else None


def _fmt(score: float | None) -> str:
    return "failed" if score is None else f"{score:.2f}"


def write_summary_csv(path: Path, bests: list[TaskBest]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            [
                "task",
                "metric",
                "best_dev_score",
                "learning_rate",
                "epochs",
                "seeds",
                "runs_ok",
                "runs_failed",
                "second_metric",
                "second_score",
                "seed_min",
                "seed_max",
            ]
        )
        for best in bests:
            score = "failed" if best.score is None else f"{best.score:.4f}"
            writer.writerow(
                [
                    best.task,
                    best.metric,
                    score,
                    best.learning_rate or "",
                    best.epochs or "",
                    best.num_seeds,
                    best.runs_ok,
                    best.runs_failed,
                    best.second_metric or "",
                    "" if best.second_score is None else f"{best.second_score:.4f}",
                    "" if best.spread is None else f"{best.spread[0]:.4f}",
                    "" if best.spread is None else f"{best.spread[1]:.4f}",
                ]
            )
        average = average_score(bests)
        writer.writerow(
            [
                "average",
                "",
                "" if average is None else f"{average:.4f}",
                "",
                "",
                "",
                sum(b.runs_ok for b in bests),
                sum(b.runs_failed for b in bests),
                "",
                "",
                "",
                "",
            ]
        )


def write_runs_csv(path: Path, runs: list[SweepRun]) -> None:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(
            ["task", "learning_rate", "epochs", "seed", "status", "dev_score", "device", "batch", "run_dir"]
        )
        for run in runs:
            score = "" if run.score is None else f"{run.score:.4f}"
            writer.writerow([run.task, run.learning_rate, run.epochs, run.seed, run.status, score, run.device,
                             run.batch, run.run_dir])  # fmt: skip


def summary_markdown(bests: list[TaskBest], runs: list[SweepRun], model_name: str) -> str:
    """The README-style row (tasks as columns, Avg last), the per-task table, and the failed runs."""
    average = average_score(bests)
    scored = [b for b in bests if b.score is not None]
    average_note = "" if len(scored) == len(bests) else f" (over {len(scored)} of {len(bests)} tasks)"
    benchmark = "GLUE dev" if any(b.task in sentence_tasks.GLUE_TASKS for b in bests) else "Dev"
    lines = [f"# {benchmark} results: {model_name}", ""]
    # SQuAD tasks take two columns, F1 then EM (the average uses F1, each task's main metric).
    headers, cells = [], []
    for b in bests:
        if b.second_metric:
            headers += [f"{b.task} F1", f"{b.task} EM"]
            cells += [_fmt(b.score), _fmt(b.second_score)]
        else:
            headers.append(b.task)
            cells.append(_with_spread(b.score, b.spread))
    lines.append("| | " + " | ".join(headers) + " | Avg |")
    lines.append("|---" * (len(headers) + 2) + "|")
    lines.append(f"| {model_name} | " + " | ".join(cells) + f" | {_fmt(average)} |")
    lines += [
        "",
        "Best dev score per task (x100; median over seeds), with the learning rate and epochs that gave it"
        + (
            "; in brackets the min-max over the fine-tuning seeds (their spread only: every seed fine-tunes the "
            "same model):"
            if any(b.spread for b in bests)
            else ":"
        ),
        "",
    ]
    lines.append("| task | metric | best dev score | learning rate | epochs | seeds | runs ok | runs failed |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for b in bests:
        metric = b.metric if not b.second_metric else f"{b.metric} (EM {_fmt(b.second_score)})"
        lines.append(
            f"| {b.task} | {metric} | {_with_spread(b.score, b.spread)} | {b.learning_rate or '-'} | {b.epochs or '-'} "
            f"| {b.num_seeds} | {b.runs_ok} | {b.runs_failed} |"
        )
    lines.append(f"| **average**{average_note} | | {_fmt(average)} | | | | | |")
    batches = sorted({f"{run.task}: {run.batch}" for run in runs if run.batch})
    if batches:
        lines += ["", "Total batch per run (one GPU each): " + "; ".join(batches)]
    failed = [run for run in runs if run.status != "ok"]
    if failed:
        lines += ["", f"Runs that did not finish ({len(failed)}); see run.log in each folder:", ""]
        lines += [
            f"- {run.task} lr {run.learning_rate} epochs {run.epochs} seed {run.seed}: {run.status}, {run.run_dir}"
            + (f" ({run.note})" if run.note else "")
            for run in failed
        ]
    lines += ["", "Heatmaps: " + ", ".join(f"[{b.task}](heatmap_{b.task}.png)" for b in bests), ""]
    return "\n".join(lines)


def plot_heatmap(path: Path, task: str, task_runs: list[SweepRun], best: TaskBest) -> None:
    """Dev score over learning rate (rows) x epochs (columns); cells where every seed failed say so."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    rates = sorted({run.learning_rate for run in task_runs}, key=_as_number)
    epochs = sorted({run.epochs for run in task_runs}, key=_as_number)
    cells = cell_scores(task_runs)
    second_cells = cell_scores(task_runs, "second_score")
    spreads = cell_spreads(task_runs)
    grid = np.full((len(rates), len(epochs)), np.nan)
    for (lr, ep), score in cells.items():
        grid[rates.index(lr), epochs.index(ep)] = score
    figure, axes = plt.subplots(figsize=(1.6 + 1.1 * len(epochs), 1.2 + 0.55 * len(rates)))
    image = axes.imshow(np.ma.masked_invalid(grid), cmap="viridis", aspect="auto")
    low, high = (np.nanmin(grid), np.nanmax(grid)) if cells else (0.0, 1.0)
    for row, lr in enumerate(rates):
        for col, ep in enumerate(epochs):
            score = grid[row, col]
            if np.isnan(score):
                text, color = "failed", "red"
            else:  # dark text on the bright (high) end of viridis, light text on the dark end
                text, color = f"{score:.2f}", "black" if score - low > 0.6 * (high - low) else "white"
                if (lr, ep) in spreads:
                    text += f"\n({spreads[(lr, ep)][0]:.1f}-{spreads[(lr, ep)][1]:.1f})"
                if (lr, ep) in second_cells:
                    text += f"\nEM {second_cells[(lr, ep)]:.2f}"
            bold = (lr, ep) == (best.learning_rate, best.epochs)
            axes.text(col, row, text, ha="center", va="center", color=color, fontweight="bold" if bold else "normal")
    axes.set_xticks(range(len(epochs)), epochs)
    axes.set_yticks(range(len(rates)), rates)
    axes.set_xlabel("epochs")
    axes.set_ylabel("learning rate")
    title = f"{task} dev F1 (EM below)" if best.second_metric else f"{task} dev {best.metric} x100"
    if spreads:
        title += "\nmedian over seeds (min-max)"
    axes.set_title(title)
    if cells:
        figure.colorbar(image, ax=axes)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def summarise(sweep_dir: str | Path, model_name: str | None = None, tasks: list[str] | None = None) -> list[Path]:
    """Write summary.csv, summary.md, runs.csv and one heatmap per task; returns their paths.

    tasks: summarise only these, in this order (run_eval.sh passes its TASKS); default: all, alphabetically.
    """
    sweep_dir = Path(sweep_dir)
    if not sweep_dir.is_dir():
        raise UsageError(f"sweep directory {str(sweep_dir)!r} does not exist")
    runs = read_runs(sweep_dir)
    if tasks:
        runs = sorted((run for run in runs if run.task in tasks), key=lambda run: tasks.index(run.task))
    if not runs:
        raise UsageError(
            f"sweep directory {str(sweep_dir)!r} holds no runs (no */*/{RUN_RECORD}) of the tasks asked for"
        )
    bests = best_per_task(runs)
    written = [sweep_dir / "summary.csv", sweep_dir / "summary.md", sweep_dir / "runs.csv"]
    write_summary_csv(written[0], bests)
    written[1].write_text(summary_markdown(bests, runs, model_name or "model"), encoding="utf-8")
    write_runs_csv(written[2], runs)
    for best in bests:
        path = sweep_dir / f"heatmap_{best.task}.png"
        plot_heatmap(path, best.task, [run for run in runs if run.task == best.task], best)
        written.append(path)
    return written


def check_sweep_tasks(tasks: list[str], glue_dir: str = "", offline_data_dir: str = "", squad_dir: str = "") -> None:
    """run_eval.sh's pre-check: UsageError, in the sweep's own terms, unless every task and its data exist.

    GLUE tasks need train.tsv and their dev file(s) under GLUE_DIR (every sweep run trains and evaluates) or,
    with GLUE_DIR unset, the hub (refused under HF_HUB_OFFLINE=1); the offline tasks need their raw files;
    squad / squad_v2 need train-v1.1.json + dev-v1.1.json / train-v2.0.json + dev-v2.0.json under SQUAD_DIR
    (read and checked for their layout and version) or, with SQUAD_DIR unset, the hub.
    Checking once here turns a missing file into one line, not a sweep of failed runs.
    """
    from minilmv2.hub import hub_offline, offline_switches

    offline = hub_offline()
    try:
        for name in tasks:
            if name in SQUAD_TASKS:
                check_squad_task(name, squad_dir, offline)
                continue
            try:
                spec = sentence_tasks.get_task(name)
            except UsageError as err:
                raise UsageError(f"{err}, {', '.join(SQUAD_TASKS)} (SQuAD)") from None
            if spec.name in sentence_tasks.OFFLINE_TASKS:
                sentence_tasks.offline_task_paths(spec, offline_data_dir or sentence_tasks.default_offline_data_dir())
            elif glue_dir:
                sentence_tasks.glue_tsv_paths(spec, glue_dir, ["train", *spec.eval_splits])
            elif offline:
                raise UsageError(
                    f"task {spec.name!r} needs GLUE data, but GLUE_DIR is not set and the hub is offline "
                    f"({offline_switches()}); set GLUE_DIR to the GLUE TSV root (SST-2/, MRPC/, ...) or unset "
                    "the offline switch to use the hub"
                )
    except UsageError as err:  # sentence_tasks names hf_run_evaluation.py's options; the sweep is set by variables
        message = str(err).replace("--glue_dir", "GLUE_DIR").replace("--offline_data_dir", "OFFLINE_DATA_DIR")
        raise UsageError(" ".join(message.split())) from None


def check_squad_task(task: str, squad_dir: str, offline: bool) -> None:
    """UsageError unless SQUAD_DIR holds the task's train and dev files, in the right SQuAD version."""
    from minilmv2.hub import offline_switches
    from minilmv2.scoring import squad

    if not squad_dir:
        if offline:
            raise UsageError(
                f"task {task!r} needs SQuAD data, but SQUAD_DIR is not set and the hub is offline "
                f"({offline_switches()}); set SQUAD_DIR to the folder holding {' and '.join(SQUAD_FILES[task])}, "
                "or unset the offline switch to use the hub"
            )
        return
    if not Path(squad_dir).is_dir():
        raise UsageError(f"SQUAD_DIR {squad_dir!r} is not a directory")
    for name in SQUAD_FILES[task]:
        path = str(Path(squad_dir) / name)
        data = squad.read_squad_json(path, f"task {task}: SQUAD_DIR file")
        is_v2 = task == "squad_v2"
        if data.is_v2 != is_v2:
            raise UsageError(
                f"task {task}: SQUAD_DIR file {path!r} is SQuAD {'2.0' if data.is_v2 else 'v1.1'} data; "
                f"{task} needs {'2.0' if is_v2 else 'v1.1'}"
            )


def check_sweep_model(model_dir: str) -> None:
    """run_eval.sh's pre-check of MODEL_DIR: a config.json *and* weights (a config alone would fine-tune a
    randomly initialised model and report its score as the student's)."""
    from minilmv2.scoring.finetune import check_model_dir

    check_model_dir(model_dir, "MODEL_DIR", need_weights=True)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Summarise a run_eval.sh sweep.")
    parser.add_argument("sweep_dir", help="run_eval.sh's OUTPUT_DIR")
    parser.add_argument("--model_name", default=None, help="row label in summary.md (default: 'model')")
    parser.add_argument("--tasks", nargs="+", default=None, help="tasks to summarise, in table order")
    args = parser.parse_args(argv)
    written = summarise(args.sweep_dir, args.model_name, args.tasks)
    print((Path(args.sweep_dir) / "summary.md").read_text(encoding="utf-8"))
    print("Summary written to: " + ", ".join(str(path) for path in written))


if __name__ == "__main__":
    main()
