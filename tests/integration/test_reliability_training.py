"""Reliability of distillation: bad input refused up front, faults lose nothing, resume is exact.

Every case runs the real entry point (in-process, or as a subprocess where a signal must be delivered) on a
tiny local BERT teacher and real text.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from fixtures.distill.tiny_teacher import distill_argv, first_lines, write_corpus_config, write_tiny_teacher
from safetensors.torch import load_file

from minilmv2.checkpoints import (
    COMPLETE_MARKER,
    export_student,
    last_complete_checkpoint,
    parameters_sha256,
    rotate_complete_checkpoints,
    validate_checkpoint,
)
from minilmv2.errors import UsageError
from minilmv2.run_distillation import main
from minilmv2.trainer import StopSignal

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("reliability")
    teacher = write_tiny_teacher(root / "teacher")
    shards = [
        first_lines(corpus_dir / "wiki-02.txt", root / "wiki.txt", 120),
        first_lines(corpus_dir / "books-02.txt", root / "books.txt", 120),
    ]
    train = write_corpus_config(root / "train.json", shards)
    return {"root": root, "teacher": teacher, "train": train, "shards": shards}


def run_main(argv: list[str], capsys) -> tuple[int, str, str]:
    try:
        status = main(argv)
    except SystemExit as exit_:
        status = exit_.code
    captured = capsys.readouterr()
    return status, captured.out, captured.err


# ---- bad input: exit 2, one plain line naming the value, nothing written ----


def edit(argv: list[str], option: str, value: str | None) -> list[str]:
    """argv with `option`'s value replaced (or the option and its value removed when value is None)."""
    index = argv.index(option)
    return argv[:index] + argv[index + 2 :] if value is None else argv[: index + 1] + [value] + argv[index + 2 :]


def with_training_options(argv: list[str], *options: str) -> list[str]:
    model = argv.index("model_params")
    return argv[:model] + list(options) + argv[model:]


def write(path: Path, content: str | bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content) if isinstance(content, bytes) else path.write_text(content)
    return path


def teacher_without_config(argv, tmp):
    (tmp / "empty_teacher").mkdir()
    return edit(argv, "--input_model_dir", str(tmp / "empty_teacher"))


def corpus_config(argv, tmp, urls):
    return edit(argv, "--train_config", str(write(tmp / "corpus.json", json.dumps({"urls": urls}))))


def finished_run_in_output_dir(argv, tmp):
    write(tmp / "out" / "trainer_state.json", "{}")
    (tmp / "out" / "student").mkdir()
    return argv


def checkpoints_in_output_dir(argv, tmp):
    (tmp / "out" / "checkpoint-5").mkdir(parents=True)
    return argv


def teacher_without_tokenizer(argv, tmp):
    teacher = Path(argv[argv.index("--input_model_dir") + 1])
    bare = tmp / "bare_teacher"
    bare.mkdir()
    for name in ("config.json", "model.safetensors"):
        shutil.copy(teacher / name, bare / name)
    return edit(argv, "--input_model_dir", str(bare))


def unknown_training_option(argv, tmp):
    return with_training_options(argv, "--learning_rat", "1")


def teacher_copy(argv, tmp, name="teacher_copy") -> Path:
    teacher = Path(argv[argv.index("--input_model_dir") + 1])
    return Path(shutil.copytree(teacher, tmp / name))


def truncated_teacher_weights(argv, tmp):
    copy = teacher_copy(argv, tmp)
    _truncate(copy / "model.safetensors")
    return edit(argv, "--input_model_dir", str(copy))


def teacher_with_a_smaller_vocabulary(argv, tmp):
    copy = teacher_copy(argv, tmp)
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps({**config, "vocab_size": 1000}))
    return edit(argv, "--input_model_dir", str(copy))


def corpus_of(argv, tmp, name, content, fmt, columns="text"):
    source = write(tmp / name, content)
    return edit(argv, "--train_config", str(write_corpus_config(tmp / "corpus.json", [source], fmt, columns)))


