#!/usr/bin/env bash
# MiniLMv2 distillation with the paper's recipe (the first public reimplementation's run.sh, made real):
# teacher bert-base-uncased, student 6 layers x 384 hidden x 12 heads (FFN 1536), teacher layer L=12,
# 48 relation heads, batch 256 per device, lr 6e-4, Adam eps 1e-6, betas 0.9/0.999, weight decay 0.01,
# 400k steps, 4k warm-up, a checkpoint every 50k steps, a log line every 1k, 512-token sequences, seed 42.
#
# Every value can be overridden from the environment, e.g.
#   TEACHER_DIR=./model/bert-large-uncased L=21 NUM_RELATION_HEADS=64 bash run.sh
#   MAX_STEPS=100 BATCH_SIZE=8 MAX_SEQ_LEN=128 bash run.sh              # a quick try
#   RESUME=latest bash run.sh                                            # continue after preemption
#
#   TEACHER_DIR   teacher folder (config.json + weights)     ./model/bert-base-uncased
#   TOKENIZER_DIR tokenizer folder                            $TEACHER_DIR
#   TRAIN_CONFIG  corpus config {"urls": [...], "format", "columns"}   ./train_config.json
#   VAL_CONFIG    held-out corpus config (eval loss at EVAL_STEPS)     (none)
#   OUTPUT_DIR    student/, checkpoint-N/, loss_curve.png     ./out
#   STUDENT_HIDDEN_SIZE 384  STUDENT_NUM_LAYERS 6  STUDENT_ATTENTION_HEADS 12  STUDENT_INTERMEDIATE_SIZE (4 x hidden)
#   L 12  NUM_RELATION_HEADS 48  RELATIONS {(i, j): weight} with 1=Q 2=K 3=V (default: the library's Q-Q, K-K, V-V)
#   RELATION_KERNEL auto (Triton on CUDA when installed, else torch) | torch | compile | triton
#   STUDENT_INIT  random (the paper's recipe) | teacher_embeddings (the student's embeddings from the teacher's)
#   BATCH_SIZE 256 (per device)  GRAD_ACCUM 1  LR 6e-4  ADAM_EPS 1e-6  ADAM_BETA1 0.9  ADAM_BETA2 0.999
#   WEIGHT_DECAY 0.01  MAX_STEPS 400000  WARMUP_STEPS 4000  SAVE_STEPS 50000  LOGGING_STEPS 1000
#   EVAL_STEPS $LOGGING_STEPS  MAX_SEQ_LEN 512  SEED 42  PRECISION (bf16 on GPUs that have it, else none)
#   REPORT_TO tensorboard  RESUME (a checkpoint path, or "latest")
#   EXTRA_ARGS    more options (TrainingArguments, --no_packing true, ...); not those a variable above sets
#   NPROC  processes on this node (default: all local GPUs, 1 without a GPU)
#   STOP_TIMEOUT  seconds the workers get to write their checkpoint after SIGTERM/SIGINT      600
#   NNODES / MASTER_ADDR / MASTER_PORT / RDZV_ID  several nodes: run this script once per node with the
#                 same values (torchrun's c10d rendezvous assigns ranks; see slurm/distill.sbatch)
set -euo pipefail
# Error messages name these variables instead of the options they set (LR=-1 rather than --learning_rate -1).
export MINILMV2_VIA_RUN_SH=1
# Paths are relative to where you run this from; the project's .venv is used when there is one.
HERE=$(cd "$(dirname "$0")" && pwd)
# Else python3 (some images, the GPU machine's among them, have no plain `python`), else python.
PYTHON=${PYTHON:-$( [ -x "$HERE/.venv/bin/python" ] && echo "$HERE/.venv/bin/python" || command -v python3 || echo python )}
# The package from this checkout, also where it is not installed (a GPU machine that got only the working tree).
export PYTHONPATH="$HERE${PYTHONPATH:+:$PYTHONPATH}"
TEACHER_DIR=${TEACHER_DIR:-./model/bert-base-uncased}
TOKENIZER_DIR=${TOKENIZER_DIR:-$TEACHER_DIR}
TRAIN_CONFIG=${TRAIN_CONFIG:-./train_config.json}
VAL_CONFIG=${VAL_CONFIG:-}
OUTPUT_DIR=${OUTPUT_DIR:-./out}
STUDENT_HIDDEN_SIZE=${STUDENT_HIDDEN_SIZE:-384}
STUDENT_NUM_LAYERS=${STUDENT_NUM_LAYERS:-6}
STUDENT_ATTENTION_HEADS=${STUDENT_ATTENTION_HEADS:-12}
STUDENT_INTERMEDIATE_SIZE=${STUDENT_INTERMEDIATE_SIZE:-}
L=${L:-12}
NUM_RELATION_HEADS=${NUM_RELATION_HEADS:-48}
RELATIONS=${RELATIONS:-}  # empty: minilmv2's default relations (minilmv2.relations.DEFAULT_RELATIONS)
RELATION_KERNEL=${RELATION_KERNEL:-auto}
STUDENT_INIT=${STUDENT_INIT:-random}
BATCH_SIZE=${BATCH_SIZE:-256}
GRAD_ACCUM=${GRAD_ACCUM:-1}
LR=${LR:-6e-4}
ADAM_EPS=${ADAM_EPS:-1e-6}
ADAM_BETA1=${ADAM_BETA1:-0.9}
ADAM_BETA2=${ADAM_BETA2:-0.999}
WEIGHT_DECAY=${WEIGHT_DECAY:-0.01}
MAX_STEPS=${MAX_STEPS:-400000}
WARMUP_STEPS=${WARMUP_STEPS:-4000}
SAVE_STEPS=${SAVE_STEPS:-50000}
LOGGING_STEPS=${LOGGING_STEPS:-1000}
EVAL_STEPS=${EVAL_STEPS:-$LOGGING_STEPS}
MAX_SEQ_LEN=${MAX_SEQ_LEN:-512}
SEED=${SEED:-42}
REPORT_TO=${REPORT_TO:-tensorboard}
RESUME=${RESUME:-}
STOP_TIMEOUT=${STOP_TIMEOUT:-600}
EXTRA_ARGS=${EXTRA_ARGS:-}
# HF_HUB_OFFLINE is left as the caller set it: a hub or http(s) corpus needs the network, local files do not
# (with HF_HUB_OFFLINE=1 and such a corpus config, the pre-check below refuses in one line).

