"""SQuAD v1.1 / 2.0 for extractive question answering: the data files, windows over long contexts, and the
choice of an answer span (or none) from a model's start/end logits.

Data flows: SQuAD JSON (or the hub's squad / squad_v2) -> one row per question in the hub's schema
{id, title, context, question, answers: {text, answer_start}} -> features, one per window of
max_seq_length tokens ([CLS] question [SEP] context-window [SEP]) -> start/end logits per feature ->
`postprocess` -> one answer text per question (and "" for "no answer" in SQuAD 2.0).

Windows follow the seed's run_squad (BERT's original): `doc_stride` is the step between the starts of
consecutive context windows, so windows overlap by (window length - doc_stride) tokens. Hugging Face's
run_qa passes doc_stride to the tokenizer as the overlap instead, which at 384/128 gives different windows.
"""

from __future__ import annotations

import collections
import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minilmv2.errors import UsageError, one_line

HUB_NAMES = {"squad": "rajpurkar/squad", "squad_v2": "rajpurkar/squad_v2"}


# ---------------------------------------------------------------------------------------------------------
# SQuAD JSON files


@dataclass
class SquadFile:
    """What a SQuAD JSON file holds: rows in the hub's schema, and whether it is SQuAD 2.0 data."""

    rows: dict[str, list]
    is_v2: bool
    num_unanswerable: int


