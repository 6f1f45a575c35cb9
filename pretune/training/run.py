"""One whole fine-tuning run: data, model, loop, and the saved model directory.

``fit`` is what ``pretune train`` and every trial of a search run. ``predict`` is what
``pretune predict`` runs. Both speak in ``RunConfig`` and paths; neither knows about Optuna.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd
import torch

from pretune._version import __version__
from pretune.config import RunConfig, validate, with_task
from pretune.errors import ConfigError, DataError
from pretune.yamlfile import plain
from pretune.data import text_prep, tokens
from pretune.data.collate import Batches
from pretune.data.images import (ImageBatches, PixelSpec, image_cache, is_image_task,
                                 prepare_images, read_image_inputs)
from pretune.data.task import Split, TaskData, load_task, read_inputs
from pretune.data.tokenize import Encoded, encode
from pretune.data.outputs import label_sets, lists_as_json, table_format, write_table  # noqa: F401 (also imported from here)
from pretune.models import apply_transfer, build_model, head_parameter_names, merge_lora
from pretune.models.features import FeatureBatches, agrees, frozen_depth, model_fingerprint, starting_at
from pretune.models.io import load_model_dir, resolve_model_dir, save_model
from pretune.training.caches import RunCaches
from pretune.training.device import pick_device, resolve_precision, set_threads
from pretune.training.tapt import adapted_source, with_source
from pretune.training import memory, objectives, privacy
from pretune.training.loop import TrainResult, predict_proba, train
from pretune.training.metrics import tag_sequences

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
    # Seconds spent: "model" (load and set up), "data" (max_length and tokenization),
    # "features" (frozen features, when cached), "train" (the loop, evaluations included).
    timings: dict[str, float] = field(default_factory=dict)
    feature_depth: int | None = None  # the frozen layers the feature cache stood in for
    probe_metrics: dict[str, float] | None = None  # lp_ft: validation metrics of the probe
    memory: dict[str, Any] | None = None  # estimate against measured peak (training.memory)


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
    caches: RunCaches | None = None,
) -> FitResult:
    """Fine-tune ``config.model.model`` on ``config.data`` with ``config.train``.

    With ``out``, the best checkpoint is saved there as a model directory that loads with
    ``AutoModelForSequenceClassification.from_pretrained``, with ``pretune.yaml`` beside it.
    ``caches`` keeps tokenized data and frozen features for the next run on the same data (a
    search passes one for all its trials); without it, tokenized data is kept in this process
    and frozen features for this run only.
    """
    validate(config)
    memory.check_device_settings(config, pick_device())  # 8-bit and 4-bit need CUDA
    set_threads(config.train.threads)
    lp_ft = config.model.transfer == "lp_ft"
    # An lp_ft model is built (its head initialized) and probed under the data's seed, so that
    # every trial of a search shares one probe; its fine-tuning runs under the trial's seed.
    seed_everything(data_seed(config) if lp_ft else config.train.seed)
    if task is None:
        task = load_task(config.data, data_seed(config))
    image = is_image_task(task)
    task = text_prep.apply_to_task(task, config.data)  # lowercasing, stop words, stems
    config = with_task(config, task.kind)  # the metric and loss follow the task
    privacy.check(config, task.kind)  # settings DP-SGD cannot train with fail here
    objective = objectives.for_task(task, config.train, standardize=config.data.standardize_target)
    if config.train.distill_logits:  # a teacher's soft labels join the task's loss
        from pretune.training.distill import distillation

        objective = distillation(objective, task, config.train)
    caches = caches or RunCaches.for_one_run()
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    if image and config.model.tapt_steps:
        raise ConfigError(
            f"tapt_steps is masked-language-model pretraining on texts, but the data are images "
            f"and tapt_steps is {config.model.tapt_steps}. Leave tapt_steps at 0 for images."
        )
    with adapted_source(config, task, data_seed(config), caches.directory) as (source, tapt):
        if source is not None:
            clock = _lap(timings, "tapt", clock)
        built = with_source(config, source)
        model, tokenizer, transfer = build_model(built.model, len(task.label_names),
                                                 task.label_names, problem_type=task.problem_type,
                                                 image=image, checkpoint=config.model)
    log.info("transfer: %s", transfer)
    device = pick_device()
    model.to(device)
    clock = _lap(timings, "model", clock)

    if image:
        config = replace(config, data=replace(config.data, modality="image",
                                              data_seed=data_seed(config)))
        data: Any = prepare_image_data(config, task, tokenizer, caches)
    elif task.kind == "token":
        max_length = config.data.max_length or position_limit(model) or 512
        config = replace(config, data=replace(config.data, max_length=max_length,
                                              data_seed=data_seed(config), modality="text"))
        data = prepare_token_data(config, task, tokenizer,
                                  model_fingerprint(built.model.model, built.model.revision))
    else:
        max_length = resolve_max_length(config, task, model, tokenizer, caches)
        # Record what was resolved, so a config read back from pretune.yaml repeats this run.
        config = replace(config, data=replace(config.data, max_length=max_length,
                                              data_seed=data_seed(config),
                                              modality="text"))
        data = _Prepared(
            train=caches.tokens.encode(task.train, tokenizer, max_length),
            valid=caches.tokens.encode(task.valid, tokenizer, max_length),
            keys={name: caches.tokens.data_key(split, tokenizer, max_length)
                  for name, split in (("train", task.train), ("valid", task.valid))},
            pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
            model_id=model_fingerprint(built.model.model, built.model.revision),
            augment=_text_augment(config, task, tokenizer, max_length),
        )
    clock = _lap(timings, "data", clock)

    t = config.train
    micro = FULL_BATCH_MICRO if t.batch_size == "full" else t.batch_size

    # Frozen bottom layers: train from their cached output instead of running them every step.
    depth = frozen_depth(model, transfer) if t.feature_cache else None
    if depth is not None and not isinstance(data, _Prepared):
        log.info("the frozen-feature cache takes token inputs; %s trains without it",
                 type(model).__name__)
        depth = None
    if depth is not None and data.augment is not None:
        log.info("text augmentation changes the inputs each epoch; training without the "
                 "frozen-feature cache")
        depth = None
    if depth is not None:
        depth = _features_ready(model, caches, data, depth)
        clock = _lap(timings, "features", clock)

    probe_metrics = None
    if lp_ft:
        probe_metrics = _probe(model, config, caches, data, depth, should_stop, objective)
        apply_transfer(model, replace(config.model, transfer="full", reinit_layers=0))
        depth = None  # the whole network trains from here on
        seed_everything(t.seed)
        clock = _lap(timings, "probe", clock)

    # Fit the run to memory: a smaller micro-batch with accumulation, or checkpointing.
    config, micro, fitted = memory.fit_run(model, config, micro, device, frozen_depth=depth)
    t = config.train
    train_batches, valid_batches = _batches(model, caches, data, depth, micro, t.eval_batch_size,
                                            t.seed, augment=True)
    with starting_at(model, depth) if depth is not None else contextlib.nullcontext():
        result = train(model, train_batches, valid_batches, t, on_eval=on_eval,
                       should_stop=should_stop, on_step=fitted.watch(on_step), objective=objective)
    fitted.finish(device)
    clock = _lap(timings, "train", clock)

    model = merge_lora(model)  # a plain transformers model from here on
    path = None
    if out is not None and not result.failed:
        path = save_model(model, tokenizer, Path(out), run_metadata(config, task, result))
    return FitResult(
        config=config, metrics=result.best_metrics, train_result=result,
        label_names=list(task.label_names), path=path,
        model=model if keep_model else None, tokenizer=tokenizer if keep_model else None,
        timings=timings, feature_depth=depth, probe_metrics=probe_metrics,
        memory=fitted.to_dict(),
    )


@dataclass
class _Prepared:
    """Tokenized train and valid data, their cache keys, and what names the model's weights."""

    train: Encoded
    valid: Encoded
    keys: dict[str, str]
    pad_id: int
    model_id: str
    augment: Any = None  # AugmentedTextBatches maker: (batch_size, seed) -> batches


