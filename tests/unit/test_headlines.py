"""The headline table of `make headlines` (minilmv2.tools.headlines.write_table) from given scores and times."""

from __future__ import annotations

import json

from minilmv2.tools import headlines
from minilmv2.tools.stages import STAGE_SECONDS_FILE


def test_table_rows_hold_each_model_scores_loss_and_minutes(tmp_path):
    scores = {
        model: {"eval_rouge1": 10.0 + i, "eval_rouge2": 1.0 + i, "eval_rougeL": 9.5 + i, "eval_loss": 6.5 - i,
                "eval_samples": 212}
        for i, model in enumerate(headlines.MODELS)
    }  # fmt: skip
    seconds = {f"fine-tune and decode the {model}": 60.0 * (i + 1) for i, model in enumerate(headlines.MODELS)}
    seconds["distillation (run.sh, the quickstart's values)"] = 600.0
    (tmp_path / STAGE_SECONDS_FILE).write_text(json.dumps(seconds))
    lead = {"eval_rouge1": 21.05, "eval_rouge2": 3.43, "eval_rougeL": 19.79, "words": 5}
    parameters = {"distilled student": 11.2, "random student": 11.2, "teacher": 22.7}

    text = headlines.write_table(tmp_path, scores, lead, parameters).read_text()
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

    del seconds["distillation (run.sh, the quickstart's values)"]  # a reused student: no distillation this run
    (tmp_path / STAGE_SECONDS_FILE).write_text(json.dumps(seconds))
    text = headlines.write_table(tmp_path, scores, lead, parameters).read_text()
    assert "Time: 6.0 min in all (the distilled student was reused from an earlier run)." in text
