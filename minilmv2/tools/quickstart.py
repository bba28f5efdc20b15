"""`make quickstart`: the whole mission on a laptop-sized default, offline, in 15-26 min on 2 CPU cores with bf16.

    python -m minilmv2.tools.quickstart [--output_dir runs/quickstart] [--assets .assets]

1. distils the real pretrained teacher in `.assets/teacher` (all-MiniLM-L6-v2, a 6 x 384 BERT) into a small
   student on the offline Wikipedia + books corpus, through `run.sh`;
2. saves a randomly initialised student of the same shape (the "no distillation" control);
3. fine-tunes and scores the distilled student, the random student and the teacher on two offline tasks
   (tweet_sentiment, bbc_news), through `run_eval.sh`, all with the same fine-tuning values and 3 seeds;
4. prints one table and writes it as markdown and PNG.

Every value it trains and scores with is in the QUICKSTART VALUES block below: the variables of run.sh and
run_eval.sh, passed as they are. A second run reuses the stages that finished with the same values (so an
interrupted quickstart resumes); change a value and the quickstart starts over. Each model is fine-tuned with
three seeds; the table gives the median and the min-max. The exit status is 1 when the distilled student's median
does not beat the random one's on every task, since showing that is the point.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import shutil
import sys
from collections import Counter
from pathlib import Path

from minilmv2.checkout import require_checkout
from minilmv2.errors import UsageError, exit_on_usage_error
from minilmv2.tools.assets import default_dest
from minilmv2.tools.stages import read_stage_seconds, run_stage


def repo() -> Path:
    """The checkout this tool runs the scripts of (UsageError in one line from an installed package)."""
    return require_checkout("python -m minilmv2.tools.quickstart", "run.sh and run_eval.sh", "make quickstart")


def native_bf16_flags(cpuinfo: str = "/proc/cpuinfo") -> list[str]:
    """This CPU's flags for native bf16 multiplies (AMX-BF16, AVX512-BF16); [] where it has none or `cpuinfo`
    cannot be read. Elsewhere (an AVX2-only EPYC, say) bf16 autocast is emulated: a teacher forward took 5x longer
    than in fp32 on one such machine."""
    try:
        with open(cpuinfo) as handle:
            flags = set(handle.read().split())
    except OSError:
        return []
    return [name for flag, name in (("amx_bf16", "AMX-BF16"), ("avx512_bf16", "AVX512-BF16")) if flag in flags]


# bf16 autocast where the CPU has it (faster than fp32 there), fp32 elsewhere.
NATIVE_BF16_FLAGS = native_bf16_flags()
CPU_BF16 = bool(NATIVE_BF16_FLAGS)

# ---------------------------------------------------------------------------------------------------------
# QUICKSTART VALUES: everything `make quickstart` trains and scores with. Edit here.

# run.sh variables. A 4 x 256 student (4 heads, FFN 1024; 11.2M parameters, half of them the embeddings)
# distilled from the teacher's last layer (L=6) with 32 relation heads (32 divides both 384 and 256).
# Packed 128-token sequences, bf16 autocast where the CPU has native bf16, the paper's optimizer settings otherwise.
DISTILLATION = {
    "STUDENT_HIDDEN_SIZE": "256",
    "STUDENT_NUM_LAYERS": "4",
    "STUDENT_ATTENTION_HEADS": "4",
    "L": "6",
    "NUM_RELATION_HEADS": "32",
    "BATCH_SIZE": "32",
    "MAX_SEQ_LEN": "128",
    "LR": "6e-4",
    "MAX_STEPS": "600",
    "WARMUP_STEPS": "60",
    "LOGGING_STEPS": "25",
    "SAVE_STEPS": "100000",  # no intermediate checkpoint: the run is short
    "SEED": "42",
    "PRECISION": "bf16" if CPU_BF16 else "none",
    "REPORT_TO": "none",
    "NPROC": "1",
    "EXTRA_ARGS": "--use_cpu true",
}
# run_eval.sh variables, the same for the three models: one fine-tuning cell (learning rate x epochs) per task.
# 3e-4 rather than GLUE's 1e-5..4e-5: the students are small and barely pretrained, and on these short
# schedules a random student learns almost nothing at 1e-4. Three fine-tuning seeds: the table gives their median
# and min-max, since one seed moved a cell by up to 20 points in the init ablation (README). Two runs at a time
# share the cores (1.26x faster than one after another on 2 cores; bench/results/sweep_parallel.txt).
EVALUATION = {
    "LEARNING_RATES": "3e-4",
    "EPOCHS": "3",
    "SEEDS": "1 2 3",
    "PARALLEL": "2",
}
# run_eval.sh's EXTRA_ARGS per task (appended to its defaults; later flags win). What distillation adds
# shows best with little labelled data, so 1,000 training examples each; the first 64 tokens of a BBC
# article (headline and lead) are enough to tell its topic. The whole fixed dev split is scored (3,718
# tweets, 212 articles).
TASK_EXTRA_ARGS = {
    "tweet_sentiment": "--max_train_samples 1000 --max_seq_length 64",
    "bbc_news": "--max_train_samples 1000 --max_seq_length 64",
}
COMMON_EXTRA_ARGS = f"--bf16 {str(CPU_BF16).lower()} --use_cpu true --disable_tqdm true"
RANDOM_STUDENT_SEED = 42
# ---------------------------------------------------------------------------------------------------------

MODELS = ("distilled student", "random student", "teacher")
VALUES_FILE = "quickstart_values.json"


def task_groups() -> list[list[str]]:
    """The tasks in groups that share their EXTRA_ARGS: one run_eval.sh call each, so that its runs pair up on the
    cores (3 seeds of one task per call leave the third run alone on half of them)."""
    groups: dict[str, list[str]] = {}
    for task, extra_args in TASK_EXTRA_ARGS.items():
        groups.setdefault(extra_args, []).append(task)
    return list(groups.values())


def run_eval_values(model_dir: Path, tasks: list[str], seeds: str, tasks_dir: Path, eval_dir: Path) -> dict[str, str]:
    """run_eval.sh's variables to fine-tune `model_dir` on `tasks` (which share their EXTRA_ARGS) with `seeds`
    into `eval_dir`. Two runs at a time share the cores; a lone run gets them both."""
    runs = len(seeds.split()) * len(tasks)
    return {**EVALUATION, "SEEDS": seeds, "PARALLEL": str(min(int(EVALUATION["PARALLEL"]), runs)),
            "TASKS": " ".join(tasks), "MODEL_DIR": str(model_dir),
            "EXTRA_ARGS": f"{TASK_EXTRA_ARGS[tasks[0]]} {COMMON_EXTRA_ARGS}",
            "OFFLINE_DATA_DIR": str(tasks_dir), "OUTPUT_DIR": str(eval_dir)}  # fmt: skip


def timing_summary(out_dir: Path) -> list[str]:
    """["distillation 8.2 min", "fine-tuning and scoring 3.9 min", "total 12.1 min"] from the recorded stages."""
    seconds = read_stage_seconds(out_dir)
    distill = sum(value for title, value in seconds.items() if title.startswith("distillation"))
    scoring = sum(value for title, value in seconds.items() if not title.startswith("distillation"))
    return [
        f"distillation {distill / 60:.1f} min",
        f"fine-tuning and scoring {scoring / 60:.1f} min",
        f"total {(distill + scoring) / 60:.1f} min",
    ]


def save_random_student(distilled_dir: Path, out_dir: Path) -> None:
    """A student with the distilled one's exact config and tokenizer, but freshly initialised weights."""
    import torch
    from transformers import AutoConfig, AutoTokenizer

    from minilmv2 import build_student

    torch.manual_seed(RANDOM_STUDENT_SEED)
    student = build_student(AutoConfig.from_pretrained(distilled_dir))
    student.save_pretrained(out_dir)
    AutoTokenizer.from_pretrained(distilled_dir).save_pretrained(out_dir)