def _text_augment(config: RunConfig, task: TaskData, tokenizer, max_length: int):
    """A maker of training batches whose texts are edited each epoch, or None when the
    augmentation of ``config`` is off."""
    augment = text_prep.TextAugment.from_config(config.data)
    if not augment.active:
        return None
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    return lambda batch_size, seed: text_prep.AugmentedTextBatches(
        task.train, augment, tokenizer, max_length, batch_size, pad_id=pad_id, seed=seed)


def token_windows(config: RunConfig, task: TaskData, tokenizer, split: str, *,
                  training: bool = False):
    """``task``'s ``split`` (train or valid) as token windows (``pretune.data.tokens``), at the
    run's max_length and stride. Windows to train on (``training``) label every sub-token when
    the run says so; others only the first sub-token of each word (what scores read)."""
    rows = task.train if split == "train" else task.valid
    every = training and config.data.label_all_subtokens
    return tokens.encode_words(rows.words, rows.labels, tokenizer, config.data.max_length,
                               stride=config.data.stride, all_subtokens=every,
                               inside=tokens.inside_tags(task.label_names))


def prepare_token_data(config: RunConfig, task: TaskData, tokenizer, model_id: str) -> "_Prepared":
    """Train and valid sentences as token windows, keyed for the feature cache by their words
    and tags, the tokenizer and the windowing settings."""
    from pretune.data.cache import tokenizer_fingerprint

    d = config.data
    made = {name: token_windows(config, task, tokenizer, name, training=name == "train")
            for name in ("train", "valid")}
    keys = {}
    for name, split in (("train", task.train), ("valid", task.valid)):
        parts = [split.words, [row.tolist() for row in split.labels], tokenizer_fingerprint(tokenizer),
                 d.max_length, d.stride, d.label_all_subtokens and name == "train"]
        keys[name] = hashlib.sha256(json.dumps(parts).encode()).hexdigest()[:32]
    return _Prepared(train=made["train"].encoded, valid=made["valid"].encoded, keys=keys,
                     pad_id=tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0,
                     model_id=model_id)


