"""Wall time of one run_eval.sh sweep with PARALLEL=1 and PARALLEL=2, side by side on this machine.

The grid: the two offline tasks (tweet_sentiment, bbc_news) x 2 learning rates x 1 epoch, 1,000 training and
1,000 evaluation examples each, fine-tuning the packaged offline teacher (6 x 384 BERT) at the GLUE recipe's
batch of 32. Both sweeps score the same cells; the summary tables must agree.

    python bench/bench_sweep.py [--repeats 1] [--out bench/results/sweep_parallel.txt]

On a CPU the parallel runs share the cores (each gets cores / PARALLEL threads); on a GPU node each run gets a GPU.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def cpu_name() -> str:
    try:
        for line in subprocess.run(["lscpu"], capture_output=True, text=True).stdout.splitlines():
            if line.startswith("Model name:"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def sweep(parallel: int, output_dir: Path, model_dir: Path) -> float:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "MODEL_DIR": str(model_dir), "TASKS": "tweet_sentiment bbc_news",
           "LEARNING_RATES": "3e-5 5e-5", "EPOCHS": "1", "SEEDS": "42", "OUTPUT_DIR": str(output_dir),
           "PARALLEL": str(parallel), "PYTHON": sys.executable,
           "EXTRA_ARGS": "--max_train_samples 1000 --max_eval_samples 1000 --disable_tqdm true"}  # fmt: skip
    started = time.perf_counter()
    done = subprocess.run(["bash", str(REPO / "run_eval.sh")], env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"the sweep with PARALLEL={parallel} failed ({done.returncode}):\n{done.stdout[-3000:]}{done.stderr}")
    return seconds


def main() -> None:
    from minilmv2.tools.assets import default_dest

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--out", default=str(REPO / "bench" / "results" / "sweep_parallel.txt"))
    args = parser.parse_args()
    model_dir = default_dest() / "teacher"
    times: dict[int, list[float]] = {1: [], 2: []}
    with tempfile.TemporaryDirectory() as scratch:
        for repeat in range(args.repeats):
            for parallel in (1, 2):
                output = Path(scratch) / f"p{parallel}-{repeat}"
                times[parallel].append(sweep(parallel, output, model_dir))
                print(f"PARALLEL={parallel} repeat {repeat + 1}: {times[parallel][-1]:.1f} s", flush=True)
        summaries = {p: (Path(scratch) / f"p{p}-0" / "summary.csv").read_text() for p in (1, 2)}
    lines = [
        f"run_eval.sh sweep, 2 offline tasks x 2 learning rates x 1 epoch, 1,000 examples, model {model_dir.name}",
        f"machine: {cpu_name()}, {os.cpu_count()} cores; {args.repeats} repeat(s) each; python bench/bench_sweep.py",
    ]
    for parallel, values in times.items():
        spread = f" (min {min(values):.1f}, max {max(values):.1f})" if len(values) > 1 else ""
        lines.append(f"PARALLEL={parallel}: {statistics.median(values):.1f} s wall, median{spread}")
    lines.append(f"same summary.csv: {summaries[1] == summaries[2]}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
