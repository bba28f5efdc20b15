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
#   OUTPUT_DIR        [runs/eval/<basename of MODEL_DIR>]
#   EXTRA_ARGS        appended to every call, e.g. "--bf16 true" or "--max_train_samples 2000"
#                     (later flags win, so it can override the defaults above; no spaces inside a value)
#   PYTHON            [<repo>/.venv/bin/python if present, else python3]
#   OVERWRITE=1       re-run runs that already finished (default: keep them, so a stopped sweep resumes)
#
# Each run goes to OUTPUT_DIR/<task>/lr<LR>_ep<EPOCHS>_seed<SEED>/ with run.log and sweep_run.json
# (status ok/failed). A failed run is marked failed and the sweep goes on. At the end OUTPUT_DIR gets
# summary.csv, summary.md, runs.csv and heatmap_<task>.png (python -m minilmv2.scoring.sweep_summary); SQuAD tasks are
# ranked by F1 and show exact match (EM) beside it.
# Exit status: 0 when every run finished, 1 when some failed (the summary is written either way),
# 2 for bad settings.
set -uo pipefail

REPO_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
if [[ -z "${PYTHON:-}" ]]; then
    if [[ -x "$REPO_DIR/.venv/bin/python" ]]; then PYTHON="$REPO_DIR/.venv/bin/python"; else PYTHON=python3; fi
fi
export PYTHONPATH="$REPO_DIR${PYTHONPATH:+:$PYTHONPATH}"

TASKS="${TASKS:-qnli qqp rte sst2 mnli}"
# The default grid depends on the task (the seed's SQuAD recipe is one cell); LEARNING_RATES / EPOCHS, when
# set, apply to every task.
GLUE_RATES="2e-5 3e-5 4e-5 1e-5 1.5e-5"
GLUE_EPOCHS="3 5 10"
SQUAD_RATES="4e-5"
SQUAD_EPOCHS="4"
SEEDS="${SEEDS:-42}"
GLUE_DIR="${GLUE_DIR:-}"
OFFLINE_DATA_DIR="${OFFLINE_DATA_DIR:-}"
SQUAD_DIR="${SQUAD_DIR:-}"
EXTRA_ARGS="${EXTRA_ARGS:-}"
OVERWRITE="${OVERWRITE:-0}"

die() { echo "error: $*" >&2; exit 2; }