BAD_INPUTS = {
    # name: (how to break the good command line, what the one-line message must say)
    "relation heads not dividing the student hidden size": (
        lambda a, t: edit(a, "--num_relation_heads", "3"), "--num_relation_heads 3 does not divide"),
    "relation heads not dividing the teacher hidden size": (
        lambda a, t: edit(edit(a, "--num_relation_heads", "48"), "--student_hidden_size", "48"),
        "--num_relation_heads 48 does not divide the teacher hidden size 64"),
    "teacher layer 0": (lambda a, t: edit(a, "--L", "0"), "the teacher layer --L 0 is out of range: the teacher has 2 "
        "layers; use 1..2"),
    "teacher layer beyond the teacher": (
        lambda a, t: edit(a, "--L", "3"), "the teacher layer --L 3 is out of range: the teacher has 2 layers; use "
            "1..2"),
    "student heads not dividing the student hidden size": (
        lambda a, t: edit(a, "--student_attention_heads", "3"), "--student_attention_heads 3 does not divide"),
    "student without layers": (lambda a, t: edit(a, "--student_num_layers", "0"), "the student's number of layers "
        "--student_num_layers 0 is not valid: give a positive whole number"),
    "missing teacher directory": (
        lambda a, t: edit(a, "--input_model_dir", str(t / "nowhere")), "nowhere does not exist"),
    "teacher directory without a config": (teacher_without_config, "has no config.json"),
    "teacher directory without a tokenizer": (teacher_without_tokenizer, "bare_teacher has no tokenizer"),
    "tokenizer directory without a tokenizer": (
        lambda a, t: a + ["--tokenizer_dir", str(write(t / "tok" / "README", "").parent)],
        "tok has no tokenizer (none of tokenizer.json"),
    "evaluation without held-out text": (
        lambda a, t: with_training_options(a, "--eval_strategy", "steps", "--eval_steps", "2"),
        "the evaluation schedule --eval_strategy steps needs held-out text: give --val_config (or drop "
            "--eval_strategy)"),
    "missing train config": (lambda a, t: edit(a, "--train_config", str(t / "none.json")), "none.json does not exist"),
    "train config that is a folder": (lambda a, t: edit(a, "--train_config", str(t)), "is a folder"),
    "unreadable (binary) train config": (
        lambda a, t: edit(a, "--train_config", str(write(t / "bin.json", b"\xff\xfe\x00{"))), "is not UTF-8 text"),
    "invalid JSON train config": (
        lambda a, t: edit(a, "--train_config", str(write(t / "bad.json", '{"urls": ['))), "is not valid JSON"),
    "corpus file that does not exist": (
        lambda a, t: corpus_config(a, t, [str(t / "gone.txt")]), "gone.txt does not exist"),
    "empty corpus": (lambda a, t: corpus_config(a, t, [str(write(t / "e.txt", "\n \n"))]), "the corpus is empty"),
    "relation id outside 1-3": (
        lambda a, t: a + ["--minilm_relations", "{(1, 4): 1}"], "relation pair (1, 4) is invalid"),
    "relations that are not a mapping": (
        lambda a, t: a + ["--minilm_relations", "[(1, 1), (2, 2)]"], "relations must be a mapping"),
    "relations that are not a literal": (
        lambda a, t: a + ["--minilm_relations", "{(1, 1): one}"], "is not a literal like"),
    "negative relation weight": (lambda a, t: a + ["--minilm_relations", "{(1, 1): -1}"], "non-negative"),
    "v1 with a different head count": (
        lambda a, t: a + ["--minilm_v1"], "--minilm_v1 needs equal attention head counts, got teacher 4 and student 2"),
    "v1 with relation heads other than one per attention head": (
        lambda a, t: edit(edit(a, "--student_attention_heads", "4"), "--num_relation_heads", "8") + ["--minilm_v1"],
        "--num_relation_heads 8 does not apply with --minilm_v1, which uses one relation head per attention head (4)"),
    "v1 with relations of its own": (
        lambda a, t: edit(a, "--student_attention_heads", "4") + ["--minilm_v1", "--minilm_relations", "{(1, 1): 1}"],
        "--minilm_relations '{(1, 1): 1}' does not apply with --minilm_v1, whose relations are Q-K and V-V"),
    "no relation heads (v2)": (
        lambda a, t: edit(a, "--num_relation_heads", None), "--num_relation_heads is required: the number of relation"),
    "sequence longer than the teacher's positions": (
        lambda a, t: edit(a, "--max_seq_len", "4096"), "the sequence length --max_seq_len 4096 is out of range: use "
            "3..128"),
    "no --max_steps for a stream": (lambda a, t: edit(a, "--max_steps", None), "the number of optimizer steps "
        "--max_steps -1 is not valid: give a positive number"),
    "training option with a bad value": (
        lambda a, t: edit(a, "--max_steps", "many"),
        "error: the number of optimizer steps --max_steps many is not valid: give a whole number"),
    "unknown training option": (unknown_training_option, "unknown argument(s) --learning_rat 1; see --help"),
    "misspelt model option": (lambda a, t: a + ["--student_layers", "2"], "unknown argument(s) --student_layers 2"),
    "missing corpus (no data_params)": (
        lambda a, t: a[a.index("training_params"):], "required but not given: --train_config"),
    "resume from a checkpoint that does not exist": (
        lambda a, t: a + ["--checkpoint_dir", str(t / "no-checkpoint")], "no-checkpoint does not exist"),
    "output directory holding a finished run": (
        finished_run_in_output_dir, "already holds a finished run; pass --overwrite_output_dir"),
    "output directory holding another run's checkpoints": (
        checkpoints_in_output_dir, "holds checkpoints of an earlier run; resume it with --resume_from_checkpoint "
            "latest or start afresh with --overwrite_output_dir"),
    # Each of these is caught before a model loads (after the models load it would be a traceback).
    "truncated teacher weights": (
        truncated_teacher_weights, "teacher_copy is damaged: model.safetensors is truncated or padded"),
    "negative learning rate": (
        lambda a, t: edit(a, "--learning_rate", "-1"), "the learning rate --learning_rate -1.0 is not valid: give a "
            "positive learning rate such as 6e-4"),
    "JSON lines without the named column": (
        lambda a, t: corpus_of(a, t, "c.jsonl", '{"body": "Some text."}\n', "json"),
        "has no column(s) ['text']; its records have ['body'] (set \"columns\""),
    "plain text declared as JSON": (
        lambda a, t: corpus_of(a, t, "c.txt", "Plain text, not JSON.\n", "json"),
        'is declared "format": "json" but its first line is not JSON (\'Plain text, not JSON.\'); use "format"'),
    "csv without the named column": (
        lambda a, t: corpus_of(a, t, "c.csv", "title,body\nA,Some text.\n", "csv", "text"),
        "has no column(s) ['text']; its records have ['body', 'title']"),
    "tokenizer larger than the teacher's embeddings": (
        teacher_with_a_smaller_vocabulary, "has 1500 tokens but the teacher's embeddings have 1000"),
    "tracker that is not installed": (
        lambda a, t: edit(a, "--report_to", "wandb"), "the tracker --report_to wandb is not installed; install it, or"),
    "unknown tracker": (lambda a, t: edit(a, "--report_to", "tensorbord"), "--report_to tensorbord is not a tracker"),
    "every relation weight 0": (
        lambda a, t: a + ["--minilm_relations", "{(1, 1): 0, (3, 3): 0}"], "gives every relation weight 0"),
    "best model without held-out text": (
        lambda a, t: with_training_options(a, "--load_best_model_at_end", "true", "--eval_strategy", "steps"),
        "--load_best_model_at_end True needs held-out text to rank checkpoints: give --val_config"),
    "corpus of zero-width spaces": (
        lambda a, t: corpus_of(a, t, "z.txt", "\u200b \u200b\n" * 20, "text"), "the corpus yields no tokens"),
    "corpus of control bytes": (
        lambda a, t: corpus_of(a, t, "c.txt", "\x01\x02\x7f\n" * 20, "text"), "the corpus yields no tokens"),
}  # fmt: skip


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_bad_input_is_refused_in_one_line_before_anything_is_written(setup, tmp_path, capsys, case):
    break_argv, expected = BAD_INPUTS[case]
    out = tmp_path / "out"
    argv = break_argv(distill_argv(setup["teacher"], setup["train"], out), tmp_path)
    existed_before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    status, stdout, stderr = run_main(argv, capsys)
    assert status == 2
    assert stderr.startswith("error: ") and stderr.count("\n") == 1 and "Traceback" not in stderr
    assert expected in stderr, stderr
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == existed_before  # nothing written


