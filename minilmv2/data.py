"""Corpus config -> token stream: streamed, sharded by rank, shuffled, packed, resumable.

A corpus config is the reference's JSON, `{"urls": [...], "format": "text", "columns": "text"}`:
local paths, globs, `.gz` files or http(s) URLs in the formats text, json/jsonl, csv or parquet; several
columns are joined by a newline. With network access, `{"hub": "wikimedia/wikipedia", "name": "20231101.en",
"split": "train", "columns": "text"}` streams a hub dataset instead. Relative paths are read relative to the
config file, so a config can travel with its shards.

Sharding (each rank reads and tokenises only its own share, nothing lost or duplicated):
  - a local, uncompressed text or JSON-lines file is cut into `world_size` byte ranges; rank r owns every line
    that *starts* inside range r, so each rank reads only its own bytes, even with a single file;
  - other sources (compressed, remote, csv, parquet) go to ranks whole, round robin, as far as their count
    divides the world size (every rank gets as many whole files); each of the remaining `count % world_size`
    files is read by every rank, which keeps (and tokenises) only its rows i = r mod world;
  - a hub dataset is split by `datasets.distributed.split_dataset_by_node`.
The stream is rank-aware itself, so the trainer must not shard it again (see `trainer.py`).

Memory is bounded whatever the line lengths: a document longer than `MAX_PIECE_CHARS` is cut into pieces
(at whitespace, else at a character boundary) before it is tokenised, and pieces of one document are packed
without a [SEP] between them. A plain-text line is read piece by piece; a JSON record, csv or parquet row is
parsed whole first (it cannot be parsed in pieces), so one huge record costs a few times its own size.

Each rank's position (unit, offset inside it, tokens not yet packed, shuffle buffer, RNG) is a small JSON
`state_dict()`, stored in every checkpoint, so a resumed run continues exactly where it stopped and never
tokenises again what it had consumed. What it reads again depends on the source: local plain-text and
JSON-lines files resume by seeking to the saved byte offset (nothing consumed is read again); row-wise
sources (compressed, csv, parquet, remote) and hub datasets resume by row count, so the rows already consumed
of the *current* file are read (decompressed, downloaded) again and skipped without tokenising; files
finished before it are not opened again. A stream cannot seek inside a compressed file, so this is the best
those formats allow.

Text that yields no tokens (empty lines, zero-width spaces, control characters) never hangs the stream: a
pass over a rank's share that produces no token ends in one `UsageError` line, and `first_tokens_problem`
lets the start-up check find it before any model loads.
"""

from __future__ import annotations

import csv
import glob
import gzip
import importlib.util
import json
import os
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase

from minilmv2.errors import UsageError

FORMATS = ("text", "json", "csv", "parquet")
FORMAT_ALIASES = {"txt": "text", "jsonl": "json"}
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".zip")
CONFIG_EXAMPLE = '{"urls": ["shards/*.txt"], "format": "text", "columns": "text"}'
# A document longer than this many characters (bytes, for plain text read from disk) is tokenised in pieces:
# fast tokenizers hold ~200 bytes of offsets and word ids per input character, so a 50 MB line in one call
# needs gigabytes, while pieces of 64 Ki characters keep a tokenizer call to a few MB.
MAX_PIECE_CHARS = 1 << 16
# One tokenizer call gets at most this many characters (and at most `tokenize_batch` pieces).
TOKENIZE_BATCH_CHARS = 1 << 18


@dataclass(frozen=True)
class CorpusConfig:
    """A validated corpus config: resolved sources (local paths or URLs), a format and the text columns."""

    sources: tuple[str, ...]
    format: str
    columns: tuple[str, ...]
    hub: str | None = None  # a hub dataset name instead of `sources`
    hub_name: str | None = None
    hub_split: str = "train"


def is_remote(source: str) -> bool:
    return "://" in source


def _refuse_remote_when_offline(remote: list[str], option: str, path: Path) -> None:
    from minilmv2.hub import hub_offline, offline_switches

    if remote and hub_offline():
        raise UsageError(
            f"{option} {path} reads {remote[0]} from the network, but the hub is offline ({offline_switches()}); "
            "unset it or use local files"
        )


