#!/usr/bin/env bash
# Sweep hf_run_evaluation.py (GLUE, offline tasks) and hf_run_squad.py (SQuAD) over tasks x epochs x learning
# rates x seeds, then summarise the best dev score per task. GLUE recipe: max length 128, batch 32, warmup 10%,
# weight decay 0.01. SQuAD recipe (the MiniLM README's): max length 384, doc stride 128, batch 12 per device,
# lr 4e-5, 4 epochs; warmup 10% and weight decay 0.01 as for GLUE.
#
#   MODEL_DIR=runs/student GLUE_DIR=/data/glue ./run_eval.sh
#   MODEL_DIR=runs/student TASKS="tweet_sentiment bbc_news" EPOCHS=3 ./run_eval.sh      # no GLUE needed
#   MODEL_DIR=runs/student TASKS=squad_v2 SQUAD_DIR=/data/squad ./run_eval.sh           # train/dev-v2.0.json
#
# Environment (default in brackets):
#   MODEL_DIR         model directory to fine-tune, e.g. the distilled student (required)
#   TASKS             ["qnli qqp rte sst2 mnli"]  GLUE tasks, tweet_sentiment, bbc_news, squad_v2, squad
#   GLUE_DIR          GLUE TSV root (SST-2/, MRPC/, ...) [unset: the hub; refused if HF_HUB_OFFLINE=1]
#   OFFLINE_DATA_DIR  raw files of the offline tasks [$MINILMV2_ASSETS/tasks or .assets/tasks]
#   SQUAD_DIR         folder with train-v2.0.json, dev-v2.0.json (squad_v2) / train-v1.1.json, dev-v1.1.json
#                     (squad) [unset: the hub; refused if HF_HUB_OFFLINE=1]
#   LEARNING_RATES    [GLUE and offline tasks: "2e-5 3e-5 4e-5 1e-5 1.5e-5"; SQuAD: "4e-5"]  (set: every task)
#   EPOCHS            [GLUE and offline tasks: "3 5 10"; SQuAD: "4"]                          (set: every task)
#   SEEDS             ["42"]      with several, a cell's score is the median over seeds
#   OUTPUT_DIR        [runs/eval/<name of MODEL_DIR>-<first 8 hex digits of its fingerprint>]
#   GPUS              [the entries of CUDA_VISIBLE_DEVICES, else 0..n-1 of the visible GPUs]  each run gets one
#                     entry as its CUDA_VISIBLE_DEVICES (SLURM's ids and GPU UUIDs work): never DataParallel
#   PARALLEL          [the number of GPUS; 1 without a GPU]  runs at a time; a GPU that frees up takes the next
#                     run; on a CPU the runs share the cores
#   EXTRA_ARGS        appended to every call, e.g. "--bf16 true" or "--max_train_samples 2000"
#                     (later flags win, so it can override the defaults above; no spaces inside a value)
#   PYTHON            [<repo>/.venv/bin/python if present, else python3]
#   OVERWRITE=1       re-run runs that already finished (default: keep them, so a stopped sweep resumes)
#
# Each run goes to OUTPUT_DIR/<task>/lr<LR>_ep<EPOCHS>_seed<SEED>/ with run.log and sweep_run.json
# (status ok/failed/interrupted, its GPU, and its identity: the model's fingerprint and every argument; an
# earlier result is kept only when both match). A failed run is marked failed and the sweep goes on; Ctrl-C
# stops every running run (marked interrupted, exit 130) and the same command resumes. At the end OUTPUT_DIR gets
# summary.csv, summary.md, runs.csv and heatmap_<task>.png (python -m minilmv2.scoring.sweep_summary); SQuAD tasks are
# ranked by F1 and show exact match (EM) beside it.
# Exit status: 0 when every run finished, 1 when some failed (the summary is written either way),
# 2 for bad settings (one line, before any run), 128 + signal when stopped.
# The sweep itself is minilmv2/scoring/sweep.py; this script finds the Python to run it with.
set -euo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHON PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"
exec "$PYTHON" -m minilmv2.scoring.sweep
