"""The squad and squad_v2 evaluate modules (metrics/) against values worked out by hand from the official
definitions: normalisation, several gold answers, unanswerable questions and the best-threshold search."""

from __future__ import annotations

import pytest

from minilmv2.scoring.metrics import load_metric


@pytest.fixture(scope="module")
def squad_v2():
    return load_metric("squad_v2")


@pytest.fixture(scope="module")
def squad_v1():
    return load_metric("squad")


def reference(qid: str, *answers: str) -> dict:
    return {"id": qid, "answers": {"text": list(answers), "answer_start": [0] * len(answers)}}


def prediction(qid: str, text: str, null: float = 0.0) -> dict:
    return {"id": qid, "prediction_text": text, "no_answer_probability": null}


@pytest.mark.parametrize(
    ("gold", "predicted"),
    [
        ("The Cat", "cat"),  # case and the article "the"
        ("a cat.", "Cat!"),  # "a", punctuation
        ("an  old   cat", "old cat"),  # "an", runs of whitespace
        ("the cat", "The, cat"),  # punctuation next to an article
    ],
)
def test_normalisation_makes_these_exact(squad_v2, gold, predicted):
    result = squad_v2.compute(predictions=[prediction("q", predicted)], references=[reference("q", gold)])
    assert (result["exact"], result["f1"]) == (100.0, 100.0)


def test_articles_are_removed_only_as_words(squad_v2):
    # "theatre" keeps its "the", "another" its "an": exact fails; tokens {theatre} vs {atre}: f1 0.
    result = squad_v2.compute(predictions=[prediction("q", "atre")], references=[reference("q", "theatre")])
    assert (result["exact"], result["f1"]) == (0.0, 0.0)


def test_several_gold_answers_take_the_best_one(squad_v2, squad_v1):
    # Gold "big red dog" / "the red dog house"; prediction "red dog".
    # vs "big red dog": shared 2, P = 2/2, R = 2/3 -> F1 = 2 * 1 * 2/3 / (1 + 2/3) = 0.8
    # vs "red dog house" (article dropped): shared 2, P = 1, R = 2/3 -> 0.8; the max is 0.8, exact 0.
    references = [reference("q1", "big red dog", "the red dog house"), reference("q2", "Paris", "paris, France")]
    predictions = [prediction("q1", "red dog"), prediction("q2", "France")]
    # q2: vs "Paris" no token shared -> 0; vs "paris france": P = 1, R = 1/2 -> 2/3. exact 0.
    result = squad_v2.compute(predictions=predictions, references=references)
    assert result["exact"] == 0.0
    assert result["f1"] == pytest.approx(100 * (0.8 + 2 / 3) / 2, abs=1e-9)
    v1 = squad_v1.compute(
        predictions=[{"id": p["id"], "prediction_text": p["prediction_text"]} for p in predictions],
        references=references,
    )
    assert v1 == {"exact_match": 0.0, "f1": pytest.approx(100 * (0.8 + 2 / 3) / 2, abs=1e-9)}


def test_repeated_tokens_count_once_per_match(squad_v2):
    # gold "new york new york" (4 tokens), prediction "new new new" (3): shared min counts: new 2 -> 2.
    # P = 2/3, R = 2/4 -> F1 = 2 * (2/3)(1/2) / (2/3 + 1/2) = 4/7.
    result = squad_v2.compute(
        predictions=[prediction("q", "new new new")], references=[reference("q", "new york new york")]
    )
    assert result["f1"] == pytest.approx(100 * 4 / 7, abs=1e-9)


