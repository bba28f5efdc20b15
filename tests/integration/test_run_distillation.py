"""The distillation entry point end to end, in-process and through run.sh, on a tiny local teacher and real text."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fixtures.distill.tiny_teacher import (
    distill_argv,
    first_lines,
    tiny_tokenizer,
    write_corpus_config,
    write_tiny_teacher,
)
from safetensors.torch import load_file

from minilmv2.checkpoints import COMPLETE_MARKER, parameters_sha256
from minilmv2.run_distillation import GROUPS, DataArguments, ModelArguments, RunOptions, main, parse_args

REPO_ROOT = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def setup(corpus_dir, tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    teacher = write_tiny_teacher(root / "teacher")
    shards = [
        first_lines(corpus_dir / "wiki-00.txt", root / "wiki.txt", 150),
        first_lines(corpus_dir / "books-00.txt", root / "books.txt", 150),
    ]
    train = write_corpus_config(root / "train.json", shards)
    val = write_corpus_config(root / "val.json", [first_lines(corpus_dir / "val-00.txt", root / "val.txt", 20)])
    return {"root": root, "teacher": teacher, "train": train, "val": val}


def test_grouped_command_line_end_to_end(setup, tmp_path, capsys):
    from transformers import AutoModel, AutoTokenizer

    out = tmp_path / "out"
    argv = distill_argv(
        setup["teacher"],
        setup["train"],
        out,
        data=("--val_config", str(setup["val"])),
        training=("--save_steps", "3", "--seed=42", "--ddp_find_unused_parameters", "true", "--eval_steps", "3"),
        model=("--student_intermediate_size", "96"),
        max_steps=6,
    )
    data, training, model = (argv.index(group) for group in ("data_params", "training_params", "model_params"))
    # Groups in another order, behind the reference run.sh's leading "--".
    reordered = ["--", *argv[model:], *argv[training:model], *argv[data:training]]
    assert main(reordered) == 0
    printed = capsys.readouterr().out

    student_dir = out / "student"
    student = AutoModel.from_pretrained(student_dir)
    tokenizer = AutoTokenizer.from_pretrained(student_dir)
    config = student.config
    assert (config.hidden_size, config.num_hidden_layers, config.num_attention_heads) == (32, 2, 2)
    assert config.intermediate_size == 96 and config.vocab_size == tokenizer.vocab_size == 1500
    assert student.encoder.layer[0].intermediate.dense.weight.shape == (96, 32)
    encoded = tokenizer("It is a truth universally acknowledged.", return_tensors="pt")
    assert student(**encoded).last_hidden_state.shape == (1, encoded["input_ids"].shape[1], 32)
    assert f"student:    {student_dir}" in printed and f"loss curve: {out / 'loss_curve.png'}" in printed
    assert (out / "loss_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # The model card travels with the student: this run's values, its command, and the curve beside it.
    card = (student_dir / "README.md").read_text()
    assert f"`{setup['teacher']}` (2 layers x 64 hidden)" in card
    assert "A 2 x 32 `bert` encoder (2 heads, FFN 96," in card
    assert "| relations | Q-Q (weight 1), K-K (weight 1), V-V (weight 1) |" in card
    assert "finished after 6 optimizer steps" in card and "| final held-out loss | " in card
    assert "no held-out set" not in card and "python -m minilmv2.run_distillation" in card
    assert (student_dir / "loss_curve.png").read_bytes() == (out / "loss_curve.png").read_bytes()

    # Checkpoints: the Trainer layout, the student inside, and no teacher anywhere.
    for step in (3, 6):
        checkpoint = out / f"checkpoint-{step}"
        assert {"trainer_state.json", "optimizer.pt", "scheduler.pt", "rng_state.pth", COMPLETE_MARKER} <= {
            p.name for p in checkpoint.iterdir()
        }
        weights = [p.relative_to(checkpoint) for p in checkpoint.rglob("*") if p.suffix in (".safetensors", ".pt")]
        assert sorted(weights) == [Path("optimizer.pt"), Path("scheduler.pt"), Path("student/model.safetensors")]
        assert set(load_file(checkpoint / "student" / "model.safetensors")) == set(student.state_dict())
        assert AutoModel.from_pretrained(checkpoint / "student").config.intermediate_size == 96
    history = json.loads((out / "checkpoint-6" / "trainer_state.json").read_text())["log_history"]
    assert [e["step"] for e in history if "loss" in e] == [1, 2, 3, 4, 5, 6]
    assert [e["step"] for e in history if "eval_loss" in e] == [3, 6]
    assert all(0 < e["eval_loss"] < 1 for e in history if "eval_loss" in e)

    # Trained: what gets a gradient moved between the checkpoints; the last layer's FFN (no gradient) did not.
    early, final = load_file(out / "checkpoint-3" / "student" / "model.safetensors"), student.state_dict()
    assert not torch.equal(
        early["encoder.layer.1.attention.self.query.weight"], final["encoder.layer.1.attention.self.query.weight"]
    )
    assert not torch.equal(early["embeddings.word_embeddings.weight"], final["embeddings.word_embeddings.weight"])
    assert torch.equal(early["encoder.layer.1.output.dense.weight"], final["encoder.layer.1.output.dense.weight"])
    assert parameters_sha256(student) != parameters_sha256(AutoModel.from_config(config))


def test_one_line_mode_bf16_and_default_ffn(setup, tmp_path):
    from transformers import AutoModel

    out = tmp_path / "out"
    argv = distill_argv(
        setup["teacher"], setup["train"], out, data=("--no_packing",), training=("--bf16",), max_steps=2
    )
    assert main(argv) == 0
    config = AutoModel.from_pretrained(out / "student").config
    assert config.intermediate_size == 4 * 32
    losses = [e["loss"] for e in json.loads((out / "trainer_state.json").read_text())["log_history"] if "loss" in e]
    assert len(losses) == 2 and all(0 < loss < 1 for loss in losses)


def test_minilm_v1_preset_trains(setup, tmp_path):
    out = tmp_path / "out"
    # v1 needs the teacher's head count (4): one relation head per attention head.
    argv = distill_argv(setup["teacher"], setup["train"], out, model=("--minilm_v1",), max_steps=1)
    argv[argv.index("--student_attention_heads") + 1] = "4"
    assert main(argv) == 0
    assert (out / "student" / "model.safetensors").is_file()


def test_reference_run_sh_argument_set_is_accepted(corpus_dir, tmp_path, capsys, monkeypatch):
    """The first public reimplementation's run.sh, word for word, against a teacher with 12 layers."""
    from transformers import BertConfig, BertModel

    teacher = tmp_path / "model" / "bert-base-uncased"
    config = BertConfig(vocab_size=1500, hidden_size=48, num_hidden_layers=12, num_attention_heads=12,
                        intermediate_size=64, max_position_embeddings=512)  # fmt: skip
    BertModel(config).save_pretrained(teacher)
    tiny_tokenizer().save_pretrained(teacher)
    write_corpus_config(tmp_path / "train_config.json", [corpus_dir / "wiki-00.txt"])
    monkeypatch.chdir(tmp_path)
    reference = """-- data_params --train_config ./train_config.json training_params
        --per_device_train_batch_size 256 --learning_rate 6e-4 --adam_epsilon 1e-6 --adam_beta1 0.9
        --adam_beta2 0.999 --weight_decay 0.01 --max_steps 400000 --save_steps 50000 --logging_steps 1000
        --warmup_steps 4000 --ddp_find_unused_parameters true --output_dir ./out --seed=42
        model_params --input_model_dir ./model/bert-base-uncased/ --student_hidden_size 384
        --student_num_layers 6 --student_attention_heads 12 --L 12 --num_relation_heads 48"""
    assert main([*reference.split(), "--validate_only"]) == 0
    assert capsys.readouterr().out.strip() == "arguments OK"
    assert not (tmp_path / "out").exists()


