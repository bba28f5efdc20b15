"""Local corpus files as bytes: decompression (one place for every format), whether a file holds text, and the
fingerprint that lets a resumed run check its corpus files are the ones its position was saved in.

A file declared as text (text, JSON lines, csv) is checked from its first `SAMPLE_BYTES` (after decompression)
before anything runs: a known binary signature (parquet, zip, safetensors, compressed data under a name without
its suffix, ...) or NUL bytes mean it is not text; UTF-16/32 (by byte-order mark or by the pattern of its NUL
bytes) is refused with the `iconv` command that converts it; a few invalid UTF-8 sequences in otherwise UTF-8 text
are read as U+FFFD (real corpora have some) and counted in one note; more than `MAX_INVALID_SHARE` of the sample
is refused as not UTF-8.
"""

from __future__ import annotations

import bz2
import codecs
import gzip
import hashlib
import importlib.util
import lzma
import os
import shlex
from dataclasses import dataclass


def _zstd_open(source, mode: str = "rb", **kwargs):
    import zstandard  # a dependency (requirements.txt); a machine without it is told at start-up

    return zstandard.open(source, mode, **kwargs)


# What is decompressed here (and by `datasets`, for the formats it reads); .zip is left to `datasets`.
DECOMPRESSORS = {".gz": gzip.open, ".bz2": bz2.open, ".xz": lzma.open, ".zst": _zstd_open}
COMPRESSED_SUFFIXES = (*DECOMPRESSORS, ".zip")
# The command that writes each compression's content to stdout (for the advice to convert a file).
DECOMPRESS_COMMANDS = {".gz": "gzip -dc", ".bz2": "bzip2 -dc", ".xz": "xz -dc", ".zst": "zstd -dc"}


def missing_decompressor(source: str) -> str | None:
    """Why `source` cannot be decompressed on this machine, or None."""
    if source.endswith(".zst") and importlib.util.find_spec("zstandard") is None:
        return (
            f"corpus file {source} is zstd-compressed, which needs the zstandard package: pip install zstandard, or "
            f"decompress it first (zstd -d {shlex.quote(source)})"
        )
    return None


def open_local(source: str, text: bool):
    """A handle on a local source, decompressed (.gz/.bz2/.xz/.zst): text (UTF-8, bad bytes replaced, newlines
    kept) or bytes; None for a compression only `datasets` reads (.zip)."""
    opener = next((o for suffix, o in DECOMPRESSORS.items() if source.endswith(suffix)), None)
    if opener is None and source.endswith(COMPRESSED_SUFFIXES):
        return None
    opener = opener or open
    if text:
        return opener(source, "rt", encoding="utf-8", errors="replace", newline="")
    return opener(source, "rb")


# ---- is it text? ----

SAMPLE_BYTES = 1 << 16
# More invalid UTF-8 than this share of the sample's bytes: not UTF-8 text (a Latin-1 file, random bytes).
MAX_INVALID_SHARE = 0.01
# (first bytes, what a file starting with them is). Compressed data under its own suffix never gets here: it is
# checked after decompression.
SIGNATURES = (
    (b"PAR1", "a parquet file"),
    (b"PK\x03\x04", "a zip archive (torch.save files are zip archives too)"),
    (b"\x1f\x8b", "gzip-compressed data (name it .gz)"),
    (b"\x28\xb5\x2f\xfd", "zstd-compressed data (name it .zst)"),
    (b"\xfd7zXZ\x00", "xz-compressed data (name it .xz)"),
    (b"ARROW1", "an Arrow file"),
    (b"\x93NUMPY", "a numpy array file"),
    (b"%PDF-", "a PDF document"),
    (b"\x89PNG\r\n\x1a\n", "a PNG image"),
    (b"SQLite format 3\x00", "an SQLite database"),
    (b"\x7fELF", "an executable"),
    (b"\x89HDF\r\n\x1a\n", "an HDF5 file"),
)
BYTE_ORDER_MARKS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


@dataclass(frozen=True)
class TextSample:
    """What the first bytes of a file say: why it is not UTF-8 text (None: it is) and its invalid sequences."""

    problem: str | None
    invalid: int = 0


