"""The fused Triton relation kernel against the PyTorch path (itself tested against the per-sample reference).

Without a GPU the kernel runs through Triton's interpreter on CPU tensors: TRITON_INTERPRET=1 must be set before
`minilmv2.relation_kernel` is imported (triton decides at decoration time whether a kernel is compiled or
interpreted), hence the assignment above the imports. With a GPU the same tests run the compiled kernel on CUDA.
The interpreter costs seconds per call, so the shapes are small; together they still cover several tiles with a
partial last one (S = 35 with the interpreter's 32-wide tiles), head sizes below 16 and not powers of two,
teacher and student head sizes that differ, same-tensor and cross pairs, both padding sides, a fully padded
sample, bf16 and fp16.
"""

from __future__ import annotations

import os

import pytest
import torch

ON_GPU = torch.cuda.is_available()
_interpret_before = os.environ.get("TRITON_INTERPRET")
if not ON_GPU:
    os.environ["TRITON_INTERPRET"] = "1"
triton = pytest.importorskip("triton")

from reference_minilm import make_mask, per_sample_relation_loss, relative_error  # noqa: E402
from transformers import AutoModel, BertConfig  # noqa: E402

from minilmv2 import MiniLM, build_student, relation_kernel, student_config_from_teacher  # noqa: E402
from minilmv2.relations import relation_loss  # noqa: E402

DEVICE = torch.device("cuda" if ON_GPU else "cpu")
# The kernels are decorated now; the rest of the test session (subprocesses included) should not inherit the
# setting, so it is put back and set again only around this module's tests.
if _interpret_before is None:
    os.environ.pop("TRITON_INTERPRET", None)
else:
    os.environ["TRITON_INTERPRET"] = _interpret_before


@pytest.fixture(autouse=True)
def triton_interpreter(monkeypatch):
    """kernel="triton" accepts CPU tensors only while TRITON_INTERPRET is set (minilmv2.relations.resolve_kernel)."""
    if not ON_GPU:
        monkeypatch.setenv("TRITON_INTERPRET", "1")


CASES = {
    # seq, teacher hidden, student hidden, A_r, lengths, padding side, relations, dtype
    "fp32-right-QQ-QK": (17, 24, 12, 2, [17, 9], "right", {(1, 1): 1.0, (1, 2): 0.5}, torch.float32),
    # Left padding with 3 real tokens in 35: the first 32-key tile of that sample is all padding.
    "bf16-left-KV-VV-empty": (35, 40, 16, 2, [3, 35, 0], "left", {(2, 3): 1.0, (3, 3): 2.0}, torch.bfloat16),
    "fp16-right-VQ-tiny": (5, 20, 12, 1, [3, 5], "right", {(3, 1): 1.0}, torch.float16),
}


def random_states(batch, seq, hidden, dtype, requires_grad=False, seed=0):
    generator = torch.Generator().manual_seed(seed)
    states = {}
    for kind in (1, 2, 3):
        values = (2.0 * torch.randn(batch, seq, hidden, generator=generator)).to(DEVICE, dtype)
        states[kind] = values.requires_grad_(requires_grad)
    return states


def loss_and_grads(teacher, student, mask, relations, heads, kernel):
    student = {kind: states.detach().clone().requires_grad_(True) for kind, states in student.items()}
    loss, pair_losses = relation_loss(teacher, student, mask, relations, heads, kernel=kernel)
    loss.backward()
    return loss, pair_losses, {kind: s.grad for kind, s in student.items() if s.grad is not None}


@pytest.mark.parametrize("case", list(CASES))
def test_kernel_matches_torch_path(case):
    seq, teacher_hidden, student_hidden, heads, lengths, side, relations, dtype = CASES[case]
    mask = make_mask(lengths, seq, side).bool().to(DEVICE)
    teacher = random_states(len(lengths), seq, teacher_hidden, dtype, seed=1)
    student = random_states(len(lengths), seq, student_hidden, dtype, seed=2)

    loss, pair_losses, grads = loss_and_grads(teacher, student, mask, relations, heads, "triton")
    expected, expected_pairs, expected_grads = loss_and_grads(teacher, student, mask, relations, heads, "torch")

    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    # Both paths compute the logits from the same bf16/fp16 values in fp32; only summation order differs.
    assert relative_error(loss, expected) < 1e-5
    for pair in relations:
        assert relative_error(pair_losses[pair], expected_pairs[pair]) < 1e-5, pair
    assert set(grads) == set(expected_grads) == {kind for pair in relations for kind in pair}
    # Both paths round their fp32 gradients to the student dtype at the end: allow that rounding, no more.
    tolerance = 1e-5 if dtype == torch.float32 else 2 * torch.finfo(dtype).eps
    for kind, grad in grads.items():
        assert grad.dtype == dtype and torch.isfinite(grad).all(), kind
        assert relative_error(grad.float(), expected_grads[kind].float()) < tolerance, kind
        assert torch.all(grad[~mask] == 0), kind  # padded tokens, and the empty sample, get no gradient