def load_corpus_config(path: str | os.PathLike, option: str = "--train_config") -> CorpusConfig:
    """Read and validate a corpus config; `UsageError` naming `option` and the bad value otherwise."""
    path = Path(path)
    if path.is_dir():
        raise UsageError(f"{option} {path} is a folder; give a JSON file like {CONFIG_EXAMPLE}")
    if not path.is_file():
        raise UsageError(f"{option} {path} does not exist; give a JSON file like {CONFIG_EXAMPLE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{option} {path} cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{option} {path} is not UTF-8 text; expected JSON like {CONFIG_EXAMPLE}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{option} {path} is not valid JSON ({err}); expected {CONFIG_EXAMPLE}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{option} {path} must hold a JSON object like {CONFIG_EXAMPLE}")
    columns = raw.get("columns", "text")
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise UsageError(f'{option} {path}: "columns" must be a name or a comma-separated list, got {columns!r}')

    if "hub" in raw:
        if not isinstance(raw["hub"], str) or not raw["hub"]:
            raise UsageError(f'{option} {path}: "hub" must be a dataset name such as "wikimedia/wikipedia"')
        _refuse_remote_when_offline([f"hub dataset {raw['hub']}"], option, path)
        return CorpusConfig((), "hub", tuple(columns), raw["hub"], raw.get("name"), raw.get("split", "train"))

    fmt = FORMAT_ALIASES.get(raw.get("format", "text"), raw.get("format", "text"))
    if fmt not in FORMATS:
        raise UsageError(f"{option} {path}: format {raw.get('format')!r} is not one of {', '.join(FORMATS)}")
    urls = raw.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise UsageError(f'{option} {path}: "urls" must be a non-empty list of paths or URLs, got {urls!r}')
    _refuse_remote_when_offline([u for u in urls if is_remote(u)], option, path)
    sources = []
    for url in urls:
        sources.extend(_expand_source(url, path.parent, option, path))
    if fmt == "text" and columns != ["text"]:
        raise UsageError(f'{option} {path}: the text format has one column, "text"; got columns {columns!r}')
    _refuse_empty_corpus(sources, option, path)
    return CorpusConfig(tuple(sources), fmt, tuple(columns))


def missing_reader_problem(config: CorpusConfig) -> str | None:
    """What needs the datasets package when it is not installed, or None.

    It reads hub datasets and remote, compressed, CSV, parquet and JSON-array files; plain local text and JSON
    lines need nothing but Python (the GPU machine's image has no datasets).
    """
    if importlib.util.find_spec("datasets") is not None:
        return None
    if config.hub is not None:
        what = f"hub dataset {config.hub}"
    else:
        needing = [s for s in config.sources if not is_byte_splittable(s, config.format)]
        if not needing:
            return None
        what = f"corpus file {needing[0]}"
    return (
        f"{what} is read through the datasets package, which is not installed; pip install datasets, or use "
        "uncompressed local text or JSON-lines files"
    )


def _expand_source(url: str, base: Path, option: str, config_path: Path) -> list[str]:
    if is_remote(url):
        return [url]
    local = Path(os.path.expanduser(url))
    if not local.is_absolute():
        local = base / local
    if glob.has_magic(str(local)):
        matches = sorted(p for p in glob.glob(str(local), recursive=True) if os.path.isfile(p))
        if not matches:
            raise UsageError(f"{option} {config_path}: pattern {url} matches no file")
        return matches
    if not local.is_file():
        raise UsageError(f"{option} {config_path}: corpus file {local} does not exist")
    if not os.access(local, os.R_OK):
        raise UsageError(f"{option} {config_path}: corpus file {local} is not readable")
    return [str(local)]


def _refuse_empty_corpus(sources: list[str], option: str, config_path: Path) -> None:
    """Refuse a corpus whose local files hold no text at all (an endless stream of nothing would hang)."""
    local = [s for s in sources if not is_remote(s)]
    if len(local) < len(sources):
        return  # remote sources are checked when the stream first reads them
    for source in local:
        opener = gzip.open if source.endswith(".gz") else open
        try:
            with opener(source, "rb") as handle:
                while chunk := handle.read(1 << 16):
                    if chunk.strip():
                        return
        except OSError as err:
            raise UsageError(f"{option} {config_path}: corpus file {source} cannot be read ({err})") from None
    raise UsageError(f"{option} {config_path}: the corpus is empty (its {len(local)} file(s) hold no text)")


# ---- start-up checks on the first records ----


