"""Corpus config -> token stream: streamed, sharded by rank, shuffled, packed, resumable.

A corpus config is the reference's JSON, `{"urls": [...], "format": "text", "columns": "text"}`:
local paths, globs, `.gz` files or http(s) URLs in the formats text, json/jsonl, csv or parquet; several
columns are joined by a newline. With network access, `{"hub": "wikimedia/wikipedia", "name": "20231101.en",
"split": "train", "columns": "text"}` streams a hub dataset instead. Relative paths are read relative to the
config file, so a config can travel with its shards.

Sharding (each rank reads and tokenises only its own share, nothing lost or duplicated):
  - a local, uncompressed text or JSON-lines file is cut into `world_size` byte ranges; rank r owns every line
    that *starts* inside range r, so each rank reads only its own bytes, even with a single file;
  - other sources (compressed, remote, csv, parquet) go to ranks whole, round robin, when there are at least
    `world_size` of them; otherwise every rank reads them but keeps (and tokenises) only rows i = r mod world;
  - a hub dataset is split by `datasets.distributed.split_dataset_by_node`.
The stream is rank-aware itself, so the trainer must not shard it again (see `training.py`).

Each rank's position (file, byte or row offset, tokens not yet packed, shuffle buffer, RNG) is a small JSON
`state_dict()`, stored in every checkpoint: a resumed run continues exactly where it stopped, without
reading or tokenising again what it had consumed.
"""

from __future__ import annotations

import glob
import gzip
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