def test_minilm_v1_uses_one_relation_head_per_attention_head(setup, tmp_path, capsys):
    """--num_relation_heads with --minilm_v1 is used (it must equal the head count), never silently dropped."""
    argv = edit(distill_argv(setup["teacher"], setup["train"], tmp_path / "out"), "--student_attention_heads", "4")
    for v1_argv in (edit(argv, "--num_relation_heads", None), edit(argv, "--num_relation_heads", "4")):
        status, stdout, stderr = run_main([*v1_argv, "--minilm_v1", "--validate_only"], capsys)
        assert (status, stderr) == (0, "") and "arguments OK" in stdout
    assert not (tmp_path / "out").exists()


def test_overwrite_output_dir_replaces_a_finished_run(setup, tmp_path, capsys):
    out = tmp_path / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=1)
    assert run_main(argv, capsys)[0] == 0
    status, _, stderr = run_main(argv, capsys)
    assert status == 2 and "already holds a finished run" in stderr
    assert run_main(with_training_options(argv, "--overwrite_output_dir"), capsys)[0] == 0


# ---- faults ----


@pytest.mark.parametrize(("save_steps", "logging_steps"), [(1, 1), (4, 1000)])
def test_non_finite_loss_stops_with_the_step_and_keeps_the_last_good_checkpoint(
    setup, tmp_path, capsys, save_steps, logging_steps
):
    """Read at logging and save steps only: with a save every step it stops at step 2; with the first save at step
    4 and no logging before, the bad step 2 is still the one named, and nothing is saved at 4 or exported."""
    out = tmp_path / "out"
    # An absurd learning rate: step 1 is fine, its update overflows the student, step 2's loss is NaN.
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=6)
    argv = edit(edit(edit(argv, "--learning_rate", "1e30"), "--save_steps", str(save_steps)),
                "--logging_steps", str(logging_steps))  # fmt: skip
    status, _, stderr = run_main(argv, capsys)
    assert status == 1
    (message,) = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert "the distillation loss became nan at step 2" in message and "Traceback" not in stderr
    if save_steps == 1:
        assert f"Last good checkpoint: {out / 'checkpoint-1'}." in message
        assert last_complete_checkpoint(out) == out / "checkpoint-1" and not (out / "checkpoint-2").exists()
        weights = load_file(out / "checkpoint-1" / "student" / "model.safetensors")
        assert all(torch.isfinite(w).all() for w in weights.values())
    else:
        assert "Last good checkpoint: none (no checkpoint yet)." in message
        assert not list(out.glob("checkpoint-*"))
    assert not (out / "student").exists()  # no export of a broken student


