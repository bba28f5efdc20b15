"""The official SQuAD v1.1 evaluation as an offline `evaluate` module, written from its definition.

Same inputs and outputs as the hub's `squad` module, so `evaluate.load("<repo>/metrics/squad")` replaces
`evaluate.load("squad")`. Answers are compared after normalisation (lower case, punctuation removed, the
articles a/an/the removed as words, whitespace collapsed); per question, exact match and bag-of-tokens F1
take the maximum over the gold answers; both are reported as means x 100. Every v1.1 question has an answer,
so unlike SQuAD 2.0 an empty prediction scores 0.
"""

import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = "SQuAD v1.1 exact match and F1 (x 100), maximised over each question's gold answers."
_CITATION = "Rajpurkar, Zhang, Lopyrev and Liang, SQuAD: 100,000+ Questions for Machine Comprehension, EMNLP 2016."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str}.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}}.
Returns:
    exact_match, f1: means over the questions, x 100.
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text):
    """Lower case, drop ASCII punctuation, drop the words a/an/the, collapse whitespace."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def exact_match_score(prediction, gold):
    return float(normalize_answer(prediction) == normalize_answer(gold))


def f1_score(prediction, gold):
    predicted_tokens = normalize_answer(prediction).split()
    gold_tokens = normalize_answer(gold).split()
    shared = sum((collections.Counter(predicted_tokens) & collections.Counter(gold_tokens)).values())
    if shared == 0:  # includes an empty prediction or gold answer: v1.1 has no "no answer"
        return 0.0
    precision = shared / len(predicted_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


class Squad(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {"id": datasets.Value("string"), "prediction_text": datasets.Value("string")},
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.features.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
        )

    def _compute(self, predictions, references):
        predicted = {prediction["id"]: prediction["prediction_text"] for prediction in predictions}
        gold_ids = [reference["id"] for reference in references]
        # The official script scores a question without a prediction as 0 and goes on; a mismatch between the
        # two lists is a bug in the caller, so it is an error here.
        missing = [qid for qid in gold_ids if qid not in predicted]
        unknown = sorted(set(predicted) - set(gold_ids))
        if missing or unknown or len(predicted) != len(predictions):
            raise ValueError(
                f"squad: predictions and references must have the same unique ids "
                f"({len(missing)} without prediction, e.g. {missing[:3]}; {len(unknown)} unknown, e.g. {unknown[:3]}; "
                f"{len(predictions) - len(predicted)} duplicated)"
            )
        exact_total = f1_total = 0.0
        for reference in references:
            text = predicted[reference["id"]]
            golds = reference["answers"]["text"]
            exact_total += max((exact_match_score(text, gold) for gold in golds), default=0.0)
            f1_total += max((f1_score(text, gold) for gold in golds), default=0.0)
        count = max(len(references), 1)
        return {"exact_match": 100.0 * exact_total / count, "f1": 100.0 * f1_total / count}
