#!/usr/bin/env bash
# Sweep hf_run_evaluation.py over tasks x epochs x learning rates x seeds (the reference recipe: max length
# 128, batch 32, warmup 10%, weight decay 0.01), then summarise the best dev score per task.
#
#   MODEL_DIR=runs/student GLUE_DIR=/data/glue ./run_eval.sh
#   MODEL_DIR=runs/student TASKS="tweet_sentiment bbc_news" EPOCHS=3 ./run_eval.sh      # no GLUE needed
#
# Environment (default in brackets):
#   MODEL_DIR         model directory to fine-tune, e.g. the distilled student (required)
#   TASKS             ["qnli qqp rte sst2 mnli"]  GLUE tasks and/or tweet_sentiment, bbc_news
#   GLUE_DIR          GLUE TSV root (SST-2/, MRPC/, ...) [unset: the hub; refused if HF_HUB_OFFLINE=1]
#   OFFLINE_DATA_DIR  raw files of the offline tasks [$MINILMV2_ASSETS/tasks or .assets/tasks]
#   LEARNING_RATES    ["2e-5 3e-5 4e-5 1e-5 1.5e-5"]
#   EPOCHS            ["3 5 10"]
#   SEEDS             ["42"]      with several, a cell's score is the median over seeds
#   OUTPUT_DIR        [runs/eval/<basename of MODEL_DIR>]
#   EXTRA_ARGS        appended to every call, e.g. "--bf16 true" or "--max_train_samples 2000"
#                     (later flags win, so it can override the defaults above; no spaces inside a value)
#   PYTHON            [<repo>/.venv/bin/python if present, else python3]
#   OVERWRITE=1       re-run runs that already finished (default: keep them, so a stopped sweep resumes)
#
# Each run goes to OUTPUT_DIR/<task>/lr<LR>_ep<EPOCHS>_seed<SEED>/ with run.log and sweep_run.json
# (status ok/failed). A failed run is marked failed and the sweep goes on. At the end OUTPUT_DIR gets
# summary.csv, summary.md, runs.csv and heatmap_<task>.png (python -m minilmv2.sweep_summary).
# Exit status: 0 when every run finished, 1 when some failed (the summary is written either way),
# 2 for bad settings.
set -uo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

TASKS="${TASKS:-qnli qqp rte sst2 mnli}"
LEARNING_RATES="${LEARNING_RATES:-2e-5 3e-5 4e-5 1e-5 1.5e-5}"
EPOCHS="${EPOCHS:-3 5 10}"
SEEDS="${SEEDS:-42}"
GLUE_DIR="${GLUE_DIR:-}"
OFFLINE_DATA_DIR="${OFFLINE_DATA_DIR:-}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
OVERWRITE="${OVERWRITE:-0}"

die() { echo "error: $*" >&2; exit 2; }

