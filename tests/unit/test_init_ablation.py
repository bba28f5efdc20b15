"""The init ablation tool's own pieces (`make init-ablation`, `make paper-shape`); its figures come from the runs."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from minilmv2.checkpoints import COMPLETE_MARKER
from minilmv2.errors import UsageError
from minilmv2.tools import init_ablation, quickstart
from minilmv2.tools.stages import STAGE_SECONDS_FILE


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
    # Killed while saving its only checkpoint: no complete one, so the folder goes and the run starts afresh, and
    # the time of the lost run no longer counts.
    (tmp_path / "distill_random" / "checkpoint-100").mkdir(parents=True)
    times = {"distillation, STUDENT_INIT=random": 600.0, "distillation, STUDENT_INIT=teacher_embeddings": 700.0}
    (tmp_path / STAGE_SECONDS_FILE).write_text(json.dumps(times))
    assert init_ablation.distil("random", shape, parts, tmp_path) is True
    title, env = recorded_stages[-1]
    assert title == "distillation, STUDENT_INIT=random" and "RESUME" not in env
    assert not (tmp_path / "distill_random").exists()
    assert env["STUDENT_INIT"] == "random" and env["EVAL_STEPS"] == "100" and env["MAX_STEPS"] == "600"
    assert json.loads((tmp_path / STAGE_SECONDS_FILE).read_text()) == {
        "distillation, STUDENT_INIT=teacher_embeddings": 700.0
    }

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
    assert "distillation, STUDENT_INIT=teacher_embeddings" in json.loads((tmp_path / STAGE_SECONDS_FILE).read_text())

    (tmp_path / "distill_random" / "student").mkdir(parents=True)
    (tmp_path / "distill_random" / "trainer_state.json").write_text("{}")
    calls = len(recorded_stages)
    assert init_ablation.distil("random", shape, parts, tmp_path) is False
    assert len(recorded_stages) == calls, "a finished distillation is not run again"


def test_an_output_dir_of_other_values_is_refused_naming_them(tmp_path):
    out = tmp_path / "out"
    values = {"shape": "paper", "distillation": {"MAX_STEPS": "1000", "PRECISION": "bf16"}, "eval_every": 100}
    init_ablation.check_values(out, values)
    init_ablation.check_values(out, values)  # the same: kept
    other = {**values, "distillation": {"MAX_STEPS": "1000", "PRECISION": "none"}}
    with pytest.raises(UsageError) as refusal:
        init_ablation.check_values(out, other)
    assert str(refusal.value) == (
        f"--output_dir {str(out)!r} holds an ablation made with other values: PRECISION 'bf16' there, 'none' now "
        "(PRECISION follows the CPU: bf16 where it is native); give another --output_dir or finish it on a machine "
        "with the same values"
    )
    with pytest.raises(UsageError, match=r"values: shape 'paper' there, 'quickstart' now; give another"):
        init_ablation.check_values(out, {**values, "shape": "quickstart"})
    assert json.loads((out / init_ablation.VALUES_FILE).read_text()) == values


def test_a_summary_with_other_seeds_than_asked_is_refused(tmp_path):
    (tmp_path / "summary.csv").write_text("task,metric,best_dev_score,seeds,seed_min,seed_max\n"
                                          "bbc_news,accuracy,90.0,3,88.0,91.0\n")  # fmt: skip
    init_ablation.check_seed_count(tmp_path, ["bbc_news"], "1 2 3")
    with pytest.raises(UsageError, match=r"holds runs of 3 seeds, not the 1 asked for \(1\)"):
        init_ablation.check_seed_count(tmp_path, ["bbc_news"], "1")


def test_bad_seeds_are_refused_before_anything_runs(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        init_ablation.main(["--teacher_seeds", "one", "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip().startswith("error: --teacher_seeds 'one' must be distinct whole numbers")
    assert not (tmp_path / "out").exists()


SUMMARY_HEADER = "task,metric,best_dev_score,seeds,seed_min,seed_max\n"


def write_summary(eval_dir: Path, rows: str) -> None:
    eval_dir.mkdir(parents=True, exist_ok=True)
    (eval_dir / "summary.csv").write_text(SUMMARY_HEADER + rows)


@pytest.mark.parametrize(
    ("models", "before", "expected"),
    [
        (["distilled_random", "random_student"], [], ["random"]),
        (["distilled_teacher_embeddings", "embedding_student", "teacher"], [], ["teacher_embeddings"]),
        (["random_student"], [], ["random"]),  # its config and tokenizer come from a distilled student
        (["random_student", "embedding_student"], ["teacher_embeddings/student"], []),  # ... which is there already
        # a folder seeded from an earlier call's results: a distillation whose losses are not there yet
        (["random_student"], ["random/trainer_state.json"], ["teacher_embeddings"]),
        (["teacher"], [], []),
        (list(init_ablation.MODEL_KEYS), [], ["random", "teacher_embeddings"]),
    ],
)  # fmt: skip
def test_a_call_distils_only_what_its_rows_need(tmp_path, models, before, expected):
    for path in before:
        (tmp_path / f"distill_{path}").parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / f"distill_{path}").mkdir() if "." not in path else (tmp_path / f"distill_{path}").write_text("{}")
    assert init_ablation.inits_to_distil(models, tmp_path) == expected


@pytest.mark.parametrize(("seeds", "tasks", "parallel"), [("1 2 3", ["bbc_news"], "2"), ("1", ["bbc_news"], "1"),
                                                    ("1", ["bbc_news", "tweet_sentiment"], "2")])  # fmt: skip
def test_a_lone_fine_tuning_run_gets_both_cores(tmp_path, recorded_stages, seeds, tasks, parallel):
    write_summary(
        tmp_path / "eval" / "teacher", "".join(f"{task},accuracy,90.0,{len(seeds.split())},,\n" for task in tasks)
    )
    init_ablation.fine_tune("fine-tuning, teacher", tmp_path / "teacher", tasks, seeds, tmp_path / "tasks", tmp_path,
                            "teacher")  # fmt: skip
    title, env = recorded_stages[-1]
    assert (env["PARALLEL"], env["SEEDS"], env["TASKS"]) == (parallel, seeds, " ".join(tasks))
    assert env["OUTPUT_DIR"] == str(tmp_path / "eval" / "teacher") and env["MODEL_DIR"] == str(tmp_path / "teacher")
    assert "--max_train_samples 1000" in env["EXTRA_ARGS"]


def test_tasks_that_share_their_arguments_are_fine_tuned_in_one_call(monkeypatch):
    monkeypatch.setattr(quickstart, "TASK_EXTRA_ARGS", {"a": "--x 1", "b": "--x 2", "c": "--x 1"})
    assert quickstart.task_groups() == [["a", "c"], ["b"]]


TWO_TASKS = ["tweet_sentiment", "bbc_news"]


def ablation_folder(out: Path) -> None:
    """An output folder after a call that distilled from random init and scored two rows, with a model file."""
    (out / "distill_random" / "student").mkdir(parents=True)
    (out / "distill_random" / "student" / "model.safetensors").write_bytes(b"\0" * 4096)
    history = [{"step": 100, "eval_loss": 0.71}, {"step": 200, "eval_loss": 0.62, "num_input_tokens_seen": 819200}]
    (out / "distill_random" / "trainer_state.json").write_text(json.dumps({"log_history": history}))
    for key, score in (("distilled_random", "61.0"), ("random_student", "55.0")):
        write_summary(out / "eval" / key, "".join(f"{task},accuracy,{score},3,50.0,70.0\n" for task in TWO_TASKS))
        (out / "eval" / key / "runs.csv").write_text("task,seed,score\n")
        (out / "eval" / key / "bbc_news" / "lr3e-4_ep3_seed1").mkdir(parents=True)
    (out / init_ablation.VALUES_FILE).write_text('{"shape": "paper"}\n')
    (out / init_ablation.MACHINES_FILE).write_text('{"distill_random": "machine A", "distilled_random": "machine A"}')


def test_the_copied_results_hold_the_table_inputs_and_no_model(tmp_path):
    out, dest = tmp_path / "out", tmp_path / "kept"
    ablation_folder(out)
    copied = init_ablation.copy_results(out, dest)
    assert sorted(str(path.relative_to(dest)) for path in copied) == [
        "ablation_values.json",
        "distill_random/trainer_state.json",
        "eval/distilled_random/runs.csv",
        "eval/distilled_random/summary.csv",
        "eval/random_student/runs.csv",
        "eval/random_student/summary.csv",
        "machines.json",
    ]
    assert not list(dest.rglob("*.safetensors")) and not (dest / "eval" / "random_student" / "bbc_news").exists()
    seeds = dict.fromkeys(init_ablation.MODEL_KEYS, "1 2 3")
    keys = list(init_ablation.MODEL_KEYS)
    assert init_ablation.table_scores(dest, keys, TWO_TASKS, seeds) == init_ablation.table_scores(
        out, keys, TWO_TASKS, seeds
    )
    (out / init_ablation.MACHINES_FILE).write_text("{}")
    assert init_ablation.copy_results(out, dest, overwrite=False) == [], "what the destination has is kept"
    assert "machine A" in (dest / init_ablation.MACHINES_FILE).read_text()


def test_a_summary_without_every_task_leaves_the_missing_cells_not_run(tmp_path):
    write_summary(tmp_path / "eval" / "teacher", "bbc_news,accuracy,90.0,1,,\n")  # stopped before the other task
    seeds = {"teacher": "1"}
    assert init_ablation.table_scores(tmp_path, ["teacher"], TWO_TASKS, seeds) == {
        "teacher": {"bbc_news": (90.0, None, None)}
    }
    assert init_ablation.table_scores(tmp_path, ["teacher"], TWO_TASKS, seeds, complete_only=True) == {}


def report(out: Path, monkeypatch, teacher_seeds: str = "1") -> str:
    monkeypatch.setattr(init_ablation, "majority_class_scores", lambda tasks, tasks_dir: dict.fromkeys(tasks, 33.3))
    args = init_ablation.argparse.Namespace(shape="paper", seeds="1 2 3")
    seeds = {**dict.fromkeys(init_ablation.MODEL_KEYS, "1 2 3"), "teacher": teacher_seeds}
    init_ablation.write_report(args, init_ablation.SHAPES["paper"], out, out / "tasks", seeds, echo=False)
    return (out / "init_ablation.md").read_text()


def test_the_report_shows_the_rows_not_scored_yet_and_each_rows_machine(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ablation_folder(out)
    text = report(out, monkeypatch)
    assert "| distilled from random init | 61.00 (50.00-70.00) | 61.00 (50.00-70.00) |" in text
    assert "| teacher (MPNet, 12 x 768) | not run yet | not run yet |" in text
    assert "| distilled from teacher-embedding init | not run yet | not run yet |" in text
    assert "| majority class | 33.30 | 33.30 |" in text and "; the teacher: seeds 1." in text
    assert "- random: 100: 0.7100, 200: 0.6200" in text and "random 819,200" in text
    assert "Machine: machine A." in text and "reached" not in text  # one curve: no steps saved
    assert (out / "heldout_loss.png").is_file()

    machines = json.loads((out / init_ablation.MACHINES_FILE).read_text())
    (out / init_ablation.MACHINES_FILE).write_text(json.dumps({**machines, "random_student": "machine B"}))
    text = report(out, monkeypatch)
    assert "- random student, not distilled: machine B" in text
    assert "- distillation, STUDENT_INIT=random: machine A" in text


def test_a_report_without_distillations_has_no_loss_lines(tmp_path, monkeypatch):
    write_summary(tmp_path / "eval" / "teacher", "".join(f"{task},accuracy,90.0,1,,\n" for task in TWO_TASKS))
    text = report(tmp_path, monkeypatch)
    assert "| teacher (MPNet, 12 x 768) | 90.00 | 90.00 |" in text
    assert "Held-out" not in text and "Tokens" not in text and "heldout_loss.png" not in text


@pytest.fixture
def fake_runs(tmp_path, monkeypatch):
    """main() with run.sh and run_eval.sh replaced by what they leave behind (a student and its losses; a summary
    of the seeds asked), the students' saving and the sweep summary stubbed: which stages run, in which order."""
    stages = []

    def run_stage(tool, title, command, cwd, out, env):
        stages.append(title)
        if command[1] == "run.sh":
            distill_dir = Path(env["OUTPUT_DIR"])
            (distill_dir / "student").mkdir(parents=True)
            history = [{"step": 100, "eval_loss": 0.7 if env["STUDENT_INIT"] == "random" else 0.6}]
            (distill_dir / "trainer_state.json").write_text(json.dumps({"log_history": history}))
        else:
            rows = [f"{task},accuracy,80.0,{len(env['SEEDS'].split())},,\n" for task in env["TASKS"].split()]
            write_summary(Path(env["OUTPUT_DIR"]), "".join(rows))

    def save_student(*paths):
        paths[-1].mkdir(parents=True)
        (paths[-1] / "model.safetensors").write_bytes(b"")

    monkeypatch.setattr(init_ablation, "run_stage", run_stage)
    monkeypatch.setattr(init_ablation, "save_random_student", save_student)
    monkeypatch.setattr(init_ablation, "save_embedding_student", save_student)
    monkeypatch.setattr(init_ablation, "summarise", lambda eval_dir, name, tasks: None)
    monkeypatch.setattr(init_ablation, "majority_class_scores", lambda tasks, tasks_dir: dict.fromkeys(tasks, 33.3))
    assets = fake_assets(tmp_path / "assets")
    return stages, ["--assets", str(assets), "--seeds", "1 2", "--teacher_seeds", "1"]


