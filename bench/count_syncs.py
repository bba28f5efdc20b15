"""Host syncs per training step of the real distillation loop (`minilmv2.run_distillation`), in one process.

    python bench/count_syncs.py --output_dir /tmp/syncs [--steps 3 6] -- <run_distillation arguments>

The distillation runs twice, for each --steps count, with everything else equal; what a step adds is the
difference of the two counts divided by the difference in steps, so start-up, the first step's warm-up and the
final export cancel out. Give the run arguments without --max_steps and --output_dir (set here), and with
--logging_steps and --save_steps above the longer run, so no logging or saving step falls inside it.

What is counted:
- on CUDA, every synchronizing CUDA call, with `torch.cuda.set_sync_debug_mode("warn")` (each one warns);
- on a CPU (the rehearsal of bench/gpu_check.sh, and the tests), every read of a tensor's value on the host:
  `item`, `tolist`, `__bool__`, `__int__`, `__float__`, `nonzero`, `cpu`, `numpy`, which would each wait for the
  device on a GPU. CPU counts are an upper bound: reads of tensors that never leave the CPU count too.
The places that sync most, as file:line of the Python caller, are printed with the counts.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # minilmv2 without an install (the GPU machine)

HOST_READS = ("item", "tolist", "__bool__", "__int__", "__float__", "nonzero", "cpu", "numpy")
SYNC_WARNING = "called a synchronizing CUDA operation"


def caller(depth: int = 2) -> str:
    """file:line of the first frame outside torch, warnings and this file, `depth` frames up at least."""
    frame = sys._getframe(depth)
    while frame is not None:
        name = frame.f_code.co_filename
        if "/torch/" not in name and name != __file__ and "warnings" not in name:
            return f"{_short(name)}:{frame.f_lineno}"
        frame = frame.f_back
    return "?"


def _short(path: str) -> str:
    """A path from where it is recognisable: transformers/trainer.py, minilmv2/trainer.py."""
    for marker in ("/site-packages/", "/minilmv2/", "/bench/"):
        _, found, tail = path.partition(marker)
        if found:
            return tail if marker == "/site-packages/" else marker.strip("/") + "/" + tail
    return path


@contextlib.contextmanager
def count_host_reads(cuda: bool):
    """Yield a Counter of sync sites (file:line -> count) filled while the block runs."""
    sites: collections.Counter = collections.Counter()
    if cuda:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            shown = warnings.showwarning

            def record(message, category, filename, lineno, file=None, line=None):
                if SYNC_WARNING in str(message):
                    sites[caller(2)] += 1
                else:
                    shown(message, category, filename, lineno, file, line)

            warnings.showwarning = record
            torch.cuda.set_sync_debug_mode("warn")
            try:
                yield sites
            finally:
                torch.cuda.set_sync_debug_mode("default")
                warnings.showwarning = shown
        return
    originals = {name: getattr(torch.Tensor, name) for name in HOST_READS}

    def counting(name):
        original = originals[name]

        def read(self, *args, **kwargs):
            sites[caller(2)] += 1
            return original(self, *args, **kwargs)

        return read

    for name in HOST_READS:
        setattr(torch.Tensor, name, counting(name))
    try:
        yield sites
    finally:
        for name, original in originals.items():
            setattr(torch.Tensor, name, original)


def run_distillation(argv: list[str], steps: int, output_dir: Path, cuda: bool) -> collections.Counter:
    from minilmv2 import run_distillation

    argv = [*argv, "--max_steps", str(steps), "--output_dir", str(output_dir)]
    with count_host_reads(cuda) as sites:
        status = run_distillation.main(argv)
    if status:
        raise SystemExit(f"the distillation of {steps} steps exited with status {status}")
    return sites


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output_dir", required=True, help="the two runs' outputs go into subfolders of this")
    parser.add_argument("--steps", type=int, nargs=2, default=[3, 6], metavar=("SHORT", "LONG"))
    parser.add_argument("run_args", nargs=argparse.REMAINDER, help="-- then run_distillation's arguments")
    args = parser.parse_args()
    run_args = args.run_args[1:] if args.run_args[:1] == ["--"] else args.run_args
    short, long = sorted(args.steps)
    if short < 1 or long == short:
        parser.error("--steps needs two different counts, both at least 1")
    cuda = torch.cuda.is_available()
    what = "synchronizing CUDA calls" if cuda else "host reads of tensor values (CPU: an upper bound)"
    counts = {}
    for steps in (short, long):
        counts[steps] = run_distillation(run_args, steps, Path(args.output_dir) / f"steps-{steps}", cuda)
    added = counts[long] - counts[short]  # Counter subtraction keeps the sites that grew
    per_step = (sum(counts[long].values()) - sum(counts[short].values())) / (long - short)
    print(f"\n{what}: {sum(counts[short].values())} in {short} steps, {sum(counts[long].values())} in {long} steps")
    print(f"syncs per step: {per_step:g}")
    for site, count in added.most_common(12):
        print(f"  {count / (long - short):>6g} per step  {site}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
