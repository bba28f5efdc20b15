"""--student_init teacher_embeddings (minilmv2.student_init): copied when the widths match, else a projection that
keeps the geometry of the teacher's token embeddings; every supported architecture."""

from __future__ import annotations

import pytest
import torch
from scipy.stats import spearmanr
from test_shapes import CONFIGS
from transformers import AutoModel

from minilmv2 import build_student, student_config_from_teacher
from minilmv2.student_init import INIT_FIELD, embedding_tables, init_from_teacher_embeddings


def teacher_and_student(name: str, hidden: int, heads: int = 2):
    torch.manual_seed(0)
    teacher = AutoModel.from_config(CONFIGS[name]())
    torch.manual_seed(1)
    student = build_student(student_config_from_teacher(teacher.config, hidden, 1, heads))
    return teacher, student


EQUAL_WIDTHS = [name for name in CONFIGS if name != "electra"]  # ELECTRA's embeddings are 16 wide, its hidden 48


@pytest.mark.parametrize("name", EQUAL_WIDTHS)
def test_equal_widths_copy_every_table_both_models_have(name):
    teacher, student = teacher_and_student(name, CONFIGS[name]().hidden_size, heads=4)
    done = init_from_teacher_embeddings(student, teacher)
    teacher_tables, student_tables = embedding_tables(teacher), embedding_tables(student)
    assert set(student_tables) & set(teacher_tables) == {line.split(":")[0] for line in done}
    for table, values in student_tables.items():
        assert torch.equal(values.weight, teacher_tables[table].weight), table
    assert student.config.to_dict()[INIT_FIELD] == "teacher_embeddings"  # saved with the student's config.json


@pytest.mark.parametrize("name", list(CONFIGS))
def test_a_narrower_student_gets_the_projection_at_its_initialisers_spread(name):
    teacher, student = teacher_and_student(name, 24)
    before = {table: values.weight.clone() for table, values in embedding_tables(student).items()}
    done = init_from_teacher_embeddings(student, teacher)
    assert all("projected" in line for line in done)
    if name == "electra":  # a student wider than the teacher's 16-wide embeddings: 16 components, then zeros
        assert "top 16 principal components" in done[0]
    tokens = embedding_tables(student)["token"].weight
    assert tokens.std().item() == pytest.approx(student.config.initializer_range, rel=1e-3)
    for table in {line.split(":")[0] for line in done}:
        assert not torch.equal(embedding_tables(student)[table].weight, before[table])


def cosine_similarities(matrix: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    unit = torch.nn.functional.normalize(matrix.float(), dim=1)
    return (unit[pairs[:, 0]] * unit[pairs[:, 1]]).sum(1)


def test_the_projection_keeps_the_real_teachers_token_geometry(teacher_dir):
    """The packaged 6 x 384 teacher to a 256-wide student: token-pair cosine similarities keep their order."""
    teacher = AutoModel.from_pretrained(teacher_dir)
    torch.manual_seed(0)
    student = build_student(student_config_from_teacher(teacher.config, 256, 1, 4))
    random_tokens = embedding_tables(student)["token"].weight.detach().clone()
    init_from_teacher_embeddings(student, teacher)
    vocab = teacher.config.vocab_size
    pairs = torch.randint(1000, vocab, (500, 2), generator=torch.Generator().manual_seed(0))  # word pieces
    reference = cosine_similarities(embedding_tables(teacher)["token"].weight, pairs)
    projected = cosine_similarities(embedding_tables(student)["token"].weight, pairs)
    random = cosine_similarities(random_tokens, pairs)
    rho = spearmanr(reference.detach(), projected.detach()).statistic
    rho_random = spearmanr(reference.detach(), random).statistic
    assert rho >= 0.5 and abs(rho_random) <= 0.3, (rho, rho_random)
