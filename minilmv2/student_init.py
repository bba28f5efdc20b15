"""Where a student starts: at random (the paper's recipe, the default) or from the teacher's embeddings.

`teacher_embeddings`: the student's token embeddings, and its position and token-type embeddings where both
models have such a table, come from the teacher's:

- copied when the widths match;
- else projected onto the top principal components of the teacher's (centred) token-embedding matrix. One
  projection serves all three tables, because the model sums them; and all are scaled by one factor that gives
  the projected token embeddings the spread of the student's own initialiser (its config's `initializer_range`),
  so the layers above see inputs of the size they were initialised for. A student wider than the teacher's
  embeddings (ELECTRA-small's are 128 wide) gets every component, and zeros in its remaining dimensions.

The choice is recorded in the student's config.json (`minilmv2_student_init`), its model card, and checked on
resume (a checkpoint made with another initialisation is refused).
"""

from __future__ import annotations

import torch
from torch import nn

STUDENT_INITS = ("random", "teacher_embeddings")
INIT_FIELD = "minilmv2_student_init"  # in the student's config.json


def embedding_tables(model: nn.Module) -> dict[str, nn.Embedding]:
    """{"token": ..., "position": ..., "token_type": ...}: the input embedding tables the model has."""
    from minilmv2.architectures import base_model

    base = base_model(model)
    tables = {"token": base.get_input_embeddings()}
    embeddings = getattr(base, "embeddings", None)
    for name in ("position", "token_type"):
        table = getattr(embeddings, f"{name}_embeddings", None)
        if isinstance(table, nn.Embedding):
            tables[name] = table
    return tables


@torch.no_grad()
def init_from_teacher_embeddings(student: nn.Module, teacher: nn.Module) -> list[str]:
    """Set the student's embedding tables from the teacher's (see the module's docstring); what was done, per table.

    student, teacher: models of one architecture and one vocabulary. Tables (V, H_t) -> (V, H_s).
    """
    teacher_tables, student_tables = embedding_tables(teacher), embedding_tables(student)
    tokens = teacher_tables["token"].weight.float()
    teacher_width, student_width = tokens.shape[1], student_tables["token"].weight.shape[1]
    if student_width == teacher_width:
        mean, basis, scale, how = None, None, 1.0, "copied"
    else:
        mean = tokens.mean(0)
        _, _, right = torch.linalg.svd(tokens - mean, full_matrices=False)  # rows: principal directions
        basis = torch.zeros(teacher_width, student_width)  # (H_t, H_s); columns past H_t stay zero
        kept = min(teacher_width, student_width)
        basis[:, :kept] = right[:kept].T
        init_std = getattr(student.config, "initializer_range", 0.02)
        scale = float(init_std / ((tokens - mean) @ basis).std())
        how = (
            f"projected {teacher_width} -> {student_width} (top {kept} principal components, scaled to std {init_std})"
        )
    done = []
    for name, table in student_tables.items():
        source = teacher_tables.get(name)
        if source is None:
            continue
        rows = min(table.num_embeddings, source.num_embeddings)
        values = source.weight[:rows].float()
        if basis is not None:
            values = ((values - mean) if name == "token" else values) @ basis * scale
        table.weight[:rows] = values.to(table.weight.dtype)
        done.append(f"{name}: {how}")
    student.config.update({INIT_FIELD: "teacher_embeddings"})
    return done
