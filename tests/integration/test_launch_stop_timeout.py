"""STOP_TIMEOUT on any torch: `minilmv2.launch --stop-timeout N` gives the workers N seconds to save after SIGTERM.

torch 2.12 added torchrun's `--shutdown-timeout`; older releases (the GPU machine's 2.11) lack the option and kill
the workers 30 s after passing the signal on. A stand-in for such a torchrun (the installed one, with that option
taken out of its parser and a 1 s wait before SIGKILL) shows that the launcher then enforces the timeout itself,
and does not pass the option on (the stand-in's parser would refuse it).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from minilmv2 import launch

REPO = Path(__file__).resolve().parents[2]

# A worker whose "checkpoint" takes SAVE_SECONDS after SIGTERM; it says when it is ready and when it has saved.
WORKER = textwrap.dedent(
    """
    import signal, sys, time
    from pathlib import Path

    folder = Path(sys.argv[1])

    def save(signum, frame):
        time.sleep(float(sys.argv[2]))
        (folder / "saved").write_text("ok")
        sys.exit(128 + signum)

    signal.signal(signal.SIGTERM, save)
    (folder / "ready").write_text("ok")
    while True:
        time.sleep(0.1)
    """
)

# torchrun as torch 2.11 has it: no --shutdown-timeout in its parser, a fixed wait before SIGKILL (OLD_WAIT s).
OLD_TORCHRUN_DRIVER = textwrap.dedent(
    """
    import os, sys
    import torch.distributed.run as installed
    from minilmv2 import launch

    class OldTorchrun:
        @staticmethod
        def get_args_parser():
            parser = installed.get_args_parser()
            for action in [a for a in parser._actions if "--shutdown-timeout" in a.option_strings]:
                parser._remove_action(action)
                for group in parser._action_groups:
                    if action in group._group_actions:
                        group._group_actions.remove(action)
                for option in action.option_strings:
                    del parser._option_string_actions[option]
            return parser

        @staticmethod
        def parse_args(argv):
            args = OldTorchrun.get_args_parser().parse_args(argv)
            args.shutdown_timeout = int(os.environ["OLD_WAIT"])  # its fixed wait before SIGKILL (2.11: 30 s)
            return args

        run = staticmethod(installed.run)

    assert not launch.knows_option(OldTorchrun, "--shutdown-timeout")
    sys.exit(launch.main(sys.argv[1:], torchrun=OldTorchrun))
    """
)


def run_and_stop(tmp_path: Path, stop_timeout: int, save_seconds: float, old_wait: int) -> tuple[int, bool, float, str]:
    """Launch one worker through the stand-in, SIGTERM the launcher once the worker runs.

    Returns the launcher's status, whether the worker saved, the seconds from the signal to the end, its stderr.
    """
    (tmp_path / "worker.py").write_text(WORKER)
    (tmp_path / "driver.py").write_text(OLD_TORCHRUN_DRIVER)
    command = [sys.executable, str(tmp_path / "driver.py"), "--stop-timeout", str(stop_timeout), "--standalone"]
    command += ["--nproc-per-node", "1", str(tmp_path / "worker.py"), str(tmp_path), str(save_seconds)]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OLD_WAIT": str(old_wait)}
    launcher = subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert launcher.poll() is None, launcher.communicate()[1]
        assert time.monotonic() < deadline, "the worker never started"
        time.sleep(0.1)
    launcher.send_signal(signal.SIGTERM)
    stopped = time.monotonic()
    _, stderr = launcher.communicate(timeout=60)
    return launcher.returncode, (tmp_path / "saved").exists(), time.monotonic() - stopped, stderr


def test_an_old_torchrun_gets_the_stop_timeout_enforced_by_the_launcher(tmp_path):
    """The old torchrun would kill the worker after 1 s; the launcher gives it the 20 s asked for."""
    status, saved, _, stderr = run_and_stop(tmp_path, stop_timeout=20, save_seconds=3, old_wait=1)
    assert (status, saved) == (128 + signal.SIGTERM, True), stderr
    assert "Traceback" not in stderr and "unrecognized arguments" not in stderr


def test_the_enforced_stop_timeout_is_the_one_asked_for(tmp_path):
    """The old torchrun would wait 10 s; asked for 1 s, the worker is killed before its 4 s save ends."""
    status, saved, seconds, stderr = run_and_stop(tmp_path, stop_timeout=1, save_seconds=4, old_wait=10)
    assert (status, saved) == (128 + signal.SIGTERM, False), stderr
    assert seconds < 4, seconds


def test_a_torchrun_with_the_option_gets_it_passed_on():
    import torch.distributed.run as installed

    if not launch.knows_option(installed, launch.SHUTDOWN_TIMEOUT_OPTION):
        pytest.skip("the installed torch predates --shutdown-timeout (the stand-in tests cover it)")
    seen = {}

    class Recording:
        get_args_parser = staticmethod(installed.get_args_parser)

        @staticmethod
        def parse_args(argv):
            seen["args"] = installed.parse_args(argv)
            return seen["args"]

        @staticmethod
        def run(args):
            return None

    assert launch.main(["--stop-timeout", "42", "--standalone", "-m", "x", "--stop-timeout", "7"], Recording) == 0
    assert seen["args"].shutdown_timeout == 42
    assert seen["args"].training_script_args == ["--stop-timeout", "7"]  # the script's own option is left alone


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        (["--stop-timeout", "600", "--standalone", "-m", "m"], (600, ["--standalone", "-m", "m"])),
        (["--stop-timeout=0", "--nproc-per-node", "4", "-m", "m"], (0, ["--nproc-per-node", "4", "-m", "m"])),
        (
            ["--standalone", "-m", "m", "--stop-timeout", "5"],
            (None, ["--standalone", "-m", "m", "--stop-timeout", "5"]),
        ),
        (["--stop-timeout"], (None, ["--stop-timeout"])),  # no value: torchrun refuses the unknown option
    ],
)
def test_pop_stop_timeout_takes_the_launchers_option_only_when_it_comes_first(argv, expected):
    assert launch.pop_stop_timeout(argv) == expected


def test_a_stop_timeout_that_is_not_a_number_is_one_line_and_status_2(capsys):
    with pytest.raises(SystemExit) as stopped:
        launch.main(["--stop-timeout", "ten", "--standalone", "-m", "m"])
    assert stopped.value.code == 2
    assert capsys.readouterr().err == "error: --stop-timeout ten must be a whole number of seconds\n"