def _open_text(source: str):
    """A text handle on a local source, decompressing .gz/.bz2/.xz; None for formats read only by `datasets`."""
    import bz2
    import lzma

    openers = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open}
    for suffix, opener in openers.items():
        if source.endswith(suffix):
            return opener(source, "rt", encoding="utf-8", errors="replace", newline="")
    if source.endswith(COMPRESSED_SUFFIXES):
        return None
    return open(source, encoding="utf-8", errors="replace", newline="")


def first_record_problem(config: CorpusConfig) -> str | None:
    """Why the first record of a local source does not fit the declared format and columns, or None.

    Plain text always fits; JSON lines must parse to objects with the columns; csv headers and parquet schemas
    must name them. A JSON file holding one array is left to `datasets`.
    """
    if config.format == "text" or config.hub is not None:
        return None
    for source in config.sources:
        if not is_remote(source):
            problem = _first_record_problem(source, config)
            if problem:
                return problem
    return None


def _first_record_problem(source: str, config: CorpusConfig) -> str | None:
    def missing_columns(names) -> str | None:
        missing = [c for c in config.columns if c not in names]
        if not missing:
            return None
        return (
            f'corpus file {source} has no column(s) {missing}; its records have {sorted(names)} (set "columns" to '
            "the ones holding the text)"
        )

    if config.format == "parquet":
        import pyarrow.parquet

        try:
            return missing_columns(pyarrow.parquet.read_schema(source).names)
        except (OSError, pyarrow.ArrowException) as err:
            return f"corpus file {source} is not a parquet file ({err.__class__.__name__})"
    handle = _open_text(source)
    if handle is None:
        return None
    with handle:
        try:
            if config.format == "csv":
                header = next(csv.reader([handle.readline()]), [])
                return missing_columns(header)
            line = ""
            while not line.strip():
                line = handle.readline()
                if not line:
                    return None  # no record at all: the empty-corpus check speaks for it
        except (OSError, EOFError, UnicodeError) as err:
            return f"corpus file {source} cannot be read ({err.__class__.__name__})"
    if line.lstrip().startswith("["):
        return None
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return (
            f'corpus file {source} is declared "format": "json" but its first line is not JSON '
            f'({line.strip()[:40]!r}); use "format": "text" for plain text'
        )
    if not isinstance(record, dict):
        return f"corpus file {source}: its first JSON line holds a {type(record).__name__}, not an object"
    return missing_columns(record)


# ---- which part of the corpus each rank reads ----


@dataclass(frozen=True)
class Unit:
    """One rank's piece of one source.

    mode "bytes": lines starting in byte range `piece` of `pieces` equal ranges (local line-based files);
    mode "rows": rows i with i % pieces == piece; "whole": every row; "hub": `split_dataset_by_node` piece.
    """

    source: str
    mode: str
    piece: int = 0
    pieces: int = 1


def is_byte_splittable(source: str, fmt: str) -> bool:
    """Local, uncompressed, one record per line: a byte offset can start a rank's share."""
    if is_remote(source) or source.endswith(COMPRESSED_SUFFIXES) or fmt not in ("text", "json"):
        return False
    if fmt == "json":  # JSON lines only, not one big JSON array
        with open(source, "rb") as handle:
            head = handle.read(4096).lstrip()
        return head.startswith(b"{")
    return True


def rank_units(config: CorpusConfig, rank: int, world_size: int) -> list[Unit]:
    """The units rank `rank` of `world_size` reads in one pass; all ranks together read the corpus once."""
    if config.hub is not None:
        return [Unit(config.hub, "hub", rank, world_size)]
    splittable = [s for s in config.sources if is_byte_splittable(s, config.format)]
    others = [s for s in config.sources if s not in splittable]
    units = [Unit(s, "bytes", rank, world_size) for s in splittable]
    # Whole files only as far as every rank gets as many of them: with 5 files and 2 ranks, a plain round robin
    # would give rank 0 three files and rank 1 two, so rank 1 would go round its share more often (its text seen
    # more often). The remaining files are split by rows among all ranks.
    whole = len(others) - len(others) % world_size
    units += [Unit(s, "whole") for i, s in enumerate(others[:whole]) if i % world_size == rank]
    units += [Unit(s, "rows", rank, world_size) for s in others[whole:]]
    return units


