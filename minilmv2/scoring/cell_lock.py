"""A lock per sweep cell that holds across nodes on a shared filesystem: no cell runs twice.

Two sweeps, or the tasks of a SLURM array, may share one OUTPUT_DIR. A cell's lock is a file created atomically
(`O_CREAT | O_EXCL`, which NFS v3+ and Lustre honour, unlike `flock`) holding the holder's host, pid and start
time; the holder touches it every `HEARTBEAT_SECONDS` while the cell runs and removes it when the cell ends.

A lock is stale, and taken over with a one-line note, when its holder is gone: a pid that no longer exists on
this host, or no heartbeat for `STALE_SECONDS` (a node that died; its clock need not match ours closely: the
margin is minutes). The take-over moves the stale file aside by rename (atomic), checks that what it moved is the
stale lock it judged (another taker may have been quicker and made a fresh one: that one is put back), and then
creates its own lock like anyone else.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from pathlib import Path

LOCK_NAME = "sweep.lock"
HEARTBEAT_SECONDS = 30.0
STALE_SECONDS = float(os.environ.get("MINILMV2_LOCK_STALE_SECONDS", 300))  # tests shorten it
HOST = socket.gethostname()


def _read(path: Path) -> tuple[str, float] | None:
    """(the lock file's text, its age in seconds), or None when it is gone."""
    try:
        return path.read_text(), time.time() - path.stat().st_mtime
    except (FileNotFoundError, OSError):
        return None


def stale_reason(text: str, age: float) -> str | None:
    """Why the lock whose file holds `text` and was last touched `age` s ago is stale, or None if it holds."""
    try:
        holder = json.loads(text)
        host, pid = holder["host"], int(holder["pid"])
    except (ValueError, KeyError, TypeError):
        # A holder that died while writing it leaves it empty or cut: stale once it cannot be a write in progress.
        return f"an unreadable lock file, {age:.0f} s old" if age > 10 else None
    if host == HOST:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return f"pid {pid} on {host} is gone"
        except PermissionError:
            pass  # alive, another user's
    if age > STALE_SECONDS:
        return f"{host} pid {pid} gave no heartbeat for {age:.0f} s"
    return None


class CellLock:
    """The lock of one cell's run folder."""

    def __init__(self, run_dir: Path):
        self.path = Path(run_dir) / LOCK_NAME
        self.mine = json.dumps({"host": HOST, "pid": os.getpid(), "started": time.time()})

    def take(self) -> bool:
        """Take the lock (a stale one is taken over, said in a note); False while a live holder has it."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        for _ in range(5):
            try:
                descriptor = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                seen = _read(self.path)
                if seen is None:
                    continue  # released meanwhile: try again
                why = stale_reason(*seen)
                if why is None:
                    return False
                self._take_over(seen[0], why)
                continue
            with os.fdopen(descriptor, "w") as handle:
                handle.write(self.mine)
            return True
        return False

    def _take_over(self, stale_text: str, why: str) -> None:
        aside = self.path.with_name(f"{LOCK_NAME}.{HOST}.{os.getpid()}.stale")
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return  # another taker moved it first
        if aside.read_text() != stale_text:  # a fresh lock made by a quicker taker: put it back
            with contextlib.suppress(FileExistsError):
                os.link(aside, self.path)
            aside.unlink(missing_ok=True)
            return
        aside.unlink(missing_ok=True)
        print(f"note: taking over the lock of {self.path.parent} ({why})", flush=True)

    def heartbeat(self) -> None:
        with contextlib.suppress(OSError):
            os.utime(self.path)

    def release(self) -> None:
        """Remove the lock if it is still this process's (a holder judged stale may have lost it)."""
        seen = _read(self.path)
        if seen is not None and seen[0] == self.mine:
            self.path.unlink(missing_ok=True)
