"""The init ablation tool's own pieces (`make init-ablation`, `make paper-shape`); its figures come from the runs."""

from __future__ import annotations

import json

import pytest

from minilmv2.tools import init_ablation


def fake_assets(root, parts=("teacher", "corpus", "tasks")):
    for part in parts:
        (root / part).mkdir(parents=True)
        (root / part / "SOURCE.json").write_text("{}")
    return root


def test_paper_shape_without_the_mpnet_teacher_is_one_line_and_exit_2(tmp_path, capsys):
    assets = fake_assets(tmp_path / "assets")
    with pytest.raises(SystemExit) as exit_info:
        init_ablation.main(["--shape", "paper", "--assets", str(assets), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error == (
        f"error: --shape paper needs the MPNet teacher at {assets / 'mpnet_teacher'}; fetch it (404 MB) with "
        f"python -m minilmv2.tools.assets --dest {assets} --mpnet"
    )
    assert not (tmp_path / "out").exists()


def test_paper_shape_is_the_papers_student_of_a_base_teacher():
    values = {**init_ablation.DISTILLATION, **init_ablation.SHAPES["paper"].distillation}
    hidden, heads, relation_heads = (int(values[k]) for k in ("STUDENT_HIDDEN_SIZE", "STUDENT_ATTENTION_HEADS",
                                                               "NUM_RELATION_HEADS"))  # fmt: skip
    assert (values["STUDENT_NUM_LAYERS"], hidden, heads, relation_heads, values["L"]) == ("6", 384, 12, 48, "12")
    assert 768 % relation_heads == 0 and hidden % relation_heads == 0
    assert int(values["MAX_STEPS"]) % int(values["SAVE_STEPS"]) == 0, "the last step must not need a checkpoint"


@pytest.mark.parametrize(
    ("embedding_curve", "expected"),
    [
        ([(100, 0.70), (200, 0.55), (300, 0.50)], "final held-out loss (0.5534 at step 300) at step 200"),
        ([(100, 0.70), (200, 0.60), (300, 0.56)], "did not reach the random start's final loss 0.5534"),
    ],
)  # fmt: skip
def test_steps_saved_reads_the_first_evaluation_at_or_below_the_random_final_loss(embedding_curve, expected):
    curves = {"random": [(100, 0.82), (200, 0.67), (300, 0.5534)], "teacher_embeddings": embedding_curve}
    assert expected in init_ablation.steps_saved(curves, 100)


def test_tokens_and_losses_come_from_the_trainer_state(tmp_path):
    history = [
        {"step": 25, "loss": 0.9, "num_input_tokens_seen": 102400},
        {"step": 100, "eval_loss": 0.8},
        {"step": 100, "loss": 0.7, "num_input_tokens_seen": 409600},
        {"step": 200, "eval_loss": 0.6},
        {"step": 200, "train_loss": 0.75},
    ]
    (tmp_path / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    assert init_ablation.tokens_seen(tmp_path) == 409600
    assert init_ablation.held_out_losses(tmp_path) == [(100, 0.8), (200, 0.6)]
