"""One distillation step, minilmv2 against the first public reimplementation's algorithm, side by side.

    python bench/bench_step.py                 # CPU: bf16 step time at 16 x 128 and fp32 peak memory at 4 x 512
    python bench/bench_step.py --compile       # also time minilmv2 with the relation math under torch.compile
    python bench/bench_step.py --device cuda --teacher-shape 12x768 --batch 64 --seq 512   # GPU figures

Speed: forward + backward of the loss under autocast, the two implementations alternating so both see the same
machine; median of --repeats after --warmup. Memory: each implementation in a fresh process, peak resident
memory (CPU, VmHWM) or peak allocated memory (CUDA) during one fp32 step, minus what was held before the step.
The teacher is the real pretrained 6 x 384 BERT from .assets/teacher when present, else random weights.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
from transformers import AutoModel, BertConfig

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reference_algorithm import ReferenceMiniLM  # noqa: E402

from minilmv2 import MiniLM, build_student, student_config_from_teacher  # noqa: E402
from minilmv2.assets import default_dest  # noqa: E402
from minilmv2.relations import use_compiled_chunks  # noqa: E402

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
            num_attention_heads=hidden // 64,
            intermediate_size=4 * hidden,
        )
        config._attn_implementation = attn_implementation
        teacher = AutoModel.from_config(config)
    s_layers, s_hidden = (int(x) for x in args.student_shape.split("x"))
    student_config = student_config_from_teacher(teacher.config, s_hidden, s_layers, 12)
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


def build(args, which: str, compute_dtype):
    teacher, student = load_models(args, "eager" if which == "reference" else "sdpa")
    layers = teacher.config.num_hidden_layers
    if which == "reference":
        return ReferenceMiniLM(
            teacher, student, L=layers, M=student.config.num_hidden_layers, relations=RELATIONS, A_r=args.relation_heads
        ).train()
    model = MiniLM(teacher=teacher, student=student, relations=RELATIONS, A_r=args.relation_heads).train()
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


def time_steps(args) -> dict:
    dtype = torch.bfloat16 if args.dtype == "bf16" else torch.float16 if args.dtype == "fp16" else torch.float32
    batch = make_batch(args, args.batch, args.seq)
    variants = {"reference": build(args, "reference", dtype), "minilmv2": build(args, "minilmv2", dtype)}
    if args.compile:
        variants["minilmv2 + compile"] = variants["minilmv2"]
    times = {name: [] for name in variants}
    losses = {}
    for name, model in variants.items():  # warm-up (and compilation)
        use_compiled_chunks(name.endswith("compile"))
        for _ in range(args.warmup):
            losses[name] = step(model, batch, dtype, args.device).float().item()
    for _ in range(args.repeats):
        for name, model in variants.items():
            use_compiled_chunks(name.endswith("compile"))
            sync(args.device)
            start = time.perf_counter()
            step(model, batch, dtype, args.device)
            sync(args.device)
            times[name].append(time.perf_counter() - start)
    use_compiled_chunks(False)
    return {
        name: {"median_s": statistics.median(t), "min_s": min(t), "loss": losses[name]} for name, t in times.items()
    }


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
    """Runs in a fresh process: peak extra memory of one fp32 step of `args.which`."""
    batch = make_batch(args, args.mem_batch, args.mem_seq)
    model = build(args, args.which, torch.float32)
    if args.device == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step(model, batch, torch.float32, "cuda")
        torch.cuda.synchronize()
        return {"peak_extra_mib": (torch.cuda.max_memory_allocated() - before) / 2**20}
    before = _current_rss_kib()
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS
    step(model, batch, torch.float32, "cpu")
    return {"peak_extra_mib": (_peak_rss_kib() - before) / 1024}


def measure_memory(args) -> dict:
    results = {}
    for which in ("reference", "minilmv2"):
        command = [sys.executable, __file__, "--memory-child", which, *sys.argv[1:]]
        output = subprocess.run(command, check=True, capture_output=True, text=True).stdout
        results[which] = json.loads(output.strip().splitlines()[-1])
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    parser.add_argument(
        "--teacher-shape", default="6x384", help="layers x hidden (12 heads at 384, 64-wide heads otherwise)"
    )
    parser.add_argument("--student-shape", default="3x384")
    parser.add_argument("--relation-heads", type=int, default=48)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    parser.add_argument("--mem-batch", type=int, default=4)
    parser.add_argument("--mem-seq", type=int, default=512)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    parser.add_argument("--compile", action="store_true", help="also time the torch.compile'd relation math")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="the device's dense peak for --dtype, for MFU (H100 bf16: 989)"
    )
    parser.add_argument("--skip", choices=["speed", "memory"], default=None)
    parser.add_argument("--memory-child", choices=["reference", "minilmv2"], dest="which", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.which:
        print(json.dumps(memory_child(args)))
        return

    print(f"command: python {' '.join(sys.argv)}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}")
    print(
        f"teacher {args.teacher_shape}, student {args.student_shape}, A_r {args.relation_heads}, relations Q-Q K-K V-V"
    )
    if args.skip != "speed":
        timing = time_steps(args)
        print(f"\nstep time, {args.dtype} autocast, batch {args.batch} x {args.seq} (rows padded to varying lengths)")
        base = timing["reference"]["median_s"]
        flops = model_flops(args)
        mfu_header = f"{'MFU':>8}" if args.peak_tflops else ""
        print(
            f"{'implementation':<22}{'median s':>10}{'min s':>10}{'speed-up':>10}{'TFLOP/s':>10}"
            f"{mfu_header}{'loss':>10}"
        )
        for name, row in timing.items():
            achieved = flops / row["median_s"] / 1e12
            mfu = f"{100 * achieved / args.peak_tflops:>7.1f}%" if args.peak_tflops else ""
            print(
                f"{name:<22}{row['median_s']:>10.3f}{row['min_s']:>10.3f}"
                f"{base / row['median_s']:>9.2f}x{achieved:>10.2f}{mfu}{row['loss']:>10.5f}"
            )
        print(f"(model FLOPs per step: {flops / 1e12:.3f} TFLOP, matmuls only)")
    if args.skip != "memory":
        memory = measure_memory(args)
        print(f"\npeak extra memory of one fp32 step, batch {args.mem_batch} x {args.mem_seq}")
        base = memory["reference"]["peak_extra_mib"]
        print(f"{'implementation':<22}{'MiB':>10}{'ratio':>10}")
        for name, row in memory.items():
            print(f"{name:<22}{row['peak_extra_mib']:>10.0f}{row['peak_extra_mib'] / base:>9.2f}x")


if __name__ == "__main__":
    main()
