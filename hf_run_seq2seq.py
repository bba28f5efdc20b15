#!/usr/bin/env python
"""Fine-tune a saved student (or teacher) as a UniLM-style sequence-to-sequence model and decode with beam search.

The MiniLM v1 README's generation recipe (s2s-ft's run_seq2seq.py + decode_seq2seq.py) as one script in the
shape of hf_run_evaluation.py: the encoder becomes a generator through the s2s self-attention mask
(`[CLS] source [SEP] target [SEP]`, segment 0 / 1), trained with s2s-ft's pseudo-masking and decoded by a
batched beam search that reuses the cached keys/values of the source and of the target prefix. See
minilmv2/scoring/seq2seq.py for the layout, the mask and why pseudo-masking rather than UniLM's random masking.

    # JSON lines {"src": ..., "tgt": ...} (the seed's format); the MiniLM README's XSum recipe, one GPU
    python hf_run_seq2seq.py --model_name_or_path runs/student --train_file train.jsonl \\
        --validation_file dev.jsonl --do_train --do_eval --max_source_seq_length 464 --max_target_seq_length 48 \\
        --per_device_train_batch_size 32 --learning_rate 1e-4 --warmup_steps 500 --num_train_epochs 3 \\
        --beam_size 5 --length_penalty 0 --forbid_duplicate_ngrams --forbid_ignore_word "." \\
        --output_dir runs/s2s/xsum

    # the hub's XSum or CNN/DailyMail, when online (columns are known; --source_column/--target_column otherwise)
    python hf_run_seq2seq.py --model_name_or_path runs/student --dataset_name EdinburghNLP/xsum ...

    # decode and score an already fine-tuned model only; or all arguments from one .json file
    python hf_run_seq2seq.py --model_name_or_path runs/s2s/xsum --validation_file dev.jsonl --do_eval ...
    python hf_run_seq2seq.py args.json

Outputs in --output_dir: the fine-tuned masked-LM model and tokenizer, generated_predictions.txt (one line
per validation example, in input order), eval_results.json (eval_rouge1/2/L and eval_bleu, x 100),
train_results.json and all_results.json. METEOR is not computed: it needs NLTK's WordNet data, which
cannot be had offline here.

Architectures: those with a masked-LM head in minilmv2.architectures (BERT, RoBERTa / XLM-R, ELECTRA: their
attention takes a prepared 4D mask and a KV cache in transformers 5.23). Training is single-process (one CPU or
one GPU): the loss runs the encoder directly to apply the LM head on target slots only, which bypasses a DDP
wrapper.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
from minilmv2.arguments import one_device_without_torchrun, parse_script_arguments  # noqa: E402
from minilmv2.errors import UsageError, exit_on_usage_error  # noqa: E402
from minilmv2.hub import hub_offline, offline_switches  # noqa: E402
from minilmv2.scoring.finetune import (  # noqa: E402
    check_model_dir,
    check_sample_limits,
    check_something_to_do,
    check_tokenizer_files,
    load_tokenizer,
    refuse_finished_run,
    refuse_load_errors,
    remove_finished_results,
    tokenizer_source,
)

PREDICTIONS_FILE = "generated_predictions.txt"
# (source, target) columns of the hub's summarisation sets; --source_column/--target_column override.
HUB_COLUMNS = {
    "EdinburghNLP/xsum": ("document", "summary"),
    "xsum": ("document", "summary"),
    "abisee/cnn_dailymail": ("article", "highlights"),
    "cnn_dailymail": ("article", "highlights"),
}
METRICS = ("rouge", "sacrebleu")


@dataclass
class ModelArguments:
    """Which model and tokenizer to fine-tune or decode with."""

    model_name_or_path: str = field(
        metadata={"help": "Encoder directory (e.g. the distilled student), a fine-tuned s2s model, or a hub id."}
    )
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer path, if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where to cache hub downloads."})


@dataclass
class DataArguments:
    """Data and sequence lengths (s2s-ft's names)."""

    train_file: str | None = field(default=None, metadata={"help": "JSON lines with 'src' and 'tgt' strings."})
    validation_file: str | None = field(default=None, metadata={"help": "JSON lines with 'src' and 'tgt'."})
    dataset_name: str | None = field(
        default=None, metadata={"help": "Hub dataset when online, e.g. EdinburghNLP/xsum or abisee/cnn_dailymail."}
    )
    dataset_config_name: str | None = field(default=None, metadata={"help": "e.g. 3.0.0 for cnn_dailymail."})
    source_column: str | None = field(default=None, metadata={"help": "Source column (default: src, or known)."})
    target_column: str | None = field(default=None, metadata={"help": "Target column (default: tgt, or known)."})
    max_source_seq_length: int = field(default=464, metadata={"help": "Source tokens incl. [CLS] and [SEP]."})
    max_target_seq_length: int = field(default=48, metadata={"help": "Target tokens incl. the final [SEP]."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only the first N train examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only the first N dev examples."})
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Replace a finished run in output_dir instead of refusing."}
    )


@dataclass
class GenerationArguments:
    """Beam search (s2s-ft's decode_seq2seq.py names)."""

    beam_size: int = field(default=5, metadata={"help": "Beams per example; 1 is greedy decoding."})
    length_penalty: float = field(
        default=0.0, metadata={"help": "Finished scores are sum(log p) / length**length_penalty (0: raw sum)."}
    )
    min_target_length: int = field(default=0, metadata={"help": "[SEP] is forbidden before this many tokens."})
    forbid_duplicate_ngrams: bool = field(default=False, metadata={"help": "Never repeat an n-gram of --ngram_size."})
    ngram_size: int = field(default=3, metadata={"help": "n of --forbid_duplicate_ngrams."})
    forbid_ignore_word: str | None = field(
        default=None, metadata={"help": "Words exempt from n-gram blocking, '|'-separated (e.g. '.')."}
    )
    decode_batch_size: int = field(default=32, metadata={"help": "Examples decoded together (x beam_size rows)."})
    metrics: str = field(default="rouge,sacrebleu", metadata={"help": "Comma-separated: rouge, sacrebleu."})


def parse_arguments(argv: list[str] | None):
    """(ModelArguments, DataArguments, GenerationArguments, TrainingArguments) from argv or one .json file."""
    from transformers import TrainingArguments

    return parse_script_arguments((ModelArguments, DataArguments, GenerationArguments, TrainingArguments), argv)


def read_jsonl(path: str | Path, option: str) -> list[dict[str, str]]:
    """[{src, tgt}] from a JSON-lines file; UsageError naming the file and line of the first bad record."""
    path = Path(path)
    if not path.is_file():
        raise UsageError(f"{option} {str(path)!r} does not exist")
    examples = []
    with path.open(encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as err:
                raise UsageError(f"{path}:{line_number}: not a JSON object ({err.msg})") from None
            if not isinstance(record, dict):
                raise UsageError(f"{path}:{line_number}: expected a JSON object with 'src' and 'tgt'")
            for key in ("src", "tgt"):
                if not isinstance(record.get(key), str):
                    raise UsageError(f"{path}:{line_number}: no {key!r} string (each line needs 'src' and 'tgt')")
            examples.append({"src": record["src"], "tgt": record["tgt"]})
    if not examples:
        raise UsageError(f"{option} {str(path)!r} holds no examples")
    return examples


def check_arguments(model_args, data_args, gen_args, training_args):
    """Every start-up check on user input; UsageError on the first bad value. Writes nothing.

    Returns (config, tokenizer, exempt token ids, {split: examples} read from local files).
    """
    from transformers import AutoConfig

    check_something_to_do(
        training_args, "--do_predict is not supported; --do_eval decodes and scores --validation_file"
    )
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise UsageError("hf_run_seq2seq.py trains in one process; launch it without torchrun")

    files = {"train": data_args.train_file, "validation": data_args.validation_file}
    needed = (["train"] if training_args.do_train else []) + (["validation"] if training_args.do_eval else [])
    if data_args.dataset_name:
        if data_args.train_file or data_args.validation_file:
            raise UsageError("pass either --dataset_name or --train_file/--validation_file, not both")
        if hub_offline():
            raise UsageError(
                f"--dataset_name {data_args.dataset_name!r} needs the hub, which is offline "
                f"({offline_switches()}); pass --train_file/--validation_file JSON lines"
            )
    else:
        for split in needed:
            option = "--train_file" if split == "train" else "--validation_file"
            if not files[split]:
                raise UsageError(f"--do_{'train' if split == 'train' else 'eval'} needs {option} (JSON lines)")

    if gen_args.beam_size < 1:
        raise UsageError(f"--beam_size {gen_args.beam_size} must be at least 1 (1 is greedy decoding)")
    if gen_args.forbid_duplicate_ngrams and gen_args.ngram_size < 1:
        raise UsageError(f"--ngram_size {gen_args.ngram_size} must be at least 1")
    if gen_args.decode_batch_size < 1:
        raise UsageError(f"--decode_batch_size {gen_args.decode_batch_size} must be at least 1")
    unknown = sorted(set(metric_names(gen_args)) - set(METRICS))
    if unknown or not metric_names(gen_args):
        raise UsageError(f"--metrics {gen_args.metrics!r}: choose from {', '.join(METRICS)}")
    if data_args.max_source_seq_length < 3:
        raise UsageError(
            f"--max_source_seq_length {data_args.max_source_seq_length} must be at least 3 ([CLS] x [SEP])"
        )
    if data_args.max_target_seq_length < 2:
        raise UsageError(f"--max_target_seq_length {data_args.max_target_seq_length} must be at least 2 (x [SEP])")
    if not 0 <= gen_args.min_target_length < data_args.max_target_seq_length:
        raise UsageError(
            f"--min_target_length {gen_args.min_target_length} must be in [0, --max_target_seq_length "
            f"{data_args.max_target_seq_length})"
        )
    check_sample_limits(data_args, "examples")

    check_model_dir(model_args.model_name_or_path)
    with refuse_load_errors("--model_name_or_path", model_args.model_name_or_path):
        config = AutoConfig.from_pretrained(model_args.model_name_or_path, cache_dir=model_args.cache_dir)
    from minilmv2.architectures import seq2seq_model_types, usable_positions

    if config.model_type not in seq2seq_model_types():
        raise UsageError(
            f"--model_name_or_path is a {config.model_type!r} model; s2s fine-tuning supports "
            + ", ".join(seq2seq_model_types())
        )
    # Target positions continue after the source, so both maxima together must fit the position table.
    positions = usable_positions(config)
    total = data_args.max_source_seq_length + data_args.max_target_seq_length
    if total > positions:
        raise UsageError(
            f"--max_source_seq_length {data_args.max_source_seq_length} + --max_target_seq_length "
            f"{data_args.max_target_seq_length} = {total} exceeds the model's {positions} positions"
        )

    check_tokenizer_files(model_args)
    tokenizer = load_tokenizer(model_args, cache_dir=model_args.cache_dir)
    missing = [name for name in ("cls", "sep", "mask", "pad") if getattr(tokenizer, f"{name}_token_id") is None]
    if missing:
        _, source = tokenizer_source(model_args)
        raise UsageError(f"the tokenizer of {source!r} has no {', '.join(missing)} token(s)")
    exempt_ids = []
    for word in (gen_args.forbid_ignore_word or "").split("|"):
        if not word:
            continue
        ids = tokenizer.convert_tokens_to_ids(tokenizer.tokenize(word))
        if len(ids) != 1 or ids[0] == tokenizer.unk_token_id:
            raise UsageError(f"--forbid_ignore_word {word!r} is not one token of the vocabulary ({len(ids)} tokens)")
        exempt_ids.append(ids[0])

    refuse_finished_run(training_args.output_dir, data_args.overwrite_output_dir)
    local = {split: read_jsonl(files[split], f"--{split}_file") for split in needed if files[split]}
    return config, tokenizer, frozenset(exempt_ids), local


def metric_names(gen_args) -> list[str]:
    return [name.strip() for name in gen_args.metrics.split(",") if name.strip()]


def load_hub_examples(data_args, model_args, split: str) -> list[dict[str, str]]:
    """[{src, tgt}] of one split of a hub dataset (users with network)."""
    import datasets

    source_column, target_column = HUB_COLUMNS.get(data_args.dataset_name, ("src", "tgt"))
    source_column = data_args.source_column or source_column
    target_column = data_args.target_column or target_column
    with refuse_load_errors("--dataset_name", data_args.dataset_name):
        dataset = datasets.load_dataset(
            data_args.dataset_name, data_args.dataset_config_name, split=split, cache_dir=model_args.cache_dir
        )
    for column in (source_column, target_column):
        if column not in dataset.column_names:
            raise UsageError(
                f"--dataset_name {data_args.dataset_name!r} has no column {column!r} "
                f"(columns: {', '.join(dataset.column_names)}); pass --source_column/--target_column"
            )
    return [{"src": row[source_column], "tgt": row[target_column]} for row in dataset]


def score(predictions: list[str], references: list[str], names: list[str]) -> dict[str, float]:
    """{eval_rouge1, eval_rouge2, eval_rougeL, eval_bleu} (x 100) for the metrics asked for."""
    from minilmv2.scoring.metrics import load_metric

    results: dict[str, float] = {}
    if "rouge" in names:
        rouge = load_metric("rouge").compute(predictions=predictions, references=references)
        results.update({f"eval_{key}": round(value, 4) for key, value in rouge.items()})
    if "sacrebleu" in names:
        bleu = load_metric("sacrebleu").compute(predictions=predictions, references=references)
        results["eval_bleu"] = round(bleu["bleu"], 4)
    return results


def encode(tokenizer, examples, max_source: int, max_target: int, special) -> list[dict[str, list[int]]]:
    """Token ids per example: source [CLS] ... [SEP] within max_source, target ... [SEP] within max_target."""
    sources = tokenizer(
        [e["src"] for e in examples], add_special_tokens=False, truncation=True, max_length=max_source - 2
    )
    targets = tokenizer(
        [e["tgt"] for e in examples], add_special_tokens=False, truncation=True, max_length=max_target - 1
    )
    return [
        {"source_ids": [special.cls, *source, special.sep], "target_ids": [*target, special.sep]}
        for source, target in zip(sources["input_ids"], targets["input_ids"], strict=True)
    ]


def generate(s2s, features, settings, batch_size: int, tokenizer, bf16: bool) -> list[str]:
    """Decoded texts in input order; batches group sources of similar length to waste little padding."""
    import torch
    from tqdm.auto import tqdm

    from minilmv2.scoring.seq2seq import beam_search

    order = sorted(range(len(features)), key=lambda i: -len(features[i]["source_ids"]))
    texts: list[str] = [""] * len(features)
    device_type = next(s2s.model.parameters()).device.type
    s2s.model.eval()
    for start in tqdm(range(0, len(order), batch_size), desc="Decoding", unit="batch"):
        chunk = order[start : start + batch_size]
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
            outputs = beam_search(s2s, [features[i]["source_ids"] for i in chunk], settings)
        for index, ids in zip(chunk, outputs, strict=True):
            # One prediction per line: a newline inside a prediction would shift every later line.
            texts[index] = " ".join(tokenizer.decode(ids, skip_special_tokens=True).split())
    return texts


def target_cross_entropy(s2s, features, batch_size: int, bf16: bool) -> float:
    """Mean cross-entropy per target token (incl. the final [SEP]) of the references, teacher-forced as in training.

    Every token weighs the same whatever its batch: each batch's mean is weighted by its count of target tokens.
    """
    import torch

    device = next(s2s.model.parameters()).device
    s2s.model.eval()
    total, tokens = 0.0, 0
    with torch.no_grad(), torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for start in range(0, len(features), batch_size):
            chunk = features[start : start + batch_size]
            batch = s2s.batch([f["source_ids"] for f in chunk], [f["target_ids"] for f in chunk])
            batch = {key: value.to(device) for key, value in batch.items()}
            count = int((batch["labels"] != -100).sum())
            total += float(s2s.loss(batch)) * count
            tokens += count
    return total / max(tokens, 1)


@exit_on_usage_error
def main(argv: list[str] | None = None) -> dict[str, float]:
    """Run the script; returns the metrics written to all_results.json."""
    model_args, data_args, gen_args, training_args = parse_arguments(argv)
    config, tokenizer, exempt_ids, local_examples = check_arguments(model_args, data_args, gen_args, training_args)
    one_device_without_torchrun(training_args)  # several GPUs visible: one of them, as the other scripts

    import transformers
    from transformers import AutoModelForMaskedLM, Trainer, set_seed

    from minilmv2.scoring.seq2seq import BeamSettings, Seq2SeqLM, SpecialIds

    transformers.utils.logging.set_verbosity_warning()
    set_seed(training_args.seed)
    special = SpecialIds.from_tokenizer(tokenizer)

    def examples(split: str, limit: int | None):
        rows = local_examples.get(split) or load_hub_examples(data_args, model_args, split)
        return rows[:limit] if limit else rows

    # ---- model: the masked-LM head's decoder is tied to the word embeddings (a bare encoder gets a new
    # head transform; its output matrix is still the embeddings) -------------------------------------------------
    with refuse_load_errors("--model_name_or_path", model_args.model_name_or_path):
        model = AutoModelForMaskedLM.from_pretrained(
            model_args.model_name_or_path, cache_dir=model_args.cache_dir, tie_word_embeddings=True
        )
    s2s = Seq2SeqLM(model, special)
    output_dir = Path(training_args.output_dir)
    if data_args.overwrite_output_dir:
        remove_finished_results(output_dir, PREDICTIONS_FILE)
    max_source, max_target = data_args.max_source_seq_length, data_args.max_target_seq_length

    # ---- train ---------------------------------------------------------------------------------------------------
    train_metrics: dict[str, float] = {}
    if training_args.do_train:
        train_features = encode(
            tokenizer, examples("train", data_args.max_train_samples), max_source, max_target, special
        )

        class Seq2SeqTrainer(Trainer):
            def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
                loss = s2s.loss(inputs)
                return (loss, None) if return_outputs else loss

        def collate(features):
            return s2s.batch([f["source_ids"] for f in features], [f["target_ids"] for f in features])

        # Our features are token-id lists, not the forward()'s arguments; Trainer would otherwise drop them.
        training_args.remove_unused_columns = False
        trainer = Seq2SeqTrainer(
            model=model,
            args=training_args,
            train_dataset=train_features,
            data_collator=collate,
            processing_class=tokenizer,
        )
        train_result = trainer.train()
        train_metrics = {**train_result.metrics, "train_samples": len(train_features)}
        trainer.save_model()  # the masked-LM model and the tokenizer: --do_eval runs can start from it
        trainer.log_metrics("train", train_metrics)

    # ---- decode and score ------------------------------------------------------------------------------------------
    eval_metrics: dict[str, float] = {}
    if training_args.do_eval:
        eval_examples = examples("validation", data_args.max_eval_samples)
        eval_features = encode(tokenizer, eval_examples, max_source, max_target, special)
        settings = BeamSettings(
            beam_size=gen_args.beam_size,
            max_target_length=max_target,
            min_target_length=gen_args.min_target_length,
            length_penalty=gen_args.length_penalty,
            ngram_size=gen_args.ngram_size if gen_args.forbid_duplicate_ngrams else 0,
            exempt_ids=exempt_ids,
        )
        device = training_args.device
        model.to(device)
        start = time.perf_counter()
        predictions = generate(s2s, eval_features, settings, gen_args.decode_batch_size, tokenizer, training_args.bf16)
        seconds = time.perf_counter() - start
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / PREDICTIONS_FILE).write_text("".join(text + "\n" for text in predictions), encoding="utf-8")
        references = [" ".join(example["tgt"].split()) for example in eval_examples]
        eval_metrics = score(predictions, references, metric_names(gen_args))
        # The references' likelihood: finer than ROUGE when the models barely differ in what they decode.
        eval_loss = target_cross_entropy(s2s, eval_features, gen_args.decode_batch_size, training_args.bf16)
        eval_metrics.update(
            eval_loss=round(eval_loss, 4),
            eval_perplexity=round(math.exp(min(eval_loss, 700.0)), 2),
            eval_samples=len(eval_examples),
            eval_decode_seconds=round(seconds, 2),
            eval_mean_prediction_words=round(sum(len(p.split()) for p in predictions) / max(len(predictions), 1), 2),
        )
        for key, value in sorted(eval_metrics.items()):
            print(f"  {key} = {value}")
        print(f"Predictions written to {output_dir / PREDICTIONS_FILE}", flush=True)

    # Result files last: their presence marks a finished run (see finetune.FINISHED_RUN_FILES). Not
    # finetune.save_results: this script keeps no trainer state to save (it never resumes) and its eval metrics
    # come from generation, not from Trainer.evaluate.
    output_dir.mkdir(parents=True, exist_ok=True)
    for name, metrics in (("train_results.json", train_metrics), ("eval_results.json", eval_metrics)):
        if metrics:
            (output_dir / name).write_text(json.dumps(metrics, indent=2) + "\n")
    all_results = {**train_metrics, **eval_metrics}
    (output_dir / "all_results.json").write_text(json.dumps(all_results, indent=2) + "\n")
    print(f"Results written to {output_dir / 'all_results.json'}", flush=True)
    return all_results


if __name__ == "__main__":
    main()
