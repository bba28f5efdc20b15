"""The capture of layer L's Q/K/V on every supported architecture, the students built for each, and what runs.

The reference is the model's own full eager forward, recorded where its attention receives Q/K/V
(`reference_minilm.recorded_qkv`); the capture must equal it while running no layer above L.
"""

from __future__ import annotations

import math

import pytest
import torch
from reference_minilm import recorded_qkv, relative_error
from test_distiller import ARCHITECTURES, batch_for, model_inputs, tiny_pair
from transformers import AutoModel, DebertaV2Config, GPT2Config, ModernBertConfig

from minilmv2 import MiniLM, build_student, student_config_from_teacher
from minilmv2.architectures import encoder_layers, layout_for, qkv_states
from minilmv2.student import continued_pattern, ffn_size

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# One FFN input projection and the attention output projection of a layer, per architecture: never run in the
# captured layer.
AFTER_THE_PROJECTIONS = {
    "bert": ("attention.output.dense", "intermediate.dense"),
    "roberta": ("attention.output.dense", "intermediate.dense"),
    "xlm-roberta": ("attention.output.dense", "intermediate.dense"),
    "camembert": ("attention.output.dense", "intermediate.dense"),
    "electra": ("attention.output.dense", "intermediate.dense"),
    "distilbert": ("attention.out_lin", "ffn.lin1"),
    "modernbert": ("attn.Wo", "mlp.Wi"),
    "mpnet": ("attention.attn.o", "intermediate.dense"),
    "deberta-v2": ("attention.output.dense", "intermediate.dense"),
}


