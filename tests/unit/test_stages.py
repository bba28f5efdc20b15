"""The stage runner the quickstart and `make headlines` share: output streamed, seconds kept, failures named."""

from __future__ import annotations

import pytest

from minilmv2.tools.stages import read_stage_seconds, run_stage


def test_a_stage_runs_with_its_values_and_its_seconds_are_kept(tmp_path, capfd):
    command = ["bash", "-c", 'echo "value=$STAGE_VALUE"; [ "$HF_HUB_OFFLINE" = 1 ]']
    run_stage("tool", "first stage", command, tmp_path, tmp_path, {"STAGE_VALUE": "42"})
    run_stage("tool", "second stage", ["true"], tmp_path, tmp_path)
    out = capfd.readouterr().out
    assert "=== first stage ===\nSTAGE_VALUE='42' bash -c" in out and "value=42" in out
    seconds = read_stage_seconds(tmp_path)
    assert list(seconds) == ["first stage", "second stage"] and all(value >= 0 for value in seconds.values())


def test_a_failed_stage_stops_the_tool_naming_it(tmp_path):
    with pytest.raises(SystemExit, match=r"^tool: broken stage failed \(exit 3\); its output is above$"):
        run_stage("tool", "broken stage", ["bash", "-c", "exit 3"], tmp_path, tmp_path)
    assert read_stage_seconds(tmp_path) == {}


def test_a_rerun_stage_adds_its_time_to_the_first_calls(tmp_path):
    run_stage("tool", "slow stage", ["sleep", "0.3"], tmp_path, tmp_path)
    run_stage("tool", "slow stage", ["sleep", "0.2"], tmp_path, tmp_path)  # a resumed tool runs the stage again
    assert read_stage_seconds(tmp_path)["slow stage"] >= 0.5