def prepare_image_data(config: RunConfig, task: TaskData, processor, caches: RunCaches):
    """The task's images decoded at the processor's size (once per run directory)."""
    from pretune.data.augment import ImageAugment

    return prepare_images(task, processor, ImageAugment.from_config(config.data),
                          image_cache(caches.directory),
                          model_fingerprint(config.model.model, config.model.revision))


def _features_ready(model, caches: RunCaches, data: _Prepared, depth: int) -> int | None:
    """Compute (or find) the frozen layers' features of train and valid; ``depth``, or None when
    the model does not give its own outputs from them."""
    valid = caches.features_for(model, data.model_id, data.keys["valid"], data.valid, depth,
                                data.pad_id)
    if not agrees(model, data.valid, valid, pad_id=data.pad_id):
        log.warning("%s gives other outputs from cached features; training without the "
                    "feature cache", type(model).__name__)
        return None
    caches.features_for(model, data.model_id, data.keys["train"], data.train, depth, data.pad_id)
    log.info("training from cached features of the %d frozen layers", depth)
    return depth


def _batches(model, caches: RunCaches, data: _Prepared, depth: int | None, batch_size: int,
             eval_batch_size: int, seed: int, *, augment: bool = False) -> tuple[Batches, Batches]:
    """Shuffled training batches and ordered validation batches: of cached features when
    ``depth`` is given, else of tokens (or images). ``augment``: training batches augmented
    as the run's settings say (the lp_ft probe trains without)."""
    if not isinstance(data, _Prepared):  # images
        return data.batches(batch_size, eval_batch_size, seed, augment=augment)
    if depth is None:
        train = (data.augment(batch_size, seed) if augment and data.augment is not None
                 else Batches(data.train, batch_size, pad_id=data.pad_id, shuffle=True, seed=seed))
        return (train, Batches(data.valid, eval_batch_size, pad_id=data.pad_id, shuffle=False))
    feats = {name: caches.features_for(model, data.model_id, data.keys[name], enc, depth, data.pad_id)
             for name, enc in (("train", data.train), ("valid", data.valid))}
    return (FeatureBatches(feats["train"], data.train, batch_size, shuffle=True, seed=seed),
            FeatureBatches(feats["valid"], data.valid, eval_batch_size, shuffle=False))


