"""The init ablation tool's own pieces (`make init-ablation`, `make paper-shape`); its figures come from the runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minilmv2.checkpoints import COMPLETE_MARKER
from minilmv2.errors import UsageError
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


@pytest.fixture
def recorded_stages(monkeypatch):
    """init_ablation's stage runner, recording (title, environment) instead of running run.sh for an hour."""
    calls = []
    monkeypatch.setattr(init_ablation, "run_stage", lambda tool, title, cmd, cwd, out, env: calls.append((title, env)))
    monkeypatch.setattr(init_ablation, "repo", lambda: Path("."))
    return calls


def test_distil_resumes_a_complete_checkpoint_and_restarts_a_run_without_one(tmp_path, recorded_stages):
    parts = {"teacher": tmp_path / "teacher", "corpus": tmp_path / "corpus"}
    shape = init_ablation.SHAPES["quickstart"]
    # Killed while saving its only checkpoint: no complete one, so the folder goes and the run starts afresh.
    (tmp_path / "distill_random" / "checkpoint-100").mkdir(parents=True)
    init_ablation.distil("random", shape, parts, tmp_path)
    title, env = recorded_stages[-1]
    assert title == "distillation, STUDENT_INIT=random" and "RESUME" not in env
    assert not (tmp_path / "distill_random").exists()
    assert env["STUDENT_INIT"] == "random" and env["EVAL_STEPS"] == "100" and env["MAX_STEPS"] == "600"

    checkpoint = tmp_path / "distill_teacher_embeddings" / "checkpoint-200"
    checkpoint.mkdir(parents=True)
    (checkpoint / COMPLETE_MARKER).write_text("")  # the save finished
    (checkpoint.parent / "checkpoint-400").mkdir()  # killed while saving: not complete, not the one resumed
    init_ablation.distil("teacher_embeddings", init_ablation.SHAPES["paper"], {**parts, "mpnet_teacher": tmp_path},
                         tmp_path)  # fmt: skip
    title, env = recorded_stages[-1]
    assert title == "distillation, STUDENT_INIT=teacher_embeddings, resumed from checkpoint-200"
    assert env["RESUME"] == "latest" and env["MAX_STEPS"] == "1000" and env["NUM_RELATION_HEADS"] == "48"
    assert checkpoint.is_dir()

    (tmp_path / "distill_random" / "student").mkdir(parents=True)
    (tmp_path / "distill_random" / "trainer_state.json").write_text("{}")
    calls = len(recorded_stages)
    init_ablation.distil("random", shape, parts, tmp_path)
    assert len(recorded_stages) == calls, "a finished distillation is not run again"


def test_an_output_dir_of_other_values_is_refused(tmp_path, capsys):
    out = tmp_path / "out"
    init_ablation.check_values(out, {"shape": "quickstart", "distillation": {"MAX_STEPS": "600"}})
    init_ablation.check_values(out, {"shape": "quickstart", "distillation": {"MAX_STEPS": "600"}})  # same: kept
    with pytest.raises(UsageError, match=r"holds an ablation made with other values \(ablation_values.json: shape "
                                         r"'quickstart'\); give another --output_dir"):  # fmt: skip
        init_ablation.check_values(out, {"shape": "paper", "distillation": {"MAX_STEPS": "1000"}})
    assert json.loads((out / init_ablation.VALUES_FILE).read_text())["shape"] == "quickstart"


def test_a_summary_with_other_seeds_than_asked_is_refused(tmp_path):
    (tmp_path / "summary.csv").write_text("task,metric,best_dev_score,seeds,seed_min,seed_max\n"
                                          "bbc_news,accuracy,90.0,3,88.0,91.0\n")  # fmt: skip
    init_ablation.check_seed_count(tmp_path, "bbc_news", "1 2 3")
    with pytest.raises(UsageError, match=r"holds runs of 3 seeds, not the 1 asked for \(1\)"):
        init_ablation.check_seed_count(tmp_path, "bbc_news", "1")


def test_bad_seeds_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        init_ablation.main(["--teacher_seeds", "one", "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --teacher_seeds 'one' must be distinct whole numbers")
    assert not (tmp_path / "out").exists()
