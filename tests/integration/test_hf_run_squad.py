"""hf_run_squad.py run in-process on tiny random models (BERT with token_type_ids, RoBERTa without) and the
SQuAD fixture files; reported figures are checked against a re-scoring of predictions.json done here."""

from __future__ import annotations

import json
import string
from collections import Counter
from pathlib import Path

import datasets.config
import pytest
from fixtures.scripts import load_script
from fixtures.squad.tiny_models import SQUAD_FIXTURES, write_tiny_roberta, write_tiny_squad_bert

pytestmark = pytest.mark.usefixtures("one_torch_thread")


script = load_script("hf_run_squad")

V2_KEYS = {
    "eval_exact",
    "eval_f1",
    "eval_total",
    "eval_HasAns_exact",
    "eval_HasAns_f1",
    "eval_HasAns_total",
    "eval_NoAns_exact",
    "eval_NoAns_f1",
    "eval_NoAns_total",
    "eval_best_exact",
    "eval_best_exact_thresh",
    "eval_best_f1",
    "eval_best_f1_thresh",
    "eval_samples",
}


def squad_args(model: Path, output_dir: Path, *extra: str, version: str = "v2.0", train: bool = True) -> list[str]:
    argv = [
        "--model_name_or_path",
        str(model),
        "--data_dir",
        str(SQUAD_FIXTURES),
        "--predict_file",
        f"dev-{version}.json",
        "--do_eval",
        "--max_seq_length",
        "64",
        "--doc_stride",
        "24",
        "--max_query_length",
        "16",
        "--per_device_eval_batch_size",
        "16",
        "--seed",
        "0",
        "--save_strategy",
        "no",
        "--disable_tqdm",
        "true",
        "--output_dir",
        str(output_dir),
    ]
    if train:
        argv += ["--do_train", "--train_file", f"train-{version}.json", "--learning_rate", "2e-3"]
        argv += ["--num_train_epochs", "1", "--per_device_train_batch_size", "8"]
    if version == "v2.0":
        argv.append("--version_2_with_negative")
    return argv + list(extra)


# ---- an independent re-scoring (the official definitions, written out again) ---------------------------------
def normalise(text: str) -> list[str]:
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    return [word for word in text.split() if word not in ("a", "an", "the")]


def token_f1(gold: str, predicted: str) -> float:
    gold_tokens, predicted_tokens = normalise(gold), normalise(predicted)
    if not gold_tokens or not predicted_tokens:
        return float(gold_tokens == predicted_tokens)
    shared = sum((Counter(gold_tokens) & Counter(predicted_tokens)).values())
    return 0.0 if shared == 0 else 2 * shared / (len(gold_tokens) + len(predicted_tokens))


