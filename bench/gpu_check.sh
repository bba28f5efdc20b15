#!/usr/bin/env bash
# The GPU checks of issue 11 in one go, for a session that has a CUDA GPU (everything else runs without one):
#   1. tests   exactness of the relation loss on cuda: the Triton kernel ("auto" there) and the chunked PyTorch
#              path against the float64 per-sample reference, the kernel against the PyTorch path (pairs, padding,
#              dtypes, head sizes), the distiller with each kernel, and the benchmark's baseline;
#   2. bench   bench/bench_step.py on a 12 x 768 BERT-base-shaped random teacher -> 6 x 384 student, A_r 48, bf16,
#              S = 512, batch 64: step time, TFLOP/s, MFU and peak memory of the reference algorithm and of minilmv2
#              with each relation kernel; the relation loss alone per kernel; the largest batch each fits;
#   3. e2e     `bash run.sh` end to end with the packaged 6 x 384 teacher (one process, nccl, bf16), once per
#              relation kernel, printing tokens/s.
#
#   bash bench/gpu_check.sh              # all three (about 10 minutes on an H100/H200)
#   bash bench/gpu_check.sh tests e2e    # some of them
#
# Logs go to $GPU_CHECK_OUT (default ./gpu_check_out); a summary of the figures is printed at the end.
# Needs the assets (`make assets`, or MINILMV2_ASSETS pointing at them) and triton; works offline.
set -uo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
cd "$HERE"
PYTHON=${PYTHON:-$( [ -x .venv/bin/python ] && echo .venv/bin/python || echo python )}
OUT=${GPU_CHECK_OUT:-./gpu_check_out}
ASSETS=${MINILMV2_ASSETS:-$HERE/.assets}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 MINILMV2_ASSETS="$ASSETS"
PHASES=("$@")
[ ${#PHASES[@]} -eq 0 ] && PHASES=(tests bench e2e)
mkdir -p "$OUT"
failures=0

"$PYTHON" - <<'EOF' | tee "$OUT/device.txt"
import torch, transformers
import importlib.util
triton = importlib.util.find_spec("triton") and __import__("triton").__version__
assert torch.cuda.is_available(), "no CUDA device: this script is for a GPU machine"
print(f"device: {torch.cuda.get_device_name()} ({torch.cuda.get_device_properties(0).total_memory / 2**30:.0f} GiB)")
print(f"torch {torch.__version__}, transformers {transformers.__version__}, triton {triton}")
EOF
[ "${PIPESTATUS[0]}" -eq 0 ] || exit 2

for phase in "${PHASES[@]}"; do
    case "$phase" in
    tests)
        echo "== exactness tests on cuda"
        MINILMV2_TEST_DEVICE=cuda "$PYTHON" -m pytest -q -p no:cacheprovider tests/unit/test_relation_kernel.py \
            tests/unit/test_relations.py tests/unit/test_bench_reference.py 2>&1 | tee "$OUT/tests.log" | tail -5
        [ "${PIPESTATUS[0]}" -eq 0 ] || failures=$((failures + 1))
        ;;
    bench)
        echo "== bench_step on cuda"
        "$PYTHON" bench/bench_step.py --device cuda --teacher-shape 12x768 --student-shape 6x384 \
            --relation-heads 48 --dtype bf16 --batch 64 --seq 512 --mem-dtype bf16 --mem-batch 64 --mem-seq 512 \
            --warmup 2 --repeats 5 --largest --max-batch 512 2>&1 | grep -v "Loading weights" | tee "$OUT/bench.log"
        [ "${PIPESTATUS[0]}" -eq 0 ] || failures=$((failures + 1))
        ;;
    e2e)
        for kernel in torch compile triton; do
            echo "== run.sh end to end, RELATION_KERNEL=$kernel"
            rm -rf "$OUT/run-$kernel"
            TEACHER_DIR="$ASSETS/teacher" TRAIN_CONFIG="$ASSETS/corpus/train_config.json" L=6 NUM_RELATION_HEADS=48 \
                STUDENT_NUM_LAYERS=6 STUDENT_HIDDEN_SIZE=384 STUDENT_ATTENTION_HEADS=12 NPROC=1 PRECISION=bf16 \
                BATCH_SIZE=${E2E_BATCH:-64} MAX_SEQ_LEN=512 MAX_STEPS=${E2E_STEPS:-60} WARMUP_STEPS=6 \
                LOGGING_STEPS=20 SAVE_STEPS=100000 REPORT_TO=none RELATION_KERNEL=$kernel \
                OUTPUT_DIR="$OUT/run-$kernel" bash run.sh > "$OUT/run-$kernel.log" 2>&1
            status=$?
            grep -E "throughput|Error|error:" "$OUT/run-$kernel.log" | tail -3
            [ "$status" -eq 0 ] || failures=$((failures + 1))
        done
        ;;
    *)
        echo "unknown phase $phase (use tests, bench, e2e)" >&2
        exit 2
        ;;
    esac
done

echo "== summary ($OUT)"
cat "$OUT/device.txt"
[ -f "$OUT/tests.log" ] && tail -1 "$OUT/tests.log"
[ -f "$OUT/bench.log" ] && sed -n '/^step time/,$p' "$OUT/bench.log"
for kernel in torch compile triton; do
    [ -f "$OUT/run-$kernel.log" ] && echo "run.sh RELATION_KERNEL=$kernel: $(grep throughput "$OUT/run-$kernel.log" | tail -1)"
done
echo "failed phases/runs: $failures"
exit $((failures > 0))
