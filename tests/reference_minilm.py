"""Slow, obviously correct MiniLMv2 relation loss, written from the paper's formulas for the tests.

One sample, one relation head, one pair at a time, in float64, over the sample's real tokens picked by index
(so any padding side works). No chunking, no masking tricks, no custom gradients.
"""

from __future__ import annotations

import math

import torch


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