def unit_records(units: list[Unit]) -> list[list]:
    """`units` as stored in a stream's state_dict."""
    return [[u.source, u.mode, u.piece, u.pieces] for u in units]


# Values that change what a stream yields: a saved position continues only a stream made with the same ones.
STREAM_OPTION_FLAGS = {"max_seq_len": "--max_seq_len", "shuffle_buffer": "--shuffle_buffer", "seed": "--seed"}


def stream_state_mismatch(state: dict, units: list[list], world_size: int, options: dict | None = None) -> str | None:
    """Why a saved stream position cannot continue a stream over `units` of `world_size` ranks, or None.

    `options` (`TokenStream.options()`) are compared with the saved ones when both are known (positions saved
    before they were recorded are only checked for the corpus and the world size).
    """
    saved_world = state.get("world_size")
    if saved_world != world_size:
        return f"the number of processes differs (saved by {saved_world}, this run has {world_size})"
    saved_units = state.get("units")
    if saved_units != units:
        saved_sources = [unit[0] for unit in saved_units or []]
        sources = [unit[0] for unit in units]
        if saved_sources != sources:
            gone = [s for s in saved_sources if s not in sources] or saved_sources
            new = [s for s in sources if s not in saved_sources] or sources
            return f"the corpus differs (saved for {gone[:2]}, this run reads {new[:2]})"
        return "the corpus differs (same files, but split among the ranks differently)"
    saved_options = state.get("options")
    if options is None or not isinstance(saved_options, dict):
        return None
    for key, value in options.items():
        if key not in saved_options or saved_options[key] == value:
            continue
        saved = saved_options[key]
        if key == "packing":
            return "it was saved " + ("with packing; this run has --no_packing" if saved else "with --no_packing")
        if key == "vocab_size":
            return f"the tokenizer differs (saved with a vocabulary of {saved}, this run's has {value})"
        flag = STREAM_OPTION_FLAGS[key]
        return f"{flag} {value} differs from the checkpoint's {flag} {saved}"
    return None


def byte_range(size: int, piece: int, pieces: int) -> tuple[int, int]:
    return size * piece // pieces, size * (piece + 1) // pieces


def as_position(position: int | list | tuple) -> tuple[int, int]:
    """(record, skip): a unit position as stored; a bare int (a unit's start, 0) skips nothing."""
    if isinstance(position, int):
        return position, 0
    record, skip = position
    return int(record), int(skip)


def read_unit(
    config: CorpusConfig, unit: Unit, position: int | list = 0, max_piece: int = MAX_PIECE_CHARS
) -> Iterator[tuple[str, list[int], bool]]:
    """Yield (text, position after it, last) for `unit`, from `position` (0 = the unit's start) on.

    A document longer than `max_piece` comes as several pieces, `last` True on its final one. A position is
    [record, skip]: the record is a byte offset (mode "bytes") or a count of rows (the others), and `skip` says
    how much of that record was already yielded (bytes of a text line, characters of a parsed record's text).
    Passing a yielded position back resumes right after that piece, without re-reading what came before
    (bytes) or without tokenising it (rows). Blank documents are skipped.
    """
    if unit.mode == "bytes":
        yield from _read_byte_range(config, unit, position, max_piece)
    else:
        yield from _read_rows(config, unit, position, max_piece)


def split_document(text: str, max_chars: int, start: int = 0) -> Iterator[tuple[str, int, bool]]:
    """(piece, end offset, last) covering `text[start:]` in pieces of at most `max_chars` characters.

    A piece ends before whitespace where there is some, so no word is cut and the next piece keeps the space
    a byte-level BPE tokenizer marks word starts with; a run without whitespace is cut at `max_chars`.
    """
    while len(text) - start > max_chars:
        end = start + max_chars
        cut = max(text.rfind(" ", start + 1, end), text.rfind("\n", start + 1, end), text.rfind("\t", start + 1, end))
        cut = cut if cut > start else end
        yield text[start:cut], cut, False
        start = cut
    yield text[start:], len(text), True


def _cut_bytes(chunk: bytes) -> int:
    """Where a piece of a longer line ends: before its last space or tab, else before a split UTF-8 character."""
    space = max(chunk.rfind(b" "), chunk.rfind(b"\t"))
    if space > 0:
        return space
    last = len(chunk) - 1
    while last > 0 and chunk[last] & 0xC0 == 0x80:  # back to the first byte of the last character
        last -= 1
    return last if last > 0 and chunk[-1] >= 0x80 else len(chunk)