PROBE_BATCH = 32  # the probe's recipe is fixed, so that every trial of a search can share it


def _probe(model, config: RunConfig, caches: RunCaches, data: _Prepared, depth: int | None,
           should_stop: Callable[[], bool] | None,
           objective: objectives.Objective | None = None) -> dict[str, float]:
    """Train the head of ``model`` on its frozen body (from cached features when ``depth`` is
    given), or take the head a run with the same data, model, head and probe settings trained
    before. Returns the probe's validation metrics."""
    m, t = config.model, config.train
    seed = data_seed(config)
    key = probe_key(config, data.model_id, data.keys, resolve_precision(t.precision, pick_device()))
    found = caches.probe(key)
    if found is not None:
        state, metrics = found
        model.load_state_dict(state, strict=False)
        log.info("lp_ft: reusing the probed head (%s %.4f)", t.metric, metrics.get(t.metric, float("nan")))
        return metrics
    settings = replace(
        t, optimizer="adamw", lr=m.probe_lr, epochs=m.probe_epochs, batch_size=PROBE_BATCH,
        grad_accum=1, max_steps=None, schedule="linear", warmup_ratio=0.0, min_lr_ratio=0.0,
        weight_decay=0.01, penalty="none", label_smoothing=0.0, class_weights="none",
        eval_steps=0, evals_per_epoch=1, patience=None, seed=seed)
    train_batches, valid_batches = _batches(model, caches, data, depth, PROBE_BATCH,
                                            t.eval_batch_size, seed)
    with starting_at(model, depth) if depth is not None else contextlib.nullcontext():
        result = train(model, train_batches, valid_batches, settings, should_stop=should_stop,
                       objective=objective)
    if result.stop_reason == "completed" and not result.failed:  # a cut-short probe is not kept
        names = set(head_parameter_names(model))
        head = {n: p.detach().to("cpu", copy=True)  # a copy: fine-tuning goes on in place
                for n, p in model.named_parameters() if n in names}
        caches.keep_probe(key, head, result.best_metrics)
    log.info("lp_ft: probed the head (%s %.4f)", t.metric, result.best_metrics.get(t.metric, float("nan")))
    return dict(result.best_metrics)


def probe_key(config: RunConfig, model_id: str, data_keys: dict[str, str], precision: str) -> str:
    """What decides a probed head: data, model, pooling, head, dropout, re-initialized layers,
    the probe's settings and seed, the metric that picks its best epoch, and the precision."""
    m = config.model
    parts = [model_id, data_keys, m.pooling, m.head_layers, m.head_width, m.head_activation, m.head_dropout,
             m.head_norm, m.head_init, m.dropout, m.reinit_layers, m.probe_lr, m.probe_epochs,
             data_seed(config), config.train.metric, config.train.eval_batch_size, precision,
             PROBE_BATCH]
    if config.data.task not in ("auto", "classification"):  # the task's loss trains the probe
        parts += [config.data.task, config.train.loss, config.train.huber_delta,
                  config.data.standardize_target]
    return hashlib.sha256(json.dumps(parts, default=str).encode()).hexdigest()[:32]


def _lap(timings: dict[str, float], name: str, since: float) -> float:
    now = time.perf_counter()
    timings[name] = round(timings.get(name, 0.0) + now - since, 4)
    return now


def valid_predictions(result: FitResult, task: TaskData,
                      caches: RunCaches | None = None) -> pd.DataFrame:
    """The kept model's predictions on the validation split, in the split's order: ``label``,
    ``prediction`` and ``prob_<label>`` per row (what a confusion matrix is drawn from);
    regression: ``label`` and ``prediction`` values; multi-label: label sets as JSON lists."""
    outputs, labels = valid_outputs(result, task, caches)
    return predictions_frame(outputs, labels, result.label_names, task.kind,
                             decision_threshold(result.config, result.metrics))


