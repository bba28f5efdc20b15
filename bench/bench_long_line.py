"""Peak memory of the token stream on one very long line (no newline): bounded, whatever the line's length.

    python bench/bench_long_line.py --megabytes 50      # the 50 MB single-line file of issue 15

Writes a single-line file of real corpus text (repeated, spaces kept, no newline), streams it through
`TokenStream` (packing, 512-token sequences) with the offline teacher's tokenizer, and prints the resident
memory before and its peak while streaming (Linux: VmHWM, reset after start-up), with the time taken.
Without pieces, a 5 MB line alone took about 1 GB.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path


def status_mb(field: str) -> float:
    """A memory figure of this process from /proc/self/status (VmRSS: now, VmHWM: peak), in MiB."""
    with open("/proc/self/status") as handle:
        for line in handle:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise KeyError(field)


def reset_peak() -> None:
    """Start VmHWM afresh (Linux >= 4.0), so the peak below is the streaming's, not the imports'."""
    with open("/proc/self/clear_refs", "w") as handle:
        handle.write("5")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--megabytes", type=float, default=50.0, help="length of the single line")
    parser.add_argument("--tokenizer", help="tokenizer folder (default: the offline teacher's)")
    parser.add_argument("--max_seq_len", type=int, default=512)
    parser.add_argument("--sequences", type=int, default=0, help="stop after this many sequences (0: all)")
    args = parser.parse_args()

    from transformers import AutoTokenizer

    from minilmv2.corpus import load_corpus_config
    from minilmv2.data import TokenStream
    from minilmv2.tools.assets import default_dest

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
        reset_peak()
        before = status_mb("VmRSS")
        started, sequences, tokens = time.perf_counter(), 0, 0
        for example in stream:
            sequences += 1
            tokens += len(example["input_ids"])
            if sequences == args.sequences:
                break
        elapsed = time.perf_counter() - started
        peak = status_mb("VmHWM")
    print(
        f"{args.megabytes:g} MB in one line: {sequences:,} sequences, {tokens:,} tokens in {elapsed:.1f} s; "
        f"resident memory {before:.0f} MB before, peak {peak:.0f} MB while streaming (+{peak - before:.0f} MB)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
