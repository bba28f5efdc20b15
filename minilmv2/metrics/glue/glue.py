"""The GLUE metric as an offline `evaluate` module, computed with scikit-learn and scipy.

Same inputs, config names and outputs as the hub's `glue` module, so `evaluate.load("<repo>/metrics/glue",
"mrpc")` replaces `evaluate.load("glue", "mrpc")`: cola -> matthews_correlation; stsb -> pearson and
spearmanr; mrpc and qqp -> accuracy and f1 (class 1 positive); the rest -> accuracy. Values are fractions
(0.9, not 90). Unlike the hub's module (whose outputs run_glue averages itself), a task with several metrics
also gets `combined_score`, their mean, which is what run_glue writes to its results.
"""

import datasets
import evaluate
import numpy as np
from scipy.stats import pearsonr, spearmanr
from sklearn.metrics import accuracy_score, f1_score, matthews_corrcoef

_DESCRIPTION = "GLUE dev metrics: Matthews correlation (cola), Pearson/Spearman (stsb), accuracy and F1."
_CITATION = "Wang et al., GLUE: A Multi-Task Benchmark and Analysis Platform for NLU, ICLR 2019."
_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted class ids (int), or scores (float) for stsb.
    references: gold class ids (int), or scores (float) for stsb.
Returns:
    cola: matthews_correlation; stsb: pearson, spearmanr, combined_score; mrpc, qqp: accuracy, f1,
    combined_score; sst2, mnli, mnli_matched, mnli_mismatched, qnli, rte, wnli, hans: accuracy.
"""
CONFIGS = (
    "cola",
    "sst2",
    "mrpc",
    "qqp",
    "stsb",
    "mnli",
    "mnli_matched",
    "mnli_mismatched",
    "qnli",
    "rte",
    "wnli",
    "hans",
)


class Glue(evaluate.Metric):
    def _info(self):
        if self.config_name not in CONFIGS:
            raise KeyError(f"glue config {self.config_name!r}; choose one of {', '.join(CONFIGS)}")
        value_type = "float32" if self.config_name == "stsb" else "int64"
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value(value_type), "references": datasets.Value(value_type)}
            ),
        )

    def _compute(self, predictions, references):
        predictions = np.asarray(predictions)
        references = np.asarray(references)
        if self.config_name == "stsb":
            # The features store float32; scipy would then correlate in float32 (about 1e-5 off).
            predictions = predictions.astype(np.float64)
            references = references.astype(np.float64)
            result = {
                "pearson": float(pearsonr(predictions, references)[0]),
                "spearmanr": float(spearmanr(predictions, references)[0]),
            }
        elif self.config_name == "cola":
            # sklearn returns 0 when a margin of the confusion matrix is empty (e.g. constant predictions).
            return {"matthews_correlation": float(matthews_corrcoef(references, predictions))}
        elif self.config_name in ("mrpc", "qqp"):
            result = {
                "accuracy": float(accuracy_score(references, predictions)),
                "f1": float(f1_score(references, predictions)),
            }
        else:
            return {"accuracy": float(accuracy_score(references, predictions))}
        result["combined_score"] = float(np.mean(list(result.values())))
        return result
