"""A tool's stages: the repository's scripts (run.sh, run_eval.sh, hf_run_seq2seq.py) run one after another by the
quickstart and `make headlines`, each one's output streamed to ours and its duration kept in stage_seconds.json,
so a tool resumed after a finished stage still reports what every stage took."""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

STAGE_SECONDS_FILE = "stage_seconds.json"


def run_stage(
    tool: str, title: str, command: list[str], cwd: Path, out_dir: Path, env_values: dict[str, str] | None = None
) -> None:
    """Run `command` in `cwd` with `env_values` added to the environment (offline); SystemExit naming `tool` and
    the stage when it fails (its output is already on the screen). Its wall time is added to the stage's in
    stage_seconds.json (an interrupted call's time is not recorded)."""
    env_values = env_values or {}
    print(f"\n=== {title} ===", flush=True)
    print(" ".join([*(f"{key}={value!r}" for key, value in env_values.items()), *command]), flush=True)
    start = time.perf_counter()
    result = subprocess.run(command, cwd=cwd, env={**os.environ, "HF_HUB_OFFLINE": "1", **env_values})
    if result.returncode != 0:
        raise SystemExit(f"{tool}: {title} failed (exit {result.returncode}); its output is above")
    seconds = read_stage_seconds(out_dir)
    # Added, not replaced: a resumed tool that reruns a stage (finished runs kept) must not hide the first call's time.
    seconds[title] = seconds.get(title, 0.0) + time.perf_counter() - start
    (out_dir / STAGE_SECONDS_FILE).write_text(json.dumps(seconds, indent=2) + "\n")


def parse_seeds(text: str, name: str = "SEEDS") -> list[int]:
    """The fine-tuning seeds of "1 2 3" (spaces or commas), given as `name`; UsageError in one line otherwise."""
    from minilmv2.errors import UsageError

    words = text.replace(",", " ").split()
    # Compared as numbers: "1 01" is seed 1 twice, which run_eval.sh would refuse only after the tool's first stages.
    if not words or not all(word.isdigit() for word in words) or len({int(word) for word in words}) != len(words):
        raise UsageError(f'{name} {text!r} must be distinct whole numbers separated by spaces, e.g. "1 2 3"')
    return [int(word) for word in words]


def forget_stages(out_dir: Path, title: str) -> None:
    """Drop the recorded time of stage `title` and of its resumed calls ("<title>, resumed from ..."): for a stage
    that starts over, the time of what was thrown away does not count."""
    seconds = read_stage_seconds(out_dir)
    kept = {name: value for name, value in seconds.items() if name != title and not name.startswith(title + ", ")}
    if kept != seconds:
        (out_dir / STAGE_SECONDS_FILE).write_text(json.dumps(kept, indent=2) + "\n")


def read_stage_seconds(out_dir: Path) -> dict[str, float]:
    """{stage title: seconds} of the stages run so far into `out_dir`."""
    path = out_dir / STAGE_SECONDS_FILE
    return json.loads(path.read_text()) if path.is_file() else {}