def valid_outputs(result: FitResult, task: TaskData,
                  caches: RunCaches | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The kept model's outputs on the validation split (``Objective.outputs``: probabilities,
    or values in the data's units) and the split's labels, in the split's order."""
    if result.model is None or result.tokenizer is None:
        raise ValueError("valid_predictions needs a FitResult that kept its model")
    return model_outputs(result.model, result.tokenizer, result.config, task, caches)


def model_outputs(model, tokenizer, config: RunConfig, task: TaskData,
                  caches: RunCaches | None = None, *, split: str = "valid",
                  objective: objectives.Objective | None = None
                  ) -> tuple[np.ndarray, np.ndarray]:
    """Outputs of ``model`` (trained with ``config``) on ``task``'s ``split`` (valid or train),
    read as the run read them (its preprocessing and max_length), and the split's labels.
    ``objective`` turns logits into outputs (default: ``task``'s, as the run trained)."""
    caches = caches or RunCaches.for_one_run()
    if is_image_task(task):
        if split != "valid":
            raise ValueError("model_outputs reads the validation split of image data only")
        batches = prepare_image_data(config, task, tokenizer, caches).batches(
            1, config.train.eval_batch_size, 0, augment=False)[1]
    else:
        task = text_prep.apply_to_task(task, config.data)  # as the run saw it
        rows = task.valid if split == "valid" else task.train
        enc = (token_windows(config, task, tokenizer, split).encoded if task.kind == "token"
               else caches.tokens.encode(rows, tokenizer, config.data.max_length))  # the run's own
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = Batches(enc, config.train.eval_batch_size, pad_id=pad_id, shuffle=False)
    device = next(model.parameters()).device
    objective = objective or objectives.for_task(task, config.train,
                                                 standardize=config.data.standardize_target)
    outputs, labels, _ = predict_proba(model, batches, device=device,
                                       precision=resolve_precision(config.train.precision, device),
                                       objective=objective)
    return outputs, labels


def predictions_frame(outputs: np.ndarray, labels: np.ndarray, label_names, kind: str,
                      threshold: float = 0.5) -> pd.DataFrame:
    """``label``, ``prediction`` and ``prob_<label>`` per row of ``outputs``; token
    classification: the true and predicted tags of each sentence, as JSON lists."""
    names = [str(n) for n in label_names]
    if kind == "regression":
        return pd.DataFrame({"label": labels, "prediction": outputs})
    if kind == "token":  # per window of tokens: the tags of the words it is read for
        true, pred = tag_sequences(outputs, labels, names)
        return pd.DataFrame({"label": [json.dumps(t) for t in true],
                             "prediction": [json.dumps(p) for p in pred]})
    if kind == "multilabel":
        frame = pd.DataFrame({"label": label_sets(labels, names, 0.5),
                              "prediction": label_sets(outputs, names, threshold)})
        for column in ("label", "prediction"):
            frame[column] = frame[column].map(json.dumps)
    else:
        frame = pd.DataFrame({"label": [names[i] for i in labels],
                              "prediction": [names[i] for i in outputs.argmax(axis=1)]})
    for i, name in enumerate(names):
        frame[f"prob_{name}"] = outputs[:, i]
    return frame


def decision_threshold(config: RunConfig, metrics: dict[str, float]) -> float:
    """Multi-label: the fixed ``threshold`` setting, else the one tuned on validation for the
    kept checkpoint (in its metrics), else 0.5."""
    if config.train.threshold is not None:
        return float(config.train.threshold)
    return float(metrics.get("threshold", 0.5))


def resolve_max_length(config: RunConfig, task: TaskData, model, tokenizer,
                       caches: RunCaches) -> int:
    """``max_length`` as given, else measured on the data (once per data and tokenizer, through
    ``caches``); never more than the model's positions."""
    limit = position_limit(model)
    max_length = config.data.max_length or caches.tokens.max_length(_both(task), tokenizer, cap=limit)
    if limit is not None and max_length > limit:
        log.warning("max_length %d is more than the model's %d positions; using %d",
                    max_length, limit, limit)
        max_length = limit
    return max_length


def _both(task: TaskData) -> Split:
    """Train and valid texts together: valid texts may be longer (SST-2's are whole sentences,
    its training rows mostly phrases), and truncating what the model is judged on hurts."""
    pairs = task.train.pairs + task.valid.pairs if task.train.pairs is not None else None
    return Split(task.train.texts + task.valid.texts, pairs,
                 np.concatenate([task.train.labels, task.valid.labels]))


def task_metadata(config: RunConfig, task: TaskData, metrics: dict[str, float]) -> dict:
    """What predicting needs to know of the task: its kind and transformers' problem_type;
    regression: the target scaling to undo; multi-label: the decision threshold."""
    out: dict[str, Any] = {"kind": task.kind, "problem_type": task.problem_type}
    if task.kind == "regression":
        mean, std = task.target_scale() if config.data.standardize_target else (0.0, 1.0)
        out.update(target_mean=mean, target_std=std, standardized=config.data.standardize_target)
    elif task.kind == "multilabel":
        out.update(threshold=decision_threshold(config, metrics),
                   threshold_tuned=config.train.threshold is None)
    elif task.kind == "token":
        out.update(scheme=task.scheme)
    return out


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
        "task": task_metadata(config, task, result.best_metrics),
        "training": {
            "stop_reason": result.stop_reason,
            "steps": result.steps,
            "best_step": result.best_step,
            "soup": result.soup,  # steps whose weights were averaged (checkpoint_soup)
            "epochs": result.epochs,
            "seconds": round(result.seconds, 2),
            "precision": result.precision,
        },
        "privacy": result.privacy,  # DP-SGD: the budget and the epsilon spent; None without
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
    image_column: str | None = None,
    allow_pickle: bool = False,
    trust_remote_code: bool = False,
    precision: str = "fp32",
    on_batch: Callable[[int, int], None] | None = None,
    entities: bool = False,
) -> pd.DataFrame:
    """Predict labels and per-class probabilities for every row of ``source``.

    ``model_dir`` is a model directory or a run directory holding ``best/``. The result has
    the input's columns plus ``prediction`` and ``prob_<label>`` for each label, in input order;
    with ``output`` it is also written there (CSV, TSV, JSONL or Parquet by extension).
    Regression: ``prediction`` is the value in the training data's units (no ``prob_``
    columns). Multi-label: ``prediction`` is the list of labels whose probability reaches the
    saved threshold (a JSON list in CSV and TSV files). For an
    image model, ``source`` is a folder of images or a table with a column of image paths
    (``image_column``, else the training run's, else detected). Text models apply the text
    preprocessing they were trained with (``pretune.data.text_prep``). Token classification:
    one row per sentence with its tags in ``prediction`` (see ``_predict_tokens``), and with
    ``entities`` its entity spans in ``entities``.
    """
    if output is not None:
        table_format(Path(output))  # a wrong extension fails before the work, not after
    model, tokenizer, meta = load_model_dir(resolve_model_dir(model_dir), allow_pickle=allow_pickle,
                                            trust_remote_code=trust_remote_code)
    columns = meta.get("columns") or {}
    settings = meta.get("settings", {})
    if (meta.get("task") or {}).get("kind", _kind_of(model.config)) == "token":
        result = _predict_tokens(model, tokenizer, settings, str(source), batch_size,
                                 text_column, precision, on_batch, entities=entities)
        if output is not None:
            write_table(result, Path(output))
        return result
    if not hasattr(tokenizer, "pad_token_id"):  # an image processor: an image model
        paths, frame = read_image_inputs(str(source), image_column=image_column,
                                         prefer=columns.get("text"))
        pixels = image_cache(None).pixels(paths, PixelSpec.of(tokenizer))
        batches = _Counting(ImageBatches(pixels, None, PixelSpec.of(tokenizer), batch_size,
                                         shuffle=False), on_batch)
    else:
        texts, pairs, frame = read_inputs(
            str(source),
            text_column=text_column or columns.get("text"),
            text_pair_column=text_pair_column or columns.get("text_pair"),
            detect_pair=bool(text_pair_column or columns.get("text_pair")) or not columns,
        )
        options = text_prep.TextOptions.from_settings(settings)  # as the model was trained
        texts = text_prep.preprocess(texts, options)
        pairs = None if pairs is None else text_prep.preprocess(pairs, options)
        max_length = (settings.get("data") or {}).get("max_length") or position_limit(model) or 512
        enc = encode(texts, pairs, None, tokenizer, max_length)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = _Counting(Batches(enc, batch_size, pad_id=pad_id, shuffle=False), on_batch)
    device = pick_device()
    model.to(device)
    task = meta.get("task") or {}
    kind = task.get("kind") or _kind_of(model.config)
    objective = _objective_of(kind, task)
    probs, _, _ = predict_proba(model, batches, precision=resolve_precision(precision, device),
                                device=device, objective=objective)
    result = frame.reset_index(drop=True).copy()
    if kind == "regression":
        result["prediction"] = probs
    else:
        id2label = model.config.id2label
        names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(probs.shape[1])]
        if kind == "multilabel":
            result["prediction"] = label_sets(probs, names, float(task.get("threshold", 0.5)))
        else:
            result["prediction"] = [names[i] for i in probs.argmax(axis=1)]
        for i, name in enumerate(names):
            result[f"prob_{name}"] = probs[:, i]
    if output is not None:
        write_table(result, Path(output))
    return result


