"""Corpus bytes that are not text, compressed corpora, files listed twice, and a corpus changed under a resume.

Each case runs the real entry point in-process on a tiny local BERT teacher and real text (the bytes that are not
text are real files of their kind: a parquet table, the teacher's own safetensors, UTF-16 text).
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pyarrow
import pyarrow.parquet
import pytest
import zstandard
from fixtures.distill.tiny_teacher import distill_argv, first_lines, write_corpus_config, write_tiny_teacher
from test_reliability_training import run_main

from minilmv2.corpus_files import SAMPLE_BYTES, binary_kind, invalid_utf8, wide_encoding
from minilmv2.run_distillation import main

pytestmark = pytest.mark.usefixtures("one_torch_thread")

# Real text with Greek and Japanese lines: what a UTF-16 file lost when it was read as UTF-8.
MIXED = "The quick brown fox jumps over the lazy dog.\nΚαλημέρα κόσμε, τι κάνεις;\n日本語のテキストです。\n"


@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("corpus")
    teacher = write_tiny_teacher(root / "teacher")
    text = first_lines(corpus_dir / "wiki-02.txt", root / "wiki.txt", 120)
    return {"root": root, "teacher": teacher, "text": text}


def parquet_file(setup, path: Path) -> Path:
    pyarrow.parquet.write_table(pyarrow.table({"text": setup["text"].read_text().splitlines()}), path)
    return path


def teacher_weights(setup, path: Path) -> Path:
    return Path(shutil.copy(setup["teacher"] / "model.safetensors", path))


def random_bytes(setup, path: Path) -> Path:
    path.write_bytes(os.urandom(3 * SAMPLE_BYTES))
    return path


def utf16(setup, path: Path) -> Path:
    path.write_bytes((MIXED * 20).encode("utf-16"))  # with a byte-order mark
    return path


def utf16_without_mark(setup, path: Path) -> Path:
    path.write_bytes((MIXED * 20).encode("utf-16-le"))
    return path


def latin1(setup, path: Path) -> Path:
    path.write_bytes(("Café, résumé, naïve, déjà vu. " * 100).encode("latin-1"))
    return path


def gzip_without_suffix(setup, path: Path) -> Path:
    import gzip

    path.write_bytes(gzip.compress(setup["text"].read_bytes()))
    return path


def utf16_gzipped(setup, path: Path) -> Path:
    import gzip

    path = path.with_name(path.name + ".gz")
    path.write_bytes(gzip.compress((MIXED * 20).encode("utf-16")))
    return path


NOT_TEXT = {
    # case: (how the file is made, its name, declared format, the line after "<the config>: ")
    "parquet listed as text": (parquet_file, "data.txt", "text", "is not text: it looks like a parquet file"),
    "parquet listed as csv": (parquet_file, "data.csv", "csv", "is not text: it looks like a parquet file"),
    "safetensors listed as text": (teacher_weights, "weights.txt", "text", "is not text: it looks like a safetensors "
                                   "file"),
    "random bytes": (random_bytes, "random.txt", "text", "is not text: it holds NUL bytes (binary data)"),
    "gzip data without .gz": (gzip_without_suffix, "packed.txt", "text", "is not text: it looks like gzip-compressed "
                              "data (name it .gz)"),
    "UTF-16 with a byte-order mark": (utf16, "wide.txt", "text", "is UTF-16 text, not UTF-8; convert it: iconv -f "
                                      "UTF-16 -t UTF-8 {path} > {stem}.utf8"),
    "UTF-16 without a mark": (utf16_without_mark, "wide.jsonl", "json", "is UTF-16LE text, not UTF-8; convert it: "
                              "iconv -f UTF-16LE -t UTF-8 {path} > {stem}.utf8"),
    "UTF-16, gzipped": (utf16_gzipped, "wide.txt", "text", "is UTF-16 text, not UTF-8; convert it: gzip -dc "
                        "{path} | iconv -f UTF-16 -t UTF-8 > {stem}.utf8"),
    "Latin-1": (latin1, "latin.txt", "text", "is not UTF-8 text (600 invalid UTF-8 sequences in its first 3,000 "
                "bytes); convert it, e.g. from Latin-1: iconv -f LATIN1 -t UTF-8 {path} > {stem}.utf8"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(NOT_TEXT))
def test_bytes_that_are_not_utf8_text_are_refused_in_one_line(setup, tmp_path, capsys, case):
    make, name, fmt, problem = NOT_TEXT[case]
    path = make(setup, tmp_path / name)
    config = write_corpus_config(tmp_path / "corpus.json", [path], fmt)
    before = sorted(tmp_path.rglob("*"))
    status, stdout, stderr = run_main(distill_argv(setup["teacher"], config, tmp_path / "out"), capsys)
    stem = str(path)[: -len(".gz")] if str(path).endswith(".gz") else str(path)
    expected = problem.format(path=path, stem=stem)
    assert (status, stderr) == (2, f"error: the corpus config --train_config {config}: corpus file {path} {expected}\n")
    assert sorted(tmp_path.rglob("*")) == before  # nothing written


def test_a_few_invalid_bytes_in_utf8_text_are_replaced_and_counted_in_one_note(setup, tmp_path, capsys):
    path = tmp_path / "stray.txt"
    path.write_bytes(setup["text"].read_bytes() + b"one bad \xff byte and a cut \xe2\x82 character\n")
    config = write_corpus_config(tmp_path / "corpus.json", [path])
    status, stdout, stderr = run_main([*distill_argv(setup["teacher"], config, tmp_path / "out"), "--validate_only"],
                                      capsys)  # fmt: skip
    assert (status, stderr) == (0, "")
    note = f"note: 2 invalid UTF-8 sequence(s) in the first 64 KiB of {path} are read as U+FFFD"
    assert stdout.count(note) == 1 and "arguments OK" in stdout


def test_detectors_on_their_own():
    assert binary_kind(b"PAR1\x15\x04") == "a parquet file"
    assert binary_kind(b"The quick brown fox") is None
    assert wide_encoding("plain ascii text, long enough".encode("utf-32-le")) == "UTF-32LE"
    assert wide_encoding("plain ascii text, long enough".encode("utf-16-be")) == "UTF-16BE"
    assert wide_encoding(b"plain ascii text, long enough") is None
    # A character cut by the end of a sample is not invalid; at the end of the file it is.
    assert (invalid_utf8("déjà".encode()[:-1], complete=False), invalid_utf8("déjà".encode()[:-1], complete=True)) == (
        0,
        1,
    )


def test_a_zstd_corpus_distils(setup, tmp_path, capsys):
    """.jsonl.zst was a 40-line traceback ("Compression type zstd not supported")."""
    lines = setup["text"].read_text().splitlines()
    path = tmp_path / "wiki.jsonl.zst"
    path.write_bytes(
        zstandard.ZstdCompressor().compress("".join(json.dumps({"text": t}) + "\n" for t in lines).encode())
    )
    config = write_corpus_config(tmp_path / "corpus.json", [path], "json")
    status, stdout, stderr = run_main(distill_argv(setup["teacher"], config, tmp_path / "out", max_steps=2), capsys)
    assert status == 0, stderr
    assert (tmp_path / "out" / "student" / "model.safetensors").is_file()


def test_zstd_without_its_package_is_refused_up_front(setup, tmp_path, capsys, monkeypatch):
    import importlib.util

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "zstandard" else find_spec(name, *a)
    )
    path = tmp_path / "wiki.txt.zst"
    path.write_bytes(zstandard.ZstdCompressor().compress(setup["text"].read_bytes()))
    config = write_corpus_config(tmp_path / "corpus.json", [path])
    status, stdout, stderr = run_main(distill_argv(setup["teacher"], config, tmp_path / "out"), capsys)
    assert (status, stderr) == (
        2,
        f"error: the corpus config --train_config {config}: corpus file {path} is zstd-compressed, which needs the "
        f"zstandard package: pip install zstandard, or decompress it first (zstd -d {path})\n",
    )
    assert not (tmp_path / "out").exists()


def test_a_file_listed_twice_is_read_once_with_a_note(setup, tmp_path, capsys):
    shutil.copy(setup["text"], tmp_path / "wiki.txt")
    config = tmp_path / "corpus.json"
    config.write_text(json.dumps({"urls": ["wiki.txt", "./wiki.txt", str(tmp_path / "*.txt")]}))
    status, stdout, stderr = run_main([*distill_argv(setup["teacher"], config, tmp_path / "out"), "--validate_only"],
                                      capsys)  # fmt: skip
    assert (status, stderr) == (0, "")
    note = (
        f"note: the corpus config lists {tmp_path / 'wiki.txt'} (3 times) (after globs and path resolution); each file"
    )
    assert stdout.count(note) == 1

    from minilmv2.corpus import load_corpus_config

    assert load_corpus_config(config).sources == (str(tmp_path / "wiki.txt"),)


@pytest.fixture(scope="module")
def checkpointed(setup, tmp_path_factory):
    """A 4-step run with a checkpoint at 2, on a copy of the corpus that the tests below change."""
    root = tmp_path_factory.mktemp("checkpointed")
    corpus = Path(shutil.copy(setup["text"], root / "wiki.txt"))
    config = write_corpus_config(root / "corpus.json", [corpus])
    out = root / "out"
    assert main(distill_argv(setup["teacher"], config, out, training=("--save_steps", "2"))) == 0
    return {"corpus": corpus, "config": config, "checkpoint": out / "checkpoint-2"}


def resume_argv(setup, checkpointed, out: Path, config: Path | None = None) -> list[str]:
    argv = distill_argv(setup["teacher"], config or checkpointed["config"], out, training=("--save_steps", "2"))
    shutil.copytree(checkpointed["checkpoint"], out / "checkpoint-2")
    return [*argv, "--resume_from_checkpoint", "latest"]


@pytest.mark.parametrize(
    "change, expected",
    [
        (lambda text: text[: len(text) // 2], "({size} bytes then, {half} now)"),
        (lambda text: text.replace(b"the", b"THE"), "(same size, other bytes in its first or last MiB)"),
    ],
    ids=["shorter", "same size"],
)
def test_resume_refuses_a_corpus_file_changed_in_place(setup, checkpointed, tmp_path, capsys, change, expected):
    """A file replaced at the same path: only paths were compared, and the run resumed past its end."""
    corpus = Path(shutil.copy(checkpointed["corpus"], tmp_path / "wiki.txt"))
    config = write_corpus_config(tmp_path / "corpus.json", [corpus])
    argv = resume_argv(setup, checkpointed, tmp_path / "out", config)
    # The checkpoint names the original file: point its saved position at this copy, then change the copy.
    for state_file in (tmp_path / "out" / "checkpoint-2" / "data_state").glob("rank-*.json"):
        state_file.write_text(state_file.read_text().replace(str(checkpointed["corpus"]), str(corpus)))
    original = corpus.read_bytes()
    corpus.write_bytes(change(original))
    before = sorted(tmp_path.rglob("*"))
    status, stdout, stderr = run_main(argv, capsys)
    detail = expected.format(size=len(original), half=len(original) // 2)
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert f"corpus file {corpus} changed since the checkpoint {detail}" in stderr
    assert sorted(tmp_path.rglob("*")) == before


def test_a_file_added_on_resume_is_named_as_added(setup, checkpointed, tmp_path, capsys):
    """Was "saved for [small.txt], this run reads [crlf.txt]", though the run reads both."""
    extra = Path(shutil.copy(setup["text"], tmp_path / "extra.txt"))
    config = write_corpus_config(tmp_path / "corpus.json", [checkpointed["corpus"], extra])
    status, stdout, stderr = run_main(resume_argv(setup, checkpointed, tmp_path / "out", config), capsys)
    assert status == 2 and stderr.count("\n") == 1
    assert f"the corpus differs (this run adds {extra})" in stderr


def test_resume_with_the_same_corpus_goes_on(setup, checkpointed, tmp_path, capsys):
    status, stdout, stderr = run_main(resume_argv(setup, checkpointed, tmp_path / "out"), capsys)
    assert status == 0, stderr
    assert "nothing is re-read or re-tokenised" in stdout and "predates corpus fingerprints" not in stdout
    saved = json.loads((tmp_path / "out" / "checkpoint-4" / "data_state" / "rank-0.json").read_text())["stream"]
    size = checkpointed["corpus"].stat().st_size
    assert saved["files"][str(checkpointed["corpus"])]["size"] == size
