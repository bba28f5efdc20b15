"""The MiniLM distiller: a frozen teacher, a student, and the relation loss between their Q/K/V."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch
from torch import nn
from transformers.utils import ModelOutput

from minilmv2.architectures import qkv_states
from minilmv2.relations import DEFAULT_RELATIONS, V1_RELATIONS, check_kernel, relation_loss
from minilmv2.shapes import check_distillation_shapes, validate_relations  # noqa: F401 (validate_relations: API)


@dataclass
class MiniLMOutput(ModelOutput):
    """`loss`: formula (8), fp32 scalar. `out[0]` and `out["loss"]` are the same tensor."""

    loss: torch.Tensor | None = None


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
        # The command line runs the same check on configs before any weights load (minilmv2.shapes).
        shapes = check_distillation_shapes(teacher.config, student.config, L=L, M=M, A_r=A_r, relations=relations)
        self.relations = shapes.relations
        self.teacher, self.student = teacher, student
        self.L, self.M, self.A_r = shapes.L, shapes.M, shapes.A_r
        self.chunk_elements = chunk_elements
        self.kernel = check_kernel(kernel)  # relation-loss implementation, see minilmv2.relations.KERNELS
        self.kinds = {kind for pair in self.relations for kind in pair}

        self.teacher.requires_grad_(False)
        self.teacher.eval()
        self._freeze_unreached_student_parameters()

    @classmethod
    def v1(cls, teacher: nn.Module, student: nn.Module, L: int | None = None, M: int | None = None, **kwargs):
        """MiniLM v1 preset: relations {(Q, K), (V, V)} with one relation head per attention head.

        Equal teacher and student head counts are required; an `A_r` given must be that count (it is used, never
        silently replaced).
        """
        shapes = check_distillation_shapes(
            teacher.config, student.config, L=L, M=M, A_r=kwargs.pop("A_r", None), minilm_v1=True
        )
        return cls(teacher, student, L=shapes.L, M=shapes.M, relations=shapes.relations, A_r=shapes.A_r, **kwargs)

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
        """input_ids, attention_mask, token_type_ids: (B, S); no attention_mask: no padding.

        Returns MiniLMOutput(loss=fp32 scalar).
        """
        # Inference mode is the cheapest way to run the frozen teacher, but torch.compile cannot trace it;
        # under compilation no_grad gives the same graph.
        with torch.no_grad() if torch.compiler.is_compiling() else torch.inference_mode():
            teacher_states = qkv_states(self.teacher, self.L, self.kinds, input_ids, attention_mask, token_type_ids)
        student_states = qkv_states(self.student, self.M, self.kinds, input_ids, attention_mask, token_type_ids)
        loss, _ = relation_loss(
            teacher_states,
            student_states,
            torch.ones_like(input_ids, dtype=torch.bool) if attention_mask is None else attention_mask.bool(),
            self.relations,
            self.A_r,
            self.chunk_elements,
            kernel=self.kernel,
        )
        return MiniLMOutput(loss=loss)


__all__ = ["MiniLM", "MiniLMOutput", "DEFAULT_RELATIONS", "V1_RELATIONS"]
