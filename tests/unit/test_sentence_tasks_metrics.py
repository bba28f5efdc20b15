"""GLUE metrics computed offline, checked against values worked out by hand (not just against sklearn).

They are the package's evaluate modules (minilmv2/metrics/glue, text_classification, mse, accuracy), reached through
each task's metric (`sentence_tasks.load_task_metric`, as hf_run_evaluation.py loads it) and, as a user would,
through `evaluate.load(path)`.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from minilmv2.scoring import sentence_tasks


def compute_metrics(spec, predictions, references) -> dict[str, float]:
    """The task's metric(s) on (N,) predictions and references, as hf_run_evaluation.py computes them."""
    metric = sentence_tasks.load_task_metric(spec)
    return metric.compute(predictions=np.asarray(predictions), references=np.asarray(references))


# Binary case used for cola / mrpc / qqp. Counting by hand (positive class = 1):
#   index      0 1 2 3 4 5 6 7
#   reference  1 1 1 1 1 0 0 0
#   predicted  1 1 1 0 0 0 0 1
#   TP = 3 (0-2), FN = 2 (3-4), TN = 2 (5-6), FP = 1 (7)
BINARY_REFERENCES = np.array([1, 1, 1, 1, 1, 0, 0, 0])
BINARY_PREDICTIONS = np.array([1, 1, 1, 0, 0, 0, 0, 1])
HAND_ACCURACY = 5 / 8
HAND_F1 = 2 * 3 / (2 * 3 + 1 + 2)  # 2TP / (2TP + FP + FN) = 6/9
HAND_MCC = (3 * 2 - 1 * 2) / math.sqrt((3 + 1) * (3 + 2) * (2 + 1) * (2 + 2))  # 4 / sqrt(240)


def test_cola_is_matthews_correlation():
    result = compute_metrics(sentence_tasks.TASKS["cola"], BINARY_PREDICTIONS, BINARY_REFERENCES)
    assert result.keys() == {"matthews_correlation"}
    assert result["matthews_correlation"] == pytest.approx(HAND_MCC, abs=1e-12)
    assert abs(HAND_MCC - 0.2581988897) < 1e-9


def test_cola_constant_predictions_score_zero():
    # The GLUE metric (sklearn's) defines MCC as 0 when a confusion-matrix margin is empty.
    result = compute_metrics(sentence_tasks.TASKS["cola"], np.ones(8, dtype=int), BINARY_REFERENCES)
    assert result["matthews_correlation"] == 0.0


@pytest.mark.parametrize("task", ["mrpc", "qqp"])
def test_mrpc_qqp_are_accuracy_f1_and_their_mean(task):
    result = compute_metrics(sentence_tasks.TASKS[task], BINARY_PREDICTIONS, BINARY_REFERENCES)
    assert result.keys() == {"accuracy", "f1", "combined_score"}
    assert result["accuracy"] == pytest.approx(HAND_ACCURACY, abs=1e-12)
    assert result["f1"] == pytest.approx(HAND_F1, abs=1e-12)
    assert result["combined_score"] == pytest.approx((HAND_ACCURACY + HAND_F1) / 2, abs=1e-12)


def test_f1_counts_class_one_as_positive():
    # Swapping the labels changes F1 (TP 2, FP 2, FN 1 -> 4/7) but not accuracy: class 1 is the positive one.
    result = compute_metrics(sentence_tasks.TASKS["mrpc"], 1 - BINARY_PREDICTIONS, 1 - BINARY_REFERENCES)
    assert result["f1"] == pytest.approx(4 / 7, abs=1e-12)
    assert result["accuracy"] == pytest.approx(HAND_ACCURACY, abs=1e-12)


def test_stsb_pearson_and_spearman_with_ties():
    predictions = np.array([1.0, 2.0, 3.0, 4.0, 5.0])
    references = np.array([2.0, 4.0, 5.0, 4.0, 5.0])
    # Pearson: deviations from the means (3, 4) are x = [-2,-1,0,1,2], y = [-2,0,1,0,1];
    # sum xy = 6, sum x^2 = 10, sum y^2 = 6 -> r = 6 / sqrt(60).
    hand_pearson = 6 / math.sqrt(60)
    # Spearman: ranks of x = [1..5]; of y, ties averaged: 2 -> 1, the two 4s -> 2.5, the two 5s -> 4.5;
    # deviations from 3: x = [-2,-1,0,1,2], y = [-2,-0.5,1.5,-0.5,1.5]; sum xy = 7, sum y^2 = 9 -> 7 / sqrt(90).
    hand_spearman = 7 / math.sqrt(90)
    result = compute_metrics(sentence_tasks.TASKS["stsb"], predictions, references)
    assert result.keys() == {"pearson", "spearmanr", "combined_score"}
    assert result["pearson"] == pytest.approx(hand_pearson, abs=1e-12)
    assert result["spearmanr"] == pytest.approx(hand_spearman, abs=1e-12)
    assert result["combined_score"] == pytest.approx((hand_pearson + hand_spearman) / 2, abs=1e-12)


