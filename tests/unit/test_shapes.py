"""The one shape check (minilmv2.shapes), on configs: widths per architecture, library and flag wording, v1."""

from __future__ import annotations

import re

import pytest
import torch
from transformers import (
    AutoModel,
    BertConfig,
    DebertaV2Config,
    DistilBertConfig,
    ElectraConfig,
    ModernBertConfig,
    MPNetConfig,
    RobertaConfig,
)

from minilmv2.architectures import encoder_layers, layout_for, qkv_projection
from minilmv2.relations import DEFAULT_RELATIONS, QUERY, V1_RELATIONS, relations_literal
from minilmv2.shapes import StudentShape, check_distillation_shapes, library_name, qkv_width_from_config
from minilmv2.startup_checks import shape_option_name
from minilmv2.student import student_config_from_teacher

SHAPE = dict(vocab_size=50, hidden_size=48, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64)
CONFIGS = {
    "bert": lambda: BertConfig(**SHAPE),
    "roberta": lambda: RobertaConfig(**SHAPE, pad_token_id=1),
    "electra": lambda: ElectraConfig(**SHAPE, embedding_size=16),
    "distilbert": lambda: DistilBertConfig(vocab_size=50, dim=48, n_layers=3, n_heads=4, hidden_dim=64),
    "modernbert": lambda: ModernBertConfig(**SHAPE, pad_token_id=0, bos_token_id=2, cls_token_id=2, eos_token_id=3,
                                           sep_token_id=3, local_attention=4, global_attn_every_n_layers=2),
    "mpnet": lambda: MPNetConfig(**SHAPE, pad_token_id=1),
    "deberta-v2": lambda: DebertaV2Config(**SHAPE, type_vocab_size=0),
    # A head size of its own: Q/K/V are 4 x 16 = 64 wide, not the hidden size 48.
    "deberta-v2 head size 16": lambda: DebertaV2Config(**SHAPE, type_vocab_size=0, attention_head_size=16),
}  # fmt: skip


def qkv_width(model, layer: int) -> int:
    """Width H of the Q/K/V states of `layer` (1-based), read off the model's own projection."""
    layout = layout_for(model)
    if layout.fused_projection is not None:
        return encoder_layers(model)[layer - 1].get_submodule(layout.fused_projection).out_features // 3
    return qkv_projection(model, layer - 1, QUERY).out_features


@pytest.mark.parametrize("name", list(CONFIGS))
def test_width_from_the_config_is_the_models_qkv_width(name):
    config = CONFIGS[name]()
    torch.manual_seed(0)
    model = AutoModel.from_config(config)
    assert qkv_width_from_config(config) == qkv_width(model, 1) == qkv_width(model, 3)
    student = student_config_from_teacher(config, hidden_size=24, num_layers=2, num_attention_heads=2)
    assert qkv_width_from_config(student) == qkv_width(AutoModel.from_config(student), 2) == 24


def test_defaults_and_config_or_shape_alike():
    teacher = CONFIGS["bert"]()
    student_config = student_config_from_teacher(teacher, 24, 2, 2)
    from_config = check_distillation_shapes(teacher, student_config, A_r=4)
    from_shape = check_distillation_shapes(teacher, StudentShape(24, 2, 2), A_r=4)
    assert from_config == from_shape
    assert (from_shape.L, from_shape.M, from_shape.A_r, from_shape.relations) == (3, 2, 4, DEFAULT_RELATIONS)
    assert relations_literal(DEFAULT_RELATIONS) == "{(1, 1): 1, (2, 2): 1, (3, 3): 1}"


CASES = [
    # (arguments, the library's words, the command line's words)
    ({"L": 0}, "L (teacher layer) = 0 is out of range: the teacher has 3 layers; use 1..3",
     "the teacher layer --L 0 is out of range: the teacher has 3 layers; use 1..3"),
    ({"L": 4}, "L (teacher layer) = 4 is out of range: the teacher has 3 layers; use 1..3",
     "the teacher layer --L 4 is out of range: the teacher has 3 layers; use 1..3"),
    ({"M": 3}, "M (student layer) = 3 is out of range: the student has 2 layers; use 1..2", None),
    ({"A_r": 0}, "A_r (relation heads) = 0 is not valid: give a positive whole number",
     "the number of relation heads A_r --num_relation_heads 0 is not valid: give a positive whole number"),
    ({"A_r": 5}, "A_r (relation heads) = 5 does not divide the teacher hidden size 48; values dividing both hidden "
     "sizes: [1, 2, 3, 4, 6, 8, 12, 24]",
     "the number of relation heads A_r --num_relation_heads 5 does not divide the teacher hidden size 48"),
    ({"A_r": 16}, "A_r (relation heads) = 16 does not divide the student hidden size 24",
     "--num_relation_heads 16 does not divide the student hidden size 24"),
    ({"A_r": None}, "A_r (relation heads) is required", "--num_relation_heads is required"),
    ({"student": StudentShape(24, 0, 2)}, "student layers = 0 is not valid: give a positive whole number",
     "the student's number of layers --student_num_layers 0 is not valid: give a positive whole number"),
    ({"student": StudentShape(24, 2, 5)}, "student attention heads = 5 does not divide student hidden size = 24",
     "the student's attention heads --student_attention_heads 5 does not divide the student hidden size "
     "--student_hidden_size 24; valid: [1, 2, 3, 4, 6, 8, 12, 24]"),
    ({"student": StudentShape(24, 2, 2, 0)}, "student intermediate size = 0 is not valid: give a positive whole number",
     "the student FFN size --student_intermediate_size 0 is not valid"),
    ({"relations": {(1, 4): 1.0}}, "relation pair (1, 4) is invalid", "relation pair (1, 4) is invalid"),
    ({"minilm_v1": True}, "MiniLM v1 needs equal attention head counts, got teacher 4 and student 2",
     "--minilm_v1 needs equal attention head counts, got teacher 4 and student 2 (--student_attention_heads)"),
    ({"minilm_v1": True, "student": StudentShape(24, 2, 4), "A_r": 8},
     "A_r (relation heads) = 8 does not apply with MiniLM v1, which uses one relation head per attention head (4)",
     "--num_relation_heads 8 does not apply with --minilm_v1, which uses one relation head per attention head (4)"),
]  # fmt: skip


