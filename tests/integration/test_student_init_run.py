"""--student_init through the entry point: a distillation from the teacher's embeddings, its model card and config,
the refusals (an unknown value, another vocabulary, a resume with another initialisation)."""

from __future__ import annotations

import json
import shutil

import pytest
from fixtures.distill.tiny_teacher import VOCAB_FILE, distill_argv
from test_reliability_training import edit, run_main, setup, with_training_options  # noqa: F401 (setup)

from minilmv2.run_distillation import main
from minilmv2.student_init import INIT_FIELD

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def from_embeddings(setup, tmp_path_factory):  # noqa: F811
    out = tmp_path_factory.mktemp("student_init") / "out"
    argv = distill_argv(setup["teacher"], setup["train"], out, max_steps=2, training=("--save_steps", "2"),
                        model=("--student_init", "teacher_embeddings"))  # fmt: skip
    assert main(argv) == 0
    return out, argv


def test_the_student_starts_from_the_teachers_embeddings_and_says_so(from_embeddings):
    out, _ = from_embeddings
    config = json.loads((out / "student" / "config.json").read_text())
    assert config[INIT_FIELD] == "teacher_embeddings"
    card = (out / "student" / "README.md").read_text()
    assert "| student initialisation | token / position / token-type embeddings from the teacher's" in card


def test_resume_with_another_initialisation_is_refused(from_embeddings, tmp_path, capsys):
    out, argv = from_embeddings
    copy = tmp_path / "out"
    shutil.copytree(out / "checkpoint-2", copy / "checkpoint-2")
    resume = with_training_options(edit(edit(argv, "--output_dir", str(copy)), "--student_init", "random"),
                                   "--resume_from_checkpoint", "latest", "--max_steps", "4")  # fmt: skip
    status, stdout, stderr = run_main(resume, capsys)
    assert status == 2 and stderr.count("\n") == 1, stderr
    assert "holds a different student than this run asks for: the student's initialisation --student_init random " \
           "(it has teacher_embeddings)" in stderr  # fmt: skip


def test_an_unknown_initialisation_is_refused(setup, tmp_path, capsys):  # noqa: F811
    argv = distill_argv(setup["teacher"], setup["train"], tmp_path / "out", model=("--student_init", "pca"))
    status, stdout, stderr = run_main(argv, capsys)
    assert (status, stderr) == (
        2,
        "error: the student's initialisation --student_init pca is not valid: give random or teacher_embeddings\n",
    )


def test_another_vocabulary_is_refused_for_teacher_embeddings(setup, tmp_path, capsys):  # noqa: F811
    """Same size, two pieces swapped: the rows of the teacher's embeddings would mean other tokens."""
    from transformers import BertTokenizer

    pieces = VOCAB_FILE.read_text(encoding="utf-8").splitlines()
    pieces[200], pieces[201] = pieces[201], pieces[200]
    tokenizer = tmp_path / "tokenizer"
    BertTokenizer(vocab={piece: index for index, piece in enumerate(pieces)}).save_pretrained(tokenizer)
    argv = distill_argv(setup["teacher"], setup["train"], tmp_path / "out",
                        model=("--student_init", "teacher_embeddings", "--tokenizer_dir", str(tokenizer)))  # fmt: skip
    status, stdout, stderr = run_main(argv, capsys)
    assert (status, stderr) == (
        2,
        f"error: the student's initialisation --student_init teacher_embeddings needs the teacher's own vocabulary, "
        f"but the tokenizer folder --tokenizer_dir {tokenizer} differs from the teacher folder's tokenizer; use that "
        "tokenizer, or --student_init random\n",
    )
    assert not (tmp_path / "out").exists()
