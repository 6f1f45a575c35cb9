"""One whole fine-tuning run: data, model, loop, and the saved model directory.

``fit`` is what ``pretune train`` and every trial of a search run. ``predict`` is what
``pretune predict`` runs. Both speak in ``RunConfig`` and paths; neither knows about Optuna.
"""

from __future__ import annotations

import datetime as _dt
import logging
import os
import random
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from pretune._version import __version__
from pretune.config import RunConfig, validate
from pretune.yamlfile import plain
from pretune.data.collate import Batches
from pretune.data.task import Split, TaskData, load_task, read_inputs
from pretune.data.tokenize import choose_max_length, encode
from pretune.models import build_model, merge_lora
from pretune.models.io import load_model_dir, resolve_model_dir, save_model
from pretune.training.device import pick_device, resolve_precision, set_threads
from pretune.training.loop import TrainResult, predict_proba, train

log = logging.getLogger(__name__)

# Micro-batch size used to accumulate a "full" batch (plain gradient descent).
FULL_BATCH_MICRO = 64


@dataclass
class FitResult:
    config: RunConfig  # as resolved: max_length filled in
    metrics: dict[str, float]  # validation metrics of the saved (best) checkpoint
    train_result: TrainResult
    label_names: list[str]
    path: Path | None  # the saved model directory, if one was written
    model: Any = None  # the trained model (best weights), in eval mode
    tokenizer: Any = None


def data_seed(config: RunConfig) -> int:
    """The seed that samples and splits the data: ``data_seed``, else the run's seed."""
    d = config.data.data_seed
    return config.train.seed if d is None else d


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def fit(
    config: RunConfig,
    out: str | Path | None = None,
    *,
    task: TaskData | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    keep_model: bool = True,
) -> FitResult:
    """Fine-tune ``config.model.model`` on ``config.data`` with ``config.train``.

    With ``out``, the best checkpoint is saved there as a model directory that loads with
    ``AutoModelForSequenceClassification.from_pretrained``, with ``pretune.yaml`` beside it.
    """
    validate(config)
    set_threads(config.train.threads)
    seed_everything(config.train.seed)
    if task is None:
        task = load_task(config.data, data_seed(config))

    model, tokenizer, transfer = build_model(config.model, len(task.label_names), task.label_names)
    log.info("transfer: %s", transfer)

    limit = position_limit(model)
    max_length = config.data.max_length or choose_max_length(_both(task), tokenizer, cap=limit)
    if limit is not None and max_length > limit:
        log.warning("max_length %d is more than the model's %d positions; using %d",
                    max_length, limit, limit)
        max_length = limit
    # Record what was resolved, so a config read back from pretune.yaml repeats this run.
    config = replace(config, data=replace(config.data, max_length=max_length,
                                          data_seed=data_seed(config)))
    train_enc = encode(task.train.texts, task.train.pairs, task.train.labels, tokenizer, max_length)
    valid_enc = encode(task.valid.texts, task.valid.pairs, task.valid.labels, tokenizer, max_length)

    t = config.train
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    micro = FULL_BATCH_MICRO if t.batch_size == "full" else t.batch_size
    train_batches = Batches(train_enc, micro, pad_id=pad_id, shuffle=True, seed=t.seed)
    valid_batches = Batches(valid_enc, t.eval_batch_size, pad_id=pad_id, shuffle=False)
    counts = np.bincount(task.train.labels, minlength=len(task.label_names))

    result = train(model, train_batches, valid_batches, t, on_eval=on_eval,
                   should_stop=should_stop, class_counts=counts, on_step=on_step)

    model = merge_lora(model)  # a plain transformers model from here on
    path = None
    if out is not None and not result.failed:
        path = save_model(model, tokenizer, Path(out), run_metadata(config, task, result))
    return FitResult(
        config=config, metrics=result.best_metrics, train_result=result,
        label_names=list(task.label_names), path=path,
        model=model if keep_model else None, tokenizer=tokenizer if keep_model else None,
    )