def binary_kind(sample: bytes) -> str | None:
    """What binary data `sample` (a file's first bytes) looks like, or None."""
    for signature, kind in SIGNATURES:
        if sample.startswith(signature):
            return kind
    if sample[:3] == b"BZh" and sample[4:10] == b"1AY&SY":
        return "bzip2-compressed data (name it .bz2)"
    if len(sample) >= 10 and sample[8:10] == b'{"':  # safetensors: an 8-byte header length, then a JSON header
        header_length = int.from_bytes(sample[:8], "little")
        if 2 <= header_length < 100 << 20:
            return "a safetensors file"
    if sample[:1] == b"\x80" and sample[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "a Python pickle"
    return None


def wide_encoding(sample: bytes) -> str | None:
    """UTF-16/32 by byte-order mark, or by NUL bytes at every second (fourth) position; the iconv name, or None."""
    for mark, encoding in BYTE_ORDER_MARKS:
        if sample.startswith(mark):
            return encoding  # iconv reads the mark for the byte order
    usable = len(sample) - len(sample) % 4
    if usable < 16:
        return None
    quarter = usable // 4
    zeros = [sample[i:usable:4].count(0) / quarter for i in range(4)]
    if min(zeros[1:]) > 0.9 and zeros[0] < 0.1:
        return "UTF-32LE"
    if min(zeros[:3]) > 0.9 and zeros[3] < 0.1:
        return "UTF-32BE"
    if min(zeros[1], zeros[3]) > 0.3 and max(zeros[0], zeros[2]) < 0.05:
        return "UTF-16LE"
    if min(zeros[0], zeros[2]) > 0.3 and max(zeros[1], zeros[3]) < 0.05:
        return "UTF-16BE"
    return None


def invalid_utf8(sample: bytes, complete: bool) -> int:
    """Invalid UTF-8 sequences in `sample` (a character cut by the end of an incomplete sample is not one)."""
    decoded = codecs.getincrementaldecoder("utf-8")(errors="replace").decode(sample, final=complete)
    return decoded.count("\ufffd") - sample.count("\ufffd".encode())


def convert_command(source: str, encoding: str) -> str:
    """The shell command that writes `source` as UTF-8 text beside it."""
    suffix = next((s for s in DECOMPRESS_COMMANDS if source.endswith(s)), "")
    quoted = shlex.quote(source)
    target = shlex.quote(source[: len(source) - len(suffix)] + ".utf8")
    if suffix:
        return f"{DECOMPRESS_COMMANDS[suffix]} {quoted} | iconv -f {encoding} -t UTF-8 > {target}"
    return f"iconv -f {encoding} -t UTF-8 {quoted} > {target}"


def sample_text(source: str) -> TextSample:
    """Whether the local file `source` holds UTF-8 text, from its first `SAMPLE_BYTES` (decompressed)."""
    handle = open_local(source, text=False)
    if handle is None:
        return TextSample(None)  # .zip: `datasets` reads it
    with handle:
        sample = handle.read(SAMPLE_BYTES)
        complete = len(sample) < SAMPLE_BYTES or not handle.read(1)
    kind = binary_kind(sample)
    if kind:
        return TextSample(f"corpus file {source} is not text: it looks like {kind}")
    encoding = wide_encoding(sample)
    if encoding:
        return TextSample(
            f"corpus file {source} is {encoding} text, not UTF-8; convert it: {convert_command(source, encoding)}"
        )
    if b"\x00" in sample:
        return TextSample(f"corpus file {source} is not text: it holds NUL bytes (binary data)")
    invalid = invalid_utf8(sample, complete)
    if invalid > max(MAX_INVALID_SHARE * len(sample), 4):
        return TextSample(
            f"corpus file {source} is not UTF-8 text ({invalid} invalid UTF-8 sequences in its first "
            f"{len(sample):,} bytes); convert it, e.g. from Latin-1: {convert_command(source, 'LATIN1')}"
        )
    return TextSample(None, invalid)


def text_problem(config) -> tuple[str | None, str | None]:
    """(why a local file declared as text is not UTF-8 text, or None; a note on invalid UTF-8 read as U+FFFD)."""
    if config.hub is not None or config.format == "parquet":
        return None, None
    invalid = {}
    for source in config.sources:
        if "://" in source:
            continue
        try:
            sample = sample_text(source)
        except (OSError, EOFError) as err:
            return f"corpus file {source} cannot be read ({err.__class__.__name__}: {err})", None
        if sample.problem:
            return sample.problem, None
        if sample.invalid:
            invalid[source] = sample.invalid
    if not invalid:
        return None, None
    names = ", ".join(list(invalid)[:3]) + (f" and {len(invalid) - 3} more" if len(invalid) > 3 else "")
    return None, (
        f"note: {sum(invalid.values())} invalid UTF-8 sequence(s) in the first 64 KiB of {names} are read as U+FFFD "
        "(the replacement character)"
    )


# ---- fingerprints: is it still the same file? ----

FINGERPRINT_BYTES = 1 << 20
_fingerprints: dict[tuple, dict] = {}  # (path, size, mtime): fingerprint, so each file is hashed once per process


def fingerprint(source: str) -> dict:
    """{"size", "sha256"}: the size and a hash of the first and last MiB of a local file.

    Not the modification time: copying a corpus to node-local scratch changes that, not the content.
    """
    status = os.stat(source)
    key = (os.path.realpath(source), status.st_size, status.st_mtime_ns)
    if key not in _fingerprints:
        digest = hashlib.sha256()
        with open(source, "rb") as handle:
            digest.update(handle.read(FINGERPRINT_BYTES))
            if status.st_size > FINGERPRINT_BYTES:
                handle.seek(max(FINGERPRINT_BYTES, status.st_size - FINGERPRINT_BYTES))
                digest.update(handle.read(FINGERPRINT_BYTES))
        _fingerprints[key] = {"size": status.st_size, "sha256": digest.hexdigest()}
    return _fingerprints[key]


def changed_file(saved: dict, source: str) -> str | None:
    """How local file `source` differs from its `saved` fingerprint, or None."""
    try:
        now = fingerprint(source)
    except OSError as err:
        return f"corpus file {source} cannot be read ({err.strerror})"
    if now == saved:
        return None
    if now["size"] != saved.get("size"):
        return f"corpus file {source} changed since the checkpoint ({saved.get('size')} bytes then, {now['size']} now)"
    return f"corpus file {source} changed since the checkpoint (same size, other bytes in its first or last MiB)"
