"""Corpus config -> token stream: config validation, rank sharding, formats, packing, shuffling, resume.

All on real text (the offline corpus shards, cut short) and a real WordPiece tokenizer.
"""

from __future__ import annotations

import csv
import gzip
import json
import sys
from collections import Counter
from pathlib import Path

import datasets.config
import huggingface_hub.constants
import pandas
import pytest
import torch
from fixtures.distill.tiny_teacher import first_lines, tiny_tokenizer, write_corpus_config

from minilmv2.corpus import is_byte_splittable, load_corpus_config, missing_reader_problem, rank_units, read_unit
from minilmv2.data import PadCollator, TokenStream, first_tokens_problem
from minilmv2.errors import UsageError
from minilmv2.hub import OFFLINE_VARIABLES, hub_offline, offline_switches


@pytest.fixture(scope="module")
def tokenizer():
    return tiny_tokenizer()


@pytest.fixture(scope="module")
def shards(corpus_dir, tmp_path_factory) -> list[Path]:
    """Three short real shards (Wikipedia leads and novels), 120 / 90 / 60 lines."""
    folder = tmp_path_factory.mktemp("shards")
    return [
        first_lines(corpus_dir / "wiki-00.txt", folder / "wiki-a.txt", 120),
        first_lines(corpus_dir / "books-00.txt", folder / "books-a.txt", 90),
        first_lines(corpus_dir / "wiki-01.txt", folder / "wiki-b.txt", 60),
    ]


def all_lines(paths: list[Path]) -> Counter:
    return Counter(line.strip() for p in paths for line in p.read_text(encoding="utf-8").splitlines() if line.strip())


def rank_documents(config, rank: int, world_size: int) -> list[str]:
    return [text for unit in rank_units(config, rank, world_size) for text, _, _ in read_unit(config, unit)]


# ---- config ----


def test_config_resolves_globs_relative_to_the_config_file(shards, tmp_path):
    config_path = write_corpus_config(tmp_path / "c.json", [])
    config_path.write_text(json.dumps({"urls": [f"{shards[0].parent}/wiki-*.txt", str(shards[1])]}))
    config = load_corpus_config(config_path)
    assert config.sources == (str(shards[0]), str(shards[2]), str(shards[1]))
    assert (config.format, config.columns) == ("text", ("text",))

    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "one.txt").write_text(shards[0].read_text())
    (tmp_path / "rel.json").write_text(json.dumps({"urls": ["data/*.txt"], "format": "txt", "columns": "text"}))
    assert load_corpus_config(tmp_path / "rel.json").sources == (str(tmp_path / "data" / "one.txt"),)


@pytest.mark.parametrize(
    "content, message",
    [
        ("{not json", "is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"urls": []}', '"urls" must be a non-empty list'),
        ('{"urls": ["x.txt"], "format": "xml"}', "format 'xml' is not one of text, json, csv, parquet"),
        ('{"urls": ["missing-*.txt"]}', "matches no file"),
        ('{"urls": ["missing.txt"]}', "does not exist"),
        ('{"urls": ["empty.txt"]}', "the corpus is empty"),
        ('{"urls": ["empty.txt"], "columns": ""}', '"columns" must be a name'),
    ],
)
def test_bad_configs_are_refused_with_the_value_named(tmp_path, content, message):
    (tmp_path / "empty.txt").write_text("\n  \n\n")
    path = tmp_path / "config.json"
    path.write_text(content)
    with pytest.raises(UsageError, match=message) as caught:
        load_corpus_config(path, "--train_config")
    assert "--train_config" in str(caught.value) and "\n" not in str(caught.value)


def go_online(monkeypatch) -> None:
    """The hub's and datasets' offline switches off, as the libraries read them at import (minilmv2.hub)."""
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)


def test_hub_dataset_config_is_split_by_node_not_by_file(tmp_path, monkeypatch):
    go_online(monkeypatch)
    path = tmp_path / "hub.json"
    path.write_text(json.dumps({"hub": "wikimedia/wikipedia", "name": "20231101.en", "columns": "title,text"}))
    config = load_corpus_config(path)
    assert (config.hub, config.hub_name, config.hub_split, config.columns) == (
        "wikimedia/wikipedia", "20231101.en", "train", ("title", "text"))  # fmt: skip
    assert [(u.mode, u.piece, u.pieces) for u in rank_units(config, 3, 8)] == [("hub", 3, 8)]


