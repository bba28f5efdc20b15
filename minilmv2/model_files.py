"""What makes a folder a model that `from_pretrained` loads: its weight files and its tokenizer files."""

from __future__ import annotations

from pathlib import Path

# Any of these holds a model's weights (single file or sharded index, safetensors or the older .bin).
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)
# Any of these makes a folder loadable by AutoTokenizer (fast tokenizer, WordPiece, BPE or SentencePiece files).
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model")


def has_weights(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in WEIGHT_FILES)


def has_tokenizer(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)