def hub_offline() -> bool:
    """Whether the environment forbids network access to the hub (HF_HUB_OFFLINE / HF_DATASETS_OFFLINE)."""
    return any(
        os.environ.get(name, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for name in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")
    )


def _refuse_remote_when_offline(remote: list[str], option: str, path: Path) -> None:
    if remote and hub_offline():
        raise UsageError(
            f"{option} {path} reads {remote[0]} from the network, but HF_HUB_OFFLINE/HF_DATASETS_OFFLINE is set; "
            "unset it (e.g. HF_HUB_OFFLINE=0) or use local files"
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
    if len(others) >= world_size:
        units += [Unit(s, "whole") for i, s in enumerate(others) if i % world_size == rank]
    else:
        units += [Unit(s, "rows", rank, world_size) for s in others]
    return units


def unit_records(units: list[Unit]) -> list[list]:
    """`units` as stored in a stream's state_dict."""
    return [[u.source, u.mode, u.piece, u.pieces] for u in units]


def stream_state_mismatch(state: dict, units: list[list], world_size: int) -> str | None:
    """Why a saved stream position cannot continue a stream over `units` of `world_size` ranks, or None."""
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
    return None


def byte_range(size: int, piece: int, pieces: int) -> tuple[int, int]:
    return size * piece // pieces, size * (piece + 1) // pieces


def read_unit(config: CorpusConfig, unit: Unit, position: int = 0) -> Iterator[tuple[str, int]]:
    """Yield (document text, position after it) for `unit`, starting at `position` (0 = the unit's start).

    The position is a byte offset for mode "bytes" and a count of rows read for the others; passing a yielded
    position back resumes right after that document without re-reading what came before (bytes) or
    without tokenising it (rows). Blank documents are skipped.
    """
    if unit.mode == "bytes":
        yield from _read_byte_range(config, unit, position)
    else:
        yield from _read_rows(config, unit, position)


def _read_byte_range(config: CorpusConfig, unit: Unit, position: int) -> Iterator[tuple[str, int]]:
    size = os.path.getsize(unit.source)
    start, end = byte_range(size, unit.piece, unit.pieces)
    with open(unit.source, "rb") as handle:
        if position:
            handle.seek(position)
        elif start:
            # The line running across `start` belongs to the previous piece: skip to the next line start.
            handle.seek(start - 1)
            handle.readline()
        while handle.tell() < end:
            line = handle.readline()
            if not line:
                break
            text = _line_text(line, config)
            if text:
                yield text, handle.tell()


def _line_text(line: bytes, config: CorpusConfig) -> str:
    text = line.decode("utf-8", errors="replace").strip()
    if config.format == "json" and text:
        record = json.loads(text)
        text = _join_columns(record, config.columns).strip()
    return text


def _join_columns(record: dict, columns: tuple[str, ...]) -> str:
    missing = [c for c in columns if c not in record]
    if missing:
        raise UsageError(f"corpus column(s) {missing} not found; the records have {sorted(record)}")
    return "\n".join("" if record[c] is None else str(record[c]) for c in columns)


def _read_rows(config: CorpusConfig, unit: Unit, position: int) -> Iterator[tuple[str, int]]:
    from datasets import load_dataset  # the datasets library is only needed for these sources

    if unit.mode == "hub":
        from datasets.distributed import split_dataset_by_node

        rows = load_dataset(config.hub, config.hub_name, split=config.hub_split, streaming=True)
        rows = split_dataset_by_node(rows, rank=unit.piece, world_size=unit.pieces)
    else:
        rows = load_dataset(config.format, data_files=[unit.source], split="train", streaming=True)
    if position:
        rows = rows.skip(position)  # reads, but does not tokenise, what was consumed before
    for index, row in enumerate(rows, start=position):
        if unit.mode == "rows" and index % unit.pieces != unit.piece:
            continue
        text = _join_columns(row, config.columns).strip()
        if text:
            yield text, index + 1


# ---- documents -> model inputs ----


class TokenStream(torch.utils.data.IterableDataset):
    """Token sequences of rank `rank`'s share of a corpus, as {"input_ids": list[int]} examples.

    Packing (default): documents, each closed by [SEP], are concatenated and cut into sequences of exactly
    `max_seq_len` tokens, `[CLS] <max_seq_len - 2 tokens> [SEP]`, so no compute goes to padding; a long
    document continues in the next sequence. Without packing: one document per sequence, truncated.
    Sequences pass through a seeded shuffle buffer of `shuffle_buffer` sequences (<= 1: no shuffling).

    `infinite=True` (training) starts a new pass, with a new unit order, when the share is used up;
    `infinite=False` (evaluation) reads one pass in order and also yields the last, shorter sequence.
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
    ):
        super().__init__()
        if max_seq_len < 3:
            raise UsageError(f"--max_seq_len {max_seq_len} is too short; use at least 3 ([CLS] token [SEP])")
        self.config, self.tokenizer, self.max_seq_len = config, tokenizer, max_seq_len
        self.packing, self.shuffle_buffer, self.seed = packing, max(1, shuffle_buffer), seed
        self.infinite, self.tokenize_batch = infinite, tokenize_batch
        self.rank, self.world_size = rank, world_size
        self.units = rank_units(config, rank, world_size)
        self.cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
        self.sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
        if self.cls_id is None or self.sep_id is None:
            raise UsageError("the tokenizer has no [CLS]/[SEP] (or BOS/EOS) tokens to frame sequences with")
        self.reset()

    def reset(self) -> None:
        """Back to the start of the stream."""
        self.epoch = 0
        self.unit_index = 0  # position in this epoch's unit order
        self.unit_position = 0  # inside the current unit (see `read_unit`)
        self.pending: list[int] = []  # tokenised but not yet packed
        self.buffer: list[list[int]] = []  # the shuffle buffer
        self.rng = random.Random(f"{self.seed}-{self.rank}")
        self.examples_yielded = 0
        self._documents: Iterator[str] | None = None
        self._exhausted = False

    # -- resumable position --

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "unit_index": self.unit_index,
            "unit_position": self.unit_position,
            "pending": list(self.pending),
            "buffer": [list(seq) for seq in self.buffer],
            "rng": _rng_state_to_json(self.rng.getstate()),
            "examples_yielded": self.examples_yielded,
            "rank": self.rank,
            "world_size": self.world_size,
            "units": unit_records(self.units),
        }

    def load_state_dict(self, state: dict) -> None:
        problem = stream_state_mismatch(state, unit_records(self.units), self.world_size)
        if problem:
            raise ValueError(f"the saved stream position does not fit this run: {problem}")
        self.reset()
        self.epoch, self.unit_index = state["epoch"], state["unit_index"]
        self.unit_position = state["unit_position"]
        self.pending, self.buffer = list(state["pending"]), [list(s) for s in state["buffer"]]
        self.rng.setstate(_rng_state_from_json(state["rng"]))
        self.examples_yielded = state["examples_yielded"]

    # -- reading --

    def _unit_order(self) -> list[Unit]:
        order = list(self.units)
        if self.infinite:
            random.Random(f"{self.seed}-units-{self.epoch}").shuffle(order)
        return order

    def _iter_documents(self) -> Iterator[str]:
        """Documents from the current position on; keeps `unit_index`/`unit_position` just past each one."""
        while True:
            order = self._unit_order()
            read_any = False
            while self.unit_index < len(order):
                for text, position in read_unit(self.config, order[self.unit_index], self.unit_position):
                    self.unit_position = position
                    read_any = True
                    yield text
                self.unit_index, self.unit_position = self.unit_index + 1, 0
            if not self.infinite:
                return
            if not read_any and self.examples_yielded == 0 and not self.pending:
                raise UsageError(
                    f"rank {self.rank} of {self.world_size} found no text in its share of the corpus "
                    f"({len(self.units)} unit(s)); give the corpus more lines or shards"
                )
            self.epoch, self.unit_index, self.unit_position = self.epoch + 1, 0, 0

    def _fill_pending(self, needed: int) -> bool:
        """Tokenise documents until `pending` holds `needed` tokens; False when the stream has ended."""
        if self._documents is None:
            self._documents = self._iter_documents()
        while len(self.pending) < needed:
            texts = []
            for text in self._documents:
                texts.append(text)
                if len(texts) == self.tokenize_batch:
                    break
            if not texts:
                return False
            for ids in self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]:
                if not ids:
                    continue
                if not self.packing:
                    self.pending.append(ids)  # one document per sequence: pending holds whole documents
                else:
                    self.pending.extend(ids)
                    self.pending.append(self.sep_id)
        return True

    def _next_sequence(self) -> list[int] | None:
        body = self.max_seq_len - 2
        if not self.packing:
            if not self.pending and not self._fill_pending(1):
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
        while (sequence := self._next_example()) is not None:
            self.examples_yielded += 1
            yield {"input_ids": sequence}


def _rng_state_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def _rng_state_from_json(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(internal), gauss


class PadCollator:
    """Stack {"input_ids": list[int]} examples into input_ids and attention_mask (B, S), right-padded."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict[str, list[int]]]) -> dict[str, torch.Tensor]:
        length = max(len(e["input_ids"]) for e in examples)
        input_ids = torch.full((len(examples), length), self.pad_token_id, dtype=torch.long)
        attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        for row, example in enumerate(examples):
            ids = example["input_ids"]
            input_ids[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
            attention_mask[row, : len(ids)] = 1
        return {"input_ids": input_ids, "attention_mask": attention_mask}
