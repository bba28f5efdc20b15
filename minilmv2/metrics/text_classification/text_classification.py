"""Accuracy and macro-averaged F1 for single-label classification, as an offline `evaluate` module.

The metric of the two offline tasks (tweet_sentiment, bbc_news): their classes are unbalanced (positive
tweets are 18%), so accuracy alone flatters a model that ignores the small classes; macro F1 weighs every
class alike. `combined_score` is the mean of the two, as run_glue reports for tasks with several metrics.
"""

import datasets
import evaluate
from sklearn.metrics import accuracy_score, f1_score

_DESCRIPTION = "Accuracy, macro-averaged F1 and their mean for single-label classification."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (int).
    references: gold class ids (int).
Returns:
    accuracy, macro_f1 (unweighted mean of the per-class F1 over the classes seen in either list),
    combined_score (their mean). All in [0, 1].
"""


class TextClassification(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features({"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}),
        )

    def _compute(self, predictions, references):
        accuracy = float(accuracy_score(references, predictions))
        macro_f1 = float(f1_score(references, predictions, average="macro"))
        return {"accuracy": accuracy, "macro_f1": macro_f1, "combined_score": (accuracy + macro_f1) / 2}
