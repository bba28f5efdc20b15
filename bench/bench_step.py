"""One distillation step, minilmv2 against the first public reimplementation's algorithm, side by side.

    python bench/bench_step.py                 # CPU: bf16 step time at 16 x 128 and fp32 peak memory at 4 x 512
    python bench/bench_step.py --compile       # also time minilmv2 with the relation math under torch.compile
    python bench/bench_step.py --device cuda --teacher-shape 12x768 --student-shape 6x384 --batch 64 --seq 512 \
        --mem-batch 64 --mem-seq 512 --mem-dtype bf16 --largest    # GPU figures (bench/gpu_check.sh runs this)

Speed: forward + backward of the loss under autocast, the implementations alternating so all see the same
machine; median of --repeats after --warmup. minilmv2 runs once per relation kernel (--kernels: torch = the
chunked PyTorch path, compile = its chunk math under torch.compile, triton = the fused kernel). Relation loss
alone (--relation-only, default on CUDA): forward + backward of the Q-Q/K-K/V-V loss on random states of the
step's shapes, per kernel. Memory: each implementation in a fresh process, peak resident memory (CPU, VmHWM) or
peak allocated memory (CUDA) during one --mem-dtype step, minus what was held before the step. --largest (CUDA):
the largest batch (doubling from --batch) each implementation fits, with its step time and peak memory.
The teacher is the real pretrained 6 x 384 BERT from .assets/teacher when present, else random weights.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig

# The repository root (minilmv2 without an install, as on the GPU machine) and bench/ (the reference algorithm).
sys.path[:0] = [str(Path(__file__).resolve().parents[1]), str(Path(__file__).resolve().parent)]
from reference_algorithm import ReferenceMiniLM  # noqa: E402

from minilmv2 import MiniLM, build_student, student_config_from_teacher  # noqa: E402
from minilmv2.relations import relation_loss  # noqa: E402
from minilmv2.tools.assets import default_dest  # noqa: E402

RELATIONS = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}


def load_models(args, attn_implementation: str, seed: int = 0):
    """Teacher and student, identical weights on every call with the same seed."""
    torch.manual_seed(seed)
    assets = default_dest() / "teacher"
    layers, hidden = (int(x) for x in args.teacher_shape.split("x"))
    if args.teacher_shape == "6x384" and (assets / "config.json").exists():
        teacher = AutoModel.from_pretrained(assets, attn_implementation=attn_implementation)
    else:
        config = BertConfig(
            hidden_size=hidden,
            num_hidden_layers=layers,
            num_attention_heads=max(1, hidden // 64),
            intermediate_size=4 * hidden,
        )
        config._attn_implementation = attn_implementation
        teacher = AutoModel.from_config(config)
    s_layers, s_hidden = (int(x) for x in args.student_shape.split("x"))
    student_config = student_config_from_teacher(teacher.config, s_hidden, s_layers, args.student_heads)
    student_config._attn_implementation = attn_implementation
    student = build_student(student_config)
    return teacher.to(args.device), student.to(args.device)


def make_batch(args, batch: int, seq: int):
    """Rows right-padded to lengths spread evenly between seq/4 and seq."""
    generator = torch.Generator().manual_seed(1)
    lengths = torch.linspace(seq, max(1, seq // 4), batch).round().long()
    mask = (torch.arange(seq)[None, :] < lengths[:, None]).long()
    input_ids = torch.randint(1000, 30000, (batch, seq), generator=generator) * mask
    token_type_ids = torch.zeros_like(input_ids)
    return {
        k: v.to(args.device)
        for k, v in dict(input_ids=input_ids, attention_mask=mask, token_type_ids=token_type_ids).items()
    }


def build(args, which: str, compute_dtype, kernel: str = "torch"):
    teacher, student = load_models(args, "eager" if which == "reference" else "sdpa")
    layers = teacher.config.num_hidden_layers
    if which == "reference":
        return ReferenceMiniLM(
            teacher, student, L=layers, M=student.config.num_hidden_layers, relations=RELATIONS, A_r=args.relation_heads
        ).train()
    model = MiniLM(
        teacher=teacher, student=student, relations=RELATIONS, A_r=args.relation_heads, kernel=kernel
    ).train()
    if compute_dtype != torch.float32:
        model.cast_teacher(compute_dtype)  # a frozen teacher needs no fp32 master weights
    return model


def step(model, batch, dtype, device):
    with torch.autocast(device, dtype=dtype, enabled=dtype != torch.float32):
        loss = model(**batch)["loss"]
    loss.backward()
    for p in model.student.parameters():
        p.grad = None
    return loss.detach()


def sync(device):
    if device == "cuda":
        torch.cuda.synchronize()


def compute_dtype(name: str) -> torch.dtype:
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[name]


def variant_name(kernel: str) -> str:
    return f"minilmv2 {kernel}"


def time_steps(args) -> dict:
    dtype = compute_dtype(args.dtype)
    batch = make_batch(args, args.batch, args.seq)
    minilm = build(args, "minilmv2", dtype)
    variants = {"reference": (build(args, "reference", dtype), None)}
    variants.update({variant_name(kernel): (minilm, kernel) for kernel in args.kernels})
    times = {name: [] for name in variants}
    losses = {}
    for name, (model, kernel) in variants.items():  # warm-up (and compilation)
        if kernel:
            model.kernel = kernel  # one model for every kernel: the same weights, no second copy in memory
        for _ in range(args.warmup):
            losses[name] = step(model, batch, dtype, args.device).float().item()
    for _ in range(args.repeats):
        for name, (model, kernel) in variants.items():
            if kernel:
                model.kernel = kernel
            sync(args.device)
            start = time.perf_counter()
            step(model, batch, dtype, args.device)
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    results = {
        name: {"median_s": statistics.median(t), "min_s": min(t), "loss": losses[name]} for name, t in times.items()
    }
    if args.device == "cuda":  # the allocator counts exactly, so one process serves every variant
        for name, (model, kernel) in variants.items():
            if kernel:
                model.kernel = kernel
            results[name]["peak_extra_mib"] = cuda_peak_extra_mib(lambda model=model: step(model, batch, dtype, "cuda"))
    return results


def cuda_peak_extra_mib(run) -> float:
    """Peak CUDA memory allocated while `run()` runs, above what was allocated before it (MiB)."""
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    before = torch.cuda.memory_allocated()
    run()
    torch.cuda.synchronize()
    return (torch.cuda.max_memory_allocated() - before) / 2**20


def relation_flops(args, batch: int) -> float:
    """Matmul FLOPs of the relation loss (3 pairs): teacher and student logits, two student gradient matmuls."""
    _, t_hidden = (int(x) for x in args.teacher_shape.split("x"))
    _, s_hidden = (int(x) for x in args.student_shape.split("x"))
    per_pair = 2 * batch * args.seq * args.seq * (t_hidden + 3 * s_hidden)
    return len(RELATIONS) * per_pair


def time_relation_loss(args) -> dict:
    """Forward + backward of the relation loss alone, per kernel, on random states shaped like the step's."""
    dtype = compute_dtype(args.dtype)
    _, t_hidden = (int(x) for x in args.teacher_shape.split("x"))
    _, s_hidden = (int(x) for x in args.student_shape.split("x"))
    mask = make_batch(args, args.batch, args.seq)["attention_mask"].bool()
    generator = torch.Generator().manual_seed(2)

    def states(hidden):
        return {
            k: torch.randn(args.batch, args.seq, hidden, generator=generator).to(args.device, dtype) for k in (1, 2, 3)
        }

    teacher, student = states(t_hidden), {k: v.requires_grad_(True) for k, v in states(s_hidden).items()}
    results = {}
    for kernel in args.kernels:

        def run(kernel=kernel):
            loss, _ = relation_loss(teacher, student, mask, RELATIONS, args.relation_heads, kernel=kernel)
            loss.backward()
            for v in student.values():
                v.grad = None
            return loss.detach()

        for _ in range(args.warmup):
            loss = run()
        times = []
        for _ in range(args.repeats):
            sync(args.device)
            start = time.perf_counter()
            run()
            sync(args.device)
            times.append(time.perf_counter() - start)
        peak = cuda_peak_extra_mib(run) if args.device == "cuda" else None
        results[kernel] = {"median_s": statistics.median(times), "loss": loss.float().item(), "peak_extra_mib": peak}
    return results


