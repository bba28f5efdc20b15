"""End-to-end distillation throughput: `run_distillation` with minilmv2's loss against the same trainer
driving the first public reimplementation's algorithm (bench/reference_algorithm.py).

    python bench/bench_end_to_end.py                    # quickstart-sized run: real 6 x 384 teacher -> 4 x 256
    python bench/bench_end_to_end.py --steps 40 --batch 16

Each implementation runs in its own process through `python -m minilmv2.run_distillation`'s `main`, with the
loss class switched before the trainer is built; everything else (data stream, packing, Trainer, bf16 autocast,
logging) is the same. Tokens per second are what `run_distillation` itself prints at the end (non-padding tokens
seen / wall time of training).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

from minilmv2.tools.assets import default_dest

ASSETS = default_dest()


def child(implementation: str, argv: list[str]) -> None:
    """Run run_distillation in this process, with the reference algorithm swapped in when asked."""
    import minilmv2
    from minilmv2 import run_distillation

    if implementation == "reference":
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        from reference_algorithm import ReferenceMiniLM

        minilmv2.MiniLM = ReferenceMiniLM  # run_distillation imports it from the package at run time
    raise SystemExit(run_distillation.main(argv))


def distillation_argv(args, output_dir: Path) -> list[str]:
    return [
        "data_params", "--train_config", str(ASSETS / "corpus" / "train_config.json"),
        "--max_seq_len", str(args.seq),
        "training_params", "--output_dir", str(output_dir), "--max_steps", str(args.steps),
        "--per_device_train_batch_size", str(args.batch), "--learning_rate", "6e-4", "--warmup_steps", "4",
        "--logging_steps", "10", "--save_steps", "100000", "--bf16", "true", "--use_cpu", "true",
        "--report_to", "none", "--seed", "42",
        "model_params", "--input_model_dir", str(ASSETS / "teacher"),
        "--student_hidden_size", str(args.student_hidden), "--student_num_layers", str(args.student_layers),
        "--student_attention_heads", str(args.student_heads), "--L", "6",
        "--num_relation_heads", str(args.relation_heads),
    ]  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--seq", type=int, default=128)
    parser.add_argument("--student-layers", type=int, default=4)
    parser.add_argument("--student-hidden", type=int, default=256)
    parser.add_argument("--student-heads", type=int, default=4)
    parser.add_argument("--relation-heads", type=int, default=32)
    parser.add_argument("--child", choices=["minilmv2", "reference"], help=argparse.SUPPRESS)
    parser.add_argument("--output-dir", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args.child, distillation_argv(args, Path(args.output_dir)))
    if not (ASSETS / "teacher" / "config.json").exists():
        raise SystemExit(f"error: no teacher in {ASSETS / 'teacher'}; run `make assets` first")

    print(f"command: python {' '.join(sys.argv)}")
    print(
        f"teacher 6x384 (.assets/teacher) -> student {args.student_layers}x{args.student_hidden}, "
        f"A_r {args.relation_heads}, batch {args.batch} x {args.seq} packed tokens, bf16 autocast, {args.steps} steps"
    )
    results = {}
    for implementation in ("minilmv2", "reference"):
        with tempfile.TemporaryDirectory() as tmp:
            command = [sys.executable, __file__, *sys.argv[1:], "--child", implementation, "--output-dir", tmp]
            env = {**os.environ, "HF_HUB_OFFLINE": "1", "TQDM_DISABLE": "1"}
            run = subprocess.run(command, capture_output=True, text=True, env=env)
            match = re.search(r"throughput: ([\d,]+) tokens/s", run.stdout)
            if run.returncode != 0 or not match:
                sys.stderr.write(run.stdout[-3000:] + run.stderr[-3000:])
                raise SystemExit(f"error: the {implementation} run failed (exit {run.returncode})")
            results[implementation] = float(match.group(1).replace(",", ""))
    print(f"\n{'implementation':<16}{'tokens/s':>10}{'speed-up':>10}")
    for name, rate in results.items():
        print(f"{name:<16}{rate:>10,.0f}{rate / results['reference']:>9.2f}x")


if __name__ == "__main__":
    main()
