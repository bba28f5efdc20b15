"""The relation math against the per-sample reference: loss and student gradients, fp32, many shapes."""

from __future__ import annotations

import os
import sys

import pytest
import torch
from reference_minilm import make_mask, per_sample_relation_loss, relative_error

from minilmv2.relations import (
    merge_relation_heads,
    relation_loss,
    relation_row_weights,
    resolve_kernel,
    split_relation_heads,
)

ALL_PAIRS = [(i, j) for i in (1, 2, 3) for j in (1, 2, 3)]

CASES = [
    # batch, seq, teacher hidden, student hidden, A_r, lengths, relations
    (3, 7, 48, 24, 4, [7, 3, 1], {(1, 1): 1.0, (2, 2): 1.0, (3, 3): 1.0}),
    (2, 12, 64, 32, 8, [12, 5], {(1, 2): 1.0, (3, 3): 1.0}),
    (4, 9, 36, 12, 6, [2, 9, 4, 6], {(2, 1): 0.5, (1, 3): 2.0, (3, 2): 0.25}),
    (2, 5, 16, 16, 16, [5, 2], {pair: 0.1 * n for n, pair in enumerate(ALL_PAIRS, start=1)}),
    (1, 16, 96, 48, 3, [11], {(3, 1): 1.0}),
]


def random_states(batch, seq, hidden, requires_grad=False, scale=2.0):
    return {kind: (scale * torch.randn(batch, seq, hidden)).requires_grad_(requires_grad) for kind in (1, 2, 3)}


# MINILMV2_TEST_DEVICE=cuda (bench/gpu_check.sh) runs the exactness test below on a GPU, where "auto" is the
# Triton kernel and "torch" the chunked path.
DEVICE = torch.device(os.environ.get("MINILMV2_TEST_DEVICE", "cpu"))
KERNELS_ON_DEVICE = ["auto", "torch"] if DEVICE.type == "cuda" else ["auto"]


@pytest.mark.parametrize("kernel", KERNELS_ON_DEVICE)
@pytest.mark.parametrize("side", ["right", "left", "none"])
@pytest.mark.parametrize("case", range(len(CASES)))
@pytest.mark.parametrize("groups_per_chunk", [None, 1, 5])  # 5 leaves a partial last chunk in most cases
def test_loss_and_gradients_match_per_sample_reference(case, side, groups_per_chunk, kernel):
    batch, seq, teacher_hidden, student_hidden, heads, lengths, relations = CASES[case]
    chunk_elements = None if groups_per_chunk is None else groups_per_chunk * seq * seq
    torch.manual_seed(case)
    lengths = [seq] * batch if side == "none" else lengths
    mask = make_mask(lengths, seq, "right" if side == "none" else side)
    teacher = random_states(batch, seq, teacher_hidden)
    student = random_states(batch, seq, student_hidden, requires_grad=True)
    on_device = {k: v.detach().to(DEVICE).requires_grad_(True) for k, v in student.items()}

    loss, pair_losses = relation_loss(
        {k: v.to(DEVICE) for k, v in teacher.items()},
        on_device,
        mask.bool().to(DEVICE),
        relations,
        heads,
        chunk_elements,
        kernel=kernel,
    )
    loss.backward()
    loss, pair_losses = loss.cpu(), {pair: value.cpu() for pair, value in pair_losses.items()}
    grads = {kind: on_device[kind].grad.cpu() for kind in on_device if on_device[kind].grad is not None}

    reference_student = {k: v.detach().double().requires_grad_(True) for k, v in student.items()}
    expected = per_sample_relation_loss(teacher, reference_student, mask, relations, heads)
    expected.backward()

    assert loss.dtype == torch.float32
    assert relative_error(loss, expected) < 1e-4
    used_kinds = {kind for pair in relations for kind in pair}
    assert set(grads) == used_kinds
    for kind in used_kinds:
        assert relative_error(grads[kind], reference_student[kind].grad) < 1e-4, kind
        # padded positions get no gradient at all
        assert torch.all(grads[kind][~mask.bool()] == 0)
    for pair, value in pair_losses.items():
        alone = per_sample_relation_loss(teacher, student, mask, {pair: 1.0}, heads)
        assert relative_error(value, alone) < 1e-4


@pytest.mark.parametrize("side", ["right", "left"])
def test_appending_padding_changes_nothing(side):
    torch.manual_seed(3)
    batch, seq, extra = 3, 6, 5
    teacher, student = random_states(batch, seq, 32), random_states(batch, seq, 16)
    mask = make_mask([6, 4, 2], seq, side)
    relations = {(1, 1): 1.0, (2, 3): 0.5}
    loss, _ = relation_loss(teacher, student, mask.bool(), relations, 4)

    def pad(x):  # padding goes on the same side the rows are already padded on
        filler = torch.randn(x.shape[0], extra, x.shape[2]) * 100  # garbage that must be ignored
        return torch.cat([filler, x], 1) if side == "left" else torch.cat([x, filler], 1)

    padded_mask = torch.cat([torch.zeros(batch, extra, dtype=torch.long), mask], 1)
    if side == "right":
        padded_mask = torch.cat([mask, torch.zeros(batch, extra, dtype=torch.long)], 1)
    padded_loss, _ = relation_loss(
        {k: pad(v) for k, v in teacher.items()},
        {k: pad(v) for k, v in student.items()},
        padded_mask.bool(),
        relations,
        4,
    )
    assert relative_error(padded_loss, loss) < 1e-5


