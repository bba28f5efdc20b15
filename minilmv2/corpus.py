"""Corpus config -> what each rank reads: sources, formats, sharding by rank, readers with resumable positions.

A corpus config is the reference's JSON, `{"urls": [...], "format": "text", "columns": "text"}`:
local paths, globs, compressed files (.gz, .bz2, .xz, .zst; .zip through `datasets`) or http(s) URLs in the
formats text, json/jsonl, csv or parquet (`FORMATS`: one entry each); several columns are joined by a newline.
With network access, `{"hub": "wikimedia/wikipedia", "name": "20231101.en", "split": "train", "columns": "text"}`
streams a hub dataset instead. Relative paths are read relative to the config file, so a config can travel with
its shards.

Sharding (each rank reads only its own share, nothing lost or duplicated):
  - a local, uncompressed file of one record per line (text, JSON lines) is cut into `world_size` byte ranges;
    rank r owns every line that *starts* inside range r, so each rank reads only its own bytes, even with a
    single file;
  - other sources (compressed, remote, csv, parquet) go to ranks whole, round robin, as far as their count
    divides the world size (every rank gets as many whole files); each of the remaining `count % world_size`
    files is read by every rank, which keeps only its rows i = r mod world;
  - a hub dataset is split by `datasets.distributed.split_dataset_by_node`.

Memory is bounded whatever the line lengths: a document longer than `MAX_PIECE_CHARS` is cut into pieces (at
whitespace, else at a character boundary). A plain-text line is read piece by piece; a JSON record, csv or parquet
row is parsed whole first (it cannot be parsed in pieces), so one huge record costs a few times its own size.

Positions are resumable: local line files by byte offset (nothing consumed is read again); row-wise sources
(compressed, csv, parquet, remote) and hub datasets by row count, so the consumed rows of the *current* file are
read again and skipped without tokenising. A stream cannot seek inside a compressed file.
"""

from __future__ import annotations

import csv
import glob
import importlib.util
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from minilmv2.corpus_files import (
    COMPRESSED_SUFFIXES,
    changed_file,
    missing_decompressor,
    open_local,
)
from minilmv2.errors import UsageError, given, option

FORMAT_ALIASES = {"txt": "text", "jsonl": "json"}
CONFIG_EXAMPLE = '{"urls": ["shards/*.txt"], "format": "text", "columns": "text"}'
# A document longer than this many characters (bytes, for plain text read from disk) is tokenised in pieces:
# fast tokenizers hold ~200 bytes of offsets and word ids per input character, so a 50 MB line in one call
# needs gigabytes, while pieces of 64 Ki characters keep a tokenizer call to a few MB.
MAX_PIECE_CHARS = 1 << 16


@dataclass(frozen=True)
class CorpusConfig:
    """A validated corpus config: resolved sources (local paths or URLs), a format and the text columns."""

    sources: tuple[str, ...]
    format: str
    columns: tuple[str, ...]
    hub: str | None = None  # a hub dataset name instead of `sources`
    hub_name: str | None = None
    hub_split: str = "train"
    # What the config's reader should hear once (a file listed twice), said by the start-up check.
    notes: tuple[str, ...] = field(default=(), compare=False)


def is_remote(source: str) -> bool:
    return "://" in source


def _refuse_remote_when_offline(remote: list[str], label: str) -> None:
    from minilmv2.hub import hub_offline, offline_switches

    if remote and hub_offline():
        raise UsageError(
            f"{label} reads {remote[0]} from the network, but the hub is offline ({offline_switches()}); "
            "unset it or use local files"
        )