def model_flops(args) -> float:
    """Useful FLOPs of one distillation step (what MiniLMv2 needs, whichever implementation runs it).

    Matmuls only (2 FLOPs per multiply-add), with padding counted as the batch is shaped (B x S):
    teacher forward up to layer L's Q/K/V; student forward up to layer M's Q/K/V, and backward at twice its
    forward; per relation pair, teacher and student relation logits plus the two student gradient matmuls.
    """
    tokens = args.batch * args.seq
    t_layers, t_hidden = (int(x) for x in args.teacher_shape.split("x"))
    s_layers, s_hidden = (int(x) for x in args.student_shape.split("x"))

    def layer(hidden: int) -> float:  # Q/K/V/output projections, FFN (4 x hidden), attention scores and mix
        return 2 * tokens * (4 * hidden**2 + 8 * hidden**2) + 4 * tokens * args.seq * hidden

    def qkv(hidden: int) -> float:
        return 2 * tokens * 3 * hidden**2

    teacher = (t_layers - 1) * layer(t_hidden) + qkv(t_hidden)
    student = 3 * ((s_layers - 1) * layer(s_hidden) + qkv(s_hidden))
    relations = 3 * (2 * tokens * args.seq * t_hidden + 3 * 2 * tokens * args.seq * s_hidden)
    return teacher + student + relations


