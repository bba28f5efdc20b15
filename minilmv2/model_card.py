"""The model card (`README.md`) that every exported student carries: how it was made and how to load it.

Written beside `config.json` in the student folder, as `Trainer.create_model_card` does for the examples, so
that a student copied elsewhere (or pushed to the hub) still says which teacher, layer, relation heads and
relations made it, for how long it was trained and with what final losses.
"""

from __future__ import annotations

import os
import shlex
import shutil
from dataclasses import dataclass, field
from pathlib import Path

from minilmv2.relations import KIND_NAMES

CARD_NAME = "README.md"
CURVE_NAME = "loss_curve.png"


@dataclass
class DistillationSummary:
    """What the card reports; every field is known once training has stopped (finished or by a signal)."""

    teacher: str
    teacher_layers: int
    teacher_hidden_size: int
    model_type: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    intermediate_size: int
    num_parameters: int
    teacher_layer: int  # L, 1-based
    student_layer: int  # M, 1-based
    num_relation_heads: int  # A_r
    relations: dict[tuple[int, int], float]
    steps: int
    tokens_seen: int
    command: list[str] = field(default_factory=list)
    log_history: list[dict] = field(default_factory=list)
    stopped_by_signal: int | None = None
    student_init: str = "random"  # minilmv2.student_init.STUDENT_INITS


def last_logged(log_history: list[dict], key: str) -> tuple[int, float] | None:
    """(step, value) of the last entry of `log_history` holding `key`; None if it was never logged."""
    for entry in reversed(log_history):
        if key in entry:
            return entry.get("step", 0), float(entry[key])
    return None


INIT_TEXT = {
    "random": "random (the paper's recipe)",
    "teacher_embeddings": "token / position / token-type embeddings from the teacher's (copied, or projected onto "
    "their top principal components), the rest random",
}


def relations_text(relations: dict[tuple[int, int], float]) -> str:
    """{(1, 1): 1.0, (1, 2): 0.5} -> 'Q-Q (weight 1), Q-K (weight 0.5)'."""
    return ", ".join(f"{KIND_NAMES[i]}-{KIND_NAMES[j]} (weight {weight:g})" for (i, j), weight in relations.items())


def render_model_card(summary: DistillationSummary, has_curve: bool, student_dir: str) -> str:
    """The card's Markdown text."""
    s = summary
    train = last_logged(s.log_history, "loss")
    held_out = last_logged(s.log_history, "eval_loss")
    train_text = f"{train[1]:.4f} (step {train[0]})" if train else "not logged"
    held_out_text = f"{held_out[1]:.4f} (step {held_out[0]})" if held_out else "no held-out set"
    status = (
        f"stopped by signal {s.stopped_by_signal} at step {s.steps} (resumable from its last checkpoint)"
        if s.stopped_by_signal is not None
        else f"finished after {s.steps:,} optimizer steps"
    )
    command = shlex.join(s.command) if s.command else "not recorded"
    lines = [
        "---",
        "library_name: transformers",
        "tags:",
        "- minilmv2",
        "- distillation",
        "---",
        "",
        f"# MiniLMv2 student of {Path(s.teacher).name or s.teacher}",
        "",
        f"A {s.num_layers} x {s.hidden_size} `{s.model_type}` encoder ({s.num_attention_heads} heads, FFN "
        f"{s.intermediate_size}, {s.num_parameters:,} parameters) distilled with MiniLMv2 multi-head "
        "self-attention relation distillation (Wang et al., Findings of ACL 2021, arXiv 2012.15828) by minilmv2.",
        "",
        "| | |",
        "|---|---|",
        f"| teacher | `{s.teacher}` ({s.teacher_layers} layers x {s.teacher_hidden_size} hidden) |",
        f"| teacher layer L | {s.teacher_layer} |",
        f"| student layer M | {s.student_layer} |",
        f"| relation heads A_r | {s.num_relation_heads} |",
        f"| relations | {relations_text(s.relations)} |",
        f"| student initialisation | {INIT_TEXT.get(s.student_init, s.student_init)} |",
        f"| training | {status} |",
        f"| tokens seen | {s.tokens_seen:,} |",
        f"| final train loss | {train_text} |",
        f"| final held-out loss | {held_out_text} |",
        "",
        "The loss reads only the Q/K/V projections of layer M, so that layer's attention output and FFN, any layer",
        "above it and the pooler are still at their random initialisation: fine-tune the student before use.",
        "",
        "## Load it",
        "",
        "```python",
        "from transformers import AutoModel, AutoTokenizer",
        "",
        f'model = AutoModel.from_pretrained("{student_dir}")',
        f'tokenizer = AutoTokenizer.from_pretrained("{student_dir}")',
        "```",
        "",
        "## The command that made it",
        "",
        "```bash",
        command,
        "```",
        "",
    ]
    if has_curve:
        lines += ["## Loss curve", "", f"![distillation loss]({CURVE_NAME})", ""]
    return "\n".join(lines)


def write_model_card(student_dir: str | os.PathLike, summary: DistillationSummary, curve: Path | None) -> Path:
    """Write `README.md` (and a copy of the loss curve beside it) into the exported `student_dir`.

    Written to a scratch file and renamed, so the student folder never holds half a card.
    """
    student_dir = Path(student_dir)
    has_curve = curve is not None and Path(curve).is_file()
    if has_curve:
        scratch_curve = student_dir / f".{CURVE_NAME}.partial"
        shutil.copyfile(curve, scratch_curve)
        os.replace(scratch_curve, student_dir / CURVE_NAME)
    card = student_dir / CARD_NAME
    scratch = student_dir / f".{CARD_NAME}.partial"
    scratch.write_text(render_model_card(summary, has_curve, str(student_dir)))
    os.replace(scratch, card)
    return card
