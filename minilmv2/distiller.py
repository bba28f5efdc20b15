"""The MiniLM distiller: a frozen teacher, a student, and the relation loss between their Q/K/V."""

from __future__ import annotations

import numbers
from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from minilmv2.architectures import encoder_layers, qkv_states, qkv_width
from minilmv2.relations import KEY, KIND_NAMES, QUERY, VALUE, check_kernel, relation_loss

# The reference's default: Q-Q, K-K and V-V relations with weight 1 each.
DEFAULT_RELATIONS: dict[tuple[int, int], float] = {(QUERY, QUERY): 1.0, (KEY, KEY): 1.0, (VALUE, VALUE): 1.0}
# MiniLM v1 in MiniLMv2 terms: attention distributions (Q-K) and value relation (V-V), one relation head per
# attention head.
V1_RELATIONS: dict[tuple[int, int], float] = {(QUERY, KEY): 1.0, (VALUE, VALUE): 1.0}


@dataclass
class MiniLMOutput(ModelOutput):
    """`loss`: formula (8), fp32 scalar. `out[0]` and `out["loss"]` are the same tensor."""

    loss: torch.Tensor | None = None


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


class MiniLM(nn.Module):
    """MiniLMv2 multi-head self-attention relation distillation (Wang et al., 2021).

    The teacher's layer `L` and the student's layer `M` (1-based; default: the last layer of each) are compared
    through `relations`, a mapping of (i, j) pairs of 1=Q, 2=K, 3=V to weights, with `A_r` relation heads.

    Both models run their own forward (see minilmv2.architectures), and only what the loss needs is computed:
    the teacher runs under inference mode and stops at layer L's Q/K/V, the student at layer M's. The student
    parameters this leaves without a gradient (layer M's attention output and FFN, layers above M, a pooler or
    final norm, unused projections) are found by following the autograd graph of one tiny capture, whatever the
    architecture, and set to `requires_grad=False` here, so DDP sees only parameters that always get a gradient
    and needs no `find_unused_parameters`. They are trained at fine-tuning time, as in the paper.
    """

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        L: int | None = None,
        M: int | None = None,
        relations: Mapping[tuple[int, int], float] | None = None,
        A_r: int = 48,
        chunk_elements: int | None = None,
        kernel: str = "auto",
    ):
        super().__init__()
        self.relations = validate_relations(DEFAULT_RELATIONS if relations is None else relations)
        teacher_layers, student_layers = len(encoder_layers(teacher)), len(encoder_layers(student))
        L = teacher_layers if L is None else L
        M = student_layers if M is None else M
        for name, value, upper in (
            ("L (teacher layer)", L, teacher_layers),
            ("M (student layer)", M, student_layers),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= upper:
                raise ValueError(f"{name} must be an integer in 1..{upper}, got {value!r}")
        if isinstance(A_r, bool) or not isinstance(A_r, int) or A_r < 1:
            raise ValueError(f"A_r (relation heads) must be a positive integer, got {A_r!r}")
        for who, model in (("teacher", teacher), ("student", student)):
            hidden = qkv_width(model, L if who == "teacher" else M)
            if hidden % A_r:
                divisors = [d for d in (1, 2, 4, 8, 12, 16, 24, 32, 48, 64) if hidden % d == 0]
                raise ValueError(
                    f"A_r (relation heads) = {A_r} does not divide the {who} hidden size {hidden}; "
                    f"valid choices include {divisors}"
                )
        student_heads = student.config.num_attention_heads
        if student.config.hidden_size % student_heads:
            raise ValueError(
                f"student attention heads ({student_heads}) must divide the student hidden size "
                f"({student.config.hidden_size})"
            )
        self.teacher, self.student = teacher, student
        self.L, self.M, self.A_r = L, M, A_r
        self.chunk_elements = chunk_elements
        self.kernel = check_kernel(kernel)  # relation-loss implementation, see minilmv2.relations.KERNELS
        self.kinds = {kind for pair in self.relations for kind in pair}

        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._freeze_unreached_student_parameters()

    @classmethod
    def v1(cls, teacher: nn.Module, student: nn.Module, L: int | None = None, M: int | None = None, **kwargs):
        """MiniLM v1 preset: relations {(Q, K), (V, V)} with one relation head per attention head."""
        teacher_heads, student_heads = teacher.config.num_attention_heads, student.config.num_attention_heads
        if teacher_heads != student_heads:
            raise ValueError(
                f"MiniLM v1 needs equal attention head counts, got teacher {teacher_heads} and student "
                f"{student_heads}; use the v2 relations (any A_r dividing both hidden sizes) instead"
            )
        return cls(teacher, student, L=L, M=M, relations=V1_RELATIONS, A_r=student_heads, **kwargs)

    def _freeze_unreached_student_parameters(self) -> None:
        """Freeze the trainable student parameters that layer M's captured Q/K/V (all the loss reads) do not depend on.

        One capture of a 4-token input, in eval mode (no dropout, so no random numbers are drawn); a parameter
        outside its autograd graph can never get a gradient from the loss.
        """
        trainable = [p for p in self.student.parameters() if p.requires_grad]
        if not trainable:
            return
        device = trainable[0].device
        probe_ids = (torch.arange(4, device=device) % self.student.config.vocab_size).unsqueeze(0)
        was_training = self.student.training
        self.student.eval()
        try:
            with torch.enable_grad():
                states = qkv_states(self.student, self.M, self.kinds, probe_ids, torch.ones_like(probe_ids))
                total = sum(state.float().sum() for state in states.values())
                if total.requires_grad:
                    grads = torch.autograd.grad(total, trainable, allow_unused=True)
                else:  # nothing the loss reads is trainable
                    grads = [None] * len(trainable)
        finally:
            self.student.train(was_training)
        for parameter, grad in zip(trainable, grads, strict=True):
            if grad is None:
                parameter.requires_grad_(False)

    def train(self, mode: bool = True) -> MiniLM:
        super().train(mode)
        self.teacher.eval()  # the teacher is a fixed target: no dropout, ever
        return self

    def cast_teacher(self, dtype: torch.dtype) -> MiniLM:
        """Keep the frozen teacher in the compute dtype (e.g. bf16), so no per-step weight casts happen."""
        self.teacher.to(dtype)
        return self

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        **unused,
    ) -> MiniLMOutput:
        """input_ids, attention_mask, token_type_ids: (B, S). Returns MiniLMOutput(loss=fp32 scalar)."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        # Inference mode is the cheapest way to run the frozen teacher, but torch.compile cannot trace it;
        # under compilation no_grad gives the same graph.
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            teacher_states = qkv_states(self.teacher, self.L, self.kinds, input_ids, attention_mask, token_type_ids)
        student_states = qkv_states(self.student, self.M, self.kinds, input_ids, attention_mask, token_type_ids)
        loss, _ = relation_loss(
            teacher_states,
            student_states,
            attention_mask.bool(),
            self.relations,
            self.A_r,
            self.chunk_elements,
            kernel=self.kernel,
        )
        return MiniLMOutput(loss=loss)


__all__ = ["MiniLM", "MiniLMOutput", "DEFAULT_RELATIONS", "V1_RELATIONS"]