def _current_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def _peak_rss_kib() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise RuntimeError("no VmHWM")


def memory_child(args) -> dict:
    """Runs in a fresh process: peak extra memory of one --mem-dtype step of `args.which` (and step time, with
    --child-repeats). A CUDA out-of-memory error is reported as {"oom": true}."""
    batch = make_batch(args, args.mem_batch, args.mem_seq)
    dtype = compute_dtype(args.mem_dtype)
    model = build(args, args.which, dtype, args.child_kernel)
    if args.device == "cuda":
        try:
            for _ in range(args.warmup if args.child_repeats else 0):
                step(model, batch, dtype, "cuda")
            times = []
            for _ in range(args.child_repeats):
                torch.cuda.synchronize()
                start = time.perf_counter()
                step(model, batch, dtype, "cuda")
                torch.cuda.synchronize()
                times.append(time.perf_counter() - start)
            peak = cuda_peak_extra_mib(lambda: step(model, batch, dtype, "cuda"))
        except torch.OutOfMemoryError:
            return {"oom": True}
        result = {"peak_extra_mib": peak}
        if times:
            result["median_s"] = statistics.median(times)
        return result
    before = _current_rss_kib()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step(model, batch, dtype, "cpu")
    return {"peak_extra_mib": (_peak_rss_kib() - before) / 1024}


def implementations(args) -> list[tuple[str, str, str]]:
    """(row name, which, kernel) of every implementation measured."""
    return [("reference", "reference", "torch")] + [(variant_name(k), "minilmv2", k) for k in args.kernels]


def run_child(args, which: str, kernel: str, batch: int, seq: int, repeats: int = 0) -> dict:
    command = [
        sys.executable,
        __file__,
        *sys.argv[1:],
        "--memory-child",
        which,
        "--child-kernel",
        kernel,
        "--mem-batch",
        str(batch),
        "--mem-seq",
        str(seq),
        "--child-repeats",
        str(repeats),
    ]
    completed = subprocess.run(command, capture_output=True, text=True)
    if completed.returncode != 0:
        tail = completed.stderr.strip().splitlines()[-1:] or ["(no output)"]
        return {"error": tail[0]}
    return json.loads(completed.stdout.strip().splitlines()[-1])


def measure_memory(args) -> dict:
    return {
        name: run_child(args, which, kernel, args.mem_batch, args.mem_seq)
        for name, which, kernel in implementations(args)
    }


