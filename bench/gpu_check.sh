#!/usr/bin/env bash
# The GPU check: exactness on cuda, the relation kernel and the whole step against the reference algorithm, host
# syncs per training step, and run.sh end to end, with the figures the README's GPU table needs.
#
#   bash bench/gpu_check.sh RESULTS_DIR [PHASE ...]              # on a CUDA GPU (about 5 minutes on an H100/H200)
#   bash bench/gpu_check.sh --rehearse RESULTS_DIR [PHASE ...]   # every phase on the CPU with tiny shapes (tests)
#
# Phases, in this order when none is named (each also runs alone):
#   tests     the exactness tests on cuda: the Triton kernel and the chunked PyTorch path against the float64
#             per-sample reference (pairs, padding sides, dtypes, head sizes), the distiller with each kernel,
#             and the benchmark's reference algorithm
#   relation  the relation loss alone (3 pairs, forward + backward) per kernel: 64 x 512 states of a 12 x 768
#             teacher and a 6 x 384 student, A_r 48, bf16 (bench/bench_step.py)
#   step      one distillation step, 12 x 768 teacher (random weights from a seed) -> 6 x 384, A_r 48, bf16
#             autocast, batch 64 x 512: time, tokens/s, TFLOP/s, MFU (790 measured / 989.4 data-sheet peak) and
#             peak memory of the reference algorithm and of minilmv2 with each relation kernel
#   syncs     synchronizing CUDA calls per training step of the real loop (bench/count_syncs.py)
#   e2e       `bash run.sh` end to end with the packaged 6 x 384 teacher (bf16), with the PyTorch path and the
#             Triton kernel ($E2E_KERNELS to change)
#   largest   (only when named) the largest batch each implementation fits, doubling from 64
#
# RESULTS_DIR receives at most 8 files, written as each phase runs (a command stopped at a time limit still
# leaves them): summary.txt and one .log per phase. Run outputs go to $GPU_CHECK_WORK (default: a fresh
# temporary folder). The teacher and corpus come from $MINILMV2_ASSETS, else ./.gpu-bundle (`make gpu-bundle`,
# the folder sent to a GPU machine), else ./.assets. Works offline, without an install of the package.
set -uo pipefail
USAGE="usage: bash bench/gpu_check.sh [--rehearse] RESULTS_DIR [tests|relation|step|syncs|e2e|largest ...]"
REPO=$(cd "$(dirname "$0")/.." && pwd)

REHEARSE=0
if [ "${1:-}" = --rehearse ]; then
    REHEARSE=1
    shift
