"""The first public MiniLMv2 reimplementation's algorithm, rewritten by us as the benchmark's baseline.

What it does (and what minilmv2 avoids): both models run in full with eager attention and every attention map
and hidden state kept; Q/K/V are recomputed from the hidden state entering the chosen layer; the full
B x A_r x S x S relation tensors of teacher and student are built at once; the KL is a Python loop over samples
with a device-to-host sync for the lengths. We pick each sample's real tokens by index rather than slicing
`[:len, :len]`, so the baseline is correct for left padding too and the comparison is like for like.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from minilmv2.architectures import qkv_projection


def relation_log_probs(left: torch.Tensor, right: torch.Tensor, additive_mask: torch.Tensor, heads: int):
    """(B, S, H) x2 -> log softmax relations (B, A_r, S, S)."""
    batch, seq, hidden = left.shape
    size = hidden // heads
    left = left.view(batch, seq, heads, size).transpose(1, 2)
    right = right.view(batch, seq, heads, size).transpose(1, 2)
    logits = left @ right.transpose(-1, -2) / math.sqrt(size) + additive_mask
    return F.log_softmax(logits.float(), dim=-1)


class ReferenceMiniLM(nn.Module):
    """Same call signature and loss as `minilmv2.MiniLM`, computed the first public reimplementation's way."""

    def __init__(self, teacher, student, L=None, M=None, relations=None, A_r=48, **unused):
        super().__init__()
        self.teacher, self.student = teacher, student
        self.L = L or teacher.config.num_hidden_layers
        self.M = M or student.config.num_hidden_layers
        self.relations, self.A_r = relations or {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}, A_r
        self.teacher.requires_grad_(False)
        for model in (teacher, student):  # attention maps exist only with eager attention in transformers 5
            model.set_attn_implementation("eager")

    def cast_teacher(self, dtype):
        """The reference keeps its teacher in fp32 and lets autocast cast the weights every step."""
        return self

    def train(self, mode: bool = True):
        super().train(mode)
        self.teacher.eval()
        return self

    def forward(self, input_ids, attention_mask, token_type_ids=None, **unused):
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, output_attentions=True)
        if token_type_ids is not None:
            inputs["token_type_ids"] = token_type_ids
        with torch.no_grad():
            teacher_out = self.teacher(**inputs, output_hidden_states=True)
            teacher_hidden = teacher_out.hidden_states[self.L - 1]
            teacher_states = {k: qkv_projection(self.teacher, self.L - 1, k)(teacher_hidden) for k in (1, 2, 3)}
        student_out = self.student(**inputs, output_hidden_states=True)
        student_hidden = student_out.hidden_states[self.M - 1]
        student_states = {k: qkv_projection(self.student, self.M - 1, k)(student_hidden) for k in (1, 2, 3)}

        additive_mask = (1.0 - attention_mask[:, None, None, :].float()) * -10000.0
        lengths = attention_mask.sum(dim=1).tolist()  # the reference's host sync
        loss = 0.0
        for (i, j), weight in self.relations.items():
            teacher_rel = relation_log_probs(teacher_states[i], teacher_states[j], additive_mask, self.A_r)
            student_rel = relation_log_probs(student_states[i], student_states[j], additive_mask, self.A_r)
            pair_loss = 0.0
            for b, length in enumerate(lengths):
                real = attention_mask[b].nonzero().flatten()
                t = teacher_rel[b][:, real][:, :, real]
                s = student_rel[b][:, real][:, :, real]
                pair_loss = pair_loss + F.kl_div(s, t, log_target=True, reduction="sum") / (self.A_r * length)
            loss = loss + weight * pair_loss / len(lengths)
        return {"loss": loss}
