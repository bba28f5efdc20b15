"""The files a GPU machine needs for bench/gpu_check.sh, in one folder small enough to send along (< 60 MiB).

    python bench/gpu_bundle.py [--dest .gpu-bundle]        # or: make gpu-bundle

From the offline assets ($MINILMV2_ASSETS, default ./.assets; `make assets` fetches them) it writes the same
layout, which `MINILMV2_ASSETS=<dest>` points the code at:

    teacher/  the packaged 6 x 384 BERT with its weights in bf16 (45 MB instead of 91 MB), config and tokenizer
    corpus/   the text shards and train_config.json, uncompressed (read without the datasets package)

The 12 x 768 teacher of the benchmark is not sent: bench/bench_step.py builds it on the device from a seed.
The folder is built beside `dest` and renamed into place, so it is either complete or absent.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # minilmv2 without an install
from minilmv2.errors import UsageError, exit_on_usage_error  # noqa: E402
from minilmv2.tools.assets import SOURCE_FILE, default_dest  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
CODE_FILE = "code.txt"  # which commit the bundle was made from (read by bench/gpu_check.sh)
LIMIT_MIB = 60  # what may travel to the GPU machine with the working tree (64 MiB in all)
TEACHER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")


def bundle_teacher(source: Path, dest: Path) -> None:
    dest.mkdir(parents=True)
    for name in TEACHER_FILES:
        shutil.copy2(source / name, dest / name)
    weights = load_file(source / "model.safetensors")
    weights = {name: t.to(torch.bfloat16) if t.is_floating_point() else t for name, t in weights.items()}
    save_file(weights, dest / "model.safetensors", metadata={"format": "pt"})
    config = json.loads((dest / "config.json").read_text())
    config["dtype"] = "bfloat16"  # what the weights are stored in (transformers loads them so)
    (dest / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    record = json.loads((source / SOURCE_FILE).read_text())
    record["converted"] = "weights cast to bfloat16 by bench/gpu_bundle.py, for the GPU check"
    (dest / SOURCE_FILE).write_text(json.dumps(record, indent=2) + "\n")


def code_version() -> str:
    """The commit of this checkout, '-dirty' when it has uncommitted changes."""
    try:
        described = subprocess.run(
            ["git", "describe", "--always", "--dirty"], cwd=REPO, capture_output=True, text=True, check=True
        )
    except (OSError, subprocess.CalledProcessError):
        return "unknown (no git)"
    return f"commit {described.stdout.strip()}"


def folder_mib(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 2**20


@exit_on_usage_error
def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=REPO / ".gpu-bundle")
    args = parser.parse_args(argv)
    assets = default_dest()
    for part in ("teacher", "corpus"):
        if not (assets / part / SOURCE_FILE).is_file():
            raise UsageError(f"no {part} in {assets} (MINILMV2_ASSETS); run `make assets` first")
    scratch = args.dest.with_name(args.dest.name + ".partial")
    shutil.rmtree(scratch, ignore_errors=True)
    bundle_teacher(assets / "teacher", scratch / "teacher")
    shutil.copytree(assets / "corpus", scratch / "corpus")
    # The GPU machine gets the working tree without .git: this names the code the check then runs.
    (scratch / CODE_FILE).write_text(
        f"{code_version()}, bundled {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}\n"
    )
    size = folder_mib(scratch)
    if size > LIMIT_MIB:
        shutil.rmtree(scratch)
        raise UsageError(f"the bundle would be {size:.1f} MiB, over the {LIMIT_MIB} MiB that can travel")
    shutil.rmtree(args.dest, ignore_errors=True)
    scratch.rename(args.dest)
    print(f"{args.dest}: {size:.1f} MiB (teacher in bf16, corpus); send it with the GPU run (carry it)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
