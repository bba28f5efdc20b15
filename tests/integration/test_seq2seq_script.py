"""hf_run_seq2seq.py run in-process on a tiny random BERT and the JSON-lines fixture; its start-up refusals;
the BBC headline pairs of minilmv2.tools.headlines.

The end-to-end run's ROUGE is checked against rouge-score called here on the predictions file, and a second
run that only decodes the saved model must reproduce the first run's predictions.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from fixtures.glue.offline_raw import write_bbc_folders
from fixtures.glue.tiny_bert import write_tiny_bert
from fixtures.scripts import load_script

from minilmv2.scoring import sentence_tasks
from minilmv2.tools import headlines

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "seq2seq"
TRAIN, DEV = FIXTURES / "train.jsonl", FIXTURES / "dev.jsonl"

pytestmark = pytest.mark.usefixtures("one_torch_thread")


script = load_script("hf_run_seq2seq")


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory) -> Path:
    texts = [line for path in (TRAIN, DEV) for line in path.read_text().splitlines()]
    return write_tiny_bert(tmp_path_factory.mktemp("tiny_s2s"), extra_texts=texts)


def base_args(model: Path, output_dir: Path, *extra: str) -> list[str]:
    return [
        "--model_name_or_path", str(model),
        "--train_file", str(TRAIN),
        "--validation_file", str(DEV),
        "--output_dir", str(output_dir),
        "--max_source_seq_length", "20",
        "--max_target_seq_length", "8",
        "--use_cpu", "true",
        "--report_to", "none",
        "--disable_tqdm", "true",
        *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_end_to_end_train_decode_score_and_reload(tiny_model, tmp_path):
    from rouge_score import rouge_scorer

    out = tmp_path / "run"
    train_args = ["--do_train", "--do_eval", "--num_train_epochs", "12", "--learning_rate", "3e-3"]
    train_args += ["--per_device_train_batch_size", "8", "--save_strategy", "no", "--logging_steps", "6"]
    decode_args = ["--beam_size", "3", "--forbid_duplicate_ngrams", "--forbid_ignore_word", "."]
    decode_args += ["--decode_batch_size", "5"]  # several batches of unequal target lengths: eval_loss weighs tokens
    results = script.main(base_args(tiny_model, out, *train_args, *decode_args))

    dev = [json.loads(line) for line in DEV.read_text().splitlines()]
    predictions = (out / "generated_predictions.txt").read_text().splitlines()
    assert len(predictions) == len(dev)
    assert all(prediction.strip() for prediction in predictions)
    on_disk = json.loads((out / "eval_results.json").read_text())
    assert on_disk == {key: value for key, value in results.items() if key.startswith("eval_")}
    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=True)
    for name in ("rouge1", "rouge2", "rougeL"):
        expected = (
            100
            * sum(scorer.score(e["tgt"], p)[name].fmeasure for e, p in zip(dev, predictions, strict=True))
            / len(dev)
        )
        assert on_disk[f"eval_{name}"] == pytest.approx(expected, abs=1e-3)
    # The fixture's targets are words of the source: a trained model gets some of them right.
    assert on_disk["eval_rouge1"] > 20
    assert json.loads((out / "train_results.json").read_text())["train_samples"] == 48

    # --do_eval alone from the saved s2s model: same predictions (reload + deterministic decoding).
    again = tmp_path / "decode_only"
    script.main(base_args(out, again, "--do_eval", *decode_args))
    assert (again / "generated_predictions.txt").read_text().splitlines() == predictions

    # eval_loss: the references' mean cross-entropy per target token; here one example at a time.
    from transformers import AutoModelForMaskedLM, AutoTokenizer

    from minilmv2.scoring.seq2seq import Seq2SeqLM, SpecialIds

    tokenizer = AutoTokenizer.from_pretrained(out)
    special = SpecialIds.from_tokenizer(tokenizer)
    s2s = Seq2SeqLM(AutoModelForMaskedLM.from_pretrained(out, tie_word_embeddings=True).eval(), special)
    total = tokens = 0.0
    with torch.no_grad():
        for feature in script.encode(tokenizer, dev, 20, 8, special):
            batch = s2s.batch([feature["source_ids"]], [feature["target_ids"]])
            total += float(s2s.loss(batch)) * len(feature["target_ids"])
            tokens += len(feature["target_ids"])
    assert on_disk["eval_loss"] == pytest.approx(total / tokens, abs=2e-4)
    assert on_disk["eval_perplexity"] == pytest.approx(math.exp(on_disk["eval_loss"]), rel=1e-3)
    assert json.loads((again / "eval_results.json").read_text())["eval_loss"] == on_disk["eval_loss"]


def write_jsonl(path: Path, lines: list[str]) -> Path:
    path.write_text("".join(line + "\n" for line in lines))
    return path


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--do_train", "--train_file", "/no/train.jsonl"], "--train_file '/no/train.jsonl' does not exist"),
        (["--do_eval", "--beam_size", "0"], "--beam_size 0 must be at least 1"),
        (["--do_eval", "--max_source_seq_length", "100", "--max_target_seq_length", "40"], "exceeds the model's 128"),
        (["--do_eval", "--forbid_ignore_word", "no such word"], "--forbid_ignore_word 'no such word' is not one token"),
        (["--do_eval", "--metrics", "meteor"], "--metrics 'meteor': choose from rouge, sacrebleu"),
        (["--output_dir_typo", "x"], "unknown argument(s) --output_dir_typo x"),
        ([], "nothing to do: pass --do_train and/or --do_eval"),
    ],
)  # fmt: skip
def test_bad_input_is_refused_in_one_line(tiny_model, tmp_path, capsys, extra, message):
    args = base_args(tiny_model, tmp_path / "out") + extra
    with pytest.raises(SystemExit) as exit_info:
        script.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "\n" not in err and message in err, err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ('{"src": "the cat"}', ":2: no 'tgt' string"),
        ('{"tgt": "cat"}', ":2: no 'src' string"),
        ("not json", ":2: not a JSON object"),
        ('["src", "tgt"]', ":2: expected a JSON object"),
    ],
)
def test_a_bad_jsonl_line_is_refused_with_its_line_number(tiny_model, tmp_path, capsys, line, message):
    bad = write_jsonl(tmp_path / "bad.jsonl", ['{"src": "the cat sat", "tgt": "cat"}', line])
    args = base_args(tiny_model, tmp_path / "out", "--do_eval") + ["--validation_file", str(bad)]
    with pytest.raises(SystemExit) as exit_info:
        script.main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert f"{bad}{message}" in err and "\n" not in err, err


def test_the_hub_dataset_is_refused_offline(tiny_model, tmp_path, capsys, monkeypatch):
    import datasets.config

    monkeypatch.setattr(datasets.config, "HF_DATASETS_OFFLINE", True)  # as datasets reads HF_DATASETS_OFFLINE=1
    args = [arg for arg in base_args(tiny_model, tmp_path / "out", "--do_eval") if arg not in (str(TRAIN), str(DEV))]
    args = [arg for arg in args if arg not in ("--train_file", "--validation_file")]
    with pytest.raises(SystemExit):
        script.main([*args, "--dataset_name", "EdinburghNLP/xsum"])
    assert "needs the hub, which is offline" in capsys.readouterr().err


def test_headline_pairs_follow_the_bbc_news_split(tmp_path):
    write_bbc_folders(tmp_path)
    train, dev = headlines.headline_pairs(tmp_path)
    spec = sentence_tasks.get_task("bbc_news")
    topic_train, topic_dev = sentence_tasks.load_offline_task(spec, tmp_path).values()
    assert [f"{p['tgt']} {p['src']}" for p in dev] == topic_dev["text"]
    assert [f"{p['tgt']} {p['src']}" for p in train] == topic_train["text"]  # no body in both here
    assert dev[0]["tgt"].startswith(tuple(["Business", "entertainment", "politics", "sports", "tech"]))
    assert all(p["tgt"].split()[1] == "headline" and p["src"].startswith("Body of") for p in train + dev)


def test_headline_pairs_of_the_real_bbc_files(tasks_dir):
    train, dev = headlines.headline_pairs(tasks_dir)
    assert (len(train), len(dev)) == (1907, 212)
    assert dev[0] == {"tgt": "MPs' murder sentence concern", "src": dev[0]["src"]}
    assert dev[0]["src"].startswith("Murder sentences should not be reduced automatically")
    assert not {p["src"] for p in train} & {p["src"] for p in dev}
