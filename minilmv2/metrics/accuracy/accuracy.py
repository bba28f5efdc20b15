"""Accuracy, as an offline `evaluate` module (the hub's `accuracy`, which run_glue uses for a classification
task of the user's own)."""

import datasets
import evaluate
from sklearn.metrics import accuracy_score

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (int).
    references: gold class ids (int).
Returns:
    accuracy: fraction of predictions equal to their reference.
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Fraction of correct predictions.",
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        return {"accuracy": float(accuracy_score(references, predictions))}