def test_group_words_are_optional_and_one_json_file_works(setup, tmp_path, capsys):
    """As run_glue: the options alone, or one .json file, parse to the same arguments as the grouped line."""
    out = tmp_path / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out)
    values = {
        "train_config": str(setup["train"]), "max_seq_len": 32, "shuffle_buffer": 16, "output_dir": str(out),
        "max_steps": 4, "per_device_train_batch_size": 4, "learning_rate": 1e-3, "logging_steps": 1,
        "report_to": "none", "disable_tqdm": True, "save_steps": 1000, "input_model_dir": str(setup["teacher"]),
        "student_hidden_size": 32, "student_num_layers": 2, "student_attention_heads": 2, "L": 2,
        "num_relation_heads": 4,
    }  # fmt: skip
    json_file = tmp_path / "args.json"
    json_file.write_text(json.dumps(values))
    grouped = parse_args(argv)
    for other in (parse_args([arg for arg in argv if arg not in GROUPS]), parse_args([str(json_file)])):
        assert other[0] == grouped[0] and other[1] == grouped[1] and other[3] == grouped[3]
        assert other[2].to_dict() == grouped[2].to_dict()
    assert grouped[1].num_relation_heads == 4 and grouped[0].max_seq_len == 32
    assert main([str(json_file), "--validate_only"]) == 0
    assert capsys.readouterr().out.strip() == "arguments OK" and not out.exists()


def test_help_lists_every_option_with_its_default(capsys):
    from transformers import TrainingArguments

    assert main(["--help"]) == 0
    printed = " ".join(capsys.readouterr().out.split())  # argparse wraps lines
    for dataclass in (DataArguments, ModelArguments, TrainingArguments, RunOptions):
        for field in dataclasses_fields(dataclass):
            assert f"--{field} " in printed, field
    assert (
        "--minilm-relations MINILM_RELATIONS {(i, j): weight} with 1=Query, 2=Key, 3=Value (default: {(1, 1): 1, "
        "(2, 2): 1, (3, 3): 1})" in printed
    )
    assert "--max-seq-len MAX_SEQ_LEN tokens per sequence (default: 512)" in printed
    assert "data_params" in printed  # the docstring's usage comes first


