"""Student construction: a randomly initialised encoder of the teacher's architecture, in the target shape."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel

from minilmv2.architectures import layout_for
from minilmv2.shapes import StudentShape, check_student_shape


def student_config_from_teacher(
    teacher_config: PretrainedConfig,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    intermediate_size: int | None = None,
) -> PretrainedConfig:
    """The teacher's config (architecture, vocabulary, positions, token types, activation) in the student's shape.

    The FFN size defaults to 4 x hidden, as in every released MiniLM student (6 x 384 with the BERT vocab is
    22.7M parameters; copying the teacher's 3072 would make it 29.8M). Architecture-specific sizes follow the
    `sized_fields` of the architecture's layout (DistilBERT's `hidden_dim`, ELECTRA's and DeBERTa's embedding
    size, DeBERTa's pooler); a per-layer pattern (ModernBERT's global / sliding-window `layer_types`) is
    continued over the student's layers. Shape-free settings are the teacher's: vocabulary, positions, rotary
    bases and sliding window, DeBERTa's relative position buckets, MPNet's relative attention buckets.
    """
    check_student_shape(StudentShape(hidden_size, num_layers, num_attention_heads, intermediate_size))
    layout = layout_for(teacher_config)
    config = copy.deepcopy(teacher_config)
    # DistilBERT's dim / n_layers / n_heads are reached through these names by its config's attribute_map.
    config.hidden_size = hidden_size
    config.num_hidden_layers = num_layers
    config.num_attention_heads = num_attention_heads
    sizes = {
        "hidden": hidden_size,
        "ffn": intermediate_size or 4 * hidden_size,
        "head": hidden_size // num_attention_heads,
    }
    for field, follows in layout.sized_fields:
        if follows == "ffn" or hasattr(config, field):  # every architecture has an FFN size; the rest are optional
            setattr(config, field, sizes[follows])
    layer_types = getattr(teacher_config, "layer_types", None)
    if layer_types:
        config.layer_types = continued_pattern(list(layer_types), num_layers)
    # A teacher saved in bf16/fp16 loads in that dtype (transformers 5 defaults to dtype="auto"); the student
    # is trained, so it keeps fp32 master weights whatever the teacher's storage dtype.
    config.dtype = torch.float32
    # The teacher's checkpoint name and task heads say nothing about a fresh student.
    config.architectures = None
    config._name_or_path = ""
    return config


def ffn_size(config: PretrainedConfig) -> int:
    """The FFN (intermediate) size, whatever the architecture calls it (DistilBERT: `hidden_dim`)."""
    field = next(field for field, follows in layout_for(config).sized_fields if follows == "ffn")
    return getattr(config, field)


def continued_pattern(pattern: list[str], length: int) -> list[str]:
    """The shortest period that repeats through `pattern`, continued to `length` entries.

    ModernBERT-base's 22 layers are (global, local, local) repeated: a 6-layer student gets the same rhythm.
    """
    period = next(p for p in range(1, len(pattern) + 1) if all(t == pattern[i % p] for i, t in enumerate(pattern)))
    return [pattern[i % period] for i in range(length)]


def build_student(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised fp32 base model (with pooler, so task heads can use it) from `config`."""
    return AutoModel.from_config(config, dtype=torch.float32)