def test_unanswerable_questions_and_all_keys(squad_v2):
    # q1 answerable, right; q2 answerable, partly right; q3 unanswerable, answered ""; q4 unanswerable, answered.
    references = [reference("q1", "1911"), reference("q2", "the seventh century"), reference("q3"), reference("q4")]
    predictions = [
        prediction("q1", "1911"),
        prediction("q2", "seventh"),  # vs "seventh century": P 1, R 1/2 -> 2/3
        prediction("q3", ""),
        prediction("q4", "a wall"),
    ]
    result = squad_v2.compute(predictions=predictions, references=references, no_answer_threshold=1.0)
    assert set(result) == {
        "exact",
        "f1",
        "total",
        "HasAns_exact",
        "HasAns_f1",
        "HasAns_total",
        "NoAns_exact",
        "NoAns_f1",
        "NoAns_total",
        "best_exact",
        "best_exact_thresh",
        "best_f1",
        "best_f1_thresh",
    }
    assert result["total"] == 4 and result["HasAns_total"] == 2 and result["NoAns_total"] == 2
    assert result["exact"] == pytest.approx(100 * (1 + 0 + 1 + 0) / 4)
    assert result["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1 + 0) / 4)
    assert result["HasAns_exact"] == pytest.approx(50.0)
    assert result["HasAns_f1"] == pytest.approx(100 * (1 + 2 / 3) / 2)
    assert (result["NoAns_exact"], result["NoAns_f1"]) == (50.0, 50.0)


def test_gold_answers_that_normalise_to_nothing_make_a_question_unanswerable(squad_v2):
    # The only gold answer "The." normalises to "": the question is unanswerable, "" is right.
    result = squad_v2.compute(predictions=[prediction("q", "")], references=[reference("q", "The.")])
    assert result["NoAns_total"] == 1 and "HasAns_total" not in result
    assert result["exact"] == 100.0


def test_no_answer_threshold_overrides_the_text(squad_v2):
    # q1 answerable and right, q2 unanswerable and wrongly answered. With null scores 0.3 / 0.9 and
    # threshold 0.5, q2 (0.9 > 0.5) counts as "" -> right; q1 (0.3) keeps its text.
    references = [reference("q1", "Naseby"), reference("q2")]
    predictions = [prediction("q1", "Naseby", 0.3), prediction("q2", "the Severn", 0.9)]
    assert squad_v2.compute(predictions=predictions, references=references, no_answer_threshold=0.5)["exact"] == 100.0
    assert squad_v2.compute(predictions=predictions, references=references, no_answer_threshold=1.0)["exact"] == 50.0
    # A threshold below both null scores answers "" everywhere: q1 wrong, q2 right.
    assert squad_v2.compute(predictions=predictions, references=references, no_answer_threshold=0.0)["exact"] == 50.0


def test_best_threshold_search_by_hand(squad_v2):
    # id  has answer  raw exact  raw f1  null score
    # a   yes         1          1       0.25
    # b   no          0 (text)   0       0.75
    # c   yes         0          2/3     0.5
    # d   no          1 ("")     1       0.125
    # Every question "" (threshold below 0.125): b and d right -> exact 2, f1 2.
    # t = 0.125: d keeps "" -> exact 2 (d: 1 - 1 = 0 change); f1 2.
    # t = 0.25: a answered -> +1 -> exact 3, f1 3.
    # t = 0.5: c answered -> exact 3 (+0), f1 3 + 2/3.
    # t = 0.75: b answered with a wrong text -> -1 -> exact 2, f1 2 + 2/3.
    # best exact 3/4 at 0.25 (first reached), best f1 (3 + 2/3)/4 at 0.5.
    references = [reference("a", "cat"), reference("b"), reference("c", "big red dog"), reference("d")]
    predictions = [
        prediction("a", "the cat", 0.25),
        prediction("b", "dog", 0.75),
        prediction("c", "red dog house", 0.5),
        prediction("d", "", 0.125),
    ]
    result = squad_v2.compute(predictions=predictions, references=references)
    assert result["best_exact"] == pytest.approx(75.0)
    assert result["best_exact_thresh"] == 0.25
    assert result["best_f1"] == pytest.approx(100 * (3 + 2 / 3) / 4)
    assert result["best_f1_thresh"] == 0.5
    # Re-scoring at the reported threshold gives the best scores: the threshold is usable as reported.
    again = squad_v2.compute(predictions=predictions, references=references, no_answer_threshold=0.5)
    assert again["f1"] == pytest.approx(result["best_f1"])


def test_best_threshold_when_answering_nothing_is_best(squad_v2):
    # Both answered texts are wrong: the best is to answer "" everywhere, which only a threshold below every
    # null score (here -3 and 2) gives; the reported threshold must be such a value.
    references = [reference("a", "cat"), reference("b")]
    predictions = [prediction("a", "dog", -3.0), prediction("b", "mouse", 2.0)]
    result = squad_v2.compute(predictions=predictions, references=references)
    assert result["best_exact"] == 50.0
    assert result["best_exact_thresh"] < -3.0
    again = squad_v2.compute(
        predictions=predictions, references=references, no_answer_threshold=result["best_exact_thresh"]
    )
    assert again["exact"] == 50.0


def test_tied_null_scores_switch_together(squad_v2):
    # Two questions share null score 0: answering a (+1) then b (-1). The official script can report 100
    # (a answered, b not), which no threshold gives; here the pair moves together: 50 either way.
    references = [reference("a", "cat"), reference("b")]
    predictions = [prediction("a", "cat", 0.0), prediction("b", "dog", 0.0)]
    result = squad_v2.compute(predictions=predictions, references=references)
    assert result["best_exact"] == 50.0


def test_v1_empty_prediction_scores_zero(squad_v1):
    result = squad_v1.compute(
        predictions=[{"id": "q", "prediction_text": ""}], references=[reference("q", "Stratford")]
    )
    assert result == {"exact_match": 0.0, "f1": 0.0}


def test_ids_must_match(squad_v2, squad_v1):
    # evaluate itself refuses lists of different lengths; same lengths with different ids are ours to catch.
    with pytest.raises(ValueError, match="1 without prediction, e.g. \\['b'\\]; 1 unknown, e.g. \\['c'\\]"):
        squad_v2.compute(
            predictions=[prediction("a", "x"), prediction("c", "y")],
            references=[reference("a", "x"), reference("b", "y")],
        )
    with pytest.raises(ValueError, match="1 duplicated"):
        squad_v1.compute(
            predictions=[{"id": "a", "prediction_text": "x"}, {"id": "a", "prediction_text": "x"}],
            references=[reference("a", "x"), reference("b", "x")],
        )
