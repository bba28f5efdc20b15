"""Seconds per training step with and without the batch prefetch, against a stand-in device step (CPU).

    python bench/bench_prefetch.py [--batch 64] [--seq 512] [--steps 40] [--repeats 3] [--depth 4]

The data: the real token stream (the packaged teacher's tokenizer, the offline corpus) and collator, as
`run_distillation` builds them. The step: a stand-in for a GPU step that reads nothing back, so the host is free
while it runs: it sleeps (releasing the GIL) for as long as making one batch takes, measured first. Without the
prefetch a step costs the data time plus the step time; with it, the larger of the two. The bar: with the
prefetch, <= 1.2 x max(data time, step time). Each figure is the median of --repeats runs of --steps steps, with
the range.
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # minilmv2 without an install

from transformers import AutoTokenizer  # noqa: E402

from minilmv2.corpus import load_corpus_config  # noqa: E402
from minilmv2.data import PadCollator, TokenStream  # noqa: E402
from minilmv2.prefetch import PrefetchLoader  # noqa: E402
from minilmv2.tools.assets import default_dest  # noqa: E402


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def loader(args, tokenizer, config, depth: int, seed: int) -> PrefetchLoader:
    stream = TokenStream(config, tokenizer, args.seq, shuffle_buffer=args.batch * 4, seed=seed)
    return PrefetchLoader(stream, PadCollator(tokenizer.pad_token_id), args.batch, depth=depth)


def seconds_per_step(args, tokenizer, config, depth: int, step_seconds: float, seed: int) -> float:
    """Steps of the stand-in (sleep) fed by a loader of `depth`; after 2 warm-up steps (the thread's start)."""
    batches = loader(args, tokenizer, config, depth, seed)
    iterator = iter(batches)
    for _ in range(2):
        next(iterator)
        time.sleep(step_seconds)
    started = time.perf_counter()
    for _ in range(args.steps):
        next(iterator)
        time.sleep(step_seconds)  # the device works; the host waits without holding the GIL
    elapsed = time.perf_counter() - started
    batches.close()
    return elapsed / args.steps


def data_seconds(args, tokenizer, config, seed: int) -> float:
    """Seconds to make one batch in place (tokenise, pack, shuffle, collate), after one warm-up batch."""
    iterator = iter(loader(args, tokenizer, config, 0, seed))
    next(iterator)
    started = time.perf_counter()
    for _ in range(args.steps):
        next(iterator)
    return (time.perf_counter() - started) / args.steps


def spread(values: list[float]) -> str:
    return f"{statistics.median(values):.4f} s (range {min(values):.4f}-{max(values):.4f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--seq", type=int, default=512)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--depth", type=int, default=4, help="batches made ahead (run_distillation's default: 4)")
    args = parser.parse_args()
    assets = default_dest()
    tokenizer = AutoTokenizer.from_pretrained(assets / "teacher")
    config = load_corpus_config(assets / "corpus" / "train_config.json")
    print(f"command: python {' '.join(sys.argv)}")
    print(f"cpu: {cpu_name()}; batch {args.batch} x {args.seq} tokens; {args.steps} steps x {args.repeats} repeats")

    data = [data_seconds(args, tokenizer, config, seed) for seed in range(args.repeats)]
    step = statistics.median(data)  # the stand-in step lasts as long as making a batch: the hardest case
    without = [seconds_per_step(args, tokenizer, config, 0, step, seed) for seed in range(args.repeats)]
    with_prefetch = [seconds_per_step(args, tokenizer, config, args.depth, step, seed) for seed in range(args.repeats)]
    bound = max(statistics.median(data), step)
    ratio = statistics.median(with_prefetch) / bound
    print(f"making one batch:               {spread(data)}  ({args.batch * args.seq / step:,.0f} tokens/s)")
    print(f"stand-in device step:           {step:.4f} s")
    print(f"step, no prefetch:              {spread(without)}  = {statistics.median(without) / bound:.2f} x max")
    print(f"step, prefetch depth {args.depth}:        {spread(with_prefetch)}  = {ratio:.2f} x max")
    print(f"bar: prefetch <= 1.2 x max(data, step): {'met' if ratio <= 1.2 else 'MISSED'} ({ratio:.2f})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