def largest_batches(args) -> dict:
    """Per implementation: the largest batch (doubling from --batch up to --max-batch) whose step runs."""
    results = {}
    for name, which, kernel in implementations(args):
        best = None
        batch = args.batch
        while batch <= args.max_batch:
            row = run_child(args, which, kernel, batch, args.seq, repeats=args.largest_repeats)
            print(f"  {name} batch {batch}: {row}", flush=True)
            if "peak_extra_mib" not in row:
                break
            best = {"batch": batch, **row}
            batch *= 2
        results[name] = best
    return results


def default_peaks(args) -> list[float]:
    """Dense bf16/fp16 peaks of known GPUs, for MFU: H100 / H200 SXM measured (an 8192^3 bf16 matmul on random
    data ran at 788-798 TFLOP/s on this project's GPU machines) and the data-sheet figure (989.4 TFLOP/s)."""
    if args.device != "cuda" or args.dtype == "fp32":
        return []
    name = torch.cuda.get_device_name()
    return [790.0, 989.4] if ("H100" in name or "H200" in name) else []


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--teacher-shape", default="6x384", help="layers x hidden (12 heads at 384, 64-wide heads otherwise)"
    )
    parser.add_argument("--student-shape", default="3x384")
    parser.add_argument("--student-heads", type=int, default=12, help="student attention heads")
    parser.add_argument("--relation-heads", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--mem-batch", type=int, default=4)
    parser.add_argument("--mem-seq", type=int, default=512)
    parser.add_argument("--mem-dtype", default="fp32", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd relation math")
    parser.add_argument(
        "--kernels",
        default=None,
        help="comma-separated relation kernels for minilmv2 (torch, compile, triton); "
        "default: torch (+compile with --compile) on CPU, torch,compile,triton on CUDA",
    )
    parser.add_argument(
        "--relation-only",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the relation loss alone per kernel (default: on CUDA)",
    )
    parser.add_argument("--largest", action="store_true", help="CUDA: largest batch each implementation fits")
    parser.add_argument("--max-batch", type=int, default=1024)
    parser.add_argument("--largest-repeats", type=int, default=3)
    parser.add_argument(
        "--peak-tflops",
        default=None,
        help="comma-separated dense peaks of the device for --dtype, one MFU column each "
        "(default on an H100/H200 in bf16/fp16: 790 measured, 989.4 data sheet)",
    )
    parser.add_argument("--skip", choices=["speed", "memory"], action="append", default=[], help="repeatable")
    parser.add_argument("--memory-child", choices=["reference", "minilmv2"], dest="which", help=argparse.SUPPRESS)
    parser.add_argument("--child-kernel", default="torch", help=argparse.SUPPRESS)
    parser.add_argument("--child-repeats", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.kernels is None:
        args.kernels = "torch,compile,triton" if args.device == "cuda" else "torch,compile" if args.compile else "torch"
    args.kernels = args.kernels.split(",")
    if args.compile and "compile" not in args.kernels:
        args.kernels.append("compile")
    for kernel in args.kernels:
        if kernel not in ("torch", "compile", "triton"):
            parser.error(f"--kernels: {kernel!r} is not one of torch, compile, triton")
    if args.relation_only is None:
        args.relation_only = args.device == "cuda"
    if args.which:
        print(json.dumps(memory_child(args)))
        return
    args.peaks = default_peaks(args) if args.peak_tflops is None else [float(x) for x in args.peak_tflops.split(",")]

    print(f"command: python {' '.join(sys.argv)}")
    device_name = torch.cuda.get_device_name() if args.device == "cuda" else "cpu"
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device} ({device_name})")
    print(
        f"teacher {args.teacher_shape}, student {args.student_shape}, A_r {args.relation_heads}, relations Q-Q K-K V-V"
    )
    mfu_header = "".join(f"{f'MFU@{peak:g}':>10}" for peak in args.peaks)
    if args.peaks:
        print(f"MFU against dense peaks of {', '.join(f'{peak:g}' for peak in args.peaks)} TFLOP/s")

    def rate(flops: float, seconds: float) -> str:
        achieved = flops / seconds / 1e12
        return f"{achieved:>10.2f}" + "".join(f"{100 * achieved / peak:>9.1f}%" for peak in args.peaks)

    if "speed" not in args.skip:
        timing = time_steps(args)
        print(f"\nstep time, {args.dtype} autocast, batch {args.batch} x {args.seq} (rows padded to varying lengths)")
        base = timing["reference"]["median_s"]
        flops = model_flops(args)
        base_peak = timing["reference"].get("peak_extra_mib")
        peak_header = f"{'peak MiB':>10}{'vs ref':>8}" if base_peak else ""
        print(
            f"{'implementation':<22}{'median s':>10}{'min s':>10}{'speed-up':>10}{'tokens/s':>12}{'TFLOP/s':>10}"
            f"{mfu_header}{peak_header}{'loss':>10}"
        )
        for name, row in timing.items():
            peak = f"{row['peak_extra_mib']:>10.0f}{row['peak_extra_mib'] / base_peak:>7.2f}x" if base_peak else ""
            print(
                f"{name:<22}{row['median_s']:>10.3f}{row['min_s']:>10.3f}{base / row['median_s']:>9.2f}x"
                f"{args.batch * args.seq / row['median_s']:>12.0f}{rate(flops, row['median_s'])}{peak}"
                f"{row['loss']:>10.5f}"
            )
        print(f"(model FLOPs per step: {flops / 1e12:.3f} TFLOP, matmuls only)")
    if args.relation_only:
        relation = time_relation_loss(args)
        print(
            f"\nrelation loss alone (3 pairs, forward + backward), {args.dtype} states, batch {args.batch} x {args.seq}"
        )
        base = relation.get("torch", next(iter(relation.values())))["median_s"]
        print(f"{'kernel':<22}{'median s':>10}{'vs torch':>10}{'TFLOP/s':>10}{mfu_header}{'peak MiB':>10}{'loss':>10}")
        flops = relation_flops(args, args.batch)
        for kernel, row in relation.items():
            peak = "-" if row["peak_extra_mib"] is None else f"{row['peak_extra_mib']:.0f}"
            print(
                f"{kernel:<22}{row['median_s']:>10.4f}{base / row['median_s']:>9.2f}x{rate(flops, row['median_s'])}"
                f"{peak:>10}{row['loss']:>10.5f}"
            )
    if "memory" not in args.skip:
        memory = measure_memory(args)
        print(f"\npeak extra memory of one {args.mem_dtype} step, batch {args.mem_batch} x {args.mem_seq}")
        base = memory["reference"].get("peak_extra_mib", math.nan)
        print(f"{'implementation':<22}{'MiB':>10}{'ratio':>10}")
        for name, row in memory.items():
            if "peak_extra_mib" not in row:
                print(f"{name:<22}{'failed':>10}  {row}")
                continue
            print(f"{name:<22}{row['peak_extra_mib']:>10.0f}{row['peak_extra_mib'] / base:>9.2f}x")
    if args.largest and args.device == "cuda":
        print(
            f"\nlargest batch that fits (doubling from {args.batch}, at most {args.max_batch}), {args.mem_dtype} step"
        )
        largest = largest_batches(args)
        print(
            f"{'implementation':<22}{'batch':>8}{'median s':>10}{'tokens/s':>12}{'TFLOP/s':>10}"
            f"{mfu_header}{'peak MiB':>10}"
        )
        for name, row in largest.items():
            if row is None:
                print(f"{name:<22}{'none':>8}")
                continue
            flops = model_flops(argparse.Namespace(**{**vars(args), "batch": row["batch"]}))
            print(
                f"{name:<22}{row['batch']:>8}{row['median_s']:>10.3f}{row['batch'] * args.seq / row['median_s']:>12.0f}"
                f"{rate(flops, row['median_s'])}{row['peak_extra_mib']:>10.0f}"
            )


if __name__ == "__main__":
    main()