def read_squad_json(path: str | Path, option: str) -> SquadFile:
    """Read and check a file in the SQuAD layout {"data": [{"title", "paragraphs": [{"context", "qas": [
    {"id", "question", "answers": [{"text", "answer_start"}], "is_impossible"?}]}]}]}.

    UsageError (naming `option`, the flag that gave the path) for a missing file, invalid JSON or a wrong layout.
    The file is SQuAD 2.0 data when its version says v2 or any question carries `is_impossible`; a question
    with no answer in a file that is not is refused, since v1.1 cannot score it.
    """
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option} {str(path)!r} does not exist")
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise UsageError(f"{option} {str(path)!r} is not valid JSON ({one_line(err)})") from None
    layout = 'the SQuAD layout {"data": [{"title", "paragraphs": [{"context", "qas": [...]}]}]}'
    if not isinstance(document, dict) or not isinstance(document.get("data"), list):
        raise UsageError(f"{option} {str(path)!r} has no top-level 'data' list; expected {layout}")
    rows: dict[str, list] = {"id": [], "title": [], "context": [], "question": [], "answers": []}
    is_v2 = str(document.get("version", "")).lstrip("v").startswith("2")
    unanswerable = 0
    seen_ids: set[str] = set()
    for article_number, article in enumerate(document["data"]):
        where = f"{option} {str(path)!r}: data[{article_number}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise UsageError(f"{where} has no 'paragraphs' list; expected {layout}")
        for paragraph_number, paragraph in enumerate(article["paragraphs"]):
            here = f"{where}.paragraphs[{paragraph_number}]"
            if not isinstance(paragraph, dict) or not isinstance(paragraph.get("qas"), list):
                raise UsageError(f"{here} has no 'qas' list; expected {layout}")
            context = paragraph.get("context")
            if not isinstance(context, str) or not context.strip():
                raise UsageError(f"{here} has no 'context' text")
            for qa in paragraph["qas"]:
                if not isinstance(qa, dict) or not all(key in qa for key in ("id", "question", "answers")):
                    raise UsageError(f"{here} has a question without 'id', 'question' and 'answers'")
                qid = str(qa["id"])
                if qid in seen_ids:
                    raise UsageError(f"{option} {str(path)!r}: question id {qid!r} appears twice")
                seen_ids.add(qid)
                answers = qa["answers"]
                if not isinstance(answers, list) or not all(
                    isinstance(a, dict) and isinstance(a.get("text"), str) and isinstance(a.get("answer_start"), int)
                    for a in answers
                ):
                    raise UsageError(
                        f"{option} {str(path)!r}: question {qid!r} has answers not of the form "
                        '[{"text": str, "answer_start": int}]'
                    )
                if "is_impossible" in qa:
                    is_v2 = True
                if qa.get("is_impossible"):
                    answers = []  # SQuAD 2.0 keeps "plausible_answers" apart; an impossible question has none
                if not answers:
                    unanswerable += 1
                rows["id"].append(qid)
                rows["title"].append(str(article.get("title", "")))
                rows["context"].append(context)
                rows["question"].append(str(qa["question"]))
                rows["answers"].append(
                    {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
                )
    if not rows["id"]:
        raise UsageError(f"{option} {str(path)!r} holds no questions")
    if unanswerable and not is_v2:
        first = next(qid for qid, a in zip(rows["id"], rows["answers"], strict=True) if not a["text"])
        raise UsageError(
            f"{option} {str(path)!r} is SQuAD v1.1 data but question {first!r} has no answer; "
            "mark unanswerable questions with is_impossible (SQuAD 2.0) or give each an answer"
        )
    return SquadFile(rows, is_v2, unanswerable)


def check_version(data: SquadFile, option: str, path: str, version_2_with_negative: bool) -> None:
    """UsageError when the file's SQuAD version and --version_2_with_negative disagree."""
    if data.is_v2 and not version_2_with_negative:
        raise UsageError(
            f"{option} {path!r} is SQuAD 2.0 data ({data.num_unanswerable} unanswerable questions); "
            "pass --version_2_with_negative"
        )
    if version_2_with_negative and not data.is_v2:
        raise UsageError(
            f"{option} {path!r} is SQuAD v1.1 data (no is_impossible, no unanswerable question); "
            "drop --version_2_with_negative"
        )


def to_dataset(data: SquadFile):
    """A `datasets.Dataset` in the hub's squad schema."""
    import datasets

    features = datasets.Features(
        {
            "id": datasets.Value("string"),
            "title": datasets.Value("string"),
            "context": datasets.Value("string"),
            "question": datasets.Value("string"),
            "answers": datasets.Sequence({"text": datasets.Value("string"), "answer_start": datasets.Value("int32")}),
        }
    )
    return datasets.Dataset.from_dict(data.rows, features=features)


# ---------------------------------------------------------------------------------------------------------
# Windows (features)


def cut_questions(tokenizer, questions: list[str], max_query_length: int) -> list[str]:
    """Questions cut to at most max_query_length tokens, at a token boundary of the original text.

    Leading whitespace is dropped first: some SQuAD questions start with many spaces, which byte-level BPE
    (RoBERTa) turns into tokens that would take room from the context.
    """
    questions = [question.lstrip() for question in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    cut = []
    for question, offsets in zip(questions, encoded["offset_mapping"], strict=True):
        cut.append(question if len(offsets) <= max_query_length else question[: offsets[max_query_length - 1][1]])
    return cut


def tokenize_windows(tokenizer, questions, contexts, max_seq_length: int, doc_stride: int, max_query_length: int):
    """Tokenise question/context pairs into windows of at most max_seq_length tokens.

    Returns the tokenizer's BatchEncoding (input_ids, attention_mask, token_type_ids when the model has them,
    offset_mapping, overflow_to_sample_mapping) with the windows of example 0 first, then example 1, ...
    The tokenizer's `stride` is an overlap; for a step of doc_stride between window starts it must be
    (context room - doc_stride), which depends on the question's length, so questions are grouped by length.
    """
    questions = cut_questions(tokenizer, questions, max_query_length)
    question_lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    special = tokenizer.num_special_tokens_to_add(pair=True)
    by_overlap: dict[int, list[int]] = collections.defaultdict(list)
    for index, length in enumerate(question_lengths):
        room = max_seq_length - length - special
        by_overlap[max(0, room - doc_stride)].append(index)
    pieces: dict[int, list[dict]] = {}
    for overlap, indices in by_overlap.items():
        encoded = tokenizer(
            [questions[i] for i in indices],
            [contexts[i] for i in indices],
            truncation="only_second",
            max_length=max_seq_length,
            stride=overlap,
            return_overflowing_tokens=True,
            return_offsets_mapping=True,
        )
        for feature in range(len(encoded["input_ids"])):
            example = indices[encoded["overflow_to_sample_mapping"][feature]]
            row = {key: encoded[key][feature] for key in encoded if key != "overflow_to_sample_mapping"}
            row["sequence_ids"] = encoded.sequence_ids(feature)
            pieces.setdefault(example, []).append(row)
    columns: dict[str, list] = collections.defaultdict(list)
    for example in range(len(questions)):
        for row in pieces[example]:
            for key, value in row.items():
                columns[key].append(value)
            columns["example_index"].append(example)
    return columns


def cls_position(input_ids: list[int], tokenizer) -> int:
    """Where the model's "no answer" points: the [CLS] / <s> token (position 0 with right padding)."""
    if tokenizer.cls_token_id is not None and tokenizer.cls_token_id in input_ids:
        return input_ids.index(tokenizer.cls_token_id)
    return 0


def context_bounds(sequence_ids: list[int | None]) -> tuple[int, int]:
    """(first, last) token position of the context (sequence 1) in a window."""
    positions = [i for i, sequence in enumerate(sequence_ids) if sequence == 1]
    return positions[0], positions[-1]


def train_features(batch, tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int):
    """Windows with start/end token labels; a window that does not hold the whole answer (or a question
    without one) points both labels at [CLS], as the original run_squad does."""
    columns = tokenize_windows(
        tokenizer, batch["question"], batch["context"], max_seq_length, doc_stride, max_query_length
    )
    starts, ends = [], []
    for input_ids, offsets, sequence_ids, example in zip(
        columns["input_ids"], columns["offset_mapping"], columns["sequence_ids"], columns["example_index"], strict=True
    ):
        cls = cls_position(input_ids, tokenizer)
        answers = batch["answers"][example]
        if not answers["text"]:
            starts.append(cls)
            ends.append(cls)
            continue
        # Training uses the first gold answer, as the original script does.
        start_char = answers["answer_start"][0]
        end_char = start_char + len(answers["text"][0])
        first, last = context_bounds(sequence_ids)
        if offsets[first][0] > start_char or offsets[last][1] < end_char:
            starts.append(cls)
            ends.append(cls)
            continue
        # The last context token starting at or before the answer, the first one ending at or after it.
        start = max(i for i in range(first, last + 1) if offsets[i][0] <= start_char)
        end = min(i for i in range(first, last + 1) if offsets[i][1] >= end_char)
        starts.append(start)
        ends.append(end)
    model_keys = [key for key in tokenizer.model_input_names if key in columns]
    out = {key: columns[key] for key in model_keys}
    out["start_positions"] = starts
    out["end_positions"] = ends
    return out


def eval_features(batch, tokenizer, max_seq_length: int, doc_stride: int, max_query_length: int):
    """Windows for prediction, each with its question id and the character offsets of its context tokens
    (None elsewhere, so no span can start or end in the question or on a special token)."""
    columns = tokenize_windows(
        tokenizer, batch["question"], batch["context"], max_seq_length, doc_stride, max_query_length
    )
    model_keys = [key for key in tokenizer.model_input_names if key in columns]
    out = {key: columns[key] for key in model_keys}
    out["example_id"] = [batch["id"][example] for example in columns["example_index"]]
    out["offset_mapping"] = [
        [offset if sequence == 1 else None for offset, sequence in zip(offsets, sequence_ids, strict=True)]
        for offsets, sequence_ids in zip(columns["offset_mapping"], columns["sequence_ids"], strict=True)
    ]
    out["cls_index"] = [cls_position(ids, tokenizer) for ids in columns["input_ids"]]
    return out


# ---------------------------------------------------------------------------------------------------------
# From logits to answers


@dataclass
class Prediction:
    """The answer chosen for one question, with what the output files report."""

    text: str  # "" = no answer
    null_odds: float  # null score - best span score (positive favours "no answer"); 0.0 for v1.1
    nbest: list[dict]  # [{"text", "probability", "start_logit", "end_logit"}], best first


def postprocess(
    examples,
    features,
    start_logits: np.ndarray,
    end_logits: np.ndarray,
    version_2_with_negative: bool,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
) -> dict[str, Prediction]:
    """{question id: Prediction} from the logits of every window.

    start_logits, end_logits: (num_features, padded length); a feature's first len(input_ids) columns are its
    own (the rest are padding added when batches were concatenated). For each window, the n_best_size highest
    start and end logits are paired; a pair is a candidate when both ends lie in the context, end >= start and
    it spans at most max_answer_length tokens; its score is start + end logit. Candidates of all windows of a
    question compete. For SQuAD 2.0 the null score is the lowest [CLS] start + end logit over the windows, and
    the answer is "" when null score - best span score > null_score_diff_threshold.
    """
    features_of: dict[str, list[int]] = collections.defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        features_of[example_id].append(index)
    offsets_all = features["offset_mapping"]
    cls_all = features["cls_index"]
    predictions = {}
    for example_id, context in zip(examples["id"], examples["context"], strict=True):
        candidates = []
        null_score = math.inf
        for index in features_of[example_id]:
            offsets = offsets_all[index]
            starts = start_logits[index][: len(offsets)]
            ends = end_logits[index][: len(offsets)]
            cls = cls_all[index]
            null_score = min(null_score, float(starts[cls] + ends[cls]))
            top_starts = np.argsort(starts)[::-1][:n_best_size]
            top_ends = np.argsort(ends)[::-1][:n_best_size]
            for start in top_starts:
                for end in top_ends:
                    if offsets[start] is None or offsets[end] is None:
                        continue
                    if end < start or end - start + 1 > max_answer_length:
                        continue
                    candidates.append((float(starts[start] + ends[end]), index, int(start), int(end)))
            if not candidates:
                # No pair among the top logits fits: fall back to the best single context token, so every
                # question has a best span (and null odds) however untrained the model.
                context_positions = [i for i, offset in enumerate(offsets) if offset is not None]
                best = max(context_positions, key=lambda i: starts[i] + ends[i])
                candidates.append((float(starts[best] + ends[best]), index, best, best))
        candidates.sort(key=lambda candidate: candidate[0], reverse=True)
        entries = []
        for score, index, start, end in candidates[:n_best_size]:
            offsets = offsets_all[index]
            entries.append(
                {
                    "text": context[offsets[start][0] : offsets[end][1]],
                    "score": score,
                    "start_logit": float(start_logits[index][start]),
                    "end_logit": float(end_logits[index][end]),
                }
            )
        best_span = entries[0]
        if version_2_with_negative:
            cls_starts = [float(start_logits[i][cls_all[i]]) for i in features_of[example_id]]
            cls_ends = [float(end_logits[i][cls_all[i]]) for i in features_of[example_id]]
            null_entry = min(zip(cls_starts, cls_ends, strict=True), key=sum)
            entries.append({"text": "", "score": null_score, "start_logit": null_entry[0], "end_logit": null_entry[1]})
            entries.sort(key=lambda entry: entry["score"], reverse=True)  # the n best spans and the null answer
            null_odds = null_score - best_span["score"]
            text = "" if null_odds > null_score_diff_threshold else best_span["text"]
        else:
            null_odds, text = 0.0, best_span["text"]
        scores = np.array([entry["score"] for entry in entries])
        probabilities = np.exp(scores - scores.max())
        probabilities /= probabilities.sum()
        nbest = [
            {
                "text": entry["text"],
                "probability": float(probability),
                "start_logit": entry["start_logit"],
                "end_logit": entry["end_logit"],
            }
            for entry, probability in zip(entries, probabilities, strict=True)
        ]
        predictions[example_id] = Prediction(text, null_odds, nbest)
    return predictions