def dataclasses_fields(dataclass) -> list[str]:
    import dataclasses

    return [field.name for field in dataclasses.fields(dataclass) if field.init and not field.name.startswith("_")]


def run_script(env_overrides: dict, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHON": sys.executable, **env_overrides}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "run.sh")], env=env, cwd=cwd, capture_output=True, text=True, timeout=300
    )


def test_run_sh_launches_torchrun_with_env_overrides(setup, tmp_path):
    out = tmp_path / "out"
    overrides = {
        "TEACHER_DIR": str(setup["teacher"]), "TRAIN_CONFIG": str(setup["train"]), "OUTPUT_DIR": str(out),
        "VAL_CONFIG": str(setup["val"]), "STUDENT_HIDDEN_SIZE": "32", "STUDENT_NUM_LAYERS": "2",
        "STUDENT_ATTENTION_HEADS": "2", "L": "2", "NUM_RELATION_HEADS": "4", "BATCH_SIZE": "2",
        "MAX_SEQ_LEN": "32", "MAX_STEPS": "2", "SAVE_STEPS": "2", "LOGGING_STEPS": "1", "WARMUP_STEPS": "0",
        "REPORT_TO": "tensorboard", "NPROC": "1", "EXTRA_ARGS": "--disable_tqdm true",
    }  # fmt: skip
    result = run_script(overrides, tmp_path)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "arguments OK" in result.stdout and f"student:    {out / 'student'}" in result.stdout
    state = json.loads((out / "trainer_state.json").read_text())
    assert state["global_step"] == 2 and any("eval_loss" in e for e in state["log_history"])
    assert (out / "checkpoint-2" / COMPLETE_MARKER).is_file()
    (board,) = [line.split(": ", 1)[1] for line in result.stdout.splitlines() if line.startswith("tensorboard: ")]
    assert list(Path(board).glob("events.out.tfevents.*"))


def test_run_sh_resumes_a_checkpoint_written_by_two_processes(setup, tmp_path):
    """The pre-check runs as one process but must check a resume against the launch's world size (NPROC)."""
    out = tmp_path / "out"
    overrides = {
        "TEACHER_DIR": str(setup["teacher"]), "TRAIN_CONFIG": str(setup["train"]), "OUTPUT_DIR": str(out),
        "STUDENT_HIDDEN_SIZE": "32", "STUDENT_NUM_LAYERS": "2", "STUDENT_ATTENTION_HEADS": "2", "L": "2",
        "NUM_RELATION_HEADS": "4", "BATCH_SIZE": "2", "MAX_SEQ_LEN": "32", "MAX_STEPS": "2", "SAVE_STEPS": "2",
        "LOGGING_STEPS": "1", "WARMUP_STEPS": "0", "REPORT_TO": "none", "NPROC": "2",
        "EXTRA_ARGS": "--disable_tqdm true",
    }  # fmt: skip
    first = run_script(overrides, tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    assert json.loads((out / "checkpoint-2" / COMPLETE_MARKER).read_text())["world_size"] == 2
    resumed = run_script({**overrides, "MAX_STEPS": "3", "SAVE_STEPS": "3", "RESUME": "latest"}, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "arguments OK" in resumed.stdout and "resuming the corpus stream where" in resumed.stdout
    assert json.loads((out / "trainer_state.json").read_text())["global_step"] == 3


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"TEACHER_DIR": "no/such/teacher"}, "the teacher folder TEACHER_DIR=no/such/teacher does not exist; give a "
            "folder with the "
         "teacher's config.json and weights, e.g. AutoModel.from_pretrained('bert-base-uncased')"
         ".save_pretrained('no/such/teacher')"),
        ({"TRAIN_CONFIG": "no/such/config.json"}, "the corpus config TRAIN_CONFIG=no/such/config.json does not exist; "
            "give a JSON file"),
    ],
)  # fmt: skip
def test_run_sh_says_what_to_do_when_the_teacher_or_corpus_is_missing(setup, tmp_path, overrides, message):
    """run.sh leaves the checks to the Python pre-check: one line naming its variable."""
    env = {"TEACHER_DIR": str(setup["teacher"]), "TRAIN_CONFIG": str(setup["train"]), **overrides}
    result = run_script(env, tmp_path)
    assert result.returncode == 2 and result.stderr.startswith(f"error: {message}"), result.stderr
    assert result.stderr.count("\n") == 1
    assert not (tmp_path / "out").exists()


def test_run_sh_holds_no_relations_literal_and_passes_relations_only_when_set():
    """The default relations live in the library alone (minilmv2.relations.DEFAULT_RELATIONS)."""
    text = (Path(__file__).resolve().parents[2] / "run.sh").read_text()
    assert "(1, 1)" not in text and "(3, 3)" not in text
    assert '[ -n "$RELATIONS" ] && MODEL_ARGS+=(--minilm_relations "$RELATIONS")' in text
