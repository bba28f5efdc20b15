"""Corpus -> token stream: this rank's share (minilmv2.corpus) tokenised, shuffled, packed, resumable; and batches.

The stream is rank-aware itself, so the trainer must not shard it again (see `trainer.py`). Pieces of one long
document are packed without a [SEP] between them.

Each rank's position (unit, offset inside it, tokens not yet packed, shuffle buffer, RNG) is a small JSON
`state_dict()`, stored in every checkpoint, so a resumed run continues exactly where it stopped and never
tokenises again what it had consumed (what it reads again: see minilmv2.corpus).

Text that yields no tokens (empty lines, zero-width spaces, control characters) never hangs the stream: a
pass over a rank's share that produces no token ends in one `UsageError` line, and `first_tokens_problem`
lets the start-up check find it before any model loads.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

import torch
from transformers import PreTrainedTokenizerBase

from minilmv2.corpus import (
    MAX_PIECE_CHARS,
    CorpusConfig,
    Unit,
    is_remote,
    rank_units,
    read_unit,
    stream_state_mismatch,
    unit_records,
)
from minilmv2.corpus_files import fingerprint
from minilmv2.errors import UsageError

# The shortest sequence: [CLS] one token [SEP].
MIN_SEQ_LEN = 3


def framing_tokens(tokenizer: PreTrainedTokenizerBase) -> tuple[int, int]:
    """The ids that open and close every sequence: [CLS] and [SEP], else BOS and EOS; ValueError if neither."""
    cls = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if cls is None or sep is None:
        raise ValueError("the tokenizer has no [CLS]/[SEP] (or BOS/EOS) tokens to frame sequences with")
    return cls, sep


# One tokenizer call gets at most this many characters (and at most `tokenize_batch` pieces).
TOKENIZE_BATCH_CHARS = 1 << 18


def first_tokens_problem(
    config: CorpusConfig,
    tokenizer: PreTrainedTokenizerBase,
    rank: int,
    world_size: int,
    name: str | None = None,
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


def no_tokens_message(name: str | None, rank: int, world_size: int, parts: int) -> str:
    share = "the corpus" if world_size == 1 else f"rank {rank}'s share of the corpus ({parts} part(s) of {world_size})"
    advice = "clean the corpus or give it more text" + (", or run fewer processes" if world_size > 1 else "")
    return (
        f"{name + ': ' if name else ''}{share} yields no tokens: its text is empty or only characters the tokenizer "
        f"drops "
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
        name: str | None = None,
    ):
        super().__init__()
        if max_seq_len < MIN_SEQ_LEN:
            raise ValueError(f"max_seq_len {max_seq_len} is too short; use at least {MIN_SEQ_LEN} ([CLS] token [SEP])")
        self.config, self.tokenizer, self.max_seq_len = config, tokenizer, max_seq_len
        self.packing, self.shuffle_buffer, self.seed = packing, max(1, shuffle_buffer), seed
        self.infinite, self.tokenize_batch = infinite, tokenize_batch
        self.rank, self.world_size = rank, world_size
        self.sequence_shard, self.max_piece_chars, self.name = sequence_shard, max_piece_chars, name
        self.units = rank_units(config, rank, world_size)
        self.cls_id, self.sep_id = framing_tokens(tokenizer)
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
            # Checked on resume: the same path may hold another file by then (a corpus regenerated in place).
            "files": {unit.source: fingerprint(unit.source) for unit in self.units if self._is_local(unit)},
        }

    def _is_local(self, unit) -> bool:
        return unit.mode != "hub" and not is_remote(unit.source)

    def load_state_dict(self, state: dict) -> None:
        problem = stream_state_mismatch(state, unit_records(self.units), self.world_size, self.options())
        if problem:
            raise ValueError(f"the saved stream position does not fit this run: {problem}")
        if "files" not in state and self.rank == 0:
            print(
                "note: this checkpoint predates corpus fingerprints: the corpus files cannot be checked to be the ones "
                "it was saved with (only their paths and the stream's values are)",
                flush=True,
            )
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
