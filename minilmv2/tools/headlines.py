"""`make headlines`: BBC News headline generation, offline, distilled student vs random student vs teacher.

    python -m minilmv2.tools.headlines [--output_dir runs/headlines] [--assets .assets] [--student DIR]
    SEEDS="1 2 3" make headlines      # several fine-tuning seeds: median and min-max per cell

One fine-tuning seed (42) by default, since the teacher's run alone takes about 12 minutes on 2 cores; with
`SEEDS` (the environment, or --seeds) each model is fine-tuned once per seed and the table gives the median
and the min-max over the seeds.

Each BBC News file (the `bbc_news` topic task's raw files) starts with its title line; the task is to
generate that title from the article body. The split is `bbc_news`'s fixed one (minilmv2/scoring/sentence_tasks.py): an
article is in dev here exactly when it is in the topic task's dev split (train drops the 6 articles whose
body, under another title, is also in dev).

1. writes the pairs as JSON lines {"src": body, "tgt": title} (data/train.jsonl, data/dev.jsonl);
2. takes the distilled student of `make quickstart` (runs/quickstart/distill/student) when it was made with
   the current quickstart values, else distils one the same way (run.sh with the quickstart's values);
3. saves the random student of the same shape (the "no distillation" control);
4. fine-tunes and decodes each of distilled student, random student and teacher with hf_run_seq2seq.py and
   the HEADLINE VALUES below, and writes headlines_results.md: ROUGE-1/2/L on the whole dev split, with a
   lead baseline (the body's first words, as many as a title has on average) as a floor.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

from minilmv2.checkout import require_checkout
from minilmv2.errors import UsageError, exit_on_usage_error
from minilmv2.tools.assets import default_dest
from minilmv2.tools.stages import STAGE_SECONDS_FILE, parse_seeds, read_stage_seconds, run_stage


def repo() -> Path:
    """The checkout this tool runs the scripts of (UsageError in one line from an installed package)."""
    return require_checkout("python -m minilmv2.tools.headlines", "run.sh and hf_run_seq2seq.py", "make headlines")


# ---------------------------------------------------------------------------------------------------------
# HEADLINE VALUES: the hf_run_seq2seq.py arguments, the same for the three models. Edit here.
# A headline restates the lead, so the first 64 source tokens suffice (and halve the cost of 128); titles
# are at most 15 WordPiece tokens here (+ [SEP]). fp32: on this project's AMD EPYC (AVX2, no AVX512-BF16 or
# AMX) a teacher forward of 32 x 168 tokens took 50 s under bf16 autocast against 9 s in fp32, back to back
# (on a machine shared with other jobs). Decoding follows the MiniLM README's recipe (beam 5, length
# penalty 0, no repeated trigram except around "."); a title has at least two tokens.
# lr 5e-4 x 4 epochs (240 steps): probes on 2026-11-30 (AMD EPYC) gave the students a lower loss at 1e-3 than at
# 3e-4 (5.88 after 4 epochs against 6.45 after 3) and the teacher a higher one (6.98 against 6.66 after 60
# steps); one value serves all three. 4 epochs keep the target near 20 minutes on 2 cores.
HEADLINE_ARGS = [
    "--max_source_seq_length", "64",
    "--max_target_seq_length", "20",
    "--per_device_train_batch_size", "32",
    "--learning_rate", "5e-4",
    "--warmup_steps", "0.1",
    "--weight_decay", "0.01",
    "--num_train_epochs", "4",
    "--beam_size", "5",
    "--length_penalty", "0",
    "--min_target_length", "2",
    "--forbid_duplicate_ngrams",
    "--forbid_ignore_word", ".",
    "--use_cpu", "true",
    "--save_strategy", "no",
    "--logging_steps", "20",
    "--report_to", "none",
    "--disable_tqdm", "true",
]  # fmt: skip
# ---------------------------------------------------------------------------------------------------------

MODELS = ("distilled student", "random student", "teacher")
DEFAULT_SEEDS = "42"
METRICS = ("eval_rouge1", "eval_rouge2", "eval_rougeL", "eval_loss")


def stage_title(model: str, seed: int, seeds: list[int]) -> str:
    return f"fine-tune and decode the {model}" + (f", seed {seed}" if len(seeds) > 1 else "")


def command_line(seeds: list[int]) -> str:
    """The command that makes this table: `make headlines`, with its SEEDS unless they are the default."""
    given = " ".join(map(str, seeds))
    return "make headlines" if given == DEFAULT_SEEDS else f'SEEDS="{given}" make headlines'


def median_and_range(values: list[float]) -> tuple[float, float | None, float | None]:
    """(median, min, max) of one metric over the seeds; min and max are None for one seed."""
    import statistics

    if len(values) == 1:
        return values[0], None, None
    return statistics.median(values), min(values), max(values)


def title_and_body(raw_text: str) -> tuple[str, str] | None:
    """(title, body) of one BBC file, whitespace-normalised; None when there is no body after the title."""
    lines = [line.strip() for line in raw_text.splitlines()]
    lines = [line for line in lines if line]
    if len(lines) < 2:
        return None
    return " ".join(lines[0].split()), " ".join(" ".join(lines[1:]).split())


def headline_pairs(tasks_dir: str | Path) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """(train, dev) lists of {src: body, tgt: title} in the order of bbc_news's fixed split.

    sentence_tasks.split_offline_examples normalises whitespace (which joins the title to the body), so each split
    text is mapped back to its raw file to recover the title line.
    """
    from minilmv2.scoring import sentence_tasks

    spec = sentence_tasks.get_task("bbc_news")
    texts, labels = sentence_tasks.read_offline_examples(spec, tasks_dir)
    raw_of = {" ".join(text.split()): text for text in texts}
    train, dev = sentence_tasks.split_offline_examples(texts, labels)

    def pairs(split):
        out = []
        for text, _ in split:
            parts = title_and_body(raw_of[text])
            if parts is not None:
                out.append({"src": parts[1], "tgt": parts[0]})
        return out

    # A few articles were filed twice with different titles, so de-duplicating whole files leaves some bodies
    # on both sides; those train pairs would hand the model a dev answer, so they go.
    dev_pairs = pairs(dev)
    dev_bodies = {pair["src"] for pair in dev_pairs}
    return [pair for pair in pairs(train) if pair["src"] not in dev_bodies], dev_pairs


def write_jsonl(examples: list[dict[str, str]], path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", encoding="utf-8") as handle:
        for example in examples:
            handle.write(json.dumps(example, ensure_ascii=False) + "\n")


def lead_baseline(train: list[dict[str, str]], dev: list[dict[str, str]]) -> dict[str, float]:
    """ROUGE of the body's first k words, k the mean title length in words on train (rounded)."""
    sys.path.insert(0, str(repo()))
    from hf_run_seq2seq import score

    words = round(sum(len(e["tgt"].split()) for e in train) / len(train))
    predictions = [" ".join(e["src"].split()[:words]) for e in dev]
    return score(predictions, [e["tgt"] for e in dev], ["rouge"]) | {"words": words}


