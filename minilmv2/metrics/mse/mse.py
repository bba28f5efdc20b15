"""Mean squared error, as an offline `evaluate` module (the hub's `mse`, which run_glue uses for a
regression task of the user's own)."""

import datasets
import evaluate
import numpy as np

_KWARGS_DESCRIPTION = """
Args:
    predictions: predicted values (float).
    references: gold values (float).
Returns:
    mse: mean of (prediction - reference) ** 2.
"""


class Mse(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description="Mean squared error.",
            citation="",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("float64"), "references": datasets.Value("float64")}
            ),
        )

    def _compute(self, predictions, references):
        difference = np.asarray(predictions, dtype=np.float64) - np.asarray(references, dtype=np.float64)
        return {"mse": float(np.mean(difference**2))}