[[ -n "${MODEL_DIR:-}" ]] || die "MODEL_DIR is not set; set it to the model directory to fine-tune (e.g. the distilled student)"
[[ -d "$MODEL_DIR" ]] || die "MODEL_DIR '$MODEL_DIR' is not a directory; set it to a model directory holding config.json"
[[ -f "$MODEL_DIR/config.json" ]] || die "MODEL_DIR '$MODEL_DIR' has no config.json; set it to a directory written by save_pretrained"
OUTPUT_DIR="${OUTPUT_DIR:-runs/eval/$(basename "$MODEL_DIR")}"
read -r -a task_list <<< "$TASKS"
read -r -a rate_list <<< "$LEARNING_RATES"
read -r -a epoch_list <<< "$EPOCHS"
read -r -a seed_list <<< "$SEEDS"
read -r -a extra_args <<< "$EXTRA_ARGS"
for name in task_list rate_list epoch_list seed_list; do
    declare -n list="$name"
    (( ${#list[@]} > 0 )) || die "$name is empty; give at least one value"
    unset -n list
done
for lr in "${rate_list[@]}"; do
    [[ "$lr" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "learning rate '$lr' in LEARNING_RATES is not a positive number (e.g. 2e-5)"
done
for ep in "${epoch_list[@]}"; do
    [[ "$ep" =~ ^[0-9]*\.?[0-9]+$ ]] || die "epochs '$ep' in EPOCHS is not a positive number (e.g. 3)"
done
for seed in "${seed_list[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || die "seed '$seed' in SEEDS is not a non-negative integer"
done
# Task names and each task's data are checked once here (one plain line, status 2) rather than failing every
# run of the sweep: GLUE tasks need their TSV files under GLUE_DIR, or the hub (so not HF_HUB_OFFLINE=1) when
# GLUE_DIR is unset; the offline tasks need their raw files (minilmv2.sweep_summary.check_sweep_tasks).
"$PYTHON" - "$GLUE_DIR" "$OFFLINE_DATA_DIR" "${task_list[@]}" <<'EOF' || exit 2
import sys

from minilmv2.errors import UsageError
from minilmv2.sweep_summary import check_sweep_tasks

try:
    check_sweep_tasks(sys.argv[3:], glue_dir=sys.argv[1], offline_data_dir=sys.argv[2])
except UsageError as err:
    sys.exit(f"error: {err}")
EOF

total=$(( ${#task_list[@]} * ${#epoch_list[@]} * ${#rate_list[@]} * ${#seed_list[@]} ))
echo "Sweep: $total runs of $MODEL_DIR on ${task_list[*]} -> $OUTPUT_DIR"
mkdir -p "$OUTPUT_DIR"
index=0
failed=0
for task in "${task_list[@]}"; do
    data_args=()
    case "$task" in
        tweet_sentiment|bbc_news) [[ -n "$OFFLINE_DATA_DIR" ]] && data_args=(--offline_data_dir "$OFFLINE_DATA_DIR") ;;
        *) [[ -n "$GLUE_DIR" ]] && data_args=(--glue_dir "$GLUE_DIR") ;;
    esac
    for epochs in "${epoch_list[@]}"; do
        for lr in "${rate_list[@]}"; do
            for seed in "${seed_list[@]}"; do
                index=$(( index + 1 ))
                run_dir="$OUTPUT_DIR/$task/lr${lr}_ep${epochs}_seed${seed}"
                record="$run_dir/sweep_run.json"
                if [[ "$OVERWRITE" != 1 && -f "$record" ]] && grep -q '"status": "ok"' "$record"; then
                    echo "[$index/$total] $task lr $lr epochs $epochs seed $seed: finished earlier, kept"
                    continue
                fi
                echo "[$index/$total] $task lr $lr epochs $epochs seed $seed -> $run_dir"
                mkdir -p "$run_dir"
                rm -f "$record"
                # --overwrite_output_dir: the sweep decided to (re)run this cell, so old results must go.
                # The user's environment decides online/offline (HF_HUB_OFFLINE); nothing is forced here.
                "$PYTHON" "$REPO_DIR/hf_run_evaluation.py" \
                    --model_name_or_path "$MODEL_DIR" \
                    --task_name "$task" \
                    "${data_args[@]}" \
                    --do_train \
                    --do_eval \
                    --max_seq_length 128 \
                    --per_device_train_batch_size 32 \
                    --per_device_eval_batch_size 64 \
                    --learning_rate "$lr" \
                    --num_train_epochs "$epochs" \
                    --warmup_steps 0.1 \
                    --weight_decay 0.01 \
                    --seed "$seed" \
                    --eval_strategy epoch \
                    --save_strategy no \
                    --save_final_model false \
                    --logging_steps 50 \
                    --output_dir "$run_dir" \
                    --overwrite_output_dir \
                    "${extra_args[@]}" 2>&1 | tee "$run_dir/run.log"
                exit_code=${PIPESTATUS[0]}
                if (( exit_code == 0 )); then status=ok; else status=failed; failed=$(( failed + 1 )); fi
                printf '{"task": "%s", "learning_rate": "%s", "epochs": "%s", "seed": "%s", "status": "%s", "exit_code": %d}\n' \
                    "$task" "$lr" "$epochs" "$seed" "$status" "$exit_code" > "$record"
                [[ "$status" == ok ]] || echo "[$index/$total] FAILED (exit $exit_code), see $run_dir/run.log; going on"
            done
        done
    done
done

"$PYTHON" -m minilmv2.sweep_summary "$OUTPUT_DIR" --model_name "$(basename "$MODEL_DIR")" --tasks "${task_list[@]}" || exit 1
if (( failed > 0 )); then
    echo "$failed of $total runs failed; they are marked failed in $OUTPUT_DIR/summary.md"
    exit 1
fi