def _kind_of(model_config) -> str:
    """The task of a model directory without pretune.yaml, from its config's architectures
    (token classification) and problem_type."""
    if any(str(a).endswith("ForTokenClassification")
           for a in getattr(model_config, "architectures", None) or ()):
        return "token"
    return {"regression": "regression", "multi_label_classification": "multilabel"}.get(
        getattr(model_config, "problem_type", None) or "", "classification")


def _predict_tokens(model, tokenizer, settings: dict, source: str, batch_size: int,
                    text_column: str | None, precision: str, on_batch, *,
                    entities: bool = False) -> pd.DataFrame:
    """``predict`` for a token classification model: one row per sentence of ``source`` (a
    table with a column of word lists, or texts, which are split into words), with its tags
    in ``prediction``, one per word (texts also get their words in ``tokens``). ``entities``:
    also each sentence's entities (type, character offsets and text, score) in ``entities``;
    offsets count in the input text, or in the words joined by spaces for word lists."""
    from pretune.data.readers import read_table

    frame = read_table(source)
    found = tokens.token_columns(frame, text=text_column)
    if found is not None:
        words, _ = tokens.sentences(frame, found[0], None, "--input")
        texts = [" ".join(w) for w in words]
        result = frame.reset_index(drop=True).copy()
    else:
        texts, _, frame = read_inputs(source, text_column=text_column, detect_pair=False)
        words = [tokens.split_words(t) for t in texts]
        empty = next((i for i, w in enumerate(words) if not w), None)
        if empty is not None:
            raise DataError(
                f"Token classification needs words to tag, but --input row "
                f"{empty + int(frame.attrs.get('first_row', 1))} has none. Remove that row."
            )
        result = frame.reset_index(drop=True).copy()
        result["tokens"] = words
    data = settings.get("data") or {}
    max_length = data.get("max_length") or position_limit(model) or 512
    windows = tokens.encode_words(words, None, tokenizer, max_length, stride=data.get("stride", 32))
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    batches = _Counting(Batches(windows.encoded, batch_size, pad_id=pad_id, shuffle=False), on_batch)
    device = pick_device()
    model.to(device)
    probs, _, _ = predict_proba(model, batches, precision=resolve_precision(precision, device),
                                device=device, objective=objectives.TokenClassification([]))
    id2label = model.config.id2label
    names = [str(id2label.get(i, id2label.get(str(i), i))) for i in range(probs.shape[-1])]
    outside = names.index("O") if "O" in names else 0
    per_word = tokens.word_predictions(windows, probs, [len(w) for w in words])
    result["prediction"] = [[names[int(row.argmax())] if row.sum() > 0 else names[outside]
                             for row in p] for p in per_word]
    if entities:
        result["entities"] = [tokens.entity_spans(text, w, tags, p.max(axis=1))
                              for text, w, tags, p in zip(texts, words, result["prediction"],
                                                          per_word)]
    return result


def _objective_of(kind: str, task: dict) -> objectives.Objective:
    """The objective that turns a saved model's logits into predictions: a regression model's
    standardization (from pretune.yaml) is undone here."""
    if kind == "regression":
        return objectives.Regression(float(task.get("target_mean", 0.0)),
                                     float(task.get("target_std", 1.0)))
    if kind == "multilabel":
        return objectives.MultiLabel()
    return objectives.Classification()


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