fi
if [ $# -lt 1 ] || [[ "$1" == -* ]]; then
    echo "$USAGE" >&2
    exit 2
fi
# Paths the caller gives are the caller's: made absolute before the script moves to the repository root.
RESULTS=$(realpath -ms -- "$1")
shift
[ -n "${GPU_CHECK_WORK:-}" ] && GPU_CHECK_WORK=$(realpath -ms -- "$GPU_CHECK_WORK")
[ -n "${MINILMV2_ASSETS:-}" ] && MINILMV2_ASSETS=$(realpath -ms -- "$MINILMV2_ASSETS")
[[ "${PYTHON:-}" == */* ]] && PYTHON=$(realpath -ms -- "$PYTHON")
cd "$REPO" || exit 2
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(tests relation step syncs e2e)
for phase in "${PHASES[@]}"; do
    case "$phase" in
    tests | relation | step | syncs | e2e | largest) ;;
    *)
        echo "error: unknown phase $phase; $USAGE" >&2
        exit 2
        ;;
    esac
done

# The project's .venv where there is one, else python3 (the GPU image has no plain `python`), else python.
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || command -v python3 || echo python )}
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
if [ -z "${MINILMV2_ASSETS:-}" ]; then
    MINILMV2_ASSETS=$REPO/.assets
    [ -f "$REPO/.gpu-bundle/teacher/config.json" ] && MINILMV2_ASSETS=$REPO/.gpu-bundle
fi
export MINILMV2_ASSETS
TEACHER=$MINILMV2_ASSETS/teacher
CORPUS=$MINILMV2_ASSETS/corpus/train_config.json

if [ "$REHEARSE" = 1 ]; then
    DEVICE=cpu
    export CUDA_VISIBLE_DEVICES=  # a CPU run, also on a machine with a GPU
    export TRITON_INTERPRET=1     # the Triton kernel through its interpreter on CPU tensors
    KERNELS=torch,triton       # torch.compile's CPU code would tell nothing about its CUDA code, and is slow
    E2E_KERNELS=(torch)        # the interpreted kernel takes 20 s a step at the e2e shapes; phases above run it
    BENCH_SHAPES=(--teacher-shape 2x128 --student-shape 2x64 --student-heads 4 --relation-heads 4 --dtype bf16
        --batch 2 --seq 32 --warmup 1 --repeats 2)
    TESTS_FILTER=(-k per_sample_reference_directly)
    STUDENT=(2 384 12) BATCH=2 SEQ=64 PRECISION=none E2E_STEPS=3 SYNC_STEPS=(2 3)
elif ! "$PYTHON" -c "import torch" 2> /dev/null; then
    echo "error: $PYTHON cannot import torch; set PYTHON to an interpreter that has it" >&2
    exit 2
elif ! "$PYTHON" -c "import torch, sys; sys.exit(not torch.cuda.is_available())" 2> /dev/null; then
    echo "error: no CUDA device here; bash bench/gpu_check.sh --rehearse RESULTS_DIR rehearses every phase on the CPU" >&2
    exit 2
else
    DEVICE=cuda
    unset TRITON_INTERPRET  # compiled kernels: an inherited interpreter switch would time the interpreter
    KERNELS=torch,compile,triton
    # run.sh end to end with the PyTorch path and the Triton kernel; torch.compile's end-to-end run adds a minute
    # of compilation for a figure the step phase already gives (E2E_KERNELS="torch compile triton" to add it).
    read -r -a E2E_KERNELS <<< "${E2E_KERNELS:-torch triton}"
    BENCH_SHAPES=(--teacher-shape 12x768 --student-shape 6x384 --student-heads 12 --relation-heads 48 --dtype bf16
        --batch 64 --seq 512 --warmup 2 --repeats 5)
    TESTS_FILTER=()
    STUDENT=(6 384 12) BATCH=64 SEQ=512 PRECISION=bf16 E2E_STEPS=${E2E_STEPS:-30} SYNC_STEPS=(3 6)
fi
for phase in "${PHASES[@]}"; do
    if [[ "$phase" == syncs || "$phase" == e2e ]] && { [ ! -f "$TEACHER/config.json" ] || [ ! -f "$CORPUS" ]; }; then
        echo "error: no teacher or corpus under MINILMV2_ASSETS=$MINILMV2_ASSETS; run \`make gpu-bundle\` (or \`make assets\`)" >&2
        exit 2
    fi
done

mkdir -p "$RESULTS" || exit 2
WORK=${GPU_CHECK_WORK:-$(mktemp -d "${TMPDIR:-/tmp}/gpu_check.XXXXXX")}
mkdir -p "$WORK" || exit 2
SUMMARY=$RESULTS/summary.txt
failures=0

{
    echo "bash bench/gpu_check.sh $([ "$REHEARSE" = 1 ] && echo "--rehearse ")$RESULTS ${PHASES[*]}"
    echo "date: $(date -u '+%Y-%m-%d %H:%M:%S UTC'), host $(hostname)"
    if git rev-parse --git-dir > /dev/null 2>&1; then
        echo "code: commit $(git describe --always --dirty)"
    else  # a GPU machine gets the working tree without .git; the bundle says what it was made from
        echo "code: $(cat "$MINILMV2_ASSETS/code.txt" 2> /dev/null || echo unknown) (no git here: from the bundle)"
    fi
    echo "assets: $MINILMV2_ASSETS; run outputs: $WORK"
    "$PYTHON" - "$DEVICE" << 'EOF'
import importlib.metadata as metadata, importlib.util, platform, sys
import torch
device = sys.argv[1]
if device == "cuda":
    props = torch.cuda.get_device_properties(0)
    print(f"device: {torch.cuda.get_device_name()} ({props.total_memory / 2**30:.0f} GiB, {props.multi_processor_count} SMs)")
else:
    print(f"device: cpu ({platform.processor() or platform.machine()}, {torch.get_num_threads()} threads)")
versions = []
for name in ("torch", "transformers", "triton", "accelerate", "tokenizers", "huggingface_hub", "datasets", "evaluate"):
    try:  # what can be imported, in the version installed
        versions.append(f"{name} {metadata.version(name)}" if importlib.util.find_spec(name) else f"{name} absent")
    except (metadata.PackageNotFoundError, ValueError):
        versions.append(f"{name} absent")
print(f"python {platform.python_version()}, " + ", ".join(versions))
EOF
    echo "C compiler (Triton builds its launcher with it): $(cc --version 2> /dev/null | head -n 1 || echo none)"
} 2>&1 | tee -a "$SUMMARY"

# run_phase NAME LOG COMMAND...: the command's output into RESULTS/LOG as it goes; status and time to the summary.
run_phase() {
    local name=$1 log=$RESULTS/$2
    shift 2
    echo "== $name ($(date -u +%H:%M:%S))"
    local start=$SECONDS
    "$@" > "$log" 2>&1
    local status=$?
    local verdict=ok
    [ "$status" -eq 0 ] || { verdict="FAILED (status $status)"; failures=$((failures + 1)); }
    echo "== $name: $verdict in $((SECONDS - start)) s" | tee -a "$SUMMARY"
    return "$status"
}

bench_step() {
    "$PYTHON" bench/bench_step.py --device "$DEVICE" "${BENCH_SHAPES[@]}" --kernels "$KERNELS" "$@"
}

# run_distillation's arguments for the syncs phase: the e2e phase's values (run.sh's), no logging or saving step.
SYNC_ARGS=(--train_config "$CORPUS" --max_seq_len "$SEQ" --per_device_train_batch_size "$BATCH"
    --input_model_dir "$TEACHER" --L 6 --num_relation_heads 48 --student_num_layers "${STUDENT[0]}"
    --student_hidden_size "${STUDENT[1]}" --student_attention_heads "${STUDENT[2]}" --logging_steps 1000
    --save_steps 1000 --report_to none --warmup_steps 1)
[ "$PRECISION" = none ] || SYNC_ARGS+=("--$PRECISION")

e2e() {
    local kernel status=0
    for kernel in "${E2E_KERNELS[@]}"; do
        echo "== RELATION_KERNEL=$kernel"
        rm -rf "$WORK/run-$kernel"
        TEACHER_DIR="$TEACHER" TRAIN_CONFIG="$CORPUS" L=6 NUM_RELATION_HEADS=48 STUDENT_NUM_LAYERS="${STUDENT[0]}" \
            STUDENT_HIDDEN_SIZE="${STUDENT[1]}" STUDENT_ATTENTION_HEADS="${STUDENT[2]}" NPROC=1 PRECISION=$PRECISION \
            BATCH_SIZE=$BATCH MAX_SEQ_LEN=$SEQ MAX_STEPS=$E2E_STEPS WARMUP_STEPS=2 LOGGING_STEPS=$(((E2E_STEPS + 1) / 2)) \
            SAVE_STEPS=100000 REPORT_TO=none RELATION_KERNEL=$kernel PYTHON="$PYTHON" OUTPUT_DIR="$WORK/run-$kernel" \
            bash run.sh 2>&1 | tee "$WORK/run-$kernel.log"
        local code=$?
        # The whole run's rate counts start-up and compilation; the last logging interval is the steady state.
        local steady
        steady=$(grep -o "'tokens_per_s': '\?[0-9.]*" "$WORK/run-$kernel.log" | tail -n 1 | grep -o "[0-9.]*$")
        echo "== RELATION_KERNEL=$kernel: exit status $code; last logging interval ${steady:-?} tokens/s"
        [ "$code" -eq 0 ] || status=$code
    done
    return "$status"
}

for phase in "${PHASES[@]}"; do
    case "$phase" in
    tests)
        run_phase tests tests.log env MINILMV2_TEST_DEVICE=$DEVICE "$PYTHON" -m pytest -q -p no:cacheprovider \
            tests/unit/test_relation_kernel.py tests/unit/test_relations.py tests/unit/test_bench_reference.py \
            "${TESTS_FILTER[@]}"
        tail -1 "$RESULTS/tests.log" | tee -a "$SUMMARY"
        ;;
    relation)
        run_phase relation relation.log bench_step --skip speed --skip memory --relation-only
        sed -n '/^relation loss alone/,$p' "$RESULTS/relation.log" | tee -a "$SUMMARY"
        ;;
    step)
        run_phase step step.log bench_step --skip memory --no-relation-only
        sed -n '/^MFU against/p;/^step time/,/^(model FLOPs/p' "$RESULTS/step.log" | tee -a "$SUMMARY"
        ;;
    syncs)
        rm -rf "$WORK/syncs"
        run_phase syncs syncs.log "$PYTHON" bench/count_syncs.py --output_dir "$WORK/syncs" \
            --steps "${SYNC_STEPS[@]}" -- "${SYNC_ARGS[@]}"
        sed -n '/ in [0-9]* steps, /,$p' "$RESULTS/syncs.log" | tee -a "$SUMMARY"
        ;;
    e2e)
        run_phase e2e e2e.log e2e
        grep -E "^== RELATION_KERNEL=.*: exit|^throughput" "$RESULTS/e2e.log" | tee -a "$SUMMARY"
        ;;
    largest)
        run_phase largest largest.log bench_step --skip speed --skip memory --no-relation-only --largest \
            --mem-dtype bf16 --max-batch 512 --largest-repeats 2
        sed -n '/^largest batch/,$p' "$RESULTS/largest.log" | tee -a "$SUMMARY"
        ;;
    esac
done

echo "failed phases: $failures" | tee -a "$SUMMARY"
exit $((failures > 0))