def load_corpus_config(path: str | os.PathLike, label: str | None = None) -> CorpusConfig:
    """Read and validate a corpus config; `UsageError` naming it and the bad value otherwise.

    label: how messages name the config (default "corpus config <path>"; the command line names its option)."""
    path = Path(path)
    label = label or f"corpus config {path}"
    if path.is_dir():
        raise UsageError(f"{label} is a folder; give a JSON file like {CONFIG_EXAMPLE}")
    if not path.is_file():
        raise UsageError(f"{label} does not exist; give a JSON file like {CONFIG_EXAMPLE}")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except OSError as err:
        raise UsageError(f"{label} cannot be read ({err.strerror})") from None
    except UnicodeDecodeError:
        raise UsageError(f"{label} is not UTF-8 text; expected JSON like {CONFIG_EXAMPLE}") from None
    except json.JSONDecodeError as err:
        raise UsageError(f"{label} is not valid JSON ({err}); expected {CONFIG_EXAMPLE}") from None
    if not isinstance(raw, dict):
        raise UsageError(f"{label} must hold a JSON object like {CONFIG_EXAMPLE}")
    columns = raw.get("columns", "text")
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",")]
    if not isinstance(columns, list) or not columns or not all(isinstance(c, str) and c for c in columns):
        raise UsageError(f'{label}: "columns" must be a name or a comma-separated list, got {columns!r}')

    if "hub" in raw:
        if not isinstance(raw["hub"], str) or not raw["hub"]:
            raise UsageError(f'{label}: "hub" must be a dataset name such as "wikimedia/wikipedia"')
        _refuse_remote_when_offline([f"hub dataset {raw['hub']}"], label)
        return CorpusConfig((), "hub", tuple(columns), raw["hub"], raw.get("name"), raw.get("split", "train"))

    fmt = FORMAT_ALIASES.get(raw.get("format", "text"), raw.get("format", "text"))
    if fmt not in FORMATS:
        raise UsageError(f"{label}: format {raw.get('format')!r} is not one of {', '.join(FORMATS)}")
    urls = raw.get("urls")
    if isinstance(urls, str):
        urls = [urls]
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) and u for u in urls):
        raise UsageError(f'{label}: "urls" must be a non-empty list of paths or URLs, got {urls!r}')
    _refuse_remote_when_offline([u for u in urls if is_remote(u)], label)
    sources, notes = _unique_sources([s for url in urls for s in _expand_source(url, path.parent, label)])
    if fmt == "text" and columns != ["text"]:
        raise UsageError(f'{label}: the text format has one column, "text"; got columns {columns!r}')
    for source in sources:
        problem = None if is_remote(source) else missing_decompressor(source)
        if problem:
            raise UsageError(f"{label}: {problem}")
    _refuse_empty_corpus(sources, label)
    return CorpusConfig(tuple(sources), fmt, tuple(columns), notes=notes)


def _unique_sources(sources: list[str]) -> tuple[list[str], tuple[str, ...]]:
    """Each file once (the same file after globbing and resolving paths is read once), and a note if any repeat."""
    first: dict[str, str] = {}  # resolved path: the source as first listed
    times: dict[str, int] = {}
    for source in sources:
        key = source if is_remote(source) else os.path.realpath(source)
        first.setdefault(key, source)
        times[key] = times.get(key, 0) + 1
    repeated = [f"{first[key]} ({count} times)" for key, count in times.items() if count > 1]
    if not repeated:
        return list(first.values()), ()
    names = ", ".join(repeated[:3]) + (f" and {len(repeated) - 3} more" if len(repeated) > 3 else "")
    return list(first.values()), (
        f"note: the corpus config lists {names} (after globs and path resolution); each file is read once per pass",
    )


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


def _expand_source(url: str, base: Path, label: str) -> list[str]:
    if is_remote(url):
        return [url]
    local = Path(os.path.expanduser(url))
    if not local.is_absolute():
        local = base / local
    if glob.has_magic(str(local)):
        matches = sorted(p for p in glob.glob(str(local), recursive=True) if os.path.isfile(p))
        if not matches:
            raise UsageError(f"{label}: pattern {url} matches no file")
        return matches
    if not local.is_file():
        raise UsageError(f"{label}: corpus file {local} does not exist")
    if not os.access(local, os.R_OK):
        raise UsageError(f"{label}: corpus file {local} is not readable")
    return [str(local)]


def _refuse_empty_corpus(sources: list[str], label: str) -> None:
    """Refuse a corpus whose local files hold no text at all (an endless stream of nothing would hang)."""
    local = [s for s in sources if not is_remote(s)]
    if len(local) < len(sources):
        return  # remote sources are checked when the stream first reads them
    for source in local:
        try:
            handle = open_local(source, text=False)
            if handle is None:
                return  # a compression only `datasets` reads: the stream's first pass checks it
            with handle:
                while chunk := handle.read(1 << 16):
                    if chunk.strip():
                        return
        except OSError as err:
            raise UsageError(f"{label}: corpus file {source} cannot be read ({err})") from None
    raise UsageError(f"{label}: the corpus is empty (its {len(local)} file(s) hold no text)")


# ---- formats: one entry each ----


def _missing_columns(source: str, config: CorpusConfig, names) -> str | None:
    missing = [c for c in config.columns if c not in names]
    if not missing:
        return None
    return (
        f'corpus file {source} has no column(s) {missing}; its records have {sorted(names)} (set "columns" to '
        "the ones holding the text)"
    )


def _first_line(source: str) -> str | None:
    """The first non-blank line of a local source (decompressed), "" when it has none, None when unreadable here."""
    handle = open_local(source, text=True)
    if handle is None:
        return None
    with handle:
        while line := handle.readline():
            if line.strip():
                return line
    return ""


def _json_first_record_problem(source: str, config: CorpusConfig) -> str | None:
    line = _first_line(source)
    if not line or line.lstrip().startswith("["):
        return None  # no record (the empty-corpus check speaks), or one JSON array (left to `datasets`)
    try:
        record = json.loads(line)
    except json.JSONDecodeError:
        return (
            f'corpus file {source} is declared "format": "json" but its first line is not JSON '
            f'({line.strip()[:40]!r}); use "format": "text" for plain text'
        )
    if not isinstance(record, dict):
        return f"corpus file {source}: its first JSON line holds a {type(record).__name__}, not an object"
    return _missing_columns(source, config, record)