WORDED = [(arguments, library_name, library_words) for arguments, library_words, _ in CASES] + [
    (arguments, shape_option_name, flag_words) for arguments, _, flag_words in CASES if flag_words is not None
]


@pytest.mark.parametrize("arguments, name, words", WORDED)
def test_bad_shapes_are_refused_in_the_callers_words(arguments, name, words):
    arguments = {"student": StudentShape(24, 2, 2), "A_r": 4, **arguments}
    with pytest.raises(ValueError) as caught:
        check_distillation_shapes(CONFIGS["bert"](), name=name, **arguments)
    message = str(caught.value)
    assert words in message and "\n" not in message, message


@pytest.mark.parametrize(
    "arguments, words",
    [
        ({"L": 9}, "the teacher layer L=9 is out of range: the teacher has 3 layers; use 1..3"),
        ({"student": StudentShape(24, 2, 5)}, "the student's attention heads STUDENT_ATTENTION_HEADS=5 does not divide "
         "the student hidden size STUDENT_HIDDEN_SIZE=24"),
        ({"A_r": None}, "NUM_RELATION_HEADS is required"),
    ],
)  # fmt: skip
def test_through_run_sh_the_check_names_run_sh_variables(monkeypatch, arguments, words):
    monkeypatch.setenv("MINILMV2_VIA_RUN_SH", "1")
    arguments = {"student": StudentShape(24, 2, 2), "A_r": 4, **arguments}
    with pytest.raises(ValueError, match=re.escape(words)):
        check_distillation_shapes(CONFIGS["bert"](), name=shape_option_name, **arguments)


def test_student_config_states_the_same_rules():
    teacher = CONFIGS["bert"]()
    with pytest.raises(ValueError, match=re.escape("student attention heads = 5 does not divide student hidden")):
        student_config_from_teacher(teacher, 24, 2, 5)
    with pytest.raises(ValueError, match=re.escape("student layers = 0 is not valid")):
        student_config_from_teacher(teacher, 24, 0, 2)


def test_minilm_v1_uses_one_relation_head_per_attention_head():
    teacher, student = CONFIGS["bert"](), StudentShape(24, 2, 4)
    for A_r in (None, 4):  # left out, or given as the head count: used either way
        shapes = check_distillation_shapes(teacher, student, A_r=A_r, minilm_v1=True)
        assert (shapes.A_r, shapes.relations) == (4, V1_RELATIONS)


def test_deberta_head_size_sets_the_width_relation_heads_must_divide():
    teacher = CONFIGS["deberta-v2 head size 16"]()  # Q/K/V 64 wide: A_r 16 divides it, though not the hidden 48
    assert check_distillation_shapes(teacher, StudentShape(32, 2, 2), A_r=16).A_r == 16
    with pytest.raises(ValueError, match="= 12 does not divide the teacher hidden size 64"):
        check_distillation_shapes(teacher, StudentShape(48, 2, 2), A_r=12)


def test_minilm_runs_the_same_check():
    from minilmv2 import MiniLM, build_student

    torch.manual_seed(0)
    teacher = AutoModel.from_config(CONFIGS["bert"]())
    student = build_student(student_config_from_teacher(teacher.config, 24, 2, 4))
    with pytest.raises(ValueError, match=r"A_r \(relation heads\) = 5 does not divide the teacher hidden size 48"):
        MiniLM(teacher, student, A_r=5)
    with pytest.raises(ValueError, match=r"A_r \(relation heads\) = 8 does not apply with MiniLM v1"):
        MiniLM.v1(teacher, student, A_r=8)
    distiller = MiniLM.v1(teacher, student, A_r=4)
    assert (distiller.L, distiller.M, distiller.A_r, distiller.relations) == (3, 2, 4, V1_RELATIONS)