@pytest.mark.parametrize(
    "content", [{"hub": "wikimedia/wikipedia"}, {"urls": ["https://example.org/shard-0.txt"], "format": "text"}]
)
@pytest.mark.parametrize(
    "switch", [(huggingface_hub.constants, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE")]
)
def test_network_corpus_is_refused_at_start_up_when_offline_is_set(tmp_path, monkeypatch, content, switch):
    go_online(monkeypatch)
    path = tmp_path / "remote.json"
    path.write_text(json.dumps(content))
    load_corpus_config(path)  # online: accepted (read when the stream starts)
    monkeypatch.setattr(*switch, True)  # HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) / HF_DATASETS_OFFLINE set
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "yes")
    refusal = r"from the network, but the hub is offline \(TRANSFORMERS_OFFLINE=yes\)"
    with pytest.raises(UsageError, match=refusal) as caught:
        load_corpus_config(path)
    assert "\n" not in str(caught.value)


def test_without_the_datasets_package_only_what_it_reads_is_named(shards, tmp_path, monkeypatch):
    """The GPU image has no datasets: local uncompressed text and JSON lines need none; what it reads is named
    (the start-up check refuses it in one line), and the hub's switch alone answers hub_offline()."""
    plain = write_corpus_config(tmp_path / "plain.json", shards[:1])
    compressed = tmp_path / (shards[0].name + ".gz")
    compressed.write_bytes(gzip.compress(shards[0].read_bytes()))
    gz = write_corpus_config(tmp_path / "gz.json", [compressed])
    hub = tmp_path / "hub.json"
    hub.write_text(json.dumps({"hub": "wikimedia/wikipedia"}))
    go_online(monkeypatch)
    configs = {name: load_corpus_config(path) for name, path in (("plain", plain), ("gz", gz), ("hub", hub))}
    assert all(missing_reader_problem(config) is None for config in configs.values())  # datasets installed
    monkeypatch.setitem(sys.modules, "datasets", None)  # not installed, as far as imports go
    monkeypatch.setitem(sys.modules, "datasets.config", None)
    assert missing_reader_problem(configs["plain"]) is None
    for name, what in (("gz", f"corpus file {compressed}"), ("hub", "hub dataset wikimedia/wikipedia")):
        assert missing_reader_problem(configs[name]) == (
            f"{what} is read through the datasets package, which is not installed; pip install datasets, or use "
            "uncompressed local text or JSON-lines files"
        )
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert hub_offline()
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    assert not hub_offline()


def test_offline_switches_names_what_the_user_set(monkeypatch):
    for name in OFFLINE_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert offline_switches() == "HF_HUB_OFFLINE or TRANSFORMERS_OFFLINE or HF_DATASETS_OFFLINE is on"
    monkeypatch.setenv("TRANSFORMERS_OFFLINE", "ON")
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    assert offline_switches() == "TRANSFORMERS_OFFLINE=ON, HF_DATASETS_OFFLINE=1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # set: huggingface_hub no longer reads TRANSFORMERS_OFFLINE
    assert offline_switches() == "HF_DATASETS_OFFLINE=1"
    monkeypatch.setenv("HF_HUB_OFFLINE", "true")
    assert offline_switches() == "HF_HUB_OFFLINE=true, HF_DATASETS_OFFLINE=1"


def test_missing_config_file_is_refused(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_corpus_config(tmp_path / "nope.json", "--val_config")


# ---- sharding: each rank reads its own share; together they read every document exactly once ----


@pytest.mark.parametrize("world_size", [1, 2, 3, 5])
def test_byte_range_shards_cover_every_line_exactly_once(shards, tmp_path, world_size):
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", shards))
    per_rank = [rank_documents(config, rank, world_size) for rank in range(world_size)]
    assert Counter(d for docs in per_rank for d in docs) == all_lines(shards)
    # Every rank gets a fair share (byte ranges), not an empty one.
    assert min(len(docs) for docs in per_rank) > 0.5 * sum(map(len, per_rank)) / world_size


def test_a_single_file_is_split_by_bytes_so_each_rank_reads_only_its_range(shards, tmp_path):
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", [shards[0]]))
    raw = shards[0].read_bytes()
    line_starts = [0] + [i + 1 for i, byte in enumerate(raw) if byte == ord("\n") and i + 1 < len(raw)]
    for rank in range(2):
        (unit,) = rank_units(config, rank, 2)
        assert unit.mode == "bytes" and (unit.piece, unit.pieces) == (rank, 2)
        start, end = rank * len(raw) // 2, (rank + 1) * len(raw) // 2
        # A rank owns exactly the lines that start inside its byte range.
        owned = [raw[s:].split(b"\n", 1)[0].decode().strip() for s in line_starts if start <= s < end]
        assert [text for text, _, _ in read_unit(config, unit)] == [text for text in owned if text]


def test_compressed_files_go_whole_to_ranks_or_interleave_by_row(shards, tmp_path):
    gz = []
    for path in shards:
        target = tmp_path / (path.name + ".gz")
        target.write_bytes(gzip.compress(path.read_bytes()))
        gz.append(target)
    assert not is_byte_splittable(str(gz[0]), "text")
    # 2 files, 2 ranks: one whole file each.
    config = load_corpus_config(write_corpus_config(tmp_path / "two.json", gz[:2]))
    assert [(u.source, u.mode) for u in rank_units(config, 1, 2)] == [(str(gz[1]), "whole")]
    # 1 file, 2 ranks: every rank reads it but keeps (and tokenises) only its rows.
    config = load_corpus_config(write_corpus_config(tmp_path / "one.json", gz[:1]))
    assert [u.mode for u in rank_units(config, 1, 2)] == ["rows"]
    rank_docs = [rank_documents(config, r, 2) for r in range(2)]
    assert Counter(rank_docs[0] + rank_docs[1]) == all_lines(shards[:1])
    assert not set(rank_docs[0]) & set(rank_docs[1]) - {d for d, n in all_lines(shards[:1]).items() if n > 1}


def test_a_file_count_that_does_not_divide_the_world_size_splits_the_rest_by_rows(shards, tmp_path):
    """5 equal files on 2 ranks: two whole files each and the fifth split by rows, not 3 files against 2."""
    lines = [line for line in shards[0].read_text().splitlines() if line.strip()][:100]
    gz = []
    for index in range(5):
        target = tmp_path / f"part-{index}.txt.gz"
        target.write_bytes(gzip.compress("".join(f"{line} ({index})\n" for line in lines[index::5]).encode()))
        gz.append(target)
    config = load_corpus_config(write_corpus_config(tmp_path / "five.json", gz))
    units = [rank_units(config, rank, 2) for rank in range(2)]
    assert [[(Path(u.source).name, u.mode) for u in share] for share in units] == [
        [("part-0.txt.gz", "whole"), ("part-2.txt.gz", "whole"), ("part-4.txt.gz", "rows")],
        [("part-1.txt.gz", "whole"), ("part-3.txt.gz", "whole"), ("part-4.txt.gz", "rows")],
    ]
    per_rank = [rank_documents(config, rank, 2) for rank in range(2)]
    assert [len(docs) for docs in per_rank] == [50, 50]  # 20 + 20 + 10 each, every line once
    assert Counter(per_rank[0] + per_rank[1]) == Counter(f"{line} ({i})" for i in range(5) for line in lines[i::5])
    # 3 ranks: one whole file each, the other two files split by rows among all three.
    shares = [rank_units(config, rank, 3) for rank in range(3)]
    assert [sum(u.mode == "whole" for u in share) for share in shares] == [1, 1, 1]
    assert sum(len(rank_documents(config, rank, 3)) for rank in range(3)) == 100


def test_jsonl_csv_and_parquet_join_their_columns_with_a_newline(shards, tmp_path):
    lines = [line for line in shards[1].read_text().splitlines() if line.strip()][:20]
    records = [{"title": f"part {i}", "body": line, "other": i} for i, line in enumerate(lines)]
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text("".join(json.dumps(r) + "\n" for r in records))
    table = tmp_path / "docs.csv"
    with open(table, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["title", "body", "other"])
        writer.writeheader()
        writer.writerows(records)
    parquet = tmp_path / "docs.parquet"
    pandas.DataFrame(records).to_parquet(parquet)
    expected = [f"part {i}\n{line}" for i, line in enumerate(lines)]
    for path, fmt in ((jsonl, "jsonl"), (table, "csv"), (parquet, "parquet")):
        config = load_corpus_config(write_corpus_config(tmp_path / f"{fmt}.json", [path], fmt, "title,body"))
        assert config.columns == ("title", "body")
        assert sorted(rank_documents(config, 0, 1)) == sorted(expected)
        two_ranks = rank_documents(config, 0, 2) + rank_documents(config, 1, 2)
        assert sorted(two_ranks) == sorted(expected)
    assert is_byte_splittable(str(jsonl), "json") and not is_byte_splittable(str(table), "csv")


# ---- packing, one-line mode, shuffling ----


def test_packing_fills_every_sequence_and_keeps_every_token_in_order(shards, tmp_path, tokenizer):
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", shards[:2]))
    stream = TokenStream(config, tokenizer, 64, shuffle_buffer=1, infinite=False)
    sequences = [example["input_ids"] for example in stream]
    cls, sep, pad = tokenizer.cls_token_id, tokenizer.sep_token_id, tokenizer.pad_token_id
    assert all(len(s) == 64 for s in sequences[:-1]) and 3 <= len(sequences[-1]) <= 64
    assert all(s[0] == cls and s[-1] == sep and pad not in s for s in sequences)
    documents = [line for path in shards[:2] for line in path.read_text().splitlines() if line.strip()]
    expected = [t for ids in tokenizer(documents, add_special_tokens=False)["input_ids"] for t in ids]
    packed = [t for s in sequences for t in s[1:-1] if t != sep]
    assert packed == expected
    # Documents share sequences: a boundary inside a sequence is a [SEP].
    assert sum(s[1:-1].count(sep) for s in sequences) > 0.5 * len(documents)


def test_no_packing_gives_one_truncated_document_per_sequence_and_pads_per_batch(shards, tmp_path, tokenizer):
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", shards[2:]))
    stream = TokenStream(config, tokenizer, 32, packing=False, shuffle_buffer=1, infinite=False)
    sequences = [example["input_ids"] for example in stream]
    documents = [line for line in shards[2].read_text().splitlines() if line.strip()]
    assert len(sequences) == len(documents)
    first = tokenizer(documents[0], add_special_tokens=False)["input_ids"]
    assert sequences[0] == [tokenizer.cls_token_id, *first[:30], tokenizer.sep_token_id]
    short = [s for s in sequences if len(s) < 32][:1]
    mixed = [s for s in sequences if len(s) == 32][:7] + short
    assert len(short) == 1 and len(mixed) == 8
    batch = PadCollator(tokenizer.pad_token_id)([{"input_ids": s} for s in mixed])
    lengths = torch.tensor([len(s) for s in mixed])
    assert batch["input_ids"].shape == (8, int(lengths.max()))
    assert torch.equal(batch["attention_mask"].sum(1), lengths)
    assert (batch["input_ids"][batch["attention_mask"] == 0] == tokenizer.pad_token_id).all()
    # Rows all of one length (as packed sequences always are): no padding, so no mask for the models to check.
    full = PadCollator(tokenizer.pad_token_id)([{"input_ids": s} for s in mixed[:7]])
    assert sorted(full) == ["input_ids"] and torch.equal(full["input_ids"], torch.tensor(mixed[:7]))


def test_shuffle_buffer_is_seeded_and_loses_nothing(shards, tmp_path, tokenizer):
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", shards))

    def one_pass(seed, buffer):
        stream = TokenStream(config, tokenizer, 48, shuffle_buffer=buffer, seed=seed, infinite=False)
        return [tuple(e["input_ids"]) for e in stream]

    ordered, shuffled = one_pass(1, 1), one_pass(1, 50)
    assert shuffled == one_pass(1, 50)
    assert shuffled != ordered and shuffled != one_pass(2, 50)
    assert Counter(shuffled) == Counter(ordered)


def test_training_stream_starts_a_new_pass_when_its_share_is_used_up(shards, tmp_path, tokenizer):
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", shards[2:]))
    one_pass = len(list(TokenStream(config, tokenizer, 32, shuffle_buffer=1, infinite=False)))
    stream = TokenStream(config, tokenizer, 32, shuffle_buffer=4, infinite=True)
    iterator = iter(stream)
    taken = [next(iterator) for _ in range(3 * one_pass)]
    assert len(taken) == 3 * one_pass and stream.epoch >= 2


# ---- resume: same continuation, without tokenising the consumed part again ----


class CountingTokenizer:
    """The real tokenizer, counting the documents it is asked to tokenise."""

    def __init__(self, tokenizer):
        self.tokenizer, self.documents = tokenizer, 0

    def __getattr__(self, name):
        return getattr(self.tokenizer, name)

    def __len__(self):
        return len(self.tokenizer)

    def __call__(self, texts, **kwargs):
        self.documents += len(texts)
        return self.tokenizer(texts, **kwargs)


@pytest.mark.parametrize("packing, compressed", [(True, False), (False, False), (True, True)])
def test_state_dict_resumes_the_exact_stream_without_retokenising(shards, tmp_path, tokenizer, packing, compressed):
    sources = shards
    if compressed:  # read through `datasets`, resumed by row count (mode "rows": one file, two ranks)
        sources = [tmp_path / "all.txt.gz"]
        sources[0].write_bytes(gzip.compress(b"".join(p.read_bytes() for p in shards)))
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", sources))
    options = {"packing": packing, "shuffle_buffer": 16, "seed": 7, "rank": 1, "world_size": 2, "tokenize_batch": 8}
    original = TokenStream(config, CountingTokenizer(tokenizer), 40, **options)
    iterator = iter(original)
    for _ in range(150):
        next(iterator)
    state = json.loads(json.dumps(original.state_dict()))  # goes through a JSON file in a checkpoint
    tokenised_before_state = original.tokenizer.documents
    continuation = [next(iterator)["input_ids"] for _ in range(40)]

    counting = CountingTokenizer(tokenizer)
    resumed = TokenStream(config, counting, 40, **options)
    resumed.load_state_dict(state)
    assert [example["input_ids"] for _, example in zip(range(40), resumed, strict=False)] == continuation
    # The resumed stream tokenises only what the original tokenised after the state: nothing consumed before.
    assert tokenised_before_state >= 40
    assert counting.documents == original.tokenizer.documents - tokenised_before_state

    other_world = TokenStream(config, tokenizer, 40, **{**options, "rank": 0, "world_size": 3})
    with pytest.raises(ValueError, match=r"the number of processes differs \(saved by 2, this run has 3\)"):
        other_world.load_state_dict(state)
    other_corpus = load_corpus_config(write_corpus_config(tmp_path / "other.json", [shards[0]]))
    with pytest.raises(ValueError, match="the corpus differs"):
        TokenStream(other_corpus, tokenizer, 40, **options).load_state_dict(state)


# ---- text that yields no tokens; very long lines ----

ZERO_WIDTH = "\u200b\u200b \u200b\u2060\n" * 40
CONTROL = "\x01\x02\x03\x04\x05\x06\x07\x08\x0e\x0f\x10\x7f\n" * 40


@pytest.mark.parametrize("content", [ZERO_WIDTH, CONTROL], ids=["zero-width spaces", "control bytes"])
def test_text_without_tokens_ends_in_one_line_instead_of_hanging(tmp_path, tokenizer, content):
    path = tmp_path / "junk.txt"
    path.write_text(content, encoding="utf-8")
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", [path]))  # bytes there: not "empty"
    message = first_tokens_problem(config, tokenizer, 0, 1)
    assert message.startswith("the corpus yields no tokens: its text is empty or only characters")
    for infinite in (True, False):
        with pytest.raises(UsageError, match="the corpus yields no tokens") as caught:
            next(iter(TokenStream(config, tokenizer, 32, infinite=infinite)))
        assert "\n" not in str(caught.value)
    # The same junk beside real text is harmless.
    (tmp_path / "real.txt").write_text("The quick brown fox.\n" + content)
    good = load_corpus_config(write_corpus_config(tmp_path / "g.json", [tmp_path / "real.txt"]))
    assert first_tokens_problem(good, tokenizer, 0, 1) is None
    assert len(next(iter(TokenStream(good, tokenizer, 8)))["input_ids"]) == 8


def test_a_rank_whose_share_yields_nothing_fails_in_one_line(tmp_path, tokenizer):
    path = tmp_path / "one.txt"
    path.write_text("A single line of text, all of it in the first half of the file's bytes.\n" + " " * 200 + "\n")
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", [path]))
    assert first_tokens_problem(config, tokenizer, 0, 2) is None
    message = first_tokens_problem(config, tokenizer, 1, 2)
    assert message == (
        "rank 1's share of the corpus (1 part(s) of 2) yields no tokens: its text is empty or only "
        "characters the tokenizer drops (zero-width spaces, control characters); clean the corpus or give it "
        "more text, or run fewer processes"
    )
    with pytest.raises(UsageError, match="rank 1's share of the corpus"):
        next(iter(TokenStream(config, tokenizer, 32, rank=1, world_size=2)))


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_a_long_line_is_tokenised_in_pieces_to_the_same_tokens_and_resumes_inside_it(shards, tmp_path, tokenizer, fmt):
    long_text = " ".join(line.strip() for line in shards[1].read_text().splitlines() if line.strip())
    documents = ["A short first line.", long_text, "The last line."]
    path = tmp_path / f"long.{fmt}"
    if fmt == "json":
        path.write_text("".join(json.dumps({"text": d}) + "\n" for d in documents))
    else:
        path.write_text("".join(d + "\n" for d in documents))
    config = load_corpus_config(write_corpus_config(tmp_path / "c.json", [path], fmt))
    assert len(long_text) > 20 * 1000
    options = {"shuffle_buffer": 1, "max_piece_chars": 1000, "tokenize_batch": 2}
    sequences = [e["input_ids"] for e in TokenStream(config, tokenizer, 32, infinite=False, **options)]
    sep = tokenizer.sep_token_id
    expected = [t for ids in tokenizer(documents, add_special_tokens=False)["input_ids"] for t in ids]
    assert [t for s in sequences for t in s[1:-1] if t != sep] == expected  # no word cut, nothing lost
    assert sum(s[1:-1].count(sep) for s in sequences) <= 2  # pieces of one document get no [SEP] between them

    stream = TokenStream(config, tokenizer, 32, **options)
    iterator = iter(stream)
    for _ in range(40):
        next(iterator)
    state = json.loads(json.dumps(stream.state_dict()))
    assert state["unit_position"][1] > 0 and state["open_document"]  # stopped inside the long document
    continuation = [next(iterator)["input_ids"] for _ in range(60)]
    resumed = TokenStream(config, tokenizer, 32, **options)
    resumed.load_state_dict(state)
    assert [e["input_ids"] for _, e in zip(range(60), resumed, strict=False)] == continuation


@pytest.mark.integration  # runs the benchmark script in a process of its own
def test_memory_stays_bounded_on_a_single_long_line(tmp_path, tokenizer):
    """A 1 MB line with no newline (the benchmark's case, smaller): peak memory grows by tens of MB, not ~200."""
    import subprocess
    import sys

    tokenizer.save_pretrained(tmp_path / "tokenizer")
    script = Path(__file__).resolve().parents[2] / "bench" / "bench_long_line.py"
    command = [sys.executable, str(script), "--megabytes", "1", "--tokenizer", str(tmp_path / "tokenizer")]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    line = result.stdout.strip().splitlines()[-1]
    before = float(line.split("resident memory ")[1].split(" MB")[0])
    peak = float(line.split("peak ")[1].split(" MB")[0])
    assert peak - before < 60, line


@pytest.mark.parametrize("suffix", [".gz", ".bz2", ".xz"])
def test_every_compression_python_reads_is_decompressed_for_the_empty_corpus_check(tmp_path, suffix, shards):
    import bz2
    import lzma

    compress = {".gz": gzip.compress, ".bz2": bz2.compress, ".xz": lzma.compress}[suffix]
    blank = tmp_path / f"blank.txt{suffix}"
    blank.write_bytes(compress(b"\n  \n\t\n"))  # the compressed bytes are not blank, the text is
    with pytest.raises(UsageError, match=r"the corpus is empty \(its 1 file\(s\) hold no text\)"):
        load_corpus_config(write_corpus_config(tmp_path / "blank.json", [blank]))
    full = tmp_path / f"full.txt{suffix}"
    full.write_bytes(compress(shards[0].read_bytes()))
    assert load_corpus_config(write_corpus_config(tmp_path / "full.json", [full])).sources == (str(full),)