def test_kernel_matches_per_sample_reference_directly():
    """One case straight against the float64 reference, so the kernel is not only as right as the torch path."""
    seq, heads, relations = 17, 3, {(1, 1): 1.0, (2, 1): 1.0}
    mask = make_mask([17, 6], seq, "left").to(DEVICE)
    teacher = random_states(2, seq, 30, torch.float32, seed=3)
    student = random_states(2, seq, 9, torch.float32, seed=4)
    loss, _, grads = loss_and_grads(teacher, student, mask.bool(), relations, heads, "triton")
    reference_student = {k: v.detach().cpu().double().requires_grad_(True) for k, v in student.items()}
    cpu_teacher = {k: v.cpu() for k, v in teacher.items()}
    expected = per_sample_relation_loss(cpu_teacher, reference_student, mask.cpu(), relations, heads)
    expected.backward()
    assert relative_error(loss.cpu(), expected) < 1e-5
    for kind in (1, 2):
        assert relative_error(grads[kind].cpu(), reference_student[kind].grad) < 1e-5, kind


def test_evaluation_pass_computes_no_gradients():
    mask = make_mask([17, 4], 17, "right").bool().to(DEVICE)
    teacher = random_states(2, 17, 24, torch.float32, seed=5)
    student = random_states(2, 17, 12, torch.float32, requires_grad=True, seed=6)
    trained, _ = relation_loss(teacher, student, mask, {(2, 2): 1.0}, 2, kernel="torch")
    with torch.no_grad():
        evaluated, _ = relation_loss(teacher, student, mask, {(2, 2): 1.0}, 2, kernel="triton")
    assert not evaluated.requires_grad
    assert relative_error(evaluated, trained.detach()) < 1e-5


def test_kernels_run_interpreted_on_cpu_or_compiled_on_gpu():
    """Guards the premise of this file: without a GPU the kernel really ran in the interpreter."""
    kind = type(relation_kernel._relation_kl_forward).__name__
    assert kind == ("JITFunction" if ON_GPU else "InterpretedFunction")


def test_minilm_with_triton_kernel_matches_torch_kernel():
    """The distiller end to end: inference-mode teacher states, a real student's parameter gradients. On a GPU
    the CPU's PyTorch path (which tests/unit/test_distiller.py checks against full forwards) is a third opinion."""
    config = BertConfig(
        vocab_size=50,
        hidden_size=48,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.2,  # the default 0.02 gives near-uniform relations and a KL lost in fp32 rounding
    )
    torch.manual_seed(0)
    teacher = AutoModel.from_config(config)
    student = build_student(student_config_from_teacher(config, 24, 2, 2))
    mask = make_mask([9, 6], 9, "right")
    batch = {"input_ids": torch.randint(3, 50, (2, 9)).masked_fill(mask == 0, 0), "attention_mask": mask}
    results = {}
    runs = [("triton", DEVICE), ("torch", DEVICE)] + ([("torch", torch.device("cpu"))] if ON_GPU else [])
    for kernel, device in runs:
        teacher, student = teacher.to(device), student.to(device)
        student.zero_grad()
        distiller = MiniLM(teacher, student, relations={(1, 2): 1.0}, A_r=4, kernel=kernel)
        loss = distiller(**{k: v.to(device) for k, v in batch.items()}).loss
        loss.backward()
        grads = {name: p.grad.cpu() for name, p in student.named_parameters() if p.grad is not None}
        results[kernel, device.type] = loss.detach().cpu(), grads
    loss, grads = results["triton", DEVICE.type]
    for expected, expected_grads in (results[run] for run in results if run[0] == "torch"):
        assert relative_error(loss, expected) < 1e-5
        assert grads.keys() == expected_grads.keys() and grads
        # One vector of all parameter gradients: the key bias's is zero in exact arithmetic (a softmax ignores a
        # constant added to a row), so per tensor it would be fp32 noise against fp32 noise.
        flat = torch.cat([grads[name].flatten() for name in sorted(grads)])
        expected_flat = torch.cat([expected_grads[name].flatten() for name in sorted(grads)])
        assert relative_error(flat, expected_flat) < 1e-5
        query = "encoder.layer.1.attention.self.query.weight"
        assert relative_error(grads[query], expected_grads[query]) < 1e-5
