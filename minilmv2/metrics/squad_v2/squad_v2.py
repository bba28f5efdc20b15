"""The official SQuAD 2.0 evaluation as an offline `evaluate` module, written from its definition.

Same inputs and outputs as the hub's `squad_v2` module, so `evaluate.load("<repo>/metrics/squad_v2")`
replaces `evaluate.load("squad_v2")`. For each question:

- answers are compared after normalisation: lower case, punctuation removed, the articles a/an/the removed as
  words, whitespace collapsed;
- exact = 1 if the normalised prediction equals a normalised gold answer; f1 = the bag-of-tokens F1 between
  them; both take the maximum over the gold answers. A question whose gold answers all normalise to nothing
  is unanswerable: its only gold answer is "", which an empty prediction matches (exact = f1 = 1);
- a question whose `no_answer_probability` exceeds `no_answer_threshold` counts as answered with "" whatever
  its text.

Reported (x 100): exact, f1 and total over all questions, the same over the answerable (HasAns_*) and the
unanswerable (NoAns_*) ones when there are any, and best_exact / best_f1 with the threshold on
`no_answer_probability` that gives them. Any real-valued score works as `no_answer_probability` (our
fine-tuning script passes the null-score difference, the "null odds"), since only its order matters.

One deliberate difference from the official script's threshold search: when several questions share one
`no_answer_probability`, it may report a score between their states (some answered, some not), which no
threshold can produce; here tied questions switch together, so every best score is reachable by its threshold.
"""

import collections
import re
import string

import datasets
import evaluate

_DESCRIPTION = "SQuAD 2.0 exact match and F1, per answerable / unanswerable question, and the best null threshold."
_CITATION = "Rajpurkar, Jia and Liang, Know What You Don't Know: Unanswerable Questions for SQuAD, ACL 2018."
_KWARGS_DESCRIPTION = """
Args:
    predictions: list of {"id": str, "prediction_text": str, "no_answer_probability": float}.
    references: list of {"id": str, "answers": {"text": [str, ...], "answer_start": [int, ...]}};
        unanswerable questions have empty lists.
    no_answer_threshold: a question with no_answer_probability > this is scored as answered with "" (default 1.0).
Returns:
    exact, f1, total, HasAns_exact, HasAns_f1, HasAns_total, NoAns_exact, NoAns_f1, NoAns_total,
    best_exact, best_exact_thresh, best_f1, best_f1_thresh (scores x 100).
"""

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def normalize_answer(text):
    """Lower case, drop ASCII punctuation, drop the words a/an/the, collapse whitespace."""
    text = "".join(char for char in text.lower() if char not in _PUNCTUATION)
    return " ".join(_ARTICLES.sub(" ", text).split())


def answer_tokens(text):
    return normalize_answer(text).split()


def exact_score(gold, prediction):
    return float(normalize_answer(gold) == normalize_answer(prediction))


def f1_score(gold, prediction):
    gold_tokens = answer_tokens(gold)
    predicted_tokens = answer_tokens(prediction)
    if not gold_tokens or not predicted_tokens:
        # An empty side only matches an empty side: this is how "no answer" is scored.
        return float(gold_tokens == predicted_tokens)
    shared = sum((collections.Counter(gold_tokens) & collections.Counter(predicted_tokens)).values())
    if shared == 0:
        return 0.0
    precision = shared / len(predicted_tokens)
    recall = shared / len(gold_tokens)
    return 2 * precision * recall / (precision + recall)


