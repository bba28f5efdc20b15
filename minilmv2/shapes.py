"""The one check of a distillation's shapes, on configs alone: teacher, student shape, L, M, A_r and relations.

Used by the command line before any weights load (minilmv2.run_distillation, with its flags' names in the
messages) and by `MiniLM.__init__` / `MiniLM.v1` (with the paper's symbols), so both refuse the same things
with the same words. Every failure is one `ValueError` line naming the bad value and what would be valid.
"""

from __future__ import annotations

import numbers
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from minilmv2.architectures import layout_for
from minilmv2.relations import DEFAULT_RELATIONS, KIND_NAMES, V1_RELATIONS


@dataclass(frozen=True)
class StudentShape:
    """The student's shape before it exists (the command line's --student_* values)."""

    hidden_size: int
    num_layers: int
    num_attention_heads: int
    intermediate_size: int | None = None  # None: 4 x hidden (minilmv2.student)


NO_VALUE = object()

# The library's words for each value the check names (the paper's symbols and the student's shape).
LIBRARY_WORDS = {
    "L": "L (teacher layer)",
    "M": "M (student layer)",
    "A_r": "A_r (relation heads)",
    "hidden_size": "student hidden size",
    "num_layers": "student layers",
    "num_attention_heads": "student attention heads",
    "intermediate_size": "student intermediate size",
    "minilm_v1": "MiniLM v1",
}


def library_name(field: str, value: object = NO_VALUE) -> str:
    """How `MiniLM` names a value in its messages: "A_r (relation heads)", with a value "... = 5".

    Callers that name values otherwise (the command line: its options, through minilmv2.errors) pass their own
    function of (field, value) to `check_distillation_shapes`."""
    return LIBRARY_WORDS[field] if value is NO_VALUE else f"{LIBRARY_WORDS[field]} = {value}"


@dataclass(frozen=True)
class DistillationShapes:
    """What the distiller runs with, checked: layers 1-based, relations normalised to {(i, j): float}."""

    L: int
    M: int
    A_r: int
    relations: dict[tuple[int, int], float]


def validate_relations(relations: object) -> dict[tuple[int, int], float]:
    """Normalise `relations` to {(i, j): float}; ValueError naming the bad entry otherwise."""
    if not isinstance(relations, Mapping):
        raise ValueError(
            f"relations must be a mapping like {{(1, 1): 1, (2, 2): 1, (3, 3): 1}}, got {type(relations).__name__}"
        )
    if not relations:
        raise ValueError("relations is empty; give at least one pair, e.g. {(1, 1): 1, (2, 2): 1, (3, 3): 1}")
    normalised = {}
    for pair, weight in relations.items():
        if (
            not isinstance(pair, tuple)
            or len(pair) != 2
            or not all(isinstance(kind, int) and kind in KIND_NAMES for kind in pair)
        ):
            raise ValueError(f"relation pair {pair!r} is invalid; use pairs of 1=Q, 2=K, 3=V such as (1, 1)")
        if isinstance(weight, bool) or not isinstance(weight, numbers.Real) or not weight >= 0:
            raise ValueError(f"relation weight {weight!r} of pair {pair} must be a non-negative number")
        normalised[pair] = float(weight)
    return normalised


def qkv_width_from_config(config) -> int:
    """Width H of each layer's Q/K/V states (all heads together), the size split into A_r relation heads.

    The hidden size, except where a config sets its own head size (DeBERTa-v2's `attention_head_size`, which
    makes the Q/K/V projections heads x head size wide). DistilBERT's `dim` is read through `hidden_size`.
    """
    layout_for(config)  # a supported architecture, or the ValueError naming them
    head_size = getattr(config, "attention_head_size", None)
    if head_size:
        return config.num_attention_heads * head_size
    return config.hidden_size


def _is_positive_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 1


