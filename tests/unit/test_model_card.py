"""The exported student's model card: every figure it states comes from the run, and it is written whole."""

from __future__ import annotations

from pathlib import Path

from minilmv2.model_card import CARD_NAME, CURVE_NAME, DistillationSummary, last_logged, write_model_card

LOG = [
    {"step": 10, "loss": 2.5},
    {"step": 10, "eval_loss": 2.75},
    {"step": 20, "loss": 1.25},
    {"step": 20, "eval_loss": 1.5},
    {"step": 25, "loss": 1.125},
    {"step": 25, "train_runtime": 3.0},
]


def summary(**overrides) -> DistillationSummary:
    values = dict(
        teacher="/models/bert-base-uncased",
        teacher_layers=12,
        teacher_hidden_size=768,
        model_type="bert",
        num_layers=6,
        hidden_size=384,
        num_attention_heads=12,
        intermediate_size=1536,
        num_parameters=22_713_216,
        teacher_layer=12,
        student_layer=6,
        num_relation_heads=48,
        relations={(1, 1): 1.0, (2, 2): 1.0, (3, 3): 0.5},
        steps=25,
        tokens_seen=409_600,
        command=["torchrun", "-m", "minilmv2.run_distillation", "model_params", "--L", "12"],
        log_history=LOG,
    )
    values.update(overrides)
    return DistillationSummary(**values)


def test_last_logged_takes_the_latest_entry_with_the_key():
    assert last_logged(LOG, "loss") == (25, 1.125)
    assert last_logged(LOG, "eval_loss") == (20, 1.5)
    assert last_logged(LOG, "grad_norm") is None


def test_card_states_the_run(tmp_path):
    curve = tmp_path / "curve.png"
    curve.write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    student = tmp_path / "student"
    student.mkdir()
    card = write_model_card(student, summary(), curve)
    text = card.read_text()
    assert card == student / CARD_NAME
    assert "`/models/bert-base-uncased` (12 layers x 768 hidden)" in text
    assert "A 6 x 384 `bert` encoder (12 heads, FFN 1536, 22,713,216 parameters)" in text
    assert "| teacher layer L | 12 |" in text and "| student layer M | 6 |" in text
    assert "| relation heads A_r | 48 |" in text
    assert "Q-Q (weight 1), K-K (weight 1), V-V (weight 0.5)" in text
    assert "finished after 25 optimizer steps" in text
    assert "| tokens seen | 409,600 |" in text
    assert "| final train loss | 1.1250 (step 25) |" in text
    assert "| final held-out loss | 1.5000 (step 20) |" in text
    assert "torchrun -m minilmv2.run_distillation model_params --L 12" in text
    assert f'AutoModel.from_pretrained("{student}")' in text
    assert f"![distillation loss]({CURVE_NAME})" in text
    assert (student / CURVE_NAME).read_bytes() == curve.read_bytes()
    assert not [p for p in student.iterdir() if p.name.startswith(".")]  # no scratch file left behind


def test_card_without_curve_held_out_set_or_finish(tmp_path):
    text = write_model_card(
        tmp_path, summary(log_history=[{"step": 3, "loss": 4.0}], stopped_by_signal=15, steps=3), None
    ).read_text()
    assert "| final held-out loss | no held-out set |" in text
    assert "stopped by signal 15 at step 3" in text
    assert "Loss curve" not in text and not Path(tmp_path / CURVE_NAME).exists()