def gold_answers(version: str) -> dict[str, list[str]]:
    document = json.loads((SQUAD_FIXTURES / f"dev-{version}.json").read_text())
    return {
        qa["id"]: [answer["text"] for answer in qa["answers"]] if not qa.get("is_impossible") else []
        for article in document["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }


def rescore(predictions: dict[str, str], golds: dict[str, list[str]]) -> dict[str, float]:
    """exact and f1 (x 100) over all, answerable and unanswerable questions."""
    exact, f1 = {}, {}
    for qid, answers in golds.items():
        answers = answers or [""]
        exact[qid] = max(float(normalise(a) == normalise(predictions[qid])) for a in answers)
        f1[qid] = max(token_f1(a, predictions[qid]) for a in answers)
    out = {}
    for prefix, ids in (
        ("", list(golds)),
        ("HasAns_", [q for q in golds if golds[q]]),
        ("NoAns_", [q for q in golds if not golds[q]]),
    ):
        if ids:
            out[prefix + "exact"] = 100 * sum(exact[q] for q in ids) / len(ids)
            out[prefix + "f1"] = 100 * sum(f1[q] for q in ids) / len(ids)
            out[prefix + "total"] = len(ids)
    return out


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """One real fine-tuning run on SQuAD 2.0 (tiny BERT, one epoch): (output dir, all_results)."""
    model = write_tiny_squad_bert(tmp_path_factory.mktemp("tiny_squad_bert"))
    output_dir = tmp_path_factory.mktemp("squad2_run")
    results = script.main(squad_args(model, output_dir, "--do_lower_case", "--overwrite_output_dir"))
    return output_dir, results


@pytest.mark.slow
def test_squad2_run_writes_every_key_and_file(trained):
    output_dir, results = trained
    saved = json.loads((output_dir / "eval_results.json").read_text())
    assert set(saved) >= V2_KEYS, V2_KEYS - set(saved)
    assert saved["eval_total"] == 10 and saved["eval_HasAns_total"] == 7 and saved["eval_NoAns_total"] == 3
    assert saved["eval_windows"] > saved["eval_samples"]  # the Avon paragraph needs several windows
    all_results = json.loads((output_dir / "all_results.json").read_text())
    assert {"train_loss", "train_samples"} <= set(all_results) and set(all_results) >= V2_KEYS
    assert (output_dir / "model.safetensors").is_file() and (output_dir / "tokenizer.json").is_file()
    predictions = json.loads((output_dir / "predictions.json").read_text())
    null_odds = json.loads((output_dir / "null_odds.json").read_text())
    nbest = json.loads((output_dir / "nbest_predictions.json").read_text())
    assert set(predictions) == set(null_odds) == set(nbest) == set(gold_answers("v2.0"))
    for qid, text in predictions.items():
        assert (text == "") == (null_odds[qid] > 0.0)  # the default --null_score_diff_threshold 0
        assert sum(entry["probability"] for entry in nbest[qid]) == pytest.approx(1.0, abs=1e-6)
        assert any(entry["text"] == "" for entry in nbest[qid])


@pytest.mark.slow
def test_reported_figures_equal_predictions_rescored_by_hand(trained, tmp_path):
    output_dir, results = trained
    golds = gold_answers("v2.0")
    predictions = json.loads((output_dir / "predictions.json").read_text())
    for key, value in rescore(predictions, golds).items():
        assert results[f"eval_{key}"] == pytest.approx(value, abs=1e-9), key
    # A tiny model may answer "" everywhere; score the saved model again at a threshold between its null odds,
    # so that some questions get a span, and re-score that too.
    null_odds = sorted(json.loads((output_dir / "null_odds.json").read_text()).values())
    threshold = (null_odds[4] + null_odds[5]) / 2
    again_dir = tmp_path / "again"
    again = script.main(squad_args(output_dir, again_dir, "--null_score_diff_threshold", repr(threshold), train=False))
    spans = json.loads((again_dir / "predictions.json").read_text())
    assert sum(text != "" for text in spans.values()) == 5
    for key, value in rescore(spans, golds).items():
        assert again[f"eval_{key}"] == pytest.approx(value, abs=1e-9), key
    # best_f1 is what scoring at best_f1_thresh gives (the reported threshold is usable as reported).
    best_dir = tmp_path / "best"
    best = script.main(
        squad_args(output_dir, best_dir, "--null_score_diff_threshold", repr(again["eval_best_f1_thresh"]), train=False)
    )
    assert best["eval_f1"] == pytest.approx(again["eval_best_f1"], abs=1e-9)
    assert again["eval_best_f1"] >= max(again["eval_f1"], results["eval_f1"]) - 1e-9


@pytest.mark.slow
def test_roberta_without_token_type_ids_on_squad_v1(tmp_path):
    model = write_tiny_roberta(tmp_path / "tiny_roberta")
    output_dir = tmp_path / "out"
    argv = squad_args(model, output_dir, version="v1.1", train=False)
    argv[argv.index("--do_eval")] = "--do_train"
    argv += ["--do_eval", "--train_file", "train-v1.1.json", "--max_steps", "2", "--learning_rate", "1e-3"]
    results = script.main(argv)
    assert {"eval_exact_match", "eval_f1", "train_loss"} <= set(results)
    assert not (output_dir / "null_odds.json").exists()
    predictions = json.loads((output_dir / "predictions.json").read_text())
    assert all(predictions.values())  # v1.1: always a span
    golds = gold_answers("v1.1")
    exact = [max(float(normalise(a) == normalise(predictions[q])) for a in golds[q]) for q in golds]
    f1 = [max(token_f1(a, predictions[q]) for a in golds[q]) for q in golds]
    assert results["eval_exact_match"] == pytest.approx(100 * sum(exact) / len(exact), abs=1e-9)
    assert results["eval_f1"] == pytest.approx(100 * sum(f1) / len(f1), abs=1e-9)
    # Every answer is a piece of its own context.
    contexts = {
        qa["id"]: paragraph["context"]
        for article in json.loads((SQUAD_FIXTURES / "dev-v1.1.json").read_text())["data"]
        for paragraph in article["paragraphs"]
        for qa in paragraph["qas"]
    }
    assert all(text in contexts[qid] for qid, text in predictions.items())


# ---- start-up refusals -----------------------------------------------------------------------------------------
def expect_usage_error(capsys, argv, *fragments) -> str:
    with pytest.raises(SystemExit) as exit_info:
        script.main(argv)
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("error: ")
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    return lines[0]


def test_bad_input_is_refused_in_one_line_before_anything_is_written(tmp_path, capsys, monkeypatch):
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    model = tmp_path / "model"  # a real model folder is not needed to reach these checks, except where noted
    model.mkdir()
    (model / "config.json").write_text(json.dumps({"model_type": "bert"}))
    (model / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n")
    out = tmp_path / "out"
    bad_layout = tmp_path / "bad.json"
    bad_layout.write_text(json.dumps({"data": [{"title": "x", "paragraphs": [{"context": "c"}]}]}))

    def args(*extra, version="v2.0"):
        return squad_args(model, out, *extra, version=version)

    def without(argv, flag):
        return [a for a in argv if a != flag]

    def replace(argv, option, value):
        argv = list(argv)
        argv[argv.index(option) + 1] = value
        return argv

    cases = [
        (replace(args(), "--predict_file", "dev-v3.json"), ["--predict_file", "dev-v3.json' does not exist"]),
        (replace(args(), "--train_file", str(bad_layout)), ["paragraphs[0] has no 'qas' list"]),
        (replace(args(), "--data_dir", str(tmp_path / "nowhere")), ["--data_dir", "is not a directory"]),
        (without(args(), "--version_2_with_negative"), ["is SQuAD 2.0 data", "pass --version_2_with_negative"]),
        (args("--version_2_with_negative", version="v1.1"), ["is SQuAD v1.1 data", "drop --version_2_with_negative"]),
        (replace(args(), "--doc_stride", "64"), ["--doc_stride 64 must be at least 1 and below --max_seq_length 64"]),
        (replace(args(), "--max_query_length", "60"), ["--max_query_length 60", "room for the context"]),
        (replace(args(), "--num_train_epochs", "0"), ["--num_train_epochs 0 trains nothing"]),
        (replace(args(), "--learning_rate", "0"), ["--learning_rate 0 must be positive"]),
        (args("--n_best_size", "0"), ["--n_best_size 0 must be at least 1"]),
        (args("--eval_strategy", "steps"), ["--eval_strategy steps is not supported"]),
        (args("--per_gpu_train_batch_size", "12"), ["--per_gpu_train_batch_size is gone", "per_device"]),
        (args("--do_predict"), ["--do_predict is not used here"]),
        (without(without(args(), "--do_train"), "--do_eval"), ["nothing to do"]),
        (
            ["--model_name_or_path", str(model), "--dataset_name", "squad_v2", "--do_eval", "--output_dir", str(out)],
            ["--dataset_name 'squad_v2' needs the hub, which is offline ("],
        ),
        (args(), ["has a config.json but no weights"]),  # the model folder has no weights
    ]
    for argv, fragments in cases:
        expect_usage_error(capsys, argv, *fragments)
        assert not out.exists(), fragments
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", False)
    online = ["--model_name_or_path", str(model), "--dataset_name", "squad", "--version_2_with_negative"]
    expect_usage_error(capsys, online + ["--do_eval", "--output_dir", str(out)], "is SQuAD v1.1; drop")


def test_a_finished_run_is_kept_unless_overwriting(trained, capsys):
    output_dir, _ = trained
    argv = squad_args(output_dir, output_dir, train=False)
    expect_usage_error(capsys, argv, "already holds a finished run", "--overwrite_output_dir")
