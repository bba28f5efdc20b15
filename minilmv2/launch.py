"""The process run.sh becomes: torchrun, with the exit status and output the README promises, and run safety.

    python -m minilmv2.launch [--stop-timeout SECONDS] [torchrun options] -m minilmv2.run_distillation <groups>

It runs `torch.distributed.run` in this process and changes how it ends:
- SIGTERM/SIGINT (SLURM, Ctrl-C, `kill`): torchrun passes the signal to the workers, which write a checkpoint
  and the student; this process then exits with 128 + signal instead of torchrun's traceback and status 1.
  `--stop-timeout SECONDS` (first; run.sh's STOP_TIMEOUT, default 600, not torchrun's 30) is how long the workers
  get to save before they are killed: passed on as torchrun's `--shutdown-timeout` where the installed torch has
  that option (2.12 and newer), else enforced here on torchrun's agent (older torch waits a fixed 30 s).
- A worker that failed with a user error (status 2, its line already printed) or was stopped by a signal:
  that status is passed on; any other failure: one line naming the rank and its status (traceback above).

Also here, for the workers: `watch_parent` (a worker exits when its launcher is killed, even by SIGKILL,
instead of training on alone) and the OUTPUT_DIR lock (one run at a time per output folder).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import json
import os
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from types import ModuleType

from minilmv2.errors import UsageError, exit_on_usage_error, given, option

LOCK_NAME = ".minilmv2-run.lock"


STOP_TIMEOUT_OPTION = "--stop-timeout"
SHUTDOWN_TIMEOUT_OPTION = "--shutdown-timeout"  # torchrun's own, since torch 2.12


@exit_on_usage_error
def main(argv: list[str] | None = None, torchrun: ModuleType | None = None) -> int:
    """Run torchrun on `argv`; `torchrun` is `torch.distributed.run` unless a test stands in for it."""
    from torch.distributed.elastic.multiprocessing.api import SignalException
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError

    if torchrun is None:
        import torch.distributed.run as torchrun
    argv = list(sys.argv[1:] if argv is None else argv)
    stop_timeout, argv = pop_stop_timeout(argv)
    if stop_timeout is not None:
        if knows_option(torchrun, SHUTDOWN_TIMEOUT_OPTION):
            argv = [SHUTDOWN_TIMEOUT_OPTION, str(stop_timeout), *argv]
        else:
            enforce_stop_timeout(stop_timeout)
    args = torchrun.parse_args(argv)
    try:
        torchrun.run(args)
    except SignalException as stop:
        # torchrun has passed the signal on and waited for the workers (they saved and said so).
        return 128 + int(stop.sigval)
    except ChildFailedError as failed:
        rank, failure = min(failed.failures.items())
        code = failure.exitcode
        status = 128 - code if code < 0 else code  # killed by signal n: exitcode -n, the shell's 128 + n
        if code not in (2,) and status <= 128:
            print(f"error: rank {rank} exited with status {code} (its output is above)", file=sys.stderr, flush=True)
        return status if 0 < status < 256 else 1
    return 0


def pop_stop_timeout(argv: list[str]) -> tuple[int | None, list[str]]:
    """Our `--stop-timeout N` (or `=N`), when it comes first, and the rest for torchrun (which does not know it)."""
    if argv[:1] == [STOP_TIMEOUT_OPTION] and len(argv) >= 2:
        value, rest = argv[1], argv[2:]
    elif argv[:1] and argv[0].startswith(STOP_TIMEOUT_OPTION + "="):
        value, rest = argv[0].split("=", 1)[1], argv[1:]
    else:
        return None, argv
    if not value.isdigit():
        raise UsageError(f"{STOP_TIMEOUT_OPTION} {value} must be a whole number of seconds")
    return int(value), rest


def knows_option(torchrun: ModuleType, option: str) -> bool:
    """Whether the installed torchrun's argument parser has `option` (its options change between releases)."""
    return option in torchrun.get_args_parser()._option_string_actions


