"""Where the package runs from: a checkout of the repository (run.sh, run_eval.sh and .assets/ beside it) or an
install (site-packages, where none of those are). Tools ask here instead of guessing from their own path."""

from __future__ import annotations

import os
from pathlib import Path

from minilmv2.errors import UsageError

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository this package belongs to when it runs from a checkout (editable install, PYTHONPATH), else
    None (an installed copy)."""
    root = PACKAGE_DIR.parent
    return root if (root / "run.sh").is_file() and (root / "pyproject.toml").is_file() else None


def require_checkout(tool: str, scripts: str, make_target: str) -> Path:
    """The checkout's root, for a tool that runs the repository's `scripts`; UsageError in one line from an
    install, naming the `make_target` to run from a clone."""
    root = checkout_root()
    if root is None:
        raise UsageError(
            f"{tool} runs the repository's {scripts}, which an installed package ({PACKAGE_DIR}) does not have; "
            f"clone the repository and run `{make_target}` there"
        )
    return root


def user_cache_dir() -> Path:
    """$XDG_CACHE_HOME/minilmv2, else ~/.cache/minilmv2: for files an installed package must not write beside itself."""
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "minilmv2"