def test_a_training_step_reads_no_tensor_value_on_the_host(setup, tmp_path):
    """Between logging steps a step must not wait for the device: no item/tolist/bool/... of a tensor, in any thread.
    Counted over two runs of different lengths, so start-up, the first step and the final save cancel out."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))
    from count_syncs import count_host_reads, run_distillation

    with count_host_reads(cuda=False) as reads:
        torch.ones(2).sum().item(), bool(torch.ones(1)), torch.ones(2).tolist()  # the counter counts
    assert sum(reads.values()) == 3

    argv = distill_argv(setup["teacher"], setup["train"], tmp_path / "unused")
    argv = edit(edit(edit(argv, "--logging_steps", "1000"), "--max_steps", None), "--output_dir", None)
    counts = [run_distillation(argv, steps, tmp_path / f"out-{steps}", cuda=False) for steps in (2, 5)]
    added = counts[1] - counts[0]
    assert sum(counts[1].values()) - sum(counts[0].values()) == 0, f"reads per 3 steps: {dict(added)}"


def test_a_torchrun_worker_probes_only_its_own_share_and_the_pre_check_every_share(setup, tmp_path, monkeypatch):
    import minilmv2.data
    from minilmv2.run_distillation import parse_args
    from minilmv2.startup_checks import make_plan

    probed = []
    real_probe = minilmv2.data.first_tokens_problem

    def recording_probe(config, tokenizer, rank, shares, name):
        probed.append((rank, shares))
        return real_probe(config, tokenizer, rank, shares, name)

    monkeypatch.setattr(minilmv2.data, "first_tokens_problem", recording_probe)
    parsed = parse_args(distill_argv(setup["teacher"], setup["train"], tmp_path / "out"))
    monkeypatch.setenv("MINILMV2_WORLD_SIZE", "2")  # run.sh's pre-check of a 2-process launch
    make_plan(*parsed, command=[])
    assert probed == [(0, 2), (1, 2)]
    probed.clear()
    monkeypatch.setenv("WORLD_SIZE", "2")  # torchrun's rank 1
    monkeypatch.setenv("RANK", "1")
    make_plan(*parsed, command=[])
    assert probed == [(1, 2)]


def start_run(argv: list[str]) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "minilmv2.run_distillation", *argv]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_writes_a_checkpoint_and_the_student_and_resume_goes_on(setup, tmp_path, capsys, signum):
    out = tmp_path / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=100_000)
    process = start_run(argv)
    logged_steps, output = 0, []
    deadline = time.monotonic() + 240
    while logged_steps < 2 and time.monotonic() < deadline:  # let it train a few steps first
        line = process.stdout.readline()
        output.append(line)
        logged_steps += "'loss':" in line
        assert line or process.poll() is None, "".join(output)
    process.send_signal(signum)
    rest, _ = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, "".join(output) + rest

    checkpoint = last_complete_checkpoint(out)
    step = int(checkpoint.name.split("-")[1])
    assert step >= 2 and f"stopped by signal {int(signum)} at step {step}" in rest
    assert parameters_sha256(_load_student(out / "student")) == parameters_sha256(_load_student(checkpoint / "student"))
    # Resuming continues from that step to the end.
    resumed = edit(argv, "--max_steps", str(step + 2)) + ["--checkpoint_dir", str(checkpoint)]
    assert run_main(resumed, capsys)[0] == 0
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == step + 2
    assert [e["step"] for e in state["log_history"] if "loss" in e][-2:] == [step + 1, step + 2]


def _load_student(path: Path):
    from transformers import AutoModel

    return AutoModel.from_pretrained(path)


@pytest.fixture(scope="module")
def uninterrupted(setup, tmp_path_factory):
    """A 6-step run with checkpoints at 3 and 6 (dropout on, shuffle buffer on, gradient accumulation 2)."""
    out = tmp_path_factory.mktemp("uninterrupted") / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=6,
                        training=("--save_steps", "3", "--gradient_accumulation_steps", "2"))  # fmt: skip
    assert main(argv) == 0
    return out, argv


def test_resume_from_step_k_ends_with_the_same_student_and_the_same_data(uninterrupted, tmp_path, capsys):
    reference, argv = uninterrupted
    out = tmp_path / "out"
    shutil.copytree(reference / "checkpoint-3", out / "checkpoint-3")  # a run preempted after step 3
    resume = with_training_options(edit(argv, "--output_dir", str(out)), "--resume_from_checkpoint", "latest")
    status, stdout, stderr = run_main(resume, capsys)
    assert status == 0 and "nothing is re-read or re-tokenised" in stdout, stderr

    final, expected = (
        load_file(out / "student" / "model.safetensors"),
        load_file(reference / "student" / "model.safetensors"),
    )
    assert final.keys() == expected.keys() and all(torch.equal(final[k], expected[k]) for k in final)  # bitwise

    # Same data: the same per-step losses and, at step 6, the same stream position on every rank.
    def losses(run):
        history = json.loads((run / "trainer_state.json").read_text())["log_history"]
        return {e["step"]: e["loss"] for e in history if "loss" in e}

    assert [losses(out)[s] for s in (4, 5, 6)] == [losses(reference)[s] for s in (4, 5, 6)]
    resumed_state = json.loads((out / "checkpoint-6" / "data_state" / "rank-0.json").read_text())
    reference_state = json.loads((reference / "checkpoint-6" / "data_state" / "rank-0.json").read_text())
    assert resumed_state == reference_state


CORRUPTIONS = {
    "truncated student weights": (
        lambda c: _truncate(c / "student" / "model.safetensors"), "model.safetensors is truncated"),
    "missing completion marker": (lambda c: (c / COMPLETE_MARKER).unlink(), "is incomplete (no checkpoint_complete"),
    "truncated optimizer": (lambda c: _truncate(c / "optimizer.pt"), "optimizer.pt is truncated"),
    "damaged optimizer": (lambda c: _flip_middle_byte(c / "optimizer.pt"), "optimizer.pt is"),
    "garbled trainer state": (lambda c: (c / "trainer_state.json").write_text("{oops"), "trainer_state.json cannot"),
    "missing scheduler": (lambda c: (c / "scheduler.pt").unlink(), "scheduler.pt is missing"),
    "missing stream position": (
        lambda c: (c / "data_state" / "rank-0.json").unlink(), "data_state/rank-0.json is missing"),
}  # fmt: skip


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_middle_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("case", list(CORRUPTIONS))
def test_corrupt_checkpoint_is_reported_plainly(uninterrupted, tmp_path, capsys, case):
    reference, argv = uninterrupted
    damage, expected = CORRUPTIONS[case]
    out = tmp_path / "out"
    checkpoint = shutil.copytree(reference / "checkpoint-3", out / "checkpoint-3")
    damage(checkpoint)
    status, _, stderr = run_main(edit(argv, "--output_dir", str(out)) + ["--checkpoint_dir", str(checkpoint)], capsys)
    assert status == 2 and stderr.count("\n") == 1 and expected in stderr, stderr
    assert "resume from an earlier checkpoint" in stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]  # nothing written


def test_resuming_with_another_number_of_processes_is_refused_unless_the_stream_restarts(uninterrupted):
    reference, _ = uninterrupted
    with pytest.raises(UsageError, match="written by 1 process.* this run has 2; resume with 1, or pass --ignore"):
        validate_checkpoint(reference / "checkpoint-3", world_size=2, restore_data=True)
    validate_checkpoint(reference / "checkpoint-3", world_size=2, restore_data=False)  # --ignore_data_skip


def test_latest_skips_a_checkpoint_whose_save_did_not_finish(uninterrupted, tmp_path):
    reference, _ = uninterrupted
    for step in (3, 6):
        shutil.copytree(reference / f"checkpoint-{step}", tmp_path / f"checkpoint-{step}")
    (tmp_path / "checkpoint-6" / COMPLETE_MARKER).unlink()
    assert last_complete_checkpoint(tmp_path) == tmp_path / "checkpoint-3"


def test_resuming_after_the_corpus_changed_says_so_before_any_model_loads(setup, uninterrupted, tmp_path, capsys):
    reference, argv = uninterrupted
    out = tmp_path / "out"
    shutil.copytree(reference / "checkpoint-3", out / "checkpoint-3")
    other_corpus = write_corpus_config(tmp_path / "other.json", setup["shards"][:1])
    resume = edit(edit(argv, "--output_dir", str(out)), "--train_config", str(other_corpus))
    status, stdout, stderr = run_main(resume + ["--checkpoint_dir", str(out / "checkpoint-3")], capsys)
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert "stream position of rank 0 does not fit this run: the corpus differs" in stderr
    assert "loading the teacher" not in stdout and sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]


def test_save_total_limit_deletes_old_checkpoints_only_once_the_new_one_is_complete(setup, tmp_path, monkeypatch):
    """A crash between the Trainer's save and the completion marker must leave the previous complete checkpoint."""
    import minilmv2.trainer as trainer

    calls = {"n": 0}
    real_fingerprint = trainer.parameters_sha256

    def crash_on_third_save(model):
        calls["n"] += 1
        if calls["n"] == 3:
            raise RuntimeError("simulated crash while saving checkpoint-3")
        return real_fingerprint(model)

    monkeypatch.setattr(trainer, "parameters_sha256", crash_on_third_save)
    out = tmp_path / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=3,
                        training=("--save_steps", "1", "--save_total_limit", "1"))  # fmt: skip
    with pytest.raises(RuntimeError, match="simulated crash"):
        main(argv)
    # checkpoint-1 was rotated away once checkpoint-2 was complete; checkpoint-2 survives the crash in 3's save.
    assert sorted(p.name for p in out.glob("checkpoint-*")) == ["checkpoint-2", "checkpoint-3"]
    assert last_complete_checkpoint(out) == out / "checkpoint-2"
    validate_checkpoint(out / "checkpoint-2", world_size=1, restore_data=True)


