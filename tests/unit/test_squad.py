"""minilmv2.scoring.squad without a model: reading SQuAD JSON, windows over long contexts, training labels, and the
choice of answers from logits set by hand."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fixtures.squad.tiny_models import SQUAD_FIXTURES, write_tiny_squad_bert

from minilmv2.errors import UsageError
from minilmv2.scoring import squad

# The windows the end-to-end tests use too: the 140-token Avon context needs several, and one training
# answer ("a trust of volunteers") crosses the edge of one of them.
MAX_SEQ_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH = 64, 24, 16


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(write_tiny_squad_bert(tmp_path_factory.mktemp("tiny_squad_bert")))


@pytest.fixture(scope="module")
def train_rows():
    return squad.to_dataset(squad.read_squad_json(SQUAD_FIXTURES / "train-v2.0.json", "--train_file"))


def test_fixture_files_are_read_with_their_version():
    dev = squad.read_squad_json(SQUAD_FIXTURES / "dev-v2.0.json", "--predict_file")
    assert dev.is_v2 and dev.num_unanswerable == 3 and len(dev.rows["id"]) == 10
    several = dev.rows["answers"][dev.rows["id"].index("wall-when")]["text"]
    assert several == ["as early as the 7th century BC", "7th century BC", "the 7th century BC"]
    v1 = squad.read_squad_json(SQUAD_FIXTURES / "dev-v1.1.json", "--predict_file")
    assert not v1.is_v2 and v1.num_unanswerable == 0 and len(v1.rows["id"]) == 7
    # Every gold answer sits where answer_start says (the fixture is consistent).
    for context, answers in zip(dev.rows["context"], dev.rows["answers"], strict=True):
        for text, start in zip(answers["text"], answers["answer_start"], strict=True):
            assert context[start : start + len(text)] == text


def write(tmp_path: Path, document) -> Path:
    path = tmp_path / "data.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return path


def paragraph(qas, context="Some context."):
    return {"data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]}


@pytest.mark.parametrize(
    ("document", "fragment"),
    [
        ("{not json", "is not valid JSON"),
        ([1, 2], "no top-level 'data' list"),
        ({"data": [{"title": "t"}]}, "data[0] has no 'paragraphs' list"),
        ({"data": [{"paragraphs": [{"context": "x"}]}]}, "paragraphs[0] has no 'qas' list"),
        (paragraph([{"id": "a", "question": "q", "answers": []}], context=""), "has no 'context' text"),
        (paragraph([{"id": "a", "question": "q"}]), "without 'id', 'question' and 'answers'"),
        (paragraph([{"id": "a", "question": "q", "answers": ["Some"]}]), 'not of the form [{"text": str'),
        (
            paragraph([{"id": "a", "question": "q", "answers": [{"text": "Some", "answer_start": 0}]}] * 2),
            "question id 'a' appears twice",
        ),
        (paragraph([]), "holds no questions"),
        (
            paragraph([{"id": "a", "question": "q", "answers": []}]),
            "is SQuAD v1.1 data but question 'a' has no answer",
        ),
    ],
)
def test_wrong_layouts_are_refused_in_one_line(tmp_path, document, fragment):
    with pytest.raises(UsageError) as error:
        squad.read_squad_json(write(tmp_path, document), "--train_file")
    assert fragment in str(error.value) and "\n" not in str(error.value)
    assert str(error.value).startswith("--train_file ") or "data[" in str(error.value)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match="--predict_file .*nowhere.json' does not exist"):
        squad.read_squad_json(tmp_path / "nowhere.json", "--predict_file")


def test_version_flag_must_match_the_data():
    v2 = squad.read_squad_json(SQUAD_FIXTURES / "dev-v2.0.json", "--predict_file")
    v1 = squad.read_squad_json(SQUAD_FIXTURES / "dev-v1.1.json", "--predict_file")
    squad.check_version(v2, "--predict_file", "dev-v2.0.json", True)
    squad.check_version(v1, "--predict_file", "dev-v1.1.json", False)
    with pytest.raises(UsageError, match="is SQuAD 2.0 data \\(3 unanswerable questions\\); pass --version_2_with"):
        squad.check_version(v2, "--predict_file", "dev-v2.0.json", False)
    with pytest.raises(UsageError, match="is SQuAD v1.1 data .*; drop --version_2_with_negative"):
        squad.check_version(v1, "--predict_file", "dev-v1.1.json", True)


def test_impossible_questions_lose_their_plausible_answers(tmp_path):
    qa = {"id": "a", "question": "q", "answers": [{"text": "Some", "answer_start": 0}], "is_impossible": True}
    data = squad.read_squad_json(write(tmp_path, paragraph([qa])), "--train_file")
    assert data.is_v2 and data.rows["answers"] == [{"text": [], "answer_start": []}]


def test_windows_start_doc_stride_tokens_apart_and_cover_the_context(tokenizer, train_rows):
    context = train_rows["context"][0]
    question = train_rows["question"][0]
    columns = squad.tokenize_windows(tokenizer, [question], [context], MAX_SEQ_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH)
    # The context's own tokens, as character spans, to compare window starts with.
    context_offsets = tokenizer(context, add_special_tokens=False, return_offsets_mapping=True)["offset_mapping"]
    window_tokens = []
    for offsets, sequence_ids in zip(columns["offset_mapping"], columns["sequence_ids"], strict=True):
        window_tokens.append([tuple(o) for o, s in zip(offsets, sequence_ids, strict=True) if s == 1])
        assert len(offsets) <= MAX_SEQ_LENGTH
    assert len(window_tokens) >= 4
    for number, tokens in enumerate(window_tokens):
        start = context_offsets.index(tokens[0])
        assert start == number * DOC_STRIDE  # the seed's meaning of doc_stride: a step, not an overlap
        assert tokens == [tuple(o) for o in context_offsets[start : start + len(tokens)]]
    assert window_tokens[-1][-1] == tuple(context_offsets[-1])  # the last window reaches the end


def test_long_questions_are_cut_to_max_query_length(tokenizer):
    question = " ".join(["which"] * 40) + "?"
    columns = squad.tokenize_windows(tokenizer, [question], ["A short context."], MAX_SEQ_LENGTH, DOC_STRIDE, 5)
    assert columns["sequence_ids"][0].count(0) == 5


def test_training_labels_point_at_the_answer_or_at_cls(tokenizer, train_rows):
    features = squad.train_features(train_rows[:], tokenizer, MAX_SEQ_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH)
    columns = squad.tokenize_windows(
        tokenizer, train_rows["question"], train_rows["context"], MAX_SEQ_LENGTH, DOC_STRIDE, MAX_QUERY_LENGTH
    )
    assert set(features) == {"input_ids", "token_type_ids", "attention_mask", "start_positions", "end_positions"}
    crossing = 0
    labelled = set()
    for index, example in enumerate(columns["example_index"]):
        start, end = features["start_positions"][index], features["end_positions"][index]
        answers = train_rows["answers"][example]
        offsets = columns["offset_mapping"][index]
        if start == 0:
            assert end == 0
            if answers["text"]:  # the window misses all or part of the answer
                first, last = squad.context_bounds(columns["sequence_ids"][index])
                answer_start = answers["answer_start"][0]
                answer_end = answer_start + len(answers["text"][0])
                inside = offsets[first][0] <= answer_start and answer_end <= offsets[last][1]
                assert not inside
                crossing += offsets[first][0] <= answer_start < offsets[last][1] < answer_end
            continue
        labelled.add(example)
        context = train_rows["context"][example]
        assert context[offsets[start][0] : offsets[end][1]] == answers["text"][0]
    assert crossing >= 1  # the fixture holds an answer cut by a window's edge...
    answerable = {i for i, answers in enumerate(train_rows["answers"]) if answers["text"]}
    assert labelled == answerable and len(answerable) == 9  # ...and each answer is labelled in some window


def hand_features(windows):
    """Features for postprocess from [(example_id, offsets)] written out by hand; [CLS] at 0."""
    return {
        "example_id": [example_id for example_id, _ in windows],
        "offset_mapping": [offsets for _, offsets in windows],
        "cls_index": [0] * len(windows),
    }


# "alpha beta gamma delta": tokens at characters (0,5) (6,10) (11,16) (17,22).
CONTEXT = "alpha beta gamma delta"
# Window 1: [CLS] q [SEP] alpha beta gamma [SEP]; window 2: [CLS] q [SEP] beta gamma delta [SEP] (step 1).
WINDOWS = [
    ("q", [None, None, None, (0, 5), (6, 10), (11, 16), None]),
    ("q", [None, None, None, (6, 10), (11, 16), (17, 22), None]),
]
NEG = -10.0


def logits(*values):
    return np.array(values, dtype=np.float32)


def test_best_span_across_windows_and_the_null_score():
    starts = np.stack([logits(1.0, 5.0, NEG, 2.0, NEG, NEG, NEG), logits(3.0, NEG, NEG, NEG, 4.0, NEG, NEG)])
    ends = np.stack([logits(1.0, 5.0, NEG, NEG, 2.5, NEG, NEG), logits(0.5, NEG, NEG, NEG, NEG, 3.0, NEG)])
    # The question token (index 1) has the highest logits of window 1 but cannot be an answer.
    # Window 1 best span: alpha..beta = 2.0 + 2.5 = 4.5; window 2: gamma..delta = 4.0 + 3.0 = 7.0.
    # Null score: the lowest [CLS] start + end over the windows = min(2.0, 3.5) = 2.0; null odds 2.0 - 7.0 = -5.
    predictions = squad.postprocess(
        {"id": ["q"], "context": [CONTEXT]}, hand_features(WINDOWS), starts, ends, version_2_with_negative=True
    )
    answer = predictions["q"]
    assert answer.text == "gamma delta"
    assert answer.null_odds == pytest.approx(-5.0)
    assert answer.nbest[0]["text"] == "gamma delta"
    assert answer.nbest[0]["start_logit"] == 4.0 and answer.nbest[0]["end_logit"] == 3.0
    assert sum(entry["probability"] for entry in answer.nbest) == pytest.approx(1.0)
    null_entry = next(entry for entry in answer.nbest if entry["text"] == "")
    assert (null_entry["start_logit"], null_entry["end_logit"]) == (1.0, 1.0)
    # The same logits as v1.1: no null entry, null odds 0.
    v1 = squad.postprocess(
        {"id": ["q"], "context": [CONTEXT]}, hand_features(WINDOWS), starts, ends, version_2_with_negative=False
    )
    assert v1["q"].text == "gamma delta" and v1["q"].null_odds == 0.0
    assert all(entry["text"] for entry in v1["q"].nbest)


def test_null_answer_when_the_score_difference_exceeds_the_threshold():
    starts = np.stack([logits(6.0, NEG, NEG, 1.0, NEG, NEG, NEG)])
    ends = np.stack([logits(2.0, NEG, NEG, NEG, 1.5, NEG, NEG)])
    # null 8.0, best span alpha..beta 2.5 -> odds 5.5
    features = hand_features(WINDOWS[:1])
    examples = {"id": ["q"], "context": [CONTEXT]}
    assert squad.postprocess(examples, features, starts, ends, True)["q"].text == ""
    kept = squad.postprocess(examples, features, starts, ends, True, null_score_diff_threshold=5.5)["q"]
    assert kept.text == "alpha beta" and kept.null_odds == pytest.approx(5.5)


def test_max_answer_length_and_order_of_ends():
    starts = np.stack([logits(NEG, NEG, NEG, 5.0, 0.0, 1.0, NEG)])
    ends = np.stack([logits(NEG, NEG, NEG, 0.0, 0.5, 5.0, NEG)])
    # alpha..gamma scores 10 but spans 3 tokens; with max_answer_length 2 the best is beta..gamma (0 + 5) or
    # gamma..gamma (1 + 5 = 6): gamma. An end before its start (gamma start, alpha end) never counts.
    examples = {"id": ["q"], "context": [CONTEXT]}
    features = hand_features(WINDOWS[:1])
    assert squad.postprocess(examples, features, starts, ends, False)["q"].text == "alpha beta gamma"
    assert squad.postprocess(examples, features, starts, ends, False, max_answer_length=2)["q"].text == "gamma"


def test_a_span_always_exists_even_when_no_top_pair_fits():
    # n_best_size 1 pairs only the top start (gamma) with the top end (alpha): an end before its start. The
    # fallback is the best single context token by start + end: alpha (0 + 4) over beta (1 + 1), gamma (4 - 9).
    starts = np.stack([logits(NEG, NEG, NEG, 0.0, 1.0, 4.0, NEG)])
    ends = np.stack([logits(NEG, NEG, NEG, 4.0, 1.0, -9.0, NEG)])
    result = squad.postprocess(
        {"id": ["q"], "context": [CONTEXT]}, hand_features(WINDOWS[:1]), starts, ends, True, n_best_size=1
    )
    assert result["q"].nbest[0]["text"] == "alpha"
