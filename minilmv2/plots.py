"""Loss curve of a distillation run, drawn from the Trainer's log history (matplotlib, no display needed)."""

from __future__ import annotations

import os
from pathlib import Path


def plot_loss_curve(log_history: list[dict], path: str | os.PathLike) -> Path | None:
    """Train loss (and held-out eval loss, when logged) against the optimizer step; None if nothing was logged."""
    train = [(entry["step"], entry["loss"]) for entry in log_history if "loss" in entry and "step" in entry]
    held_out = [(entry["step"], entry["eval_loss"]) for entry in log_history if "eval_loss" in entry]
    if not train and not held_out:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.2))
    if train:
        axes.plot(*zip(*train, strict=True), label="train distillation loss", marker="." if len(train) < 50 else None)
    if held_out:
        axes.plot(*zip(*held_out, strict=True), label="held-out distillation loss", marker="o")
    axes.set_xlabel("optimizer step")
    axes.set_ylabel("relation KL loss (sum over pairs)")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    path = Path(path)
    scratch = path.with_name(f".{path.stem}.partial{path.suffix}")
    figure.savefig(scratch, dpi=120)
    plt.close(figure)
    os.replace(scratch, path)
    return path