def enforce_stop_timeout(seconds: int) -> None:
    """Give the workers `seconds` to exit after a signal, on a torchrun without `--shutdown-timeout`.

    Its agent stops the workers in `LocalElasticAgent._shutdown`, which closes their process context with a fixed
    30 s wait before SIGKILL (torch 2.11). Here that one call waits `seconds`, as `--shutdown-timeout` makes it
    do from torch 2.12 on; the context's other closes (a failed rank's fellows) keep their own wait.
    """
    from torch.distributed.elastic.agent.server.local_elastic_agent import LocalElasticAgent

    shutdown = getattr(LocalElasticAgent._shutdown, "__wrapped__", LocalElasticAgent._shutdown)

    @functools.wraps(shutdown)
    def shutdown_with_stop_timeout(self, *args, **kwargs):
        context = self._pcontext
        if context is not None:
            close = context.close
            context.close = lambda death_sig=None, timeout=None: close(death_sig, seconds)
        return shutdown(self, *args, **kwargs)

    LocalElasticAgent._shutdown = shutdown_with_stop_timeout


# ---- in the workers ----


def watch_parent(interval: float = 0.5) -> threading.Thread | None:
    """Under torchrun: exit this worker as soon as its launcher is gone (killed with SIGKILL, say).

    torchrun starts each worker in a session of its own, so a signal to the launcher's process group never
    reaches it, and a SIGKILL cannot be passed on. The worker notices that it was re-parented and exits.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ:
        return None  # a plain `python -m` run: its parent is a shell, which may exit (nohup) without stopping it
    parent = os.getppid()

    def watch() -> None:
        while True:
            time.sleep(interval)
            if os.getppid() != parent:
                print(
                    f"rank {os.environ.get('RANK', '?')}: the launcher (pid {parent}) is gone; stopping",
                    file=sys.stderr,
                    flush=True,
                )
                os._exit(128 + signal.SIGKILL)

    thread = threading.Thread(target=watch, name="launcher-watchdog", daemon=True)
    thread.start()
    return thread


def _holder(path: Path) -> str:
    try:
        record = json.loads(path.read_text())
        text = f"pid {record['pid']}"
        if record.get("launcher_pid"):
            text += f", launched by pid {record['launcher_pid']}"
        return f"{text} on {record.get('host', '?')}, since {record.get('started', '?')}"
    except (OSError, ValueError, KeyError, TypeError):
        return "a process whose lock file cannot be read"


def _in_use(output_dir: Path, path: Path) -> UsageError:
    return UsageError(
        f"{given('output_dir', output_dir)} is in use by another run ({_holder(path)}); wait for it to end or "
        f"stop it, or choose another {option('output_dir')}"
    )


def check_output_lock(output_dir: str | os.PathLike) -> None:
    """UsageError if a live run holds `output_dir`'s lock (a lock left by a dead process is free); writes nothing."""
    path = Path(output_dir) / LOCK_NAME
    try:
        descriptor = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        raise _in_use(Path(output_dir), path) from None
    except OSError:
        return  # this filesystem has no locks: nothing to check
    finally:
        os.close(descriptor)


