"""ROUGE-1/2/L F-measure x 100 with Google's `rouge-score` package, as an offline `evaluate` module.

Load by path: `evaluate.load("<repo>/metrics/rouge")`. Scores are the mean per-example F-measures (no
bootstrap), with the package's default tokenizer (lower-cased, non-alphanumerics dropped) and the Porter
stemmer on by default, as the s2s-ft summarisation scores are usually quoted. They are close to, not equal
to, the Perl ROUGE-1.5.5 numbers of published papers.
"""

import datasets
import evaluate
from rouge_score import rouge_scorer

_DESCRIPTION = "Mean ROUGE-1, ROUGE-2 and ROUGE-L F-measure (x 100) from the rouge-score package."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of generated texts.
    references: list of reference texts, one per prediction.
    use_stemmer: Porter-stem tokens before matching (default True).
Returns:
    rouge1, rouge2, rougeL: mean F-measure x 100.
"""
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")


class Rouge(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="Lin, ROUGE: A Package for Automatic Evaluation of Summaries, 2004.",
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {"predictions": datasets.Value("string"), "references": datasets.Value("string")}
            ),
        )

    def _compute(self, predictions, references, use_stemmer=True):
        scorer = rouge_scorer.RougeScorer(list(ROUGE_TYPES), use_stemmer=use_stemmer)
        totals = dict.fromkeys(ROUGE_TYPES, 0.0)
        for prediction, reference in zip(predictions, references, strict=True):
            scores = scorer.score(reference, prediction)  # rouge-score takes (target, prediction)
            for name in ROUGE_TYPES:
                totals[name] += scores[name].fmeasure
        count = max(len(predictions), 1)
        return {name: 100.0 * total / count for name, total in totals.items()}