def real(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return states[mask.bool()]


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_captured_states_are_what_the_attention_receives(arch):
    teacher, _ = tiny_pair(arch)
    batch = batch_for(arch, [9, 6, 2], 9, "left")
    for layer in (1, 2, 3):
        with recorded_qkv(teacher, layer) as expected, torch.no_grad():
            teacher(**model_inputs(teacher, batch))
        captured = qkv_states(teacher, layer, {1, 2, 3}, **batch)
        for kind in (1, 2, 3):
            assert captured[kind].shape == (3, 9, 48)
            ours, theirs = (real(states[kind], batch["attention_mask"]) for states in (captured, expected))
            assert relative_error(ours, theirs) < 1e-5, (layer, kind)
    # The model is left as it was: its own attention implementation, no capture mark, a normal forward.
    assert teacher.config._attn_implementation == "eager"
    assert all(not hasattr(module, "_minilmv2_capture_target") for module in teacher.modules())
    with torch.no_grad():
        assert torch.isfinite(teacher(**model_inputs(teacher, batch)).last_hidden_state).all()


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_only_layers_up_to_the_captured_projections_run(arch):
    teacher, student = tiny_pair(arch, student_layers=3)
    distiller = MiniLM(teacher=teacher, student=student, L=2, M=3, A_r=4)
    ran: set[tuple[str, str]] = set()  # (model, module path inside the layer list, e.g. "1.attention.self")
    for who, model in (("teacher", teacher), ("student", student)):
        for name, module in encoder_layers(model).named_modules():
            module.register_forward_pre_hook(lambda *_, key=(who, name): ran.add(key))
    distiller(**batch_for(arch, [7, 4], 7, "right"))

    teacher_layers = {name.split(".")[0] for who, name in ran if who == "teacher" and name}
    assert teacher_layers == {"0", "1"}  # layers 1 and 2 of 3
    for who, layer in (("teacher", 2), ("student", 3)):
        for path in AFTER_THE_PROJECTIONS[arch]:
            assert (who, f"{layer - 1}.{path}") not in ran
    # In the captured student layer, every module with parameters that ran feeds Q/K/V: its parameters train.
    trainable = {name for name, p in student.named_parameters() if p.requires_grad}
    prefix = layout_for(student).layers
    for who, name in ran:
        if who == "student" and name.startswith("2."):
            owned = encoder_layers(student).get_submodule(name).named_parameters(recurse=False)
            assert {f"{prefix}.{name}.{n}" for n, _ in owned} <= trainable, name


def attention_probabilities_from_v1_relation(states: dict, mask: torch.Tensor, heads: int) -> torch.Tensor:
    """The MiniLM v1 Q-K relation, softmax(Q_a K_a^T / sqrt(d_r)) over real keys, as (B, heads, S, S)."""
    batch, seq, hidden = states[1].shape
    q, k = (states[kind].reshape(batch, seq, heads, hidden // heads).transpose(1, 2) for kind in (1, 2))
    logits = q @ k.transpose(-1, -2) / math.sqrt(hidden // heads)
    return logits.masked_fill(~mask.bool()[:, None, None, :], -math.inf).softmax(-1)


@pytest.mark.parametrize("arch", ["bert", "roberta", "xlm-roberta", "electra", "distilbert", "modernbert"])
def test_v1_query_key_relation_is_the_models_attention(arch):
    """Q and K are taken as the attention compares them (after ModernBERT's rotary embeddings): with one
    relation head per attention head, the v1 Q-K relation is the model's own attention distribution."""
    teacher, student = tiny_pair(arch, student_heads=4)
    distiller = MiniLM.v1(teacher, student)
    assert distiller.relations == {(1, 2): 1.0, (3, 3): 1.0} and distiller.A_r == 4
    batch = batch_for(arch, [9, 6, 3], 9, "left")
    mask = batch["attention_mask"].bool()
    with torch.no_grad():
        attentions = teacher(**model_inputs(teacher, batch), output_attentions=True).attentions
    layer_types = getattr(teacher.config, "layer_types", None) or ["full_attention"] * 3
    for layer in (1, 2, 3):
        relation = attention_probabilities_from_v1_relation(qkv_states(teacher, layer, {1, 2}, **batch), mask, 4)
        rows = mask[:, None, :, None] & mask[:, None, None, :]  # real queries x real keys
        error = relative_error(relation.masked_select(rows), attentions[layer - 1].masked_select(rows))
        if layer_types[layer - 1] == "full_attention":
            assert error < 1e-5, (layer, error)
        else:  # ModernBERT's sliding-window layer (window 4 < 9 tokens): its attention sees only nearby keys
            assert error > 1e-2, (layer, error)


def test_modernbert_pattern_and_rotary_are_exercised():
    """The ModernBERT test model has a local layer whose window is shorter than the test sequences."""
    config = ARCHITECTURES["modernbert"]()
    assert config.layer_types == ["full_attention", "sliding_attention", "full_attention"]
    assert config.local_attention < 9


@pytest.mark.parametrize("implementation", ["flash_attention_2", "sdpa"])
def test_other_attention_settings_are_handled(implementation):
    """The capture runs its own SDPA with a padded mask: a model configured for flash attention (whose varlen,
    unpadded path needs the flash kernels) distils exactly as an eager one, and keeps its setting."""
    teacher, student = tiny_pair("modernbert")
    batch = batch_for("modernbert", [9, 5, 2], 9, "right")
    distiller = MiniLM(teacher=teacher, student=student, A_r=4)
    expected = distiller(**batch).loss
    for model in (teacher, student):
        model.config._attn_implementation = implementation
    assert relative_error(distiller(**batch).loss, expected) < 1e-5
    assert teacher.config._attn_implementation == student.config._attn_implementation == implementation


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_student_of_each_architecture_round_trips_through_auto_model(arch, tmp_path):
    teacher_config = ARCHITECTURES[arch]()
    config = student_config_from_teacher(teacher_config, hidden_size=24, num_layers=2, num_attention_heads=2)
    student = build_student(config)
    assert student.config.model_type == teacher_config.model_type
    assert (config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (2, 24, 2)
    assert ffn_size(config) == 96 and layout_for(student).layers  # FFN 4 x hidden, under the architecture's name
    student.save_pretrained(tmp_path)
    loaded = AutoModel.from_pretrained(tmp_path)
    assert type(loaded) is type(student)
    assert loaded.state_dict().keys() == student.state_dict().keys()
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in student.state_dict().items())
    # A distiller accepts the student: the capture reaches its layers.
    MiniLM(teacher=AutoModel.from_config(teacher_config), student=loaded, A_r=4)


def test_architecture_specific_student_sizes():
    distilbert = student_config_from_teacher(ARCHITECTURES["distilbert"](), 24, 2, 2)
    assert (distilbert.dim, distilbert.n_layers, distilbert.n_heads, distilbert.hidden_dim) == (24, 2, 2, 96)
    assert not hasattr(distilbert, "intermediate_size")

    base = ModernBertConfig()  # ModernBERT-base: 22 layers, global attention every third
    modern = student_config_from_teacher(base, 384, 6, 12)
    assert modern.layer_types == ["full_attention", "sliding_attention", "sliding_attention"] * 2
    assert (modern.local_attention, modern.max_position_embeddings) == (base.local_attention, 8192)
    assert modern.intermediate_size == 1536
    assert len(build_student(student_config_from_teacher(ARCHITECTURES["modernbert"](), 24, 5, 2)).layers) == 5

    v3 = DebertaV2Config(
        hidden_size=768, num_hidden_layers=12, num_attention_heads=12, relative_attention=True, position_buckets=256,
        pos_att_type="p2c|c2p", share_att_key=True, norm_rel_ebd="layer_norm", max_relative_positions=-1,
    )  # fmt: skip
    deberta = student_config_from_teacher(v3, 384, 6, 12)
    assert (deberta.pooler_hidden_size, deberta.intermediate_size, deberta.position_buckets) == (384, 1536, 256)
    assert not hasattr(deberta, "embedding_size") and not hasattr(deberta, "attention_head_size")
    mpnet = student_config_from_teacher(ARCHITECTURES["mpnet"](), 24, 2, 2)
    assert mpnet.relative_attention_num_buckets == 32

    assert continued_pattern(["a", "b", "b", "a", "b", "b", "a"], 4) == ["a", "b", "b", "a"]
    assert continued_pattern(["a", "b"], 3) == ["a", "b", "a"]
    assert continued_pattern(["a"], 2) == ["a", "a"]


def test_unsupported_architecture_is_named():
    gpt2 = GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50)
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported; supported architectures: bert, "):
        student_config_from_teacher(gpt2, 32, 2, 2)
    teacher, student = tiny_pair("bert")
    with pytest.raises(ValueError, match="model_type 'gpt2' is not supported"):
        MiniLM(teacher=AutoModel.from_config(gpt2), student=student)


def test_the_table_answers_positions_and_seq2seq_support():
    from transformers import BertConfig, MPNetConfig, RobertaConfig

    from minilmv2.architectures import first_position_id, lm_head_path, seq2seq_model_types, usable_positions

    roberta = RobertaConfig(max_position_embeddings=514, pad_token_id=1)
    assert (usable_positions(roberta), first_position_id(roberta)) == (512, 2)
    mpnet = MPNetConfig(max_position_embeddings=514, pad_token_id=1)
    assert (usable_positions(mpnet), first_position_id(mpnet)) == (512, 2)
    bert = BertConfig(max_position_embeddings=512, pad_token_id=0)
    assert (usable_positions(bert), first_position_id(bert)) == (512, 0)
    assert seq2seq_model_types() == ["bert", "electra", "roberta", "xlm-roberta"]
    assert lm_head_path("electra") == ("generator_predictions", "generator_lm_head")
    with pytest.raises(ValueError, match="'mpnet' has no masked-LM head .* supported: bert, electra, roberta"):
        lm_head_path("mpnet")