# A cell of a quality table: (median, min, max) over fine-tuning seeds; min and max are None for one seed.
Score = tuple[float, float | None, float | None]


def read_scores(eval_dir: Path) -> dict[str, Score]:
    """{task: (median, min, max) dev score x 100 over the fine-tuning seeds} from run_eval.sh's summary.csv."""
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


def score_cell(score: Score) -> str:
    """ "61.16 (60.76-62.10)": the median and, with several seeds, the min-max in brackets."""
    median, low, high = score
    return f"{median:.2f} ({low:.2f}-{high:.2f})" if low is not None else f"{median:.2f}"


def majority_class_scores(tasks: list[str], tasks_dir: Path) -> dict[str, float]:
    """Accuracy x 100 of always predicting the training subset's most frequent label (a floor for the table)."""
    from minilmv2.scoring import sentence_tasks

    scores = {}
    for task in tasks:
        extra = TASK_EXTRA_ARGS[task].split()
        num_train = int(extra[extra.index("--max_train_samples") + 1]) if "--max_train_samples" in extra else None
        splits = sentence_tasks.load_offline_task(sentence_tasks.get_task(task), tasks_dir)
        majority = Counter(splits["train"]["label"][:num_train]).most_common(1)[0][0]
        dev_labels = splits["validation"]["label"]
        scores[task] = 100.0 * sum(label == majority for label in dev_labels) / len(dev_labels)
    return scores


