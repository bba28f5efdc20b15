"""A real 2-process `torchrun` run on CPU (gloo): the ranks read different data and end with identical students."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

from fixtures.distill.tiny_teacher import distill_argv, first_lines, write_corpus_config, write_tiny_teacher
from transformers import AutoModel, AutoTokenizer

from minilmv2.checkpoints import COMPLETE_MARKER, parameters_sha256
from minilmv2.corpus import load_corpus_config
from minilmv2.data import TokenStream
from minilmv2.run_distillation import main

STEPS, BATCH, SEQ_LEN, BUFFER = 6, 4, 32, 16


def test_two_ranks_share_the_corpus_and_stay_identical(corpus_dir, tmp_path):

    teacher = write_tiny_teacher(tmp_path / "teacher")
    # One shard only: the ranks must still split it (by bytes), not both read it.
    train = write_corpus_config(
        tmp_path / "train.json", [first_lines(corpus_dir / "books-01.txt", tmp_path / "books.txt", 300)]
    )
    # Held-out text scored before training (identical weights on any number of processes) and at the end.
    val = write_corpus_config(tmp_path / "val.json", [first_lines(corpus_dir / "val-00.txt", tmp_path / "v.txt", 12)])
    held_out = ("--eval_on_start", "true", "--eval_steps", str(STEPS), "--per_device_eval_batch_size", str(BATCH))
    out = tmp_path / "out"
    argv = distill_argv(
        teacher, train, out, data=("--val_config", str(val)), training=("--save_steps", str(STEPS), *held_out),
        max_steps=STEPS,
    )  # fmt: skip
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "minilmv2.run_distillation", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    assert result.stdout.count("student:    ") == 1  # only rank 0 talks

    # The held-out loss: every sequence once, equal weights, the same figure as one process gives. The set is
    # not a multiple of 2 ranks x 4 per batch, so neither a short last batch nor cycling back may count.
    tokenizer = AutoTokenizer.from_pretrained(teacher)
    sequences = len(list(TokenStream(load_corpus_config(val), tokenizer, SEQ_LEN, shuffle_buffer=1, infinite=False)))
    assert sequences % (2 * BATCH) != 0
    one = tmp_path / "one_process"
    assert main(distill_argv(teacher, train, one, data=("--val_config", str(val)), training=held_out, max_steps=1)) == 0
    start = [
        next(e for e in json.loads((run / "trainer_state.json").read_text())["log_history"] if "eval_loss" in e)
        for run in (out, one)
    ]
    assert start[0]["step"] == start[1]["step"] == 0
    assert start[0]["eval_sequences"] == start[1]["eval_sequences"] == sequences
    assert abs(start[0]["eval_loss"] - start[1]["eval_loss"]) <= 1e-6 * start[1]["eval_loss"]

    checkpoint = out / f"checkpoint-{STEPS}"
    assert json.loads((checkpoint / COMPLETE_MARKER).read_text()) == {"global_step": STEPS, "world_size": 2}
    records = [json.loads((checkpoint / "data_state" / f"rank-{r}.json").read_text()) for r in range(2)]

    # Identical students: both replicas' fingerprints match each other and the exported student.
    exported = parameters_sha256(AutoModel.from_pretrained(out / "student"))
    assert records[0]["student_sha256"] == records[1]["student_sha256"] == exported

    # Different data: rebuild each rank's stream; after exactly STEPS x BATCH examples it is where the run
    # left it, so those are the examples that rank trained on.
    config = load_corpus_config(train)
    seen = []
    for rank, record in enumerate(records):
        stream = TokenStream(config, tokenizer, SEQ_LEN, shuffle_buffer=BUFFER, seed=42, rank=rank, world_size=2)
        iterator = iter(stream)
        seen.append({tuple(next(iterator)["input_ids"]) for _ in range(STEPS * BATCH)})
        assert stream.state_dict() == record["stream"]
        assert record["stream"]["units"] == [[str(config.sources[0]), "bytes", rank, 2]]
    assert len(seen[0]) == len(seen[1]) == STEPS * BATCH and not seen[0] & seen[1]

    # Rank 1 started in the second half of the file: it never read (or tokenised) rank 0's half.
    size = Path(config.sources[0]).stat().st_size
    assert records[1]["stream"]["unit_position"][0] > size // 2 > records[0]["stream"]["unit_position"][0]
    # The logged token count is the global one: both ranks' packed, unpadded batches.
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["num_input_tokens_seen"] == 2 * STEPS * BATCH * SEQ_LEN


def test_sigterm_stops_both_ranks_at_the_same_step_with_a_complete_checkpoint(corpus_dir, tmp_path):
    """SLURM preemption: torchrun gets SIGTERM and passes it on; the ranks agree on one step and save it."""
    teacher = write_tiny_teacher(tmp_path / "teacher")
    train = write_corpus_config(
        tmp_path / "train.json", [first_lines(corpus_dir / "wiki-03.txt", tmp_path / "wiki.txt", 40)]
    )
    out = tmp_path / "out"
    argv = distill_argv(teacher, train, out, max_steps=100_000)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "minilmv2.run_distillation", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    launcher = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines, logged = [], 0
    while logged < 3:
        line = launcher.stdout.readline()
        assert line or launcher.poll() is None, "".join(lines)
        lines.append(line)
        logged += "'loss':" in line
    launcher.send_signal(signal.SIGTERM)
    rest, _ = launcher.communicate(timeout=120)

    (stopped,) = [line for line in rest.splitlines() if line.startswith("stopped by signal 15 at step ")]
    step = int(stopped.split("at step ")[1].split(";")[0])
    checkpoint = out / f"checkpoint-{step}"
    assert json.loads((checkpoint / COMPLETE_MARKER).read_text()) == {"global_step": step, "world_size": 2}
    records = [json.loads((checkpoint / "data_state" / f"rank-{r}.json").read_text()) for r in range(2)]
    assert records[0]["global_step"] == records[1]["global_step"] == step
    assert records[0]["student_sha256"] == records[1]["student_sha256"]
    assert parameters_sha256(AutoModel.from_pretrained(out / "student")) == records[0]["student_sha256"]