def _skip_line(handle, block: int = 1 << 16) -> None:
    """Move `handle` just past the next newline (or to the end), reading at most `block` bytes at a time."""
    while chunk := handle.read(block):
        newline = chunk.find(b"\n")
        if newline >= 0:
            handle.seek(newline + 1 - len(chunk), os.SEEK_CUR)
            return


def _text_line_pieces(handle, line_start: int, skip: int, max_piece: int):
    """Pieces of the plain-text line at `line_start`, from its byte `skip` on; returns False at the end of file."""
    handle.seek(line_start + skip)
    consumed = skip
    while True:
        chunk = handle.readline(max_piece)
        if not chunk:
            if consumed:  # the file ended right after a piece of this line: close the document
                yield "", [handle.tell(), 0], True
            return consumed > 0
        last = chunk.endswith(b"\n") or len(chunk) < max_piece
        if not last:
            cut = _cut_bytes(chunk)
            handle.seek(cut - len(chunk), os.SEEK_CUR)
            chunk = chunk[:cut]
        text = chunk.decode("utf-8", errors="replace")
        text = text.lstrip() if consumed == 0 else text
        text = text.rstrip() if last else text
        before, consumed = consumed, consumed + len(chunk)
        if last:
            if text or before:  # a blank line alone is skipped; a blank end still closes a longer document
                yield text, [handle.tell(), 0], True
            return True
        yield text, [line_start, consumed], False


def _read_byte_range(config: CorpusConfig, unit: Unit, position, max_piece: int):
    size = os.path.getsize(unit.source)
    start, end = byte_range(size, unit.piece, unit.pieces)
    record, skip = as_position(position)
    with open(unit.source, "rb") as handle:
        if record or skip:
            handle.seek(record)
        elif start:
            # The line running across `start` belongs to the previous piece: skip to the next line start.
            handle.seek(start - 1)
            _skip_line(handle)
        # A line that starts in this range is read to its end, even past `end`.
        while skip or handle.tell() < end:
            line_start = handle.tell()
            if config.format == "json":
                line = handle.readline()  # a JSON record can only be parsed whole
                if not line:
                    return
                after = handle.tell()
                text = _record_text(line, config, unit.source)
                if text:
                    for piece, done, last in split_document(text, max_piece, skip):
                        yield piece, ([after, 0] if last else [line_start, done]), last
                handle.seek(after)
            elif not (yield from _text_line_pieces(handle, line_start, skip, max_piece)):
                return
            skip = 0


def _record_text(line: bytes, config: CorpusConfig, source: str) -> str:
    text = line.decode("utf-8", errors="replace").strip()
    if not text:
        return ""
    try:
        record = json.loads(text)
    except json.JSONDecodeError as err:
        raise UsageError(
            f'corpus file {source} is declared "format": "json" but has a line that is not JSON ({err.msg}: '
            f'{text[:40]!r}); use "format": "text" for plain text'
        ) from None
    if not isinstance(record, dict):
        raise UsageError(f"corpus file {source}: a JSON line holds {type(record).__name__}, not an object")
    return _join_columns(record, config.columns, source).strip()


def _join_columns(record: dict, columns: tuple[str, ...], source: str = "the corpus") -> str:
    missing = [c for c in columns if c not in record]
    if missing:
        raise UsageError(
            f'corpus file {source}: column(s) {missing} not found; its records have {sorted(record)} (set "columns")'
        )
    return "\n".join("" if record[c] is None else str(record[c]) for c in columns)


def _read_rows(config: CorpusConfig, unit: Unit, position, max_piece: int):
    from datasets import load_dataset  # the datasets library is only needed for these sources

    row, skip = as_position(position)
    if unit.mode == "hub":
        from datasets.distributed import split_dataset_by_node

        rows = load_dataset(config.hub, config.hub_name, split=config.hub_split, streaming=True)
        rows = split_dataset_by_node(rows, rank=unit.piece, world_size=unit.pieces)
    else:
        rows = load_dataset(config.format, data_files=[unit.source], split="train", streaming=True)
    if row:
        rows = rows.skip(row)  # reads, but does not tokenise, what was consumed before
    for index, record in enumerate(rows, start=row):
        if unit.mode == "rows" and index % unit.pieces != unit.piece:
            continue
        text = _join_columns(record, config.columns, unit.source).strip()
        if text:
            for piece, done, last in split_document(text, max_piece, skip if index == row else 0):
                yield piece, ([index + 1, 0] if last else [index, done]), last


