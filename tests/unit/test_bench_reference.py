"""The benchmark's baseline (the first public reimplementation's algorithm) computes the same loss as minilmv2,
so the speed and memory comparisons in bench/ are like for like."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from reference_minilm import relative_error
from test_distiller import batch_for, tiny_pair

from minilmv2 import MiniLM

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
from reference_algorithm import ReferenceMiniLM  # noqa: E402


@pytest.mark.parametrize("side", ["right", "left"])
def test_reference_algorithm_matches_minilm(side):
    teacher, student = tiny_pair("bert", student_layers=2)
    batch = batch_for("bert", [9, 6, 2], 9, side)
    relations = {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}
    ours = MiniLM(teacher=teacher, student=student, relations=relations, A_r=4)(**batch).loss
    baseline = ReferenceMiniLM(teacher, student, relations=relations, A_r=4)(**batch)["loss"]
    assert relative_error(baseline, ours) < 1e-4
    baseline.backward()
    assert student.embeddings.word_embeddings.weight.grad is not None and torch.isfinite(baseline)
