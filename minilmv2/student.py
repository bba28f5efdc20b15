"""Student construction: a randomly initialised encoder of the teacher's architecture, in the target shape."""

from __future__ import annotations

import copy

import torch
from transformers import AutoModel, PretrainedConfig, PreTrainedModel


def student_config_from_teacher(
    teacher_config: PretrainedConfig,
    hidden_size: int,
    num_layers: int,
    num_attention_heads: int,
    intermediate_size: int | None = None,
) -> PretrainedConfig:
    """The teacher's config (architecture, vocabulary, positions, token types, activation) in the student's shape.

    The FFN size defaults to 4 x hidden, as in every released MiniLM student (6 x 384 with the BERT vocab is
    22.7M parameters; copying the teacher's 3072 would make it 29.8M).
    """
    for name, value in (
        ("hidden_size", hidden_size),
        ("num_layers", num_layers),
        ("num_attention_heads", num_attention_heads),
    ):
        if not isinstance(value, int) or value < 1:
            raise ValueError(f"student {name} must be a positive integer, got {value!r}")
    if hidden_size % num_attention_heads:
        raise ValueError(
            f"student attention heads ({num_attention_heads}) must divide the student hidden size ({hidden_size})"
        )
    if intermediate_size is not None and (not isinstance(intermediate_size, int) or intermediate_size < 1):
        raise ValueError(f"student intermediate_size must be a positive integer, got {intermediate_size!r}")
    config = copy.deepcopy(teacher_config)
    config.hidden_size = hidden_size
    config.num_hidden_layers = num_layers
    config.num_attention_heads = num_attention_heads
    config.intermediate_size = intermediate_size or 4 * hidden_size
    if hasattr(config, "embedding_size"):  # ELECTRA: a student embeds straight into its hidden size
        config.embedding_size = hidden_size
    # A teacher saved in bf16/fp16 loads in that dtype (transformers 5 defaults to dtype="auto"); the student
    # is trained, so it keeps fp32 master weights whatever the teacher's storage dtype.
    config.dtype = torch.float32
    # The teacher's checkpoint name and task heads say nothing about a fresh student.
    config.architectures = None
    config._name_or_path = ""
    return config


def build_student(config: PretrainedConfig) -> PreTrainedModel:
    """A randomly initialised fp32 base model (with pooler, so task heads can use it) from `config`."""
    return AutoModel.from_config(config, dtype=torch.float32)
