"""What makes a folder a model that `from_pretrained` loads: its weight files and its tokenizer files."""

from __future__ import annotations

from pathlib import Path

# A model's weights: one file, or an index naming its shards (safetensors, or the older .bin).
SINGLE_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
WEIGHT_INDEX_FILES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
WEIGHT_FILES = SINGLE_WEIGHT_FILES + WEIGHT_INDEX_FILES
# Any of these makes a folder loadable by AutoTokenizer: a fast tokenizer, WordPiece, BPE, or SentencePiece
# (XLM-R's sentencepiece.bpe.model, T5-style spiece.model, DeBERTa-v3's spm.model). tokenizer_config.json alone
# is not enough: it names a tokenizer class, not its vocabulary.
TOKENIZER_FILES = ("tokenizer.json", "vocab.txt", "vocab.json", "sentencepiece.bpe.model", "spiece.model", "spm.model")


def has_weights(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in WEIGHT_FILES)


def has_tokenizer(directory: Path) -> bool:
    return any((Path(directory) / name).is_file() for name in TOKENIZER_FILES)
