"""The quickstart driver's own pieces (the full `make quickstart` run takes 15-26 min and is not a test).

Real tiny models saved to disk, the real teacher's tokenizer, the real table/PNG writer.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from transformers import AutoModel, AutoTokenizer, BertConfig

from minilmv2 import build_student
from minilmv2.tools import quickstart


@pytest.fixture
def tiny_student_dir(tmp_path, teacher_dir):
    config = BertConfig(vocab_size=30522, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=128, max_position_embeddings=64)  # fmt: skip
    torch.manual_seed(0)
    student = build_student(config)
    student.save_pretrained(tmp_path / "distilled")
    AutoTokenizer.from_pretrained(teacher_dir).save_pretrained(tmp_path / "distilled")
    return tmp_path / "distilled", student


def test_random_student_has_the_shape_but_not_the_weights(tiny_student_dir, tmp_path):
    distilled_dir, distilled = tiny_student_dir
    quickstart.save_random_student(distilled_dir, tmp_path / "random")
    random_student = AutoModel.from_pretrained(tmp_path / "random")
    assert random_student.config.to_diff_dict() == distilled.config.to_diff_dict()
    distilled_weights, random_weights = distilled.state_dict(), random_student.state_dict()
    assert distilled_weights.keys() == random_weights.keys()
    assert not torch.equal(
        distilled_weights["encoder.layer.0.attention.self.query.weight"],
        random_weights["encoder.layer.0.attention.self.query.weight"],
    )
    assert AutoTokenizer.from_pretrained(tmp_path / "random")("a whale")["input_ids"][0] == 101  # [CLS]
    assert quickstart.count_parameters(tmp_path / "random") == pytest.approx(random_student.num_parameters() / 1e6)


TASKS = ["tweet_sentiment", "bbc_news"]


def test_table_and_chart_give_the_median_and_the_seed_range(tmp_path):
    scores = {
        "distilled student": {"tweet_sentiment": (55.0, 54.0, 57.5), "bbc_news": (80.0, 70.25, 81.0)},
        "random student": {"tweet_sentiment": (45.0, 44.0, 46.0), "bbc_news": (50.0, 45.0, 68.0)},
        "teacher": {"tweet_sentiment": (70.0, None, None), "bbc_news": (96.0, None, None)},  # one seed: no range
    }
    parameters = {"distilled student": 11.2, "random student": 11.2, "teacher": 22.7}
    floor = {"tweet_sentiment": 42.4, "bbc_news": 22.9}
    markdown, png = quickstart.write_table(scores, floor, parameters, TASKS, ["total 1.0 min"], tmp_path)
    text = markdown.read_text()
    assert "| model | parameters | tweet_sentiment | bbc_news | avg |" in text
    assert "| distilled student | 11.2M | 55.00 (54.00-57.50) | 80.00 (70.25-81.00) | 67.50 |" in text
    assert "| teacher | 22.7M | 70.00 | 96.00 | 83.00 |" in text
    assert "| majority class | - | 42.40 | 22.90 | 32.65 |" in text
    assert f"median over fine-tuning seeds {quickstart.EVALUATION['SEEDS']}, min-max in brackets" in text
    assert "Command: `make quickstart`" in text and "MAX_STEPS=" in text and "Time: total 1.0 min" in text
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_quickstart_fine_tunes_with_three_seeds():
    assert len(quickstart.EVALUATION["SEEDS"].split()) == 3


def test_summary_csv_is_read_as_median_and_range(tmp_path):
    (tmp_path / "summary.csv").write_text(
        "task,metric,best_dev_score,seed_min,seed_max,best_learning_rate\n"
        "tweet_sentiment,accuracy,61.16,60.76,62.10,3e-4\n"
        "bbc_news,accuracy,89.15,,,3e-4\n"
        "broken,,,,,\n"
    )
    assert quickstart.read_scores(tmp_path) == {
        "tweet_sentiment": (61.16, 60.76, 62.10),
        "bbc_news": (89.15, None, None),
    }


@pytest.mark.parametrize(
    ("distilled", "random", "status", "says"),
    [
        ((55.0, 54.0, 57.0), (45.0, 44.0, 46.0), 0, "beats the random student's on tweet_sentiment and bbc_news"),
        ((55.0, 44.0, 57.0), (45.0, 44.0, 46.0), 0, "their seed ranges overlap on tweet_sentiment, bbc_news"),
        (
            (45.0, 44.0, 57.0),
            (45.0, 30.0, 46.0),
            1,
            "median does NOT beat the random one's on tweet_sentiment, bbc_news",
        ),
        # A better best seed does not rescue a lower median: the exit status looks at medians.
        ((44.0, 40.0, 99.0), (45.0, 44.0, 46.0), 1, "does NOT beat"),
    ],
)
def test_exit_status_looks_at_medians(distilled, random, status, says):
    scores = {"distilled student": dict.fromkeys(TASKS, distilled), "random student": dict.fromkeys(TASKS, random)}
    line, code = quickstart.distillation_verdict(scores, TASKS)
    assert code == status and says in line
    assert ("overlap" in line) == (status == 0 and distilled[1] <= random[2])


def test_changed_values_start_over_and_same_values_keep(tmp_path, monkeypatch):
    out = tmp_path / "quickstart"
    quickstart.prepare_output_dir(out)
    (out / "distill").mkdir()
    quickstart.prepare_output_dir(out)
    assert (out / "distill").is_dir(), "unchanged values must keep finished stages"
    monkeypatch.setitem(quickstart.DISTILLATION, "MAX_STEPS", "7")
    quickstart.prepare_output_dir(out)
    assert not (out / "distill").exists()
    assert json.loads((out / quickstart.VALUES_FILE).read_text())["distillation"]["MAX_STEPS"] == "7"


def test_missing_assets_are_one_line_and_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--assets", str(tmp_path / "nowhere"), "--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("error: --assets") and "teacher, corpus, tasks" in error and "make assets" in error
    assert not (tmp_path / "out").exists()


def test_only_a_finished_distillation_is_reused(tmp_path):
    from minilmv2.checkpoints import finished_run as finished_distillation

    student = tmp_path / "student"
    student.mkdir()
    assert not finished_distillation(tmp_path)
    (student / "model.safetensors").write_bytes(b"")  # what a run stopped by SIGTERM leaves
    assert not finished_distillation(tmp_path)
    (tmp_path / "trainer_state.json").write_text("{}")  # written only when the run finished
    assert finished_distillation(tmp_path)


@pytest.mark.parametrize(
    ("flags", "expected"),
    [
        ("fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile amx_int8", ["AMX-BF16", "AVX512-BF16"]),  # Xeon
        ("fpu sse avx2 avx512f avx512_bf16", ["AVX512-BF16"]),  # EPYC Zen 4
        ("fpu sse avx2 fma", []),  # EPYC Zen 2/3: bf16 emulated, so fp32
    ],
)  # fmt: skip
def test_the_native_bf16_flags_are_read_from_cpuinfo(tmp_path, flags, expected):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(f"processor\t: 0\nmodel name\t: X\nflags\t\t: {flags}\n\nprocessor\t: 1\nflags\t\t: {flags}\n")
    assert quickstart.native_bf16_flags(str(cpuinfo)) == expected
    assert quickstart.native_bf16_flags(str(tmp_path / "absent")) == []


def test_the_machine_line_names_whether_bf16_is_native():
    """Distillation speed depends on native bf16, so every figure's machine line says it."""
    assert quickstart.native_bf16_flags() == quickstart.NATIVE_BF16_FLAGS
    named = ", ".join(quickstart.NATIVE_BF16_FLAGS) or "no native bf16"
    assert f" ({named}), {os.cpu_count()} cores, " in quickstart.machine_description()