def valid_predictions(result: FitResult, task: TaskData) -> pd.DataFrame:
    """The kept model's predictions on the validation split: ``label``, ``prediction`` and
    ``prob_<label>`` per row, in the split's order (what a confusion matrix is drawn from)."""
    if result.model is None or result.tokenizer is None:
        raise ValueError("valid_predictions needs a FitResult that kept its model")
    tokenizer, config = result.tokenizer, result.config
    enc = encode(task.valid.texts, task.valid.pairs, task.valid.labels, tokenizer,
                 config.data.max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = Batches(enc, config.train.eval_batch_size, pad_id=pad_id, shuffle=False)
    device = next(result.model.parameters()).device
    probs, labels, _ = predict_proba(result.model, batches, device=device,
                                     precision=resolve_precision(config.train.precision, device))
    names = [str(n) for n in result.label_names]
    frame = pd.DataFrame({"label": [names[i] for i in labels],
                          "prediction": [names[i] for i in probs.argmax(axis=1)]})
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = probs[:, i]
    return frame


def _both(task: TaskData) -> Split:
    """Train and valid texts together: valid texts may be longer (SST-2's are whole sentences,
    its training rows mostly phrases), and truncating what the model is judged on hurts."""
    pairs = task.train.pairs + task.valid.pairs if task.train.pairs is not None else None
    return Split(task.train.texts + task.valid.texts, pairs,
                 np.concatenate([task.train.labels, task.valid.labels]))


def position_limit(model) -> int | None:
    """The longest input the model's position embeddings allow."""
    config = getattr(model, "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    if not limit:
        return None
    if "roberta" in str(getattr(config, "model_type", "")) or "camembert" in str(getattr(config, "model_type", "")):
        limit -= (getattr(config, "pad_token_id", 1) or 1) + 1  # positions start after padding_idx
    return int(limit)


def run_metadata(config: RunConfig, task: TaskData, result: TrainResult) -> dict:
    """What ``pretune.yaml`` beside a model records: enough to reproduce and to trust it."""
    return plain({
        "pretune_version": __version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "labels": list(map(str, task.label_names)),
        "columns": {
            "text": task.text_column,
            "text_pair": task.text_pair_column,
            "label": task.label_column,
        },
        "metric": config.train.metric,
        "metrics": dict(result.best_metrics),
        "training": {
            "stop_reason": result.stop_reason,
            "steps": result.steps,
            "best_step": result.best_step,
            "epochs": result.epochs,
            "seconds": round(result.seconds, 2),
            "precision": result.precision,
        },
        "data": {
            "fingerprint": task.fingerprint,
            "train_rows": len(task.train),
            "valid_rows": len(task.valid),
            "valid_source": task.valid_source,
        },
        "settings": config.to_dict(),
    })


def predict(
    model_dir: str | Path,
    source: str | Path,
    *,
    output: str | Path | None = None,
    batch_size: int = 64,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    precision: str = "fp32",
    on_batch: Callable[[int, int], None] | None = None,
) -> pd.DataFrame:
    """Predict labels and per-class probabilities for every row of ``source``.

    ``model_dir`` is a model directory or a run directory holding ``best/``. The result has
    the input's columns plus ``prediction`` and ``prob_<label>`` for each label, in input order;
    with ``output`` it is also written there (CSV, TSV, JSONL or Parquet by extension).
    """
    if output is not None:
        table_format(Path(output))  # a wrong extension fails before the work, not after
    model, tokenizer, meta = load_model_dir(resolve_model_dir(model_dir), allow_pickle=allow_pickle,
                                            trust_remote_code=trust_remote_code)
    columns = meta.get("columns") or {}
    texts, pairs, frame = read_inputs(
        str(source),
        text_column=text_column or columns.get("text"),
        text_pair_column=text_pair_column or columns.get("text_pair"),
        detect_pair=bool(text_pair_column or columns.get("text_pair")) or not columns,
    )
    settings = meta.get("settings", {})
    max_length = (settings.get("data") or {}).get("max_length") or position_limit(model) or 512
    enc = encode(texts, pairs, None, tokenizer, max_length)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = _Counting(Batches(enc, batch_size, pad_id=pad_id, shuffle=False), on_batch)
    device = pick_device()
    model.to(device)
    probs, _, _ = predict_proba(model, batches, precision=resolve_precision(precision, device),
                                device=device)
    id2label = model.config.id2label
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(probs.shape[1])]
    result = frame.reset_index(drop=True).copy()
    result["prediction"] = [names[i] for i in probs.argmax(axis=1)]
    for i, name in enumerate(names):
        result[f"prob_{name}"] = probs[:, i]
    if output is not None:
        write_table(result, Path(output))
    return result


class _Counting:
    """Wraps batches to report progress (done, total) after each one."""

    def __init__(self, batches, on_batch):
        self.batches, self.on_batch = batches, on_batch

    def __len__(self):
        return len(self.batches)

    def __iter__(self):
        for i, batch in enumerate(self.batches, 1):
            yield batch
            if self.on_batch is not None:
                self.on_batch(i, len(self.batches))


_TABLE_FORMATS = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".json": "jsonl",
                  ".parquet": "parquet", ".pq": "parquet"}


def table_format(path: Path) -> str:
    from pretune.errors import ConfigError

    kind = _TABLE_FORMATS.get(path.suffix.lower())
    if kind is None:
        raise ConfigError(
            f"--output must end in .csv, .tsv, .jsonl or .parquet, but got {path.name!r}. "
            f"Choose one of those extensions."
        )
    return kind


def write_table(frame: pd.DataFrame, path: Path) -> None:
    """Write ``frame`` to ``path`` in the format its extension names, atomically."""
    kind = table_format(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    if kind == "csv":
        frame.to_csv(tmp, index=False)
    elif kind == "tsv":
        frame.to_csv(tmp, index=False, sep="\t")
    elif kind == "jsonl":
        frame.to_json(tmp, orient="records", lines=True, force_ascii=False)
    else:
        frame.to_parquet(tmp, index=False)
    os.replace(tmp, path)