def test_rotation_keeps_incomplete_and_best_checkpoints(tmp_path):
    for step, complete in ((1, True), (2, True), (3, False), (4, True), (5, False)):
        (tmp_path / f"checkpoint-{step}").mkdir()
        if complete:
            (tmp_path / f"checkpoint-{step}" / COMPLETE_MARKER).write_text("{}")
    deleted = rotate_complete_checkpoints(tmp_path, 1, keep=tmp_path / "checkpoint-1")
    assert deleted == [tmp_path / "checkpoint-2"]
    remaining = ["checkpoint-1", "checkpoint-3", "checkpoint-4", "checkpoint-5"]
    assert sorted(p.name for p in tmp_path.iterdir()) == remaining


def test_a_repeated_signal_is_ignored_while_saving_and_a_third_aborts(capsys):
    stop = StopSignal().install()
    try:
        os.kill(os.getpid(), signal.SIGINT)  # Ctrl-C reaches the worker ...
        os.kill(os.getpid(), signal.SIGINT)  # ... and torchrun forwards it once more
        assert stop.received == signal.SIGINT
        with pytest.raises(KeyboardInterrupt):
            os.kill(os.getpid(), signal.SIGINT)  # a deliberate third one aborts at once
    finally:
        stop.restore()
    printed = capsys.readouterr().out
    assert "received SIGINT: saving a checkpoint" in printed and "one more signal aborts" in printed