def test_fully_padded_and_single_token_rows_stay_finite_under_bf16():
    torch.manual_seed(4)
    teacher = random_states(3, 8, 32, scale=30.0)
    student = {k: v.bfloat16().requires_grad_(True) for k, v in random_states(3, 8, 16, scale=30.0).items()}
    mask = make_mask([0, 1, 8], 8, "right")
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, _ = relation_loss(teacher, student, mask.bool(), {(1, 1): 1.0, (2, 3): 1.0}, 4)
    loss.backward()
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    for kind in (1, 2, 3):
        assert torch.isfinite(student[kind].grad).all()
        assert torch.all(student[kind].grad[0] == 0)  # the empty sample contributes nothing
    # A single real token has a one-point distribution for both models: zero loss.
    alone, _ = relation_loss(teacher, student, make_mask([1], 8, "left").bool().expand(3, 8), {(1, 1): 1.0}, 4)
    assert alone.abs().item() < 1e-6


def test_identical_states_give_zero_loss_and_gradient():
    states = random_states(2, 5, 16)
    student = {k: v.clone().requires_grad_(True) for k, v in states.items()}
    loss, _ = relation_loss(states, student, torch.ones(2, 5, dtype=torch.bool), {(1, 2): 1.0}, 4)
    loss.backward()
    assert abs(loss.item()) < 1e-6
    assert student[1].grad.abs().max() < 1e-5


def test_teacher_targets_get_no_gradient():
    teacher = random_states(2, 5, 16, requires_grad=True)
    student = random_states(2, 5, 8, requires_grad=True)
    loss, _ = relation_loss(teacher, student, torch.ones(2, 5, dtype=torch.bool), {(1, 1): 1.0}, 4)
    loss.backward()
    assert teacher[1].grad is None and student[1].grad is not None


def test_row_weights_and_head_split_round_trip():
    mask = make_mask([3, 0, 1], 4, "left").bool()
    weights = relation_row_weights(mask, num_relation_heads=2)
    # two non-empty samples: each real token of sample b weighs 1 / (2 heads * len_b * 2 samples)
    assert torch.allclose(weights[0], torch.tensor([0, 1 / 12, 1 / 12, 1 / 12]))
    assert torch.all(weights[1] == 0)
    assert torch.allclose(weights[2], torch.tensor([0, 0, 0, 1 / 4]))
    states = torch.randn(3, 4, 12)
    groups = split_relation_heads(states, 3)
    assert groups.shape == (9, 4, 4)
    assert torch.equal(groups[1 * 3 + 2], states[1, :, 8:12])  # sample 1, head 2
    assert torch.equal(merge_relation_heads(groups, 3), states)


def test_compiled_chunk_math_matches_the_eager_reference_path():
    torch.manual_seed(5)
    teacher, student = random_states(3, 10, 32), random_states(3, 10, 16, requires_grad=True)
    mask = make_mask([10, 6, 0], 10, "left").bool()
    relations = {(1, 2): 1.0, (3, 3): 0.5}
    eager, _ = relation_loss(teacher, student, mask, relations, 4, chunk_elements=400)
    eager.backward()
    eager_grads = {k: v.grad.clone() for k, v in student.items() if v.grad is not None}
    for v in student.values():
        v.grad = None
    compiled, _ = relation_loss(teacher, student, mask, relations, 4, chunk_elements=400, kernel="compile")
    compiled.backward()
    assert relative_error(compiled, eager) < 1e-5
    for kind, grad in eager_grads.items():
        assert relative_error(student[kind].grad, grad) < 1e-5


def test_no_gradient_work_under_no_grad(monkeypatch):
    import minilmv2.relations as relations_module

    seen = []
    real_chunk_fn = relations_module._chunk_fn

    def recording_chunk_fn(*args):
        seen.append(args[-1])  # need_grad
        return real_chunk_fn(*args)

    monkeypatch.setattr(relations_module, "_chunk_fn", recording_chunk_fn)
    teacher, student = random_states(2, 5, 16), random_states(2, 5, 8, requires_grad=True)
    mask = torch.ones(2, 5, dtype=torch.bool)
    with torch.no_grad():
        evaluated, _ = relation_loss(teacher, student, mask, {(1, 1): 1.0}, 4)
    assert seen == [False] and not evaluated.requires_grad
    trained, _ = relation_loss(teacher, student, mask, {(1, 1): 1.0}, 4)
    assert seen == [False, True] and torch.equal(trained.detach(), evaluated)


def test_kernel_choice(monkeypatch):
    with pytest.raises(ValueError, match="relation kernel must be one of auto, torch, compile, triton; got 'cuda'"):
        resolve_kernel("cuda", "cpu")
    assert resolve_kernel("auto", "cpu") == "torch"
    assert resolve_kernel("torch", "cuda") == "torch" and resolve_kernel("compile", "cpu") == "compile"
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    with pytest.raises(ValueError, match="relation kernel 'triton'"):
        resolve_kernel("triton", "cpu")  # outside the interpreter the kernel needs CUDA tensors


def test_distils_on_cpu_without_triton(monkeypatch):
    """Triton is a GPU/test dependency: with it unimportable, "auto" is the PyTorch path and "triton" says why not."""
    monkeypatch.setitem(sys.modules, "triton", None)  # makes `import triton` fail, as if not installed
    assert resolve_kernel("auto", "cuda") == "torch"
    with pytest.raises(ValueError, match="needs the triton package"):
        resolve_kernel("triton", "cuda")
    teacher, student = random_states(2, 5, 16), random_states(2, 5, 8, requires_grad=True)
    loss, _ = relation_loss(teacher, student, torch.ones(2, 5, dtype=torch.bool), {(1, 2): 1.0}, 4, kernel="auto")
    loss.backward()
    assert torch.isfinite(loss) and student[1].grad is not None