@pytest.mark.parametrize("task", ["sst2", "mnli", "qnli", "rte", "wnli"])
def test_accuracy_tasks(task):
    num_labels = sentence_tasks.TASKS[task].num_labels
    references = np.array([0, 1, 1, 0, 1, 0]) % num_labels
    predictions = np.array([0, 1, 0, 0, 0, 1]) % num_labels  # right at indices 0, 1, 3
    result = compute_metrics(sentence_tasks.TASKS[task], predictions, references)
    assert result == {"accuracy": pytest.approx(3 / 6, abs=1e-12)}


@pytest.mark.parametrize("task", ["tweet_sentiment", "bbc_news"])
def test_offline_tasks_report_accuracy_and_macro_f1(task):
    references = np.array([0, 0, 0, 1, 1, 2])
    predictions = np.array([0, 0, 1, 1, 2, 2])
    # Per class: 0 -> TP 2, FP 0, FN 1: F1 4/5; 1 -> TP 1, FP 1, FN 1: 2/4; 2 -> TP 1, FP 1, FN 0: 2/3.
    hand_macro_f1 = (4 / 5 + 2 / 4 + 2 / 3) / 3
    result = compute_metrics(sentence_tasks.TASKS[task], predictions, references)
    assert result["accuracy"] == pytest.approx(4 / 6, abs=1e-12)
    assert result["macro_f1"] == pytest.approx(hand_macro_f1, abs=1e-12)
    assert result["combined_score"] == pytest.approx((4 / 6 + hand_macro_f1) / 2, abs=1e-12)


def test_custom_regression_is_mean_squared_error():
    spec = sentence_tasks.TaskSpec("custom", ("sentence", None), None, "pearson")
    result = compute_metrics(spec, np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 2.0]))
    assert result == {"mse": pytest.approx((0 + 1 + 4) / 3, abs=1e-12)}


def test_every_task_has_its_main_metric_among_its_results():
    for spec in sentence_tasks.TASKS.values():
        if spec.is_regression:
            result = compute_metrics(spec, np.array([0.0, 1.0, 3.0]), np.array([0.5, 1.0, 2.0]))
        else:
            result = compute_metrics(spec, np.array([0, 1, 0]), np.array([0, 1, 1]))
        assert spec.main_metric in result, spec.name


def test_glue_module_loads_by_path_with_evaluate_as_run_glue_does():
    import evaluate

    from minilmv2.scoring.metrics import METRICS_DIR

    metric = evaluate.load(str(METRICS_DIR / "glue"), "mrpc", keep_in_memory=True)
    result = metric.compute(predictions=BINARY_PREDICTIONS, references=BINARY_REFERENCES)
    assert result["accuracy"] == pytest.approx(HAND_ACCURACY, abs=1e-12)
    assert result["f1"] == pytest.approx(HAND_F1, abs=1e-12)


def test_metric_modules_accumulate_batches_like_hub_modules():
    # add_batch then compute, the streaming form of evaluate's API, must equal one compute over everything.
    metric = sentence_tasks.load_task_metric(sentence_tasks.TASKS["cola"])
    metric.add_batch(predictions=BINARY_PREDICTIONS[:3], references=BINARY_REFERENCES[:3])
    metric.add_batch(predictions=BINARY_PREDICTIONS[3:], references=BINARY_REFERENCES[3:])
    assert metric.compute()["matthews_correlation"] == pytest.approx(HAND_MCC, abs=1e-12)


def test_unknown_glue_config_and_unknown_metric_are_refused():
    from minilmv2.errors import UsageError
    from minilmv2.scoring.metrics import load_metric

    with pytest.raises(KeyError, match="choose one of"):
        load_metric("glue", "not_a_task")
    with pytest.raises(UsageError, match="no metric 'bleurt'.*available: .*squad_v2"):
        load_metric("bleurt")