def test_ddp_does_not_search_for_unused_parameters_unless_asked(setup, tmp_path):
    from minilmv2.run_distillation import configure_training_args, parse_args

    argv = distill_argv(setup["teacher"], setup["train"], tmp_path / "out")
    training_args = parse_args(argv)[2]
    configure_training_args(training_args, has_val=False)
    assert training_args.ddp_find_unused_parameters is False
    training_args = parse_args(with_training_options(argv, "--ddp_find_unused_parameters", "true"))[2]
    configure_training_args(training_args, has_val=False)
    assert training_args.ddp_find_unused_parameters is True


def test_an_error_on_a_non_zero_rank_is_printed_by_that_rank(setup, tmp_path, capsys, monkeypatch):
    import minilmv2.run_distillation as entry

    def fail_on_this_rank(plan, stop_signal):
        raise UsageError("this rank's stream position is unreadable")

    monkeypatch.setattr(entry, "train_and_export", fail_on_this_rank)
    monkeypatch.setenv("RANK", "1")
    argv = distill_argv(setup["teacher"], setup["train"], tmp_path / "out")
    status, _, stderr = run_main(argv, capsys)
    assert status == 2 and stderr == "rank 1: error: this rank's stream position is unreadable\n"
    # A start-up check fails alike on every rank: only rank 0 reports it.
    status, _, stderr = run_main(edit(argv, "--L", "9"), capsys)
    assert status == 2 and stderr == ""


def test_roberta_teachers_reserve_the_padding_offset_of_their_positions():
    from transformers import RobertaConfig

    from minilmv2.run_distillation import parse_args
    from minilmv2.startup_checks import check_shapes

    teacher = RobertaConfig(hidden_size=64, num_hidden_layers=2, num_attention_heads=4, max_position_embeddings=514)
    argv = distill_argv(Path("teacher"), Path("train.json"), Path("out"))
    model_args = parse_args(argv)[1]
    check_shapes(model_args, teacher, 512)
    with pytest.raises(UsageError, match=r"the sequence length --max_seq_len 513 is out of range: use 3\.\.512"):
        check_shapes(model_args, teacher, 513)