def first_tokens_problem(
    config: CorpusConfig,
    tokenizer: PreTrainedTokenizerBase,
    rank: int,
    world_size: int,
    name: str = "--train_config",
    max_chars: int = 1 << 24,
) -> str | None:
    """Why rank `rank`'s share of a local corpus yields no token at all, or None (start-up check).

    Reads the share until its first token, at most `max_chars` characters (None if that reveals nothing: the
    stream itself then stops at the end of its first pass with the same message). Remote and hub sources are
    not read here.
    """
    units = rank_units(config, rank, world_size)
    if config.hub is not None or any(is_remote(unit.source) for unit in units):
        return None
    batch, seen = [], 0
    for unit in units:
        for text, _, _ in read_unit(config, unit):
            batch.append(text)
            seen += len(text)
            if len(batch) == 64 or seen >= max_chars:
                if any(tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]):
                    return None
                if seen >= max_chars:
                    return None
                batch = []
    if batch and any(tokenizer(batch, add_special_tokens=False, verbose=False)["input_ids"]):
        return None
    return no_tokens_message(name, rank, world_size, len(units))


def no_tokens_message(name: str, rank: int, world_size: int, parts: int) -> str:
    share = "the corpus" if world_size == 1 else f"rank {rank}'s share of the corpus ({parts} part(s) of {world_size})"
    advice = "clean the corpus or give it more text" + (", or run fewer processes" if world_size > 1 else "")
    return (
        f"{name}: {share} yields no tokens: its text is empty or only characters the tokenizer drops "
        f"(zero-width spaces, control characters); {advice}"
    )


# ---- documents -> model inputs ----

PASS_END = object()  # what `TokenStream._iter_documents` yields after each pass over the share