def test_an_ablation_split_over_two_calls_and_two_folders(tmp_path, fake_runs):
    stages, common = fake_runs
    first, kept, second = tmp_path / "first", tmp_path / "kept", tmp_path / "second"
    init_ablation.main([*common, "--output_dir", str(first), "--models", "teacher", "distilled_random",
                        "random_student", "--copy_results_to", str(kept)])  # fmt: skip
    assert stages == [
        "distillation, STUDENT_INIT=random",
        "fine-tuning, distilled from random init, tweet_sentiment and bbc_news",
        "fine-tuning, random student, not distilled, tweet_sentiment and bbc_news",
        "fine-tuning, teacher (6 x 384), tweet_sentiment and bbc_news",  # the teacher last
    ]
    assert (
        "| teacher-embedding student, not distilled | not run yet | not run yet |"
        in (kept / "init_ablation.md").read_text()
    )
    assert not list(kept.rglob("model.safetensors"))

    stages.clear()
    init_ablation.main([*common, "--output_dir", str(second), "--results_from", str(kept),
                        "--models", "distilled_teacher_embeddings", "embedding_student"])  # fmt: skip
    assert stages == [
        "distillation, STUDENT_INIT=teacher_embeddings",
        "fine-tuning, distilled from teacher-embedding init, tweet_sentiment and bbc_news",
        "fine-tuning, teacher-embedding student, not distilled, tweet_sentiment and bbc_news",
    ]
    text = (second / "init_ablation.md").read_text()
    assert "not run yet" not in text and "| teacher (6 x 384) | 80.00 | 80.00 |" in text
    assert "at step 100" in text  # both curves: the steps the teacher-embedding start saves
    assert set(json.loads((second / init_ablation.MACHINES_FILE).read_text())) == {
        "distill_random", "distilled_random", "random_student", "teacher",
        "distill_teacher_embeddings", "distilled_teacher_embeddings", "embedding_student"}  # fmt: skip


def test_kept_rows_with_other_seeds_are_refused_before_any_work(tmp_path, fake_runs, capsys):
    stages, common = fake_runs
    kept = tmp_path / "kept"
    init_ablation.main([*common, "--output_dir", str(tmp_path / "first"), "--models", "teacher",
                        "--copy_results_to", str(kept)])  # fmt: skip
    stages.clear()
    with pytest.raises(SystemExit) as exit_info:  # the teacher was scored with 1 seed, not the 2 now asked for
        init_ablation.main(["--assets", common[1], "--seeds", "1 2", "--output_dir", str(tmp_path / "second"),
                            "--results_from", str(kept), "--models", "random_student"])  # fmt: skip
    assert exit_info.value.code == 2 and stages == [] and not (tmp_path / "second").exists()
    error = capsys.readouterr().err
    assert "not the 2 asked for (1 2); give the same seeds as before or another --results_from" in error