def test_student_export_is_never_half_written(uninterrupted, tmp_path):
    from transformers import AutoModel, AutoTokenizer

    reference, _ = uninterrupted
    student = AutoModel.from_pretrained(reference / "student")
    tokenizer = AutoTokenizer.from_pretrained(reference / "student")
    target = export_student(student, tokenizer, tmp_path / "student")
    before = {p.name: p.read_bytes() for p in target.iterdir()}
    with torch.no_grad():
        student.embeddings.word_embeddings.weight.add_(1.0)
    with pytest.raises(AttributeError):  # the export fails half-way (the tokenizer cannot be saved)
        export_student(student, None, target)
    assert {p.name: p.read_bytes() for p in target.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]  # no partial folder left behind
    export_student(student, tokenizer, target)  # a complete export replaces the previous one whole
    assert torch.equal(
        _load_student(target).embeddings.word_embeddings.weight, student.embeddings.word_embeddings.weight
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["student"]


# ---- memory: a long streaming run does not grow ----


def test_long_streaming_run_shows_no_memory_growth(setup, tmp_path, capsys):
    """2,000 steps over an 8-line corpus (many passes, a checkpoint every 500): resident memory stays flat."""
    tiny = write_corpus_config(tmp_path / "tiny.json", [first_lines(setup["shards"][0], tmp_path / "t.txt", 8)])
    options = ("--logging_steps", "100", "--save_steps", "500", "--per_device_train_batch_size", "2")
    argv = distill_argv(setup["teacher"], tiny, tmp_path / "out", max_steps=2000, training=options)
    argv = edit(argv, "--max_seq_len", "16")
    assert run_main(argv, capsys)[0] == 0
    history = json.loads((tmp_path / "out" / "trainer_state.json").read_text())["log_history"]
    rss = {e["step"]: e["rss_mb"] for e in history if "rss_mb" in e}
    assert sorted(rss) == list(range(100, 2001, 100))
    settled = rss[600]  # after the first checkpoint and several passes, allocator pools have reached their size
    growth = max(rss[s] for s in rss if s > 600) - settled
    assert growth < 8, rss
    state = json.loads((tmp_path / "out" / "checkpoint-2000" / "data_state" / "rank-0.json").read_text())["stream"]
    assert state["epoch"] >= 20  # the stream really went round its corpus many times


# ---- issue 15: refusals and resume rules that need a checkpoint or a real folder ----


def test_a_read_only_output_dir_is_refused_before_anything_loads(setup, tmp_path, capsys):
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    immutable = os.geteuid() == 0  # permission bits do not stop root: make the folder immutable instead
    if immutable and subprocess.run(["chattr", "+i", str(locked)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a filesystem without chattr +i: no folder is read-only to this test")
    try:
        argv = distill_argv(setup["teacher"], setup["train"], locked / "out")
        status, stdout, stderr = run_main(argv, capsys)
    finally:
        if immutable:
            subprocess.run(["chattr", "-i", str(locked)], check=True)
        locked.chmod(0o755)
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert f"--output_dir {locked / 'out'} is not writable ({locked}, where it would be made)" in stderr
    assert "loading the teacher" not in stdout and list(locked.iterdir()) == []


def resume_argv(argv: list[str], out: Path) -> list[str]:
    return with_training_options(edit(argv, "--output_dir", str(out)), "--resume_from_checkpoint", "latest")


@pytest.mark.parametrize(
    "change, expected",
    [
        (("--student_hidden_size", "64"), "holds a different student than this run asks for: the student hidden size "
            "--student_hidden_size 64 "
                                          "(it has 32); resume with the checkpoint's shape"),
        (("--max_seq_len", "16"), "does not fit this run: the sequence length --max_seq_len 16 differs from the "
            "checkpoint's "
                                  "32; resume with the checkpoint's corpus config and values, or pass --ignore_data"),
        (("--shuffle_buffer", "4"), "the shuffle buffer --shuffle_buffer 4 differs from the checkpoint's 16"),
    ],
)  # fmt: skip
def test_resume_with_another_student_shape_or_stream_is_refused_in_one_line(uninterrupted, tmp_path, capsys,
                                                                            change, expected):  # fmt: skip
    reference, argv = uninterrupted
    out = tmp_path / "out"
    shutil.copytree(reference / "checkpoint-3", out / "checkpoint-3")
    status, stdout, stderr = run_main(edit(resume_argv(argv, out), *change), capsys)
    assert status == 2 and stderr.count("\n") == 1 and expected in stderr, stderr
    assert sorted(p.name for p in out.iterdir()) == ["checkpoint-3"]


def test_latest_skips_a_corrupt_newest_checkpoint_and_intervals_given_now_win(uninterrupted, tmp_path, capsys):
    reference, argv = uninterrupted
    out = tmp_path / "out"
    for step in (3, 6):
        shutil.copytree(reference / f"checkpoint-{step}", out / f"checkpoint-{step}")
    _flip_middle_byte(out / "checkpoint-6" / "student" / "model.safetensors")  # same size, headers intact
    # The checkpoint says logging every step and saving every 3; this run asks for 2 and 5.
    resumed = edit(edit(edit(resume_argv(argv, out), "--max_steps", "5"), "--logging_steps", "2"), "--save_steps", "5")
    status, stdout, stderr = run_main(resumed, capsys)
    assert status == 0, stderr
    newest = out / "checkpoint-6"
    assert (
        f"note: skipping {newest}: checkpoint {newest} is corrupt: student/model.safetensors does not match the "
        "sha256 recorded when it was saved (bytes changed)" in stdout
    )
    assert f"resuming from {out / 'checkpoint-3'}, the newest intact checkpoint (skipped: checkpoint-6)" in stdout
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e][-1:] == [4]  # every 2 steps now: 4 (not 4 and 5)
    assert (out / "checkpoint-5" / COMPLETE_MARKER).is_file()  # every 5 steps now (3 would not save at 5)


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("LR", "-1", "the learning rate LR=-1.0 is not valid: give a positive learning rate such as 6e-4"),
        ("L", "9", "the teacher layer L=9 is out of range: the teacher has 2 layers; use 1..2"),
        ("STOP_TIMEOUT", "10m", "STOP_TIMEOUT=10m must be a whole number of seconds (the workers' time to save on "
         "SIGTERM)"),
        ("NPROC", "abc", "NPROC=abc must be a whole number of processes per node, 1 or more"),
        ("NNODES", "abc", "NNODES=abc must be a whole number of nodes, 1 or more"),
        ("PRECISION", "bf17", "PRECISION=bf17 must be bf16, fp16 or none (fp32)"),
        ("NNODES", "2", "NNODES=2 needs MASTER_ADDR, the first node's address (every node the same)"),
        ("MASTER_PORT", "abc", "MASTER_PORT=abc must be a port number in 1..65535 (the same on every node)"),
        # transformers' own words were "Got warmup_steps = -1.0, Expected value warmup_steps >= 0" and
        # "logging strategy IntervalStrategy.STEPS requires non-zero LOGGING_STEPS": ours come first.
        ("WARMUP_STEPS", "-1", "the warm-up WARMUP_STEPS=-1.0 is not valid: give 0 or more steps (or a fraction of "
         "the run below 1)"),
        ("LOGGING_STEPS", "0", "the logging interval LOGGING_STEPS=0.0 is not valid: give a positive number of steps"),
        ("MAX_STEPS", "many", "the number of optimizer steps MAX_STEPS=many is not valid: give a whole number"),
        # Was "pass data_params VAL_CONFIG=(or drop --eval_strategy)".
        ("EXTRA_ARGS", "--eval_strategy steps", "the evaluation schedule --eval_strategy steps needs held-out text: "
         "give VAL_CONFIG (or drop --eval_strategy)"),
        # Were accepted, and won over the variable (the banner still named OUTPUT_DIR).
        ("EXTRA_ARGS", "--output_dir elsewhere", "EXTRA_ARGS sets --output_dir, which run.sh sets from OUTPUT_DIR; set "
         "OUTPUT_DIR instead"),
        ("EXTRA_ARGS", "--max-seq-len=64", "EXTRA_ARGS sets --max-seq-len, which run.sh sets from MAX_SEQ_LEN; set "
         "MAX_SEQ_LEN instead"),
        ("EXTRA_ARGS", "--bf16 true", "EXTRA_ARGS sets --bf16, which run.sh sets from PRECISION; set PRECISION "
         "instead"),
    ],
)  # fmt: skip
def test_run_sh_names_its_variables_in_a_refusal(setup, tmp_path, variable, value, message):
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHON": sys.executable, "TEACHER_DIR": str(setup["teacher"]),
           "TRAIN_CONFIG": str(setup["train"]), "OUTPUT_DIR": str(tmp_path / "out"),
           "NPROC": "1", "PRECISION": "none", variable: value}  # fmt: skip
    if variable == "MASTER_PORT":
        env.update(NNODES="2", MASTER_ADDR="127.0.0.1")
    elif variable == "NNODES":
        env.pop("MASTER_ADDR", None)  # one the caller's environment may hold
    elif variable == "EXTRA_ARGS":  # refused after the shapes: give the tiny teacher's
        env.update(L="2", STUDENT_HIDDEN_SIZE="32", STUDENT_NUM_LAYERS="1", STUDENT_ATTENTION_HEADS="2",
                   NUM_RELATION_HEADS="4", MAX_SEQ_LEN="32")  # fmt: skip
    script = Path(__file__).resolve().parents[2] / "run.sh"
    result = subprocess.run(["bash", str(script)], env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr == f"error: {message}\n"
    assert "arguments OK" not in result.stdout and "launching" not in result.stdout
    assert not (tmp_path / "out").exists()


def test_held_out_loss_is_the_mean_over_sequences_and_the_best_student_is_loaded(setup, corpus_dir, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    from minilmv2 import MiniLM
    from minilmv2.corpus import load_corpus_config
    from minilmv2.data import TokenStream

    val = write_corpus_config(tmp_path / "val.json", [first_lines(corpus_dir / "val-00.txt", tmp_path / "v.txt", 12)])
    out = tmp_path / "out"
    # Ranked by the highest loss, so the best checkpoint is not simply the last one (the loss goes down).
    best_options = ("--load_best_model_at_end", "true", "--metric_for_best_model", "loss")
    best_options += ("--greater_is_better", "true")
    options = ("--eval_strategy", "steps", "--eval_steps", "1", "--save_steps", "1")
    options += ("--per_device_eval_batch_size", "4")
    argv = distill_argv(
        setup["teacher"], setup["train"], out, data=("--val_config", str(val)), training=options + best_options,
        max_steps=3,
    )  # fmt: skip
    status, stdout, stderr = run_main(argv, capsys)
    assert status == 0, stderr
    state = json.loads((out / "trainer_state.json").read_text())
    evals = {e["step"]: e for e in state["log_history"] if "eval_loss" in e}
    worst = max(evals, key=lambda step: evals[step]["eval_loss"])
    assert worst != 3 and state["best_model_checkpoint"] == str(out / f"checkpoint-{worst}")
    assert f"loading the best student ({evals[worst]['eval_loss']}) from {out / f'checkpoint-{worst}'}" in stdout
    exported = parameters_sha256(_load_student(out / "student"))
    assert exported == parameters_sha256(_load_student(out / f"checkpoint-{worst}" / "student"))

    # Step 3's figure is the plain mean of every held-out sequence's loss, scored one at a time by hand.
    tokenizer = AutoTokenizer.from_pretrained(setup["teacher"])
    sequences = [e["input_ids"] for e in TokenStream(load_corpus_config(val), tokenizer, 32, infinite=False)]
    assert len(sequences) % 4 != 0 and evals[3]["eval_sequences"] == len(sequences)
    teacher, student = AutoModel.from_pretrained(setup["teacher"]), _load_student(out / "checkpoint-3" / "student")
    distiller = MiniLM(teacher, student, L=2, A_r=4).eval()
    with torch.no_grad():
        losses = [distiller(input_ids=torch.tensor([s]), attention_mask=torch.ones(1, len(s)))["loss"]
                  for s in sequences]  # fmt: skip
    expected = float(torch.stack(losses).double().mean())
    assert abs(evals[3]["eval_loss"] - expected) <= 1e-5 * expected