def distilled_student(out_dir: Path, parts: dict[str, Path], given: Path | None) -> Path:
    """The distilled student to score: --student, else make quickstart's if current, else a new one."""
    from minilmv2.checkpoints import finished_run
    from minilmv2.tools import quickstart

    if given is not None:
        return given
    quick = repo() / "runs" / "quickstart"
    values_file = quick / quickstart.VALUES_FILE
    student = quick / "distill" / "student"
    if finished_run(quick / "distill") and values_file.is_file():
        recorded = json.loads(values_file.read_text())
        if recorded.get("distillation") == quickstart.DISTILLATION:
            print(f"distilled student of make quickstart found at {student}: reusing it")
            return student
    distill_dir = out_dir / "distill"
    student = distill_dir / "student"
    values = distillation_values()
    recorded_path = out_dir / "distillation_values.json"
    recorded = json.loads(recorded_path.read_text()) if recorded_path.is_file() else None
    if finished_run(distill_dir) and recorded == values:
        print(f"distilled student found at {student}: reusing it")
        return student
    shutil.rmtree(distill_dir, ignore_errors=True)  # an interrupted or outdated run: redo it from the start
    recorded_path.write_text(json.dumps(values, indent=2) + "\n")
    corpus = parts["corpus"]
    paths = {
        "TEACHER_DIR": str(parts["teacher"]),
        "TRAIN_CONFIG": str(corpus / "train_config.json"),
        "VAL_CONFIG": str(corpus / "val_config.json"),
        "EVAL_STEPS": values["MAX_STEPS"],
        "OUTPUT_DIR": str(distill_dir),
    }
    title = "distillation (run.sh, the quickstart's values)"
    run_stage("headlines", title, ["bash", "run.sh"], repo(), out_dir, {**quickstart.DISTILLATION, **paths})
    return student


def distillation_values() -> dict[str, str]:
    """The quickstart's run.sh values, unchanged (the same distillation as `make quickstart`)."""
    from minilmv2.tools import quickstart

    return dict(quickstart.DISTILLATION)