[[ -n "${MODEL_DIR:-}" ]] || die "MODEL_DIR is not set; set it to the model directory to fine-tune (e.g. the distilled student)"
[[ -d "$MODEL_DIR" ]] || die "MODEL_DIR '$MODEL_DIR' is not a directory; set it to a model directory holding config.json"
[[ -f "$MODEL_DIR/config.json" ]] || die "MODEL_DIR '$MODEL_DIR' has no config.json; set it to a directory written by save_pretrained"
OUTPUT_DIR="${OUTPUT_DIR:-runs/eval/$(basename "$MODEL_DIR")}"
read -r -a task_list <<< "$TASKS"
read -r -a seed_list <<< "$SEEDS"
read -r -a extra_args <<< "$EXTRA_ARGS"
is_squad() { [[ "$1" == squad || "$1" == squad_v2 ]]; }
# The learning rates / epochs of one task: the user's lists when set, else that task's default grid.
task_rates() { if [[ -n "${LEARNING_RATES:-}" ]]; then echo "$LEARNING_RATES"; elif is_squad "$1"; then echo "$SQUAD_RATES"; else echo "$GLUE_RATES"; fi; }
task_epochs() { if [[ -n "${EPOCHS:-}" ]]; then echo "$EPOCHS"; elif is_squad "$1"; then echo "$SQUAD_EPOCHS"; else echo "$GLUE_EPOCHS"; fi; }
(( ${#task_list[@]} > 0 )) || die "TASKS is empty; give at least one task"
(( ${#seed_list[@]} > 0 )) || die "SEEDS is empty; give at least one value"
all_rates=() all_epochs=()
for task in "${task_list[@]}"; do
    read -r -a rate_list <<< "$(task_rates "$task")"
    read -r -a epoch_list <<< "$(task_epochs "$task")"
    (( ${#rate_list[@]} > 0 )) || die "LEARNING_RATES is blank; give at least one value or unset it"
    (( ${#epoch_list[@]} > 0 )) || die "EPOCHS is blank; give at least one value or unset it"
    all_rates+=("${rate_list[@]}")
    all_epochs+=("${epoch_list[@]}")
done
# Zero is refused too: a run with no epochs or a zero learning rate would report the untrained model's score.
for lr in "${all_rates[@]}"; do
    [[ "$lr" =~ ^[0-9]*\.?[0-9]+([eE][-+]?[0-9]+)?$ ]] || die "learning rate '$lr' in LEARNING_RATES is not a positive number (e.g. 2e-5)"
    [[ "$lr" =~ ^0*\.?0*([eE][-+]?[0-9]+)?$ ]] && die "learning rate '$lr' in LEARNING_RATES is zero; a run would not train (e.g. 2e-5)"
done
for ep in "${all_epochs[@]}"; do
    [[ "$ep" =~ ^[0-9]*\.?[0-9]+$ ]] || die "epochs '$ep' in EPOCHS is not a positive number (e.g. 3)"
    [[ "$ep" =~ ^0*\.?0*$ ]] && die "epochs '$ep' in EPOCHS is zero; a run would train nothing and report the untrained model's score"
done
for seed in "${seed_list[@]}"; do
    [[ "$seed" =~ ^[0-9]+$ ]] || die "seed '$seed' in SEEDS is not a non-negative integer"
done
# MODEL_DIR's weights, task names and each task's data are checked once here (one plain line, status 2) rather
# than failing every run of the sweep: GLUE tasks need their TSV files under GLUE_DIR, or the hub (so not
# HF_HUB_OFFLINE=1) when GLUE_DIR is unset; the offline tasks need their raw files; SQuAD tasks their JSON files
# under SQUAD_DIR, or the hub (minilmv2.scoring.sweep_summary.check_sweep_model / check_sweep_tasks).
"$PYTHON" - "$MODEL_DIR" "$GLUE_DIR" "$OFFLINE_DATA_DIR" "$SQUAD_DIR" "${task_list[@]}" <<'EOF' || exit 2
import sys

from minilmv2.errors import UsageError
from minilmv2.scoring.sweep_summary import check_sweep_model, check_sweep_tasks

try:
    check_sweep_model(sys.argv[1])
    check_sweep_tasks(sys.argv[5:], glue_dir=sys.argv[2], offline_data_dir=sys.argv[3], squad_dir=sys.argv[4])
except UsageError as err:
    sys.exit(f"error: {err}")
EOF

total=0
for task in "${task_list[@]}"; do
    read -r -a rate_list <<< "$(task_rates "$task")"
    read -r -a epoch_list <<< "$(task_epochs "$task")"
    total=$(( total + ${#epoch_list[@]} * ${#rate_list[@]} * ${#seed_list[@]} ))
done
echo "Sweep: $total runs of $MODEL_DIR on ${task_list[*]} -> $OUTPUT_DIR"
mkdir -p "$OUTPUT_DIR"
index=0
failed=0
for task in "${task_list[@]}"; do
    read -r -a rate_list <<< "$(task_rates "$task")"
    read -r -a epoch_list <<< "$(task_epochs "$task")"
    # Each family's script and recipe; EXTRA_ARGS come last in the call, so they override these.
    data_args=()
    case "$task" in
        squad|squad_v2)
            if [[ "$task" == squad_v2 ]]; then version=v2.0; version_args=(--version_2_with_negative); else version=v1.1; version_args=(); fi
            if [[ -n "$SQUAD_DIR" ]]; then
                data_args=(--data_dir "$SQUAD_DIR" --train_file "train-$version.json" --predict_file "dev-$version.json")
            else
                data_args=(--dataset_name "$task")
            fi
            script_args=("$REPO_DIR/hf_run_squad.py" "${data_args[@]}" "${version_args[@]}"
                --max_seq_length 384 --doc_stride 128 --per_device_train_batch_size 12 --per_device_eval_batch_size 64)
            ;;
        *)
            case "$task" in
                tweet_sentiment|bbc_news) [[ -n "$OFFLINE_DATA_DIR" ]] && data_args=(--offline_data_dir "$OFFLINE_DATA_DIR") ;;
                *) [[ -n "$GLUE_DIR" ]] && data_args=(--glue_dir "$GLUE_DIR") ;;
            esac
            script_args=("$REPO_DIR/hf_run_evaluation.py" --task_name "$task" "${data_args[@]}"
                --max_seq_length 128 --per_device_train_batch_size 32 --per_device_eval_batch_size 64 --eval_strategy epoch)
            ;;
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
                "$PYTHON" "${script_args[@]}" \
                    --model_name_or_path "$MODEL_DIR" \
                    --do_train \
                    --do_eval \
                    --learning_rate "$lr" \
                    --num_train_epochs "$epochs" \
                    --warmup_steps 0.1 \
                    --weight_decay 0.01 \
                    --seed "$seed" \
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

"$PYTHON" -m minilmv2.scoring.sweep_summary "$OUTPUT_DIR" --model_name "$(basename "$MODEL_DIR")" --tasks "${task_list[@]}" || exit 1
if (( failed > 0 )); then
    echo "$failed of $total runs failed; they are marked failed in $OUTPUT_DIR/summary.md"
    exit 1
fi