class TokenStream(torch.utils.data.IterableDataset):
    """Token sequences of rank `rank`'s share of a corpus, as {"input_ids": list[int]} examples.

    Packing (default): documents, each closed by [SEP], are concatenated and cut into sequences of exactly
    `max_seq_len` tokens, `[CLS] <max_seq_len - 2 tokens> [SEP]`, so no compute goes to padding; a long
    document continues in the next sequence. Without packing: one document per sequence, truncated.
    Sequences pass through a seeded shuffle buffer of `shuffle_buffer` sequences (<= 1: no shuffling).

    `infinite=True` (training) starts a new pass, with a new unit order, when the share is used up;
    `infinite=False` (evaluation) reads one pass in order and also yields the last, shorter sequence.
    `sequence_shard=(r, n)` (evaluation on n processes) reads the whole corpus but yields only sequences
    i = r mod n, so the sequences are the same whatever n is and each is scored once.
    A pass that yields no token at all raises `UsageError` (one line) instead of looping for ever.
    Runs in the main process (the trainer uses no loader workers), so `state_dict()` is exactly the
    position after the last example handed out.
    """

    def __init__(
        self,
        config: CorpusConfig,
        tokenizer: PreTrainedTokenizerBase,
        max_seq_len: int,
        *,
        packing: bool = True,
        shuffle_buffer: int = 1000,
        seed: int = 42,
        rank: int = 0,
        world_size: int = 1,
        infinite: bool = True,
        tokenize_batch: int = 64,
        sequence_shard: tuple[int, int] | None = None,
        max_piece_chars: int = MAX_PIECE_CHARS,
        name: str = "--train_config",
    ):
        super().__init__()
        if max_seq_len < 3:
            raise UsageError(f"--max_seq_len {max_seq_len} is too short; use at least 3 ([CLS] token [SEP])")
        self.config, self.tokenizer, self.max_seq_len = config, tokenizer, max_seq_len
        self.packing, self.shuffle_buffer, self.seed = packing, max(1, shuffle_buffer), seed
        self.infinite, self.tokenize_batch = infinite, tokenize_batch
        self.rank, self.world_size = rank, world_size
        self.sequence_shard, self.max_piece_chars, self.name = sequence_shard, max_piece_chars, name
        self.units = rank_units(config, rank, world_size)
        self.cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if self.cls_id is None or self.sep_id is None:
            raise UsageError("the tokenizer has no [CLS]/[SEP] (or BOS/EOS) tokens to frame sequences with")
        self.reset()

    def options(self) -> dict:
        """The values that decide what this stream yields (saved with its position, compared on resume)."""
        return {
            "max_seq_len": self.max_seq_len,
            "packing": self.packing,
            "shuffle_buffer": self.shuffle_buffer,
            "seed": self.seed,
            "vocab_size": len(self.tokenizer),
        }

    def reset(self) -> None:
        """Back to the start of the stream."""
        self.epoch = 0
        self.unit_index = 0  # position in this epoch's unit order
        self.unit_position: int | list = 0  # inside the current unit (see `read_unit`)
        self.pending: list = []  # tokenised but not yet packed (packing: token ids; else: documents)
        self.open_document = False  # the last document in `pending` awaits more pieces
        self.tokens_in_pass = 0  # tokens the current pass has produced so far
        self.buffer: list[list[int]] = []  # the shuffle buffer
        self.rng = random.Random(f"{self.seed}-{self.rank}")
        self.examples_yielded = 0
        self._documents: Iterator | None = None
        self._exhausted = False

    # -- resumable position --

    def position(self) -> dict:
        """Where the stream stands now, cheaply enough to take after every batch (minilmv2.prefetch does).

        The shuffle buffer's sequences are never changed once made, so the buffer is copied as a list of the same
        sequences; what is still being filled (`pending`) is copied. `state_dict(position)` saves it.
        """
        return {
            "epoch": self.epoch,
            "unit_index": self.unit_index,
            "unit_position": self.unit_position,
            "pending": [list(doc) for doc in self.pending] if not self.packing else list(self.pending),
            "open_document": self.open_document,
            "tokens_in_pass": self.tokens_in_pass,
            "buffer": list(self.buffer),
            "rng": self.rng.getstate(),
            "examples_yielded": self.examples_yielded,
        }

    def state_dict(self, position: dict | None = None) -> dict:
        """The saved form (JSON) of `position` (one taken earlier by `position()`), else of the position now."""
        position = self.position() if position is None else position
        return {
            **position,
            "rng": _rng_state_to_json(position["rng"]),
            "rank": self.rank,
            "world_size": self.world_size,
            "units": unit_records(self.units),
            "options": self.options(),
        }

    def load_state_dict(self, state: dict) -> None:
        problem = stream_state_mismatch(state, unit_records(self.units), self.world_size, self.options())
        if problem:
            raise ValueError(f"the saved stream position does not fit this run: {problem}")
        self.reset()
        self.epoch, self.unit_index = state["epoch"], state["unit_index"]
        self.unit_position = state["unit_position"]
        self.pending, self.buffer = list(state["pending"]), [list(s) for s in state["buffer"]]
        self.open_document = state["open_document"]
        self.tokens_in_pass = state["tokens_in_pass"]
        self.rng.setstate(_rng_state_from_json(state["rng"]))
        self.examples_yielded = state["examples_yielded"]

    # -- reading --

    def _unit_order(self) -> list[Unit]:
        order = list(self.units)
        if self.infinite:
            random.Random(f"{self.seed}-units-{self.epoch}").shuffle(order)
        return order

    def _iter_documents(self) -> Iterator:
        """(text, last) pieces from the current position on, then PASS_END after each pass over the share.

        Keeps `unit_index`/`unit_position` just past each piece; the next pass's position is set before
        PASS_END is yielded, so a state saved right after it starts that pass.
        """
        while True:
            order = self._unit_order()
            while self.unit_index < len(order):
                unit = order[self.unit_index]
                for text, position, last in read_unit(self.config, unit, self.unit_position, self.max_piece_chars):
                    self.unit_position = position
                    yield text, last
                self.unit_index, self.unit_position = self.unit_index + 1, 0
            if self.infinite:
                self.epoch, self.unit_index, self.unit_position = self.epoch + 1, 0, 0
            yield PASS_END
            if not self.infinite:
                return

    def _ready(self) -> int:
        """Tokens (packing) or complete documents (no packing) that `_next_sequence` can use."""
        return len(self.pending) - (1 if self.open_document and not self.packing else 0)

    def _fill_pending(self, needed: int) -> bool:
        """Tokenise documents until `_ready()` reaches `needed`; False when a finite stream has ended first."""
        if self._documents is None:
            self._documents = self._iter_documents()
        while self._ready() < needed:
            batch, characters, pass_ended, ended = [], 0, False, False
            # Bounded by pieces and by characters: a tokenizer call's memory grows with its input's length.
            while len(batch) < self.tokenize_batch and characters < TOKENIZE_BATCH_CHARS:
                item = next(self._documents, None)
                if item is None or item is PASS_END:
                    ended, pass_ended = item is None, item is PASS_END
                    break
                batch.append(item)
                characters += len(item[0])
            self._add_tokens(batch)
            if pass_ended:
                if self.tokens_in_pass == 0:
                    raise UsageError(no_tokens_message(self.name, self.rank, self.world_size, len(self.units)))
                self.tokens_in_pass = 0
            if ended:
                return self._ready() >= needed
        return True

    def _add_tokens(self, batch: list[tuple[str, bool]]) -> None:
        texts = [text for text, _ in batch if text]
        encoded = iter(self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"] if texts else ())
        body = self.max_seq_len - 2
        for text, last in batch:
            ids = next(encoded) if text else []
            self.tokens_in_pass += len(ids)
            if self.packing:
                self.pending.extend(ids)
                self.open_document = self.open_document or bool(ids)
                if last and self.open_document:  # pieces of one document share no [SEP]; its end gets one
                    self.pending.append(self.sep_id)
                    self.open_document = False
                continue
            if ids and self.open_document:  # one document per sequence: later pieces only fill it up to `body`
                self.pending[-1].extend(ids[: max(0, body - len(self.pending[-1]))])
            elif ids:
                self.pending.append(ids[:body])
                self.open_document = True
            if last:
                self.open_document = False

    def _next_sequence(self) -> list[int] | None:
        body = self.max_seq_len - 2
        if not self.packing:
            if not self._ready() and not self._fill_pending(1):
                return None
            ids = self.pending.pop(0)
            return [self.cls_id, *ids[:body], self.sep_id]
        if self._fill_pending(body):
            chunk, self.pending = self.pending[:body], self.pending[body:]
        else:
            if not self.pending:
                return None
            # End of a finite stream: a last, shorter sequence; its closing [SEP] ends the last document.
            chunk, self.pending = self.pending[:-1], []
        if self.pending and self.pending[0] == self.sep_id:
            # A document ended exactly at the cut: the closing [SEP] below marks it, so the next sequence
            # does not start with [CLS] [SEP].
            del self.pending[0]
        return [self.cls_id, *chunk, self.sep_id]

    def _next_example(self) -> list[int] | None:
        while not self._exhausted and len(self.buffer) < self.shuffle_buffer:
            sequence = self._next_sequence()
            if sequence is None:
                self._exhausted = True
            else:
                self.buffer.append(sequence)
        if not self.buffer:
            return None
        # Swap a random element to the end and pop it: O(1), and the state is just the list.
        index = self.rng.randrange(len(self.buffer))
        self.buffer[index], self.buffer[-1] = self.buffer[-1], self.buffer[index]
        return self.buffer.pop()

    def __iter__(self) -> Iterator[dict[str, list[int]]]:
        if not self.infinite:
            self.reset()  # evaluation: every pass reads the same sequences
        shard_rank, shard_count = self.sequence_shard or (0, 1)
        index = 0
        while (sequence := self._next_example()) is not None:
            index += 1
            if (index - 1) % shard_count != shard_rank:
                continue
            self.examples_yielded += 1
            yield {"input_ids": sequence}


def _rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


class PadCollator:
    """Stack {"input_ids": list[int]} examples into input_ids (B, S), right-padded, plus attention_mask (B, S)
    when some row is shorter than the longest.

    A batch without padding (packed sequences, always) has no mask: the models then skip building one and the
    check that it has any padding, a read of a device value on every forward.
    """

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        lengths = [len(e["input_ids"]) for e in examples]
        length = max(lengths)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        for row, example in enumerate(examples):
            input_ids[row, : lengths[row]] = torch.tensor(example["input_ids"], dtype=torch.long)
        if min(lengths) == length:
            return {"input_ids": input_ids}
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, row_length in enumerate(lengths):
            attention_mask[row, :row_length] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