def acquire_output_lock(output_dir: str | os.PathLike) -> int | None:
    """Lock `output_dir` for this run (rank 0); its descriptor, to pass to `release_output_lock`.

    An flock: the kernel drops it when the holder dies, however it dies, so a lock left by a killed run is
    taken over (and said so). The file records the holder's pid for the message of a refused second run.
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    path = output_dir / LOCK_NAME
    while True:
        descriptor = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(descriptor, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(descriptor)
            raise _in_use(output_dir, path) from None
        except OSError as err:
            if err.errno not in (errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL):
                raise
            print(f"note: {output_dir} cannot be locked on this filesystem; make sure no other run uses it")
            return descriptor
        try:
            same_file = os.stat(path).st_ino == os.fstat(descriptor).st_ino
        except FileNotFoundError:
            same_file = False
        if same_file:  # else the previous holder removed it between our open and flock: open the new one
            break
        os.close(descriptor)
    previous = os.read(descriptor, 4096)
    if previous.strip():
        print(f"note: taking over the lock of {output_dir} left by {_holder(path)}, which is no longer running")
    record = {
        "pid": os.getpid(),
        "launcher_pid": os.getppid() if "TORCHELASTIC_RUN_ID" in os.environ else None,
        "host": socket.gethostname(),
        "started": time.strftime("%Y-%m-%d %H:%M:%S"),
    }
    os.ftruncate(descriptor, 0)
    os.pwrite(descriptor, json.dumps(record).encode(), 0)
    return descriptor


def release_output_lock(descriptor: int | None, output_dir: str | os.PathLike) -> None:
    if descriptor is None:
        return
    with contextlib.suppress(OSError):  # removed while still held: a waiting opener re-checks the inode
        os.unlink(Path(output_dir) / LOCK_NAME)
    os.close(descriptor)


if __name__ == "__main__":
    sys.exit(main())


# ---- run.sh's launch values, checked by its single-process pre-check ----

LAUNCH_PREFIX = "MINILMV2_LAUNCH_"  # how run.sh hands its launch values to its pre-check


def check_launch_values() -> None:
    """run.sh's launch values, handed to its pre-check as MINILMV2_LAUNCH_<variable>: UsageError naming the
    variable, its value and what is valid; then MINILMV2_WORLD_SIZE = NPROC x NNODES for the checks below."""
    values = {key[len(LAUNCH_PREFIX) :]: value for key, value in os.environ.items() if key.startswith(LAUNCH_PREFIX)}
    if not values:
        return

    def whole(name: str, low: int, high: int | None, valid: str) -> int:
        value = values.get(name, "")
        if not value.isdigit() or int(value) < low or (high is not None and int(value) > high):
            raise UsageError(f"{name}={value} must be {valid}")
        return int(value)

    nproc = whole("NPROC", 1, None, "a whole number of processes per node, 1 or more")
    nnodes = whole("NNODES", 1, None, "a whole number of nodes, 1 or more")
    whole("STOP_TIMEOUT", 0, None, "a whole number of seconds (the workers' time to save on SIGTERM)")
    if values.get("PRECISION") not in ("bf16", "fp16", "none"):
        raise UsageError(f"PRECISION={values.get('PRECISION')} must be bf16, fp16 or none (fp32)")
    if nnodes > 1:
        if not values.get("MASTER_ADDR"):
            raise UsageError(f"NNODES={nnodes} needs MASTER_ADDR, the first node's address (every node the same)")
        whole("MASTER_PORT", 1, 65535, "a port number in 1..65535 (the same on every node)")
    check_extra_args(values.get("EXTRA_ARGS", ""))
    os.environ["MINILMV2_WORLD_SIZE"] = str(nproc * nnodes)


# Options run.sh sets that are not named after one variable each (the others: minilmv2.errors.OPTIONS).
RUN_SH_ALSO_SETS = {"bf16": "PRECISION", "fp16": "PRECISION", "checkpoint_dir": "RESUME"}


def check_extra_args(extra_args: str) -> None:
    """run.sh's EXTRA_ARGS must not set what one of its variables sets (the later value would win unseen, and the
    banner would name the variable's value): UsageError naming the variable to use instead."""
    from minilmv2.errors import OPTIONS

    for word in extra_args.split():
        if not word.startswith("--"):
            continue
        flag = word.split("=")[0]
        field = flag[2:].replace("-", "_")
        variable = RUN_SH_ALSO_SETS.get(field) or getattr(OPTIONS.get(field), "variable", None)
        if variable:
            raise UsageError(f"EXTRA_ARGS sets {flag}, which run.sh sets from {variable}; set {variable} instead")