def best_threshold(raw_scores, null_scores, has_answer):
    """(best total score x 100, its threshold): the threshold t on null_scores (a question with
    null_score > t is answered "") that maximises the summed per-question scores.

    raw_scores: {id: exact or f1 of the prediction text}; null_scores: {id: no_answer_probability};
    has_answer: {id: bool}. Every threshold is tried: below all null scores (every question answered "",
    one point per unanswerable question), then at each distinct null score in increasing order, which
    hands the questions at that score back their text. Ties keep the lowest such threshold.
    """
    if not raw_scores:
        return 0.0, 0.0
    # A question answered "" is worth 1 if it is unanswerable, else 0.
    score = float(sum(not has_answer[qid] for qid in raw_scores))
    best_score = score
    best_thresh = min(null_scores.values()) - 1.0  # below every null score: all questions get ""
    by_null_score = collections.defaultdict(list)
    for qid in raw_scores:
        by_null_score[null_scores[qid]].append(qid)
    for thresh in sorted(by_null_score):
        # Questions tied at one null score switch together; a state between them no threshold can produce.
        for qid in by_null_score[thresh]:
            score += raw_scores[qid] - (0.0 if has_answer[qid] else 1.0)
        if score > best_score:
            best_score, best_thresh = score, thresh
    return 100.0 * best_score / len(raw_scores), best_thresh


class SquadV2(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation=_CITATION,
            inputs_description=_KWARGS_DESCRIPTION,
            features=datasets.Features(
                {
                    "predictions": {
                        "id": datasets.Value("string"),
                        "prediction_text": datasets.Value("string"),
                        # float64, not the hub module's float32: a threshold between two close null scores
                        # must split them here exactly as the caller's own comparison did.
                        "no_answer_probability": datasets.Value("float64"),
                    },
                    "references": {
                        "id": datasets.Value("string"),
                        "answers": datasets.features.Sequence(
                            {"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}
                        ),
                    },
                }
            ),
        )

    def _compute(self, predictions, references, no_answer_threshold=1.0):
        predicted = {prediction["id"]: prediction for prediction in predictions}
        gold_ids = [reference["id"] for reference in references]
        # The official script skips questions without a prediction, which would score a partial run as if
        # it were complete: a mismatch between the two lists is an error here.
        missing = [qid for qid in gold_ids if qid not in predicted]
        unknown = sorted(set(predicted) - set(gold_ids))
        if missing or unknown or len(predicted) != len(predictions):
            raise ValueError(
                f"squad_v2: predictions and references must have the same unique ids "
                f"({len(missing)} without prediction, e.g. {missing[:3]}; {len(unknown)} unknown, e.g. {unknown[:3]}; "
                f"{len(predictions) - len(predicted)} duplicated)"
            )

        raw_exact, raw_f1, has_answer, null_scores = {}, {}, {}, {}
        for reference in references:
            qid = reference["id"]
            golds = [text for text in reference["answers"]["text"] if normalize_answer(text)]
            has_answer[qid] = bool(golds)
            golds = golds or [""]
            text = predicted[qid]["prediction_text"]
            raw_exact[qid] = max(exact_score(gold, text) for gold in golds)
            raw_f1[qid] = max(f1_score(gold, text) for gold in golds)
            null_scores[qid] = float(predicted[qid]["no_answer_probability"])

        def thresholded(raw):
            return {
                qid: float(not has_answer[qid]) if null_scores[qid] > no_answer_threshold else value
                for qid, value in raw.items()
            }

        exact, f1 = thresholded(raw_exact), thresholded(raw_f1)
        result = summary(exact, f1, list(exact))
        for prefix, wanted in (("HasAns_", True), ("NoAns_", False)):
            subset = [qid for qid in exact if has_answer[qid] == wanted]
            if subset:
                result.update({prefix + key: value for key, value in summary(exact, f1, subset).items()})
        result["best_exact"], result["best_exact_thresh"] = best_threshold(raw_exact, null_scores, has_answer)
        result["best_f1"], result["best_f1_thresh"] = best_threshold(raw_f1, null_scores, has_answer)
        return result


def summary(exact, f1, qids):
    """{exact, f1 (means x 100), total} over the questions qids."""
    total = len(qids)
    return {
        "exact": 100.0 * sum(exact[qid] for qid in qids) / total if total else 0.0,
        "f1": 100.0 * sum(f1[qid] for qid in qids) / total if total else 0.0,
        "total": total,
    }
