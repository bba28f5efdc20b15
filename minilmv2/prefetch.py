"""Stream -> batches, made ahead of the training step in a background thread.

Tokenising one batch of the recipe (256 x 512 tokens) takes about as long as a GPU's step, so made in the training
loop it adds to every step. `PrefetchLoader` makes up to `depth` batches ahead in a thread (the tokenizer releases
the GIL while it encodes; a step that never waits for the device leaves the main thread idle most of the time),
so the step costs the larger of the two instead of their sum.

Exact resume is kept: every batch travels with the stream's position just after it, and `state_dict()` is the
position after the last batch handed to the trainer, never after one only made ahead. An error in the thread
(a corpus that yields no tokens, a bad record) is raised in the training loop at the batch where it happened, as
it would be without the thread; `close()` stops the thread (end of training, a signal, a non-finite loss).
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # annotations only: the entry point reads DEFAULT_DEPTH without importing torch
    import torch

    from minilmv2.data import TokenStream

_END = object()  # the stream has ended (finite streams only)
DEFAULT_DEPTH = 4  # batches made ahead: enough to ride out a slow batch, a few MB of token ids


class PrefetchLoader:
    """Batches of `batch_size` examples of `stream`, collated by `collate`, made `depth` ahead (0: made in place).

    Also counts, on the host, what was handed out: `tokens` (the examples' unpadded lengths, summed) and
    `wait_seconds` (how long the trainer waited for its batches).
    """

    def __init__(
        self,
        stream: TokenStream,
        collate: Callable[[list[dict]], dict[str, torch.Tensor]],
        batch_size: int,
        depth: int = DEFAULT_DEPTH,
        pin_memory: bool = False,
    ):
        self.stream, self.collate, self.batch_size = stream, collate, batch_size
        self.depth, self.pin_memory = depth, pin_memory
        self.handed_position: dict | None = None  # the stream's position after the last batch handed out
        self.tokens = 0
        self.wait_seconds = 0.0
        self._queue: queue.Queue | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        batches = self._batches() if self.depth <= 0 else self._from_thread()
        while True:
            started = time.perf_counter()
            item = next(batches, _END)
            self.wait_seconds += time.perf_counter() - started
            if item is _END:
                return
            batch, position, tokens = item
            self.handed_position, self.tokens = position, self.tokens + tokens
            yield batch

    def state_dict(self) -> dict:
        """The stream's saved position after the last batch handed out (its current one before the first)."""
        return self.stream.state_dict(self.handed_position)

    def close(self) -> None:
        """Stop the thread and drop what it made ahead; the loader cannot be iterated again."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    # -- making batches --

    def _batches(self) -> Iterator[tuple[dict[str, torch.Tensor], dict, int]]:
        """(batch, the stream's position after it, its unpadded tokens), in the calling thread."""
        examples = []
        for example in self.stream:
            examples.append(example)
            if len(examples) == self.batch_size:
                yield self._make(examples)
                examples = []
        if examples:  # the last, smaller batch of a finite stream
            yield self._make(examples)

    def _make(self, examples: list[dict]) -> tuple[dict[str, torch.Tensor], dict, int]:
        position = self.stream.position()
        batch = self.collate(examples)
        if self.pin_memory:  # page-locked, so the copy to the GPU can run without blocking the training loop
            batch = {name: tensor.pin_memory() for name, tensor in batch.items()}
        return batch, position, sum(len(example["input_ids"]) for example in examples)

    def _from_thread(self) -> Iterator:
        if self._thread is not None:
            raise RuntimeError("a PrefetchLoader is iterated once (its stream goes on from where it stands)")
        self._queue = queue.Queue(maxsize=self.depth)
        self._thread = threading.Thread(target=self._produce, name="batch-prefetch", daemon=True)
        self._thread.start()
        while True:
            item = self._queue.get()
            if isinstance(item, BaseException):
                self.close()
                raise item  # the thread's error, in the training loop
            yield item
            if item is _END:
                return

    def _produce(self) -> None:
        try:
            for item in self._batches():
                if not self._put(item):
                    return
            self._put(_END)
        except BaseException as err:  # handed to the training loop, which raises it
            self._put(err)

    def _put(self, item) -> bool:
        """Queue `item`, waiting while the queue is full; False once `close()` was called."""
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False