def test_each_model_is_fine_tuned_once_for_both_tasks(tmp_path, monkeypatch, tiny_student_dir, teacher_dir, tasks_dir):
    """main over a finished distillation, with run_eval.sh replaced by the summary it writes: the two tasks share
    their arguments, so each model is one run_eval.sh call of 6 runs, two at a time, and the table reads them."""
    out = tmp_path / "quickstart"
    quickstart.prepare_output_dir(out)
    distilled, _ = tiny_student_dir
    shutil.copytree(distilled, out / "distill" / "student")
    (out / "distill" / "trainer_state.json").write_text("{}")
    calls = []

    def fake_run_eval(tool, title, command, cwd, out_dir, env):
        calls.append((title, env))
        median = {"distilled_student": 60.0, "random_student": 50.0, "teacher": 70.0}[Path(env["OUTPUT_DIR"]).name]
        rows = "".join(f"{task},accuracy,{median},{median - 1},{median + 1},3e-4\n" for task in env["TASKS"].split())
        Path(env["OUTPUT_DIR"]).mkdir(parents=True, exist_ok=True)
        (Path(env["OUTPUT_DIR"]) / "summary.csv").write_text(
            "task,metric,best_dev_score,seed_min,seed_max,best_learning_rate\n" + rows
        )

    monkeypatch.setattr(quickstart, "run_stage", fake_run_eval)
    monkeypatch.setattr(quickstart, "check_assets", lambda assets: {"teacher": teacher_dir, "tasks": tasks_dir})
    with pytest.raises(SystemExit) as exit_info:
        quickstart.main(["--output_dir", str(out)])
    assert exit_info.value.code == 0, "the distilled student's medians beat the random student's"
    assert [title for title, _ in calls] == [
        f"fine-tune and score the {model} on tweet_sentiment and bbc_news (run_eval.sh)" for model in quickstart.MODELS
    ]
    for _, env in calls:
        assert (env["TASKS"], env["SEEDS"], env["PARALLEL"]) == ("tweet_sentiment bbc_news", "1 2 3", "2")
        assert "--max_train_samples 1000 --max_seq_length 64" in env["EXTRA_ARGS"]
    assert [env["MODEL_DIR"] for _, env in calls] == [
        str(out / "distill" / "student"), str(out / "random_student"), str(teacher_dir)
    ]  # fmt: skip
    table = (out / "quickstart_results.md").read_text()
    assert "| teacher | 22.7M | 70.00 (69.00-71.00) | 70.00 (69.00-71.00) |" in table