def write_table(
    out_dir: Path,
    scores: dict[str, list[dict]],
    lead: dict[str, float],
    parameters: dict[str, float],
    seeds: list[int],
) -> Path:
    """headlines_results.md from `scores`, {model: [eval_results.json of each seed, in the order of `seeds`]}."""
    from minilmv2.tools.quickstart import machine_description

    seconds = read_stage_seconds(out_dir)
    lines = [
        "| model | parameters | ROUGE-1 | ROUGE-2 | ROUGE-L | dev loss | fine-tune + decode (min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for model in MODELS:
        cells = []
        for metric in METRICS:
            median, low, high = median_and_range([result[metric] for result in scores[model]])
            digits = 3 if metric == "eval_loss" else 2
            spread = f" ({low:.{digits}f}-{high:.{digits}f})" if low is not None else ""
            cells.append(f"{median:.{digits}f}{spread}")
        minutes = sum(seconds.get(stage_title(model, seed, seeds), 0.0) for seed in seeds) / 60
        lines.append(f"| {model} | {parameters[model]:.1f}M | " + " | ".join(cells) + f" | {minutes:.1f} |")
    lines.append(
        f"| lead baseline (first {lead['words']} words) | - | {lead['eval_rouge1']:.2f} | {lead['eval_rouge2']:.2f} "
        f"| {lead['eval_rougeL']:.2f} | - | - |"
    )
    total = sum(seconds.values()) / 60
    distill = [value for key, value in seconds.items() if key.startswith("distillation")]
    time_line = (
        f"Time: {total:.1f} min in all (distillation {sum(distill) / 60:.1f} min of it)."
        if distill
        else f"Time: {total:.1f} min in all (the distilled student was reused from an earlier run)."
    )
    markdown = "\n".join(
        [
            "# BBC News headline generation",
            "",
            f"Dev split of bbc_news ({scores['teacher'][0]['eval_samples']} articles), ROUGE F x 100 (rouge-score, "
            "stemmed); dev loss: the reference titles' cross-entropy per target token (teacher-forced).",
            (
                f"Each cell: the median over fine-tuning seeds {' '.join(map(str, seeds))}, min-max in brackets "
                "(the spread of fine-tuning alone: one distillation and one random init per student); the time is "
                "all seeds'."
                if len(seeds) > 1
                else f'One fine-tuning seed ({seeds[0]}): no spread; `SEEDS="1 2 3" make headlines` gives the median '
                "and min-max over three."
            ),
            "",
            *lines,
            "",
            f"Command: `{command_line(seeds)}`. Machine: {machine_description()}.",
            time_line,
            "",
            "hf_run_seq2seq.py arguments: `" + " ".join(HEADLINE_ARGS) + "` and `--seed` per run",
            "",
        ]
    )
    path = out_dir / "headlines_results.md"
    path.write_text(markdown)
    print("\n" + "\n".join(lines))
    return path


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    repo()  # from an install: one line, before anything else
    from minilmv2.tools import quickstart

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output_dir", type=Path, default=Path("runs/headlines"))
    parser.add_argument("--assets", type=Path, default=default_dest())
    parser.add_argument("--student", type=Path, default=None, help="a distilled student to use instead")
    parser.add_argument("--seeds", default=None, help=f"fine-tuning seeds (default $SEEDS, else {DEFAULT_SEEDS})")
    args = parser.parse_args(argv)
    if args.seeds is not None:
        seeds = parse_seeds(args.seeds, "--seeds")
    else:
        seeds = parse_seeds(os.environ.get("SEEDS") or DEFAULT_SEEDS, "SEEDS")
    parts = quickstart.check_assets(args.assets.resolve())
    if args.student is not None and not (args.student / "config.json").is_file():
        raise UsageError(f"--student {str(args.student)!r} is not a model directory (no config.json)")
    out_dir = args.output_dir.resolve()
    if out_dir.exists() and not out_dir.is_dir():
        raise UsageError(f"--output_dir {str(out_dir)!r} is a file; expected a folder")
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / STAGE_SECONDS_FILE).unlink(missing_ok=True)

    train, dev = headline_pairs(parts["tasks"])
    train_path, dev_path = out_dir / "data" / "train.jsonl", out_dir / "data" / "dev.jsonl"
    write_jsonl(train, train_path)
    write_jsonl(dev, dev_path)
    print(f"{len(train)} train / {len(dev)} dev headline pairs in {train_path.parent}")

    distilled = distilled_student(out_dir, parts, args.student)
    random_student = out_dir / "random_student"
    if not (random_student / "model.safetensors").is_file():
        quickstart.save_random_student(distilled, random_student)
    model_dirs = {"distilled student": distilled, "random student": random_student, "teacher": parts["teacher"]}

    scores: dict[str, list[dict]] = {}
    for model, model_dir, seed in ((m, d, seed) for m, d in model_dirs.items() for seed in seeds):
        run_dir = out_dir / model.replace(" ", "_") / f"seed_{seed}"
        command = [
            sys.executable,
            "hf_run_seq2seq.py",
            "--model_name_or_path", str(model_dir),
            "--train_file", str(train_path),
            "--validation_file", str(dev_path),
            "--do_train", "--do_eval",
            "--output_dir", str(run_dir),
            "--overwrite_output_dir",
            *HEADLINE_ARGS,
            "--seed", str(seed),
        ]  # fmt: skip
        run_stage("headlines", stage_title(model, seed, seeds), command, repo(), out_dir)
        scores.setdefault(model, []).append(json.loads((run_dir / "eval_results.json").read_text()))
    lead = lead_baseline(train, dev)
    parameters = {model: quickstart.count_parameters(path) for model, path in model_dirs.items()}
    path = write_table(out_dir, scores, lead, parameters, seeds)
    print(f"table: {path}\nruns:  {out_dir}")


if __name__ == "__main__":
    main()
