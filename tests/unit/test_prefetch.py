"""PrefetchLoader: batches made ahead in a thread are the batches made in place, and the saved position is the one
after the last batch handed out, never after one only made ahead. Real text, a real tokenizer and TokenStream."""

from __future__ import annotations

import time

import pytest
import torch
from fixtures.distill.tiny_teacher import first_lines, tiny_tokenizer, write_corpus_config

from minilmv2.corpus import load_corpus_config
from minilmv2.data import PadCollator, TokenStream
from minilmv2.prefetch import PrefetchLoader

BATCH = 4


@pytest.fixture(scope="module")
def corpus(corpus_dir, tmp_path_factory):
    folder = tmp_path_factory.mktemp("prefetch")
    shards = [first_lines(corpus_dir / "wiki-00.txt", folder / "wiki.txt", 60)]
    return load_corpus_config(write_corpus_config(folder / "c.json", shards)), tiny_tokenizer()


def make_stream(corpus, packing=True, length=24) -> TokenStream:
    config, tokenizer = corpus
    return TokenStream(config, tokenizer, length, packing=packing, shuffle_buffer=8, seed=3, infinite=True)


def make_loader(corpus, depth: int, collate=None, packing=True, length=24) -> PrefetchLoader:
    stream = make_stream(corpus, packing, length)
    return PrefetchLoader(stream, collate or PadCollator(stream.tokenizer.pad_token_id), BATCH, depth=depth)


def take(batches, count: int) -> list[dict[str, torch.Tensor]]:
    return [next(batches) for _ in range(count)]


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def wait_until_full(loader: PrefetchLoader) -> None:
    deadline = time.monotonic() + 30
    while not loader._queue.full():
        assert time.monotonic() < deadline, "the thread never filled its queue"
        time.sleep(0.01)


@pytest.mark.parametrize("packing", [True, False])
def test_prefetched_batches_and_positions_are_those_made_in_place(corpus, packing):
    in_place, ahead = make_loader(corpus, 0, packing=packing), make_loader(corpus, 3, packing=packing)
    in_place_batches, ahead_batches = iter(in_place), iter(ahead)
    assert all(same(a, b) for a, b in zip(take(in_place_batches, 5), take(ahead_batches, 5), strict=True))
    wait_until_full(ahead)  # three more batches made ahead: the stream itself stands further on
    assert ahead.stream.examples_yielded >= 8 * BATCH  # 3 queued, maybe one more waiting to be
    assert ahead.state_dict() == in_place.state_dict()  # the position after the 5 batches handed out
    assert ahead.state_dict()["examples_yielded"] == 5 * BATCH
    assert ahead.tokens == in_place.tokens > 0
    # A stream resumed from that position goes on exactly where the loader does.
    resumed = make_stream(corpus, packing)
    resumed.load_state_dict(ahead.state_dict())
    resumed_batches = iter(PrefetchLoader(resumed, in_place.collate, BATCH, depth=2))
    assert all(same(a, b) for a, b in zip(take(resumed_batches, 4), take(ahead_batches, 4), strict=True))
    ahead.close()


def test_tokens_count_the_unpadded_lengths_handed_out(corpus):
    loader = make_loader(corpus, 2, packing=False, length=128)
    batches = take(iter(loader), 6)
    assert loader.tokens == sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel()
                                for b in batches)  # fmt: skip
    assert any("attention_mask" in b for b in batches)  # unpacked documents of unequal length: padded batches
    loader.close()


def test_an_error_in_the_thread_is_raised_in_the_loop_at_its_batch_and_the_thread_ends(corpus):
    collate = PadCollator(0)
    made = []

    def failing_collate(examples):
        made.append(len(examples))
        if len(made) == 3:
            raise ValueError("a record the collator cannot take")
        return collate(examples)

    loader = make_loader(corpus, 4, collate=failing_collate)
    batches = iter(loader)
    take(batches, 2)  # the two batches made before the error still arrive
    with pytest.raises(ValueError, match="a record the collator cannot take"):
        next(batches)
    assert loader._thread is None  # joined


def test_close_stops_a_thread_waiting_on_a_full_queue(corpus):
    loader = make_loader(corpus, 2)
    batches = iter(loader)
    next(batches)
    wait_until_full(loader)
    thread = loader._thread
    started = time.monotonic()
    loader.close()
    assert not thread.is_alive() and time.monotonic() - started < 5