def _csv_first_record_problem(source: str, config: CorpusConfig) -> str | None:
    handle = open_local(source, text=True)
    if handle is None:
        return None
    with handle:
        header = next(csv.reader([handle.readline()]), [])
    return _missing_columns(source, config, header)


def _parquet_first_record_problem(source: str, config: CorpusConfig) -> str | None:
    import pyarrow.parquet

    try:
        return _missing_columns(source, config, pyarrow.parquet.read_schema(source).names)
    except (OSError, pyarrow.ArrowException) as err:
        return f"corpus file {source} is not a parquet file ({err.__class__.__name__})"


def _json_line_text(line: bytes, config: CorpusConfig, source: str) -> str:
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


def _holds_json_lines(source: str) -> bool:
    """JSON lines, not one big JSON array."""
    with open(source, "rb") as handle:
        return handle.read(4096).lstrip().startswith(b"{")


@dataclass(frozen=True)
class CorpusFormat:
    """How one format is read. A new format is one entry in FORMATS (and a reader in `datasets` for the rest)."""

    # Whether a local, uncompressed file of this format holds one record per line, so that a byte offset can
    # start a rank's share and it is read without `datasets`; None: never.
    line_records: Callable[[str], bool] | None
    # The text of one line of such a file; None: the line itself, read piece by piece (plain text).
    line_text: Callable[[bytes, CorpusConfig, str], str] | None
    # Why a local file's first record does not fit the declared format and columns (start-up check); None: any fits.
    first_record_problem: Callable[[str, CorpusConfig], str | None] | None


FORMATS: dict[str, CorpusFormat] = {
    "text": CorpusFormat(line_records=lambda source: True, line_text=None, first_record_problem=None),
    "json": CorpusFormat(_holds_json_lines, _json_line_text, _json_first_record_problem),
    "csv": CorpusFormat(line_records=None, line_text=None, first_record_problem=_csv_first_record_problem),
    "parquet": CorpusFormat(line_records=None, line_text=None, first_record_problem=_parquet_first_record_problem),
}


def first_record_problem(config: CorpusConfig) -> str | None:
    """Why the first record of a local source does not fit the declared format and columns, or None.

    Plain text always fits; JSON lines must parse to objects with the columns; csv headers and parquet schemas
    must name them. A JSON file holding one array is left to `datasets`.
    """
    check = FORMATS[config.format].first_record_problem if config.hub is None else None
    if check is None:
        return None
    for source in config.sources:
        if not is_remote(source):
            try:
                problem = check(source, config)
            except (OSError, EOFError, UnicodeError) as err:
                problem = f"corpus file {source} cannot be read ({err.__class__.__name__})"
            if problem:
                return problem
    return None


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
    line_records = FORMATS[fmt].line_records
    if is_remote(source) or source.endswith(COMPRESSED_SUFFIXES) or line_records is None:
        return False
    return line_records(source)


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
        if saved_sources == sources:
            return "the corpus differs (same files, but split among the ranks differently)"
        dropped = [s for s in saved_sources if s not in sources]
        added = [s for s in sources if s not in saved_sources]
        parts = [f"the checkpoint read {_some(dropped)}, which this run does not"] if dropped else []
        parts += [f"this run adds {_some(added)}"] if added else []
        return f"the corpus differs ({'; '.join(parts) or 'the same files in another order'})"
    for source, saved in (state.get("files") or {}).items():  # positions saved before files were fingerprinted: {}
        problem = changed_file(saved, source)
        if problem:
            return problem
    saved_options = state.get("options")
    if options is None or not isinstance(saved_options, dict):
        return None
    for key, value in options.items():
        if key not in saved_options or saved_options[key] == value:
            continue
        saved = saved_options[key]
        if key == "packing":
            return "it was saved " + (
                f"with packing; this run has {option('no_packing')}" if saved else f"with {option('no_packing')}"
            )
        if key == "vocab_size":
            return f"the tokenizer differs (saved with a vocabulary of {saved}, this run's has {value})"
        return f"{given(key, value)} differs from the checkpoint's {saved}"
    return None


def _some(sources: list[str]) -> str:
    return ", ".join(sources[:2]) + (f" and {len(sources) - 2} more" if len(sources) > 2 else "")


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
            line_text = FORMATS[config.format].line_text
            if line_text is not None:
                line = handle.readline()  # a structured record can only be parsed whole
                if not line:
                    return
                after = handle.tell()
                text = line_text(line, config, unit.source)
                if text:
                    for piece, done, last in split_document(text, max_piece, skip):
                        yield piece, ([after, 0] if last else [line_start, done]), last
                handle.seek(after)
            elif not (yield from _text_line_pieces(handle, line_start, skip, max_piece)):
                return
            skip = 0


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