if [ -z "${NPROC:-}" ]; then
    NPROC=$("$PYTHON" -c "import torch; print(max(torch.cuda.device_count(), 1))")
fi
if [ -z "${PRECISION:-}" ]; then
    PRECISION=$("$PYTHON" -c "import torch; print('bf16' if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else 'none')")
fi

DATA_ARGS=(data_params --train_config "$TRAIN_CONFIG" --max_seq_len "$MAX_SEQ_LEN")
[ -n "$VAL_CONFIG" ] && DATA_ARGS+=(--val_config "$VAL_CONFIG")
TRAINING_ARGS=(training_params
    --per_device_train_batch_size "$BATCH_SIZE" --gradient_accumulation_steps "$GRAD_ACCUM"
    --learning_rate "$LR" --adam_epsilon "$ADAM_EPS" --adam_beta1 "$ADAM_BETA1" --adam_beta2 "$ADAM_BETA2"
    --weight_decay "$WEIGHT_DECAY" --max_steps "$MAX_STEPS" --warmup_steps "$WARMUP_STEPS"
    --save_steps "$SAVE_STEPS" --logging_steps "$LOGGING_STEPS" --eval_steps "$EVAL_STEPS"
    --output_dir "$OUTPUT_DIR" --seed="$SEED" --report_to "$REPORT_TO")
[ "$PRECISION" != none ] && TRAINING_ARGS+=(--"$PRECISION")
[ -n "$RESUME" ] && TRAINING_ARGS+=(--resume_from_checkpoint "$RESUME")
# shellcheck disable=SC2206  # EXTRA_ARGS is deliberately split into words
[ -n "$EXTRA_ARGS" ] && TRAINING_ARGS+=($EXTRA_ARGS)
MODEL_ARGS=(model_params --input_model_dir "$TEACHER_DIR" --tokenizer_dir "$TOKENIZER_DIR"
    --student_hidden_size "$STUDENT_HIDDEN_SIZE" --student_num_layers "$STUDENT_NUM_LAYERS"
    --student_attention_heads "$STUDENT_ATTENTION_HEADS" --L "$L" --num_relation_heads "$NUM_RELATION_HEADS"
    --relation_kernel "$RELATION_KERNEL" --student_init "$STUDENT_INIT")
[ -n "$RELATIONS" ] && MODEL_ARGS+=(--minilm_relations "$RELATIONS")
[ -n "$STUDENT_INTERMEDIATE_SIZE" ] && MODEL_ARGS+=(--student_intermediate_size "$STUDENT_INTERMEDIATE_SIZE")
ARGS=("${DATA_ARGS[@]}" "${TRAINING_ARGS[@]}" "${MODEL_ARGS[@]}")

# Every value is checked once, in one process, before any worker starts (one line, exit 2, if wrong), the launch
# values too (MINILMV2_LAUNCH_*: the pre-check also checks a resumed checkpoint against the launch's size).
MINILMV2_LAUNCH_NPROC=$NPROC MINILMV2_LAUNCH_NNODES=${NNODES:-1} MINILMV2_LAUNCH_STOP_TIMEOUT=$STOP_TIMEOUT \
    MINILMV2_LAUNCH_PRECISION=$PRECISION MINILMV2_LAUNCH_MASTER_ADDR=${MASTER_ADDR:-} \
    MINILMV2_LAUNCH_MASTER_PORT=${MASTER_PORT:-29500} MINILMV2_LAUNCH_EXTRA_ARGS=$EXTRA_ARGS \
    "$PYTHON" -m minilmv2.run_distillation "${ARGS[@]}" --validate_only

if [ "${NNODES:-1}" -gt 1 ]; then
    LAUNCH=(--nnodes "$NNODES" --rdzv-id "${RDZV_ID:-minilmv2}" --rdzv-backend c10d
        --rdzv-endpoint "${MASTER_ADDR:?set MASTER_ADDR to the first node}:${MASTER_PORT:-29500}")
else
    LAUNCH=(--standalone)
fi
echo "launching $NPROC process(es) per node; outputs in $OUTPUT_DIR"
# minilmv2.launch is torchrun run in-process: on SIGTERM/SIGINT the workers save a checkpoint (within
# STOP_TIMEOUT seconds, on any torch release: torchrun's --shutdown-timeout where it has one) and it exits with
# 128 + signal, without torchrun's traceback; if it is killed outright (kill -9), its workers notice and exit too.
# Rank 0 locks OUTPUT_DIR, so a second run there is refused.
exec "$PYTHON" -m minilmv2.launch --stop-timeout "$STOP_TIMEOUT" "${LAUNCH[@]}" --nproc-per-node "$NPROC" \
    -m minilmv2.run_distillation "${ARGS[@]}"
