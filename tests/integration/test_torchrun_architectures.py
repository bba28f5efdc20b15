"""A real 2-process `torchrun` distillation of a ModernBERT teacher (gloo, CPU), DDP without unused-parameter search.

ModernBERT is the architecture furthest from BERT (pre-LayerNorm, fused Wqkv, rotary embeddings, alternating
global / sliding-window layers, a final norm): the parameters its student leaves without a gradient are found by
the distiller's generic graph probe, and DDP (find_unused_parameters=False) raises on the second step if any
trainable one got no gradient.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import pytest
from fixtures.distill.tiny_teacher import distill_argv, first_lines, tiny_tokenizer, write_corpus_config
from transformers import AutoModel, ModernBertConfig, ModernBertModel

from minilmv2.checkpoints import COMPLETE_MARKER, parameters_sha256

STEPS = 3


def write_tiny_modernbert_teacher(directory, seed: int = 0):
    """2 layers (global, then sliding window of 8 tokens) x 64 hidden x 4 heads, with the tiny WordPiece tokenizer."""
    import torch

    tokenizer = tiny_tokenizer()
    special = {
        "pad_token_id": tokenizer.pad_token_id,
        "bos_token_id": tokenizer.cls_token_id,
        "cls_token_id": tokenizer.cls_token_id,
        "eos_token_id": tokenizer.sep_token_id,
        "sep_token_id": tokenizer.sep_token_id,
    }
    config = ModernBertConfig(
        vocab_size=tokenizer.vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
        intermediate_size=128, max_position_embeddings=128, local_attention=8, global_attn_every_n_layers=2,
        **special,
    )  # fmt: skip
    torch.manual_seed(seed)
    ModernBertModel(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.slow
def test_two_ranks_distil_a_modernbert_teacher(corpus_dir, tmp_path):
    teacher = write_tiny_modernbert_teacher(tmp_path / "teacher")
    train = write_corpus_config(
        tmp_path / "train.json", [first_lines(corpus_dir / "books-01.txt", tmp_path / "books.txt", 200)]
    )
    out = tmp_path / "out"
    argv = distill_argv(teacher, train, out, training=("--save_steps", str(STEPS)), max_steps=STEPS)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2"]
    command += ["-m", "minilmv2.run_distillation", *argv]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]

    # 2 x 32 student, FFN 128; its layer 2's Wo, MLP and the final norm get no gradient and are frozen.
    shape = re.search(r"student: .* ([\d,]+) parameters \(([\d,]+) get a gradient\)", result.stdout)
    total, trainable = (int(number.replace(",", "")) for number in shape.groups())
    frozen = 32 * 32 + 32 * 256 + 128 * 32 + 32 + 32  # Wo, mlp.Wi (GLU: 2 x 128), mlp.Wo, mlp_norm and final_norm
    assert total - trainable == frozen, shape.group(0)

    checkpoint = out / f"checkpoint-{STEPS}"
    assert json.loads((checkpoint / COMPLETE_MARKER).read_text()) == {"global_step": STEPS, "world_size": 2}
    records = [json.loads((checkpoint / "data_state" / f"rank-{r}.json").read_text()) for r in range(2)]
    student = AutoModel.from_pretrained(out / "student")
    assert type(student) is ModernBertModel
    assert student.config.layer_types == ["full_attention", "sliding_attention"]
    assert records[0]["student_sha256"] == records[1]["student_sha256"] == parameters_sha256(student)
    state = json.loads((out / "trainer_state.json").read_text())
    losses = [entry["loss"] for entry in state["log_history"] if "loss" in entry]
    assert len(losses) == STEPS and all(loss > 0 for loss in losses)
