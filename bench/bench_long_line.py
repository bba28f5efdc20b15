"""Peak memory of the token stream on one very long line (no newline): bounded, whatever the line's length.

    python bench/bench_long_line.py --megabytes 50      # the 50 MB single-line file of issue 15

Writes a single-line file of real corpus text (repeated, spaces kept, no newline), streams it through
`TokenStream` (packing, 512-token sequences) with the offline teacher's tokenizer, and prints the resident
memory before and at its peak, with the time taken. Without pieces, a 5 MB line alone took about 1 GB.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from pathlib import Path


def resident_mb() -> float:
    with open("/proc/self/statm") as handle:
        import os

        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=50.0, help="length of the single line")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the offline teacher's)")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--sequences", type=int, default=0, help="stop after this many sequences (0: all)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from minilmv2.assets import default_dest
    from minilmv2.data import TokenStream, load_corpus_config

    tokenizer_dir = args.tokenizer or default_dest() / "teacher"
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    corpus = default_dest() / "corpus"
    text = " ".join(
        line.strip() for path in sorted(corpus.glob("*.txt"))[:2] for line in path.open(encoding="utf-8")
    ).encode()
    size = int(args.megabytes * 2**20)
    with tempfile.TemporaryDirectory() as folder:
        line = Path(folder) / "one-line.txt"
        with open(line, "wb") as handle:
            written = 0
            while written < size:
                part = text[: size - written]
                handle.write(part)
                written += len(part)
        config_path = Path(folder) / "config.json"
        config_path.write_text(json.dumps({"urls": [str(line)], "format": "text"}))
        config = load_corpus_config(config_path)
        stream = TokenStream(config, tokenizer, args.max_seq_len, shuffle_buffer=1, infinite=False)
        before = resident_mb()
        peak_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        started, sequences, tokens = time.perf_counter(), 0, 0
        for example in stream:
            sequences += 1
            tokens += len(example["input_ids"])
            if sequences == args.sequences:
                break
        elapsed = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(
        f"{args.megabytes:g} MB in one line: {sequences:,} sequences, {tokens:,} tokens in {elapsed:.1f} s; "
        f"resident memory {before:.0f} MB before, peak {peak:.0f} MB (peak before streaming {peak_before:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