def check_student_shape(shape: StudentShape, name: Callable[..., str] = library_name) -> None:
    """Positive sizes, and attention heads dividing the hidden size; ValueError (one line) otherwise.

    The one statement of these rules: `student_config_from_teacher` and `check_distillation_shapes` call it.
    """
    for field in ("hidden_size", "num_layers", "num_attention_heads", "intermediate_size"):
        value = getattr(shape, field)
        if not (value is None and field == "intermediate_size") and not _is_positive_int(value):
            raise ValueError(f"{name(field, value)} is not valid: give a positive whole number")
    hidden, heads = shape.hidden_size, shape.num_attention_heads
    if hidden % heads:
        valid = [h for h in range(1, hidden + 1) if hidden % h == 0 and h <= 64]
        raise ValueError(
            f"{name('num_attention_heads', heads)} does not divide {name('hidden_size', hidden)}; valid: {valid}"
        )


def check_distillation_shapes(
    teacher_config,
    student,
    *,
    L: int | None = None,
    M: int | None = None,
    A_r: int | None = None,
    relations: Mapping[tuple[int, int], float] | None = None,
    minilm_v1: bool = False,
    name: Callable[..., str] = library_name,
) -> DistillationShapes:
    """Check a distillation's shapes on configs, before any weights load; ValueError (one line) otherwise.

    teacher_config: the teacher's config. student: the student's config, or its `StudentShape` before it is
    built. L, M: 1-based teacher and student layers (default: the last of each). A_r: relation heads, dividing
    both Q/K/V widths (required, except for MiniLM v1). relations: {(i, j): weight} (default: Q-Q, K-K, V-V).
    minilm_v1: the v1 preset, Q-K + V-V with one relation head per attention head: the head counts must be
    equal, and an A_r given must be that count (it is used, never silently replaced).
    name(field, value=NO_VALUE): how messages name a value (default `library_name`).
    """
    if isinstance(student, StudentShape):
        shape, student_width = student, student.hidden_size  # minilmv2.student gives heads x (hidden / heads)
    else:
        from minilmv2.student import ffn_size

        shape = StudentShape(
            student.hidden_size, student.num_hidden_layers, student.num_attention_heads, ffn_size(student)
        )
        student_width = qkv_width_from_config(student)
    check_student_shape(shape, name)
    if A_r is not None and not _is_positive_int(A_r):
        raise ValueError(f"{name('A_r', A_r)} is not valid: give a positive whole number dividing both hidden sizes")

    teacher_layers = teacher_config.num_hidden_layers
    L = teacher_layers if L is None else L
    M = shape.num_layers if M is None else M
    for field, value, model, upper in (("L", L, "teacher", teacher_layers), ("M", M, "student", shape.num_layers)):
        if not _is_positive_int(value) or value > upper:
            # Which layer it is shows in the range: the model whose layers it counts, and how many it has.
            raise ValueError(f"{name(field, value)} is out of range: the {model} has {upper} layers; use 1..{upper}")

    heads = shape.num_attention_heads
    if minilm_v1:
        teacher_heads = teacher_config.num_attention_heads
        if teacher_heads != heads:
            raise ValueError(
                f"{name('minilm_v1')} needs equal attention head counts, got teacher {teacher_heads} and student "
                f"{heads} ({name('num_attention_heads')}); use the v2 relations instead (without {name('minilm_v1')}, "
                f"{name('A_r')} must divide both hidden sizes)"
            )
        if A_r is not None and A_r != heads:
            raise ValueError(
                f"{name('A_r', A_r)} does not apply with {name('minilm_v1')}, which uses one relation "
                f"head per attention head ({heads}); leave it out or give {heads}"
            )
        A_r, relations = heads, V1_RELATIONS
    elif A_r is None:
        raise ValueError(f"{name('A_r')} is required: the number of relation heads, dividing both hidden sizes")

    teacher_width = qkv_width_from_config(teacher_config)
    for who, width in (("teacher", teacher_width), ("student", student_width)):
        if width % A_r:
            common = [d for d in range(1, 129) if teacher_width % d == 0 and student_width % d == 0]
            raise ValueError(
                f"{name('A_r', A_r)} does not divide the {who} hidden size {width}; values dividing "
                f"both hidden sizes: {common}"
            )
    relations = validate_relations(DEFAULT_RELATIONS if relations is None else relations)
    return DistillationShapes(L=L, M=M, A_r=A_r, relations=relations)
