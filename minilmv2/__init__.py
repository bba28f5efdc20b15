"""minilmv2: exact, fast MiniLMv2 multi-head self-attention relation distillation."""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# Imported on first use, so that small command-line tools (the sweep summary, the asset fetcher) start without
# loading torch and transformers.
_LAZY = {
    "MiniLM": "minilmv2.distiller",
    "MiniLMOutput": "minilmv2.distiller",
    "build_student": "minilmv2.student",
    "student_config_from_teacher": "minilmv2.student",
}
__all__ = list(_LAZY)


def __getattr__(name: str):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'minilmv2' has no attribute {name!r}")