def count_parameters(model_dir: Path) -> float:
    """Millions of parameters of a saved model, read from its safetensors header (no weights loaded)."""
    import math

    from safetensors import safe_open

    with safe_open(model_dir / "model.safetensors", framework="pt") as weights:
        total = sum(math.prod(weights.get_slice(name).get_shape()) for name in weights.keys())  # noqa: SIM118
    return total / 1e6


def machine_description() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import torch

    bf16 = ", ".join(NATIVE_BF16_FLAGS) or "no native bf16"
    return (
        f"{cpu} ({bf16}), {os.cpu_count()} cores, no GPU, torch {torch.__version__}, Python {platform.python_version()}"
    )


def write_table(
    scores: dict[str, dict[str, Score]],
    floor: dict[str, float],
    parameters: dict[str, float],
    tasks: list[str],
    timings: list[str],
    out_dir: Path,
) -> tuple[Path, Path]:
    """quickstart_results.md (table + values + machine) and quickstart_results.png (grouped bars)."""
    header = "| model | parameters | " + " | ".join(tasks) + " | avg |"
    lines = [header, "|" + "---|" * (len(tasks) + 3)]
    for model in MODELS:
        medians = [scores[model][task][0] for task in tasks]
        cells = " | ".join(score_cell(scores[model][task]) for task in tasks)
        lines.append(f"| {model} | {parameters[model]:.1f}M | {cells} | {sum(medians) / len(medians):.2f} |")
    floor_cells = " | ".join(f"{floor[task]:.2f}" for task in tasks)
    lines.append(f"| majority class | - | {floor_cells} | {sum(floor.values()) / len(floor):.2f} |")
    table = "\n".join(lines)
    markdown = "\n".join(
        [
            "# MiniLMv2 quickstart",
            "",
            "Dev accuracy x 100 after the same fine-tuning of each model (run_eval.sh values below): the median over "
            f"fine-tuning seeds {EVALUATION['SEEDS']}, min-max in brackets (the spread of fine-tuning alone: one "
            "distillation and one random init per student). avg: the mean of the medians.",
            "",
            table,
            "",
            f"Command: `make quickstart`. Machine: {machine_description()}.",
            "",
            "Time: " + "; ".join(timings) + ".",
            "",
            "run.sh values: " + ", ".join(f"{k}={v}" for k, v in DISTILLATION.items()),
            "",
            "run_eval.sh values: "
            + ", ".join(f"{k}={v}" for k, v in EVALUATION.items())
            + "; EXTRA_ARGS per task: "
            + ", ".join(f"{task}: `{args} {COMMON_EXTRA_ARGS}`" for task, args in TASK_EXTRA_ARGS.items()),
            "",
        ]
    )
    markdown_path = out_dir / "quickstart_results.md"
    markdown_path.write_text(markdown)

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7.5, 4.2))
    width = 0.8 / len(MODELS)
    for index, model in enumerate(MODELS):
        positions = [task_index + (index - (len(MODELS) - 1) / 2) * width for task_index in range(len(tasks))]
        medians = [scores[model][task][0] for task in tasks]
        # Error bars: the min-max over fine-tuning seeds (none with one seed).
        lows = [m if scores[model][t][1] is None else scores[model][t][1] for m, t in zip(medians, tasks, strict=True)]
        highs = [m if scores[model][t][2] is None else scores[model][t][2] for m, t in zip(medians, tasks, strict=True)]
        spread = [[m - low for m, low in zip(medians, lows, strict=True)],
                  [high - m for m, high in zip(medians, highs, strict=True)]]  # fmt: skip
        axes.bar(positions, medians, width, yerr=spread, capsize=3, label=model)
        for position, median, high in zip(positions, medians, highs, strict=True):  # above the error bar
            axes.text(position, high + 1.5, f"{median:.1f}", ha="center", va="bottom", fontsize=8)
    for task_index, task in enumerate(tasks):
        axes.hlines(floor[task], task_index - 0.45, task_index + 0.45, colors="grey", linestyles="dashed")
    axes.set_xticks(range(len(tasks)), tasks)
    axes.set_ylabel("dev accuracy x 100, median (bars: seed min-max)")
    axes.set_ylim(0, 118)  # room for the legend above the bars
    axes.set_title("MiniLMv2 quickstart: distilled vs random student vs teacher (dashed: majority class)", fontsize=10)
    axes.legend(loc="upper center", ncols=len(MODELS), fontsize=8)
    figure.tight_layout()
    png_path = out_dir / "quickstart_results.png"
    figure.savefig(png_path, dpi=120)
    plt.close(figure)
    print("\n" + table)
    return markdown_path, png_path


