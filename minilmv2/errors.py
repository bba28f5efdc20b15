"""User-facing errors: one plain line, exit status 2, no traceback.

Anything a user can get wrong (a path, a shape, a config value) is raised as `UsageError` at start-up,
before a model is loaded or an output file is written. Entry points wrap `main` in `exit_on_usage_error`
so the user sees `error: <message>` and the shell sees status 2. Tracebacks are reserved for our bugs.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")

USAGE_EXIT_CODE = 2


class UsageError(ValueError):
    """A bad value supplied by the user; the message names the value and what would be valid."""


def exit_on_usage_error(main: Callable[..., T]) -> Callable[..., T]:
    """Decorate a CLI `main` so a `UsageError` prints one line to stderr and exits with status 2."""

    @functools.wraps(main)
    def wrapper(*args, **kwargs):
        try:
            return main(*args, **kwargs)
        except UsageError as err:
            print(f"error: {err}", file=sys.stderr, flush=True)
            raise SystemExit(USAGE_EXIT_CODE) from None

    return wrapper
