"""Slow, obviously correct MiniLMv2 relation loss, written from the paper's formulas for the tests.

One sample, one relation head, one pair at a time, in float64, over the sample's real tokens picked by index
(so any padding side works). No chunking, no masking tricks, no custom gradients.
"""

from __future__ import annotations

import math
import sys
from contextlib import contextmanager

import torch

from minilmv2.architectures import base_model, encoder_layers, layout_for, qkv_projection


def per_sample_relation_loss(
    teacher_states: dict[int, torch.Tensor],
    student_states: dict[int, torch.Tensor],
    attention_mask: torch.Tensor,
    relations: dict[tuple[int, int], float],
    num_relation_heads: int,
) -> torch.Tensor:
    """Formulas (5)-(8). States {kind: (B, S, H)}; attention_mask (B, S). Returns a float64 scalar."""
    total = torch.zeros((), dtype=torch.float64)
    for (i, j), weight in relations.items():
        sample_losses = []
        for b in range(attention_mask.shape[0]):
            real = attention_mask[b].nonzero().flatten()
            if len(real) == 0:
                continue  # a sample without tokens has no relation to distil
            sample_loss = torch.zeros((), dtype=torch.float64)
            for head in range(num_relation_heads):
                t_i, t_j, s_i, s_j = (
                    head_slice(states[kind][b, real].double(), head, num_relation_heads)
                    for states, kind in (
                        (teacher_states, i),
                        (teacher_states, j),
                        (student_states, i),
                        (student_states, j),
                    )
                )
                teacher_rel = torch.softmax(t_i @ t_j.T / math.sqrt(t_i.shape[-1]), dim=-1)
                student_rel = torch.softmax(s_i @ s_j.T / math.sqrt(s_i.shape[-1]), dim=-1)
                sample_loss = sample_loss + (teacher_rel * (teacher_rel.log() - student_rel.log())).sum()
            sample_losses.append(sample_loss / (num_relation_heads * len(real)))
        total = total + weight * torch.stack(sample_losses).mean()
    return total


def head_slice(states: torch.Tensor, head: int, num_heads: int) -> torch.Tensor:
    """(n, H) -> (n, H / num_heads): the columns of relation head `head`."""
    size = states.shape[-1] // num_heads
    return states[:, head * size : (head + 1) * size]


def make_mask(lengths: list[int], seq_len: int, side: str) -> torch.Tensor:
    """(B, S) long mask with `lengths` real tokens per row, padded on `side` ('right', 'left' or 'none')."""
    mask = torch.zeros(len(lengths), seq_len, dtype=torch.long)
    for row, length in enumerate(lengths):
        if side == "left":
            mask[row, seq_len - length :] = 1
        else:
            mask[row, :length] = 1
    return mask


def relative_error(actual: torch.Tensor, expected: torch.Tensor) -> float:
    """||actual - expected|| / ||expected||, in float64."""
    return ((actual.double() - expected.double()).norm() / expected.double().norm().clamp(min=1e-30)).item()


@contextmanager
def recorded_qkv(model, layer: int):
    """Record layer `layer`'s (1-based) Q/K/V, {kind: (B, S, H)}, while the model runs a full forward as it is.

    For models that call attention through AttentionInterface, the model must be configured with eager attention:
    the module-level `eager_attention_forward` of its modeling file, which the attention looks up at call time, is
    wrapped to record what it is given (after rotary embeddings). For the others, forward hooks on the Q/K/V
    projections keep their first (B, S, H) output (DeBERTa also projects its 2-D relative embeddings).
    Nothing stops the forward: every layer runs.
    """
    layout, recorded = layout_for(model), {}
    if layout.attention is not None:
        assert model.config._attn_implementation == "eager", "the reference records the eager attention"
        modeling = sys.modules[type(base_model(model)).__module__]
        original = modeling.eager_attention_forward
        target = encoder_layers(model)[layer - 1].get_submodule(layout.attention)

        def recording(module, query, key, value, *args, **kwargs):
            if module is target:  # (B, heads, S, d) -> (B, S, H)
                for kind, states in ((1, query), (2, key), (3, value)):
                    recorded[kind] = states.transpose(1, 2).reshape(*states.shape[:1], states.shape[2], -1)
            return original(module, query, key, value, *args, **kwargs)

        modeling.eager_attention_forward = recording
        try:
            yield recorded
        finally:
            modeling.eager_attention_forward = original
    else:
        handles = []
        for kind in (1, 2, 3):

            def hook(module, inputs, output, kind=kind):
                if output.dim() == 3 and kind not in recorded:
                    recorded[kind] = output

            handles.append(qkv_projection(model, layer - 1, kind).register_forward_hook(hook))
        try:
            yield recorded
        finally:
            for handle in handles:
                handle.remove()
