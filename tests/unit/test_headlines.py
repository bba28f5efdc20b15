"""The headline table of `make headlines` (minilmv2.tools.headlines.write_table) from given scores and times."""

from __future__ import annotations

import json

import pytest

from minilmv2.errors import UsageError
from minilmv2.tools import headlines
from minilmv2.tools.stages import STAGE_SECONDS_FILE, parse_seeds


def test_table_rows_hold_each_model_scores_loss_and_minutes(tmp_path):
    scores = {
        model: [{"eval_rouge1": 10.0 + i, "eval_rouge2": 1.0 + i, "eval_rougeL": 9.5 + i, "eval_loss": 6.5 - i,
                 "eval_samples": 212}]
        for i, model in enumerate(headlines.MODELS)
    }  # fmt: skip
    seconds = {f"fine-tune and decode the {model}": 60.0 * (i + 1) for i, model in enumerate(headlines.MODELS)}
    seconds["distillation (run.sh, the quickstart's values)"] = 600.0
    (tmp_path / STAGE_SECONDS_FILE).write_text(json.dumps(seconds))
    lead = {"eval_rouge1": 21.05, "eval_rouge2": 3.43, "eval_rougeL": 19.79, "words": 5}
    parameters = {"distilled student": 11.2, "random student": 11.2, "teacher": 22.7}

    text = headlines.write_table(tmp_path, scores, lead, parameters, [42]).read_text()
    rows = [line for line in text.splitlines() if line.startswith("| ") and not line.startswith("| model")]
    assert rows == [
        "| distilled student | 11.2M | 10.00 | 1.00 | 9.50 | 6.500 | 1.0 |",
        "| random student | 11.2M | 11.00 | 2.00 | 10.50 | 5.500 | 2.0 |",
        "| teacher | 22.7M | 12.00 | 3.00 | 11.50 | 4.500 | 3.0 |",
        "| lead baseline (first 5 words) | - | 21.05 | 3.43 | 19.79 | - | - |",
    ]
    assert "Dev split of bbc_news (212 articles)" in text
    assert "Time: 16.0 min in all (distillation 10.0 min of it)." in text
    assert " ".join(headlines.HEADLINE_ARGS) in text
    assert "One fine-tuning seed (42): no spread" in text and "Command: `make headlines`" in text

    del seconds["distillation (run.sh, the quickstart's values)"]  # a reused student: no distillation this run
    (tmp_path / STAGE_SECONDS_FILE).write_text(json.dumps(seconds))
    text = headlines.write_table(tmp_path, scores, lead, parameters, [42]).read_text()
    assert "Time: 6.0 min in all (the distilled student was reused from an earlier run)." in text


def test_several_seeds_give_the_median_and_range_and_all_seeds_time(tmp_path):
    seeds = [1, 2, 3]
    rouge1 = {1: 4.2, 2: 2.8, 3: 4.9}
    scores = {
        model: [{"eval_rouge1": rouge1[seed] + i, "eval_rouge2": 0.5, "eval_rougeL": 4.0, "eval_loss": 6.0 + seed / 10,
                 "eval_samples": 212} for seed in seeds]
        for i, model in enumerate(headlines.MODELS)
    }  # fmt: skip
    seconds = {headlines.stage_title(model, seed, seeds): 60.0 for model in headlines.MODELS for seed in seeds}
    (tmp_path / STAGE_SECONDS_FILE).write_text(json.dumps(seconds))
    lead = {"eval_rouge1": 21.05, "eval_rouge2": 3.43, "eval_rougeL": 19.79, "words": 5}
    parameters = dict.fromkeys(headlines.MODELS, 11.2)

    text = headlines.write_table(tmp_path, scores, lead, parameters, seeds).read_text()
    row = next(line for line in text.splitlines() if line.startswith("| distilled student"))
    cells = "4.20 (2.80-4.90) | 0.50 (0.50-0.50) | 4.00 (4.00-4.00) | 6.200 (6.100-6.300)"
    assert row == f"| distilled student | 11.2M | {cells} | 3.0 |"
    assert "the median over fine-tuning seeds 1 2 3, min-max in brackets" in text
    assert 'Command: `SEEDS="1 2 3" make headlines`' in text
    assert headlines.stage_title("teacher", 2, seeds) == "fine-tune and decode the teacher, seed 2"
    assert headlines.stage_title("teacher", 42, [42]) == "fine-tune and decode the teacher"


def test_seeds_are_parsed_or_refused_in_one_line(tmp_path, capsys, monkeypatch):
    assert parse_seeds("1 2 3") == [1, 2, 3]
    assert parse_seeds("7,8") == [7, 8]
    monkeypatch.setenv("SEEDS", "1 two")
    with pytest.raises(SystemExit) as exit_info:
        headlines.main(["--output_dir", str(tmp_path / "out")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.strip() == (
        "error: SEEDS '1 two' must be distinct whole numbers separated by spaces, e.g. \"1 2 3\""
    )
    assert not (tmp_path / "out").exists()
    for bad in ("", "1 1", "1 01", "-3"):
        with pytest.raises(UsageError):
            parse_seeds(bad)