def check_assets(assets: Path) -> dict[str, Path]:
    parts = {part: assets / part for part in ("teacher", "corpus", "tasks")}
    missing = [part for part, path in parts.items() if not (path / "SOURCE.json").is_file()]
    if missing:
        raise UsageError(
            f"--assets {str(assets)!r} lacks {', '.join(missing)}; run `make assets` "
            f"(or python -m minilmv2.tools.assets --dest {assets})"
        )
    return parts


def prepare_output_dir(out_dir: Path) -> None:
    """Keep finished stages when the values are unchanged; start over when they changed."""
    values = {
        "distillation": DISTILLATION,
        "evaluation": EVALUATION,
        "task_extra_args": TASK_EXTRA_ARGS,
        "common_extra_args": COMMON_EXTRA_ARGS,
        "random_seed": RANDOM_STUDENT_SEED,
    }
    recorded = out_dir / VALUES_FILE
    if out_dir.exists() and (not recorded.is_file() or json.loads(recorded.read_text()) != values):
        print(f"quickstart values changed since the last run: starting over in {out_dir}")
        shutil.rmtree(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    recorded.write_text(json.dumps(values, indent=2) + "\n")


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    repo()  # from an install: one line, before anything else
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("runs/quickstart"))
    parser.add_argument("--assets", type=Path, default=default_dest())
    args = parser.parse_args(argv)
    parts = check_assets(args.assets.resolve())
    out_dir = args.output_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output_dir {str(out_dir)!r} is a file; expected a folder")
    prepare_output_dir(out_dir)

    distill_dir = out_dir / "distill"
    distilled = distill_dir / "student"
    from minilmv2.checkpoints import finished_run

    if finished_run(distill_dir):
        print(f"distilled student found at {distilled}: reusing it")
    else:
        shutil.rmtree(distill_dir, ignore_errors=True)  # an interrupted run: redo it from the start
        corpus = parts["corpus"]
        paths = {
            "TEACHER_DIR": str(parts["teacher"]),
            "TRAIN_CONFIG": str(corpus / "train_config.json"),
            "VAL_CONFIG": str(corpus / "val_config.json"),
            "EVAL_STEPS": DISTILLATION["MAX_STEPS"],  # one held-out loss, at the end
            "OUTPUT_DIR": str(distill_dir),
        }
        run_stage("quickstart", "distillation (run.sh)", ["bash", "run.sh"], repo(), out_dir, {**DISTILLATION, **paths})

    random_student = out_dir / "random_student"
    if not (random_student / "model.safetensors").is_file():
        save_random_student(distilled, random_student)
    model_dirs = {"distilled student": distilled, "random student": random_student, "teacher": parts["teacher"]}

    tasks = list(TASK_EXTRA_ARGS)
    scores = {}
    for model, model_dir in model_dirs.items():
        eval_dir = out_dir / "eval" / model.replace(" ", "_")  # one sweep folder per model, a subfolder per task
        for group in task_groups():
            env = run_eval_values(model_dir, group, EVALUATION["SEEDS"], parts["tasks"], eval_dir)
            title = f"fine-tune and score the {model} on {' and '.join(group)} (run_eval.sh)"
            run_stage("quickstart", title, ["bash", "run_eval.sh"], repo(), out_dir, env)
            # Read now: run_eval.sh's summary covers the tasks of its own call.
            scores.setdefault(model, {}).update({task: read_scores(eval_dir)[task] for task in group})
    floor = majority_class_scores(tasks, parts["tasks"])
    parameters = {model: count_parameters(model_dir) for model, model_dir in model_dirs.items()}
    timings = timing_summary(out_dir)
    markdown_path, png_path = write_table(scores, floor, parameters, tasks, timings, out_dir)

    print("\n" + "; ".join(timings))
    print(f"table: {markdown_path}\nchart: {png_path}\nruns:  {out_dir}")
    verdict, status = distillation_verdict(scores, tasks)
    print(verdict)
    sys.exit(status)


def distillation_verdict(scores: dict[str, dict[str, Score]], tasks: list[str]) -> tuple[str, int]:
    """(one line, exit status): 0 when the distilled student's median beats the random student's on every task.
    The line also says where the two seed ranges overlap, since a median margin inside the spread is weak."""
    distilled, random = scores["distilled student"], scores["random student"]
    losing = [task for task in tasks if distilled[task][0] <= random[task][0]]
    if losing:
        return f"quickstart: the distilled student's median does NOT beat the random one's on {', '.join(losing)}", 1
    overlap = [t for t in tasks if distilled[t][1] is not None and random[t][2] is not None
               and distilled[t][1] <= random[t][2]]  # fmt: skip
    line = "distillation works: the distilled student's median beats the random student's on " + " and ".join(tasks)
    if overlap:
        line += f" (their seed ranges overlap on {', '.join(overlap)})"
    return line, 0


if __name__ == "__main__":
    main()
