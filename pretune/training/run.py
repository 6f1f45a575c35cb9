"""One whole fine-tuning run: data, model, loop, and the saved model directory.

``fit`` is what ``pretune train`` and every trial of a search run: it resolves the task, builds
the model, prepares its inputs (``pretune.training.inputs``), probes the head first for
``lp_ft``, trains (``pretune.training.loop``) and saves the kept model with its
``pretune.yaml`` (``pretune.training.metadata``). It speaks in ``RunConfig`` and paths and
knows nothing of Optuna. Predicting lives in ``pretune.training.predict``; its names are
importable from here too.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import random
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

from pretune.config import RunConfig, validate, with_task
from pretune.errors import ConfigError
from pretune.data import text_prep
from pretune.data.images import is_image_task
from pretune.data.task import TaskData, load_task
from pretune.models import apply_transfer, build_model, head_parameter_names, merge_lora
from pretune.models.features import frozen_depth, model_fingerprint, starting_at
from pretune.models.io import save_model
from pretune.training import memory, objectives, privacy
from pretune.training.caches import RunCaches
from pretune.training.device import pick_device, resolve_precision, set_threads
from pretune.training.inputs import _Prepared, _batches, _features_ready, prepare_inputs
from pretune.training.loop import TrainResult, train
from pretune.training.metadata import run_metadata
from pretune.training.tapt import adapted_source, with_source

# Importable from here, where they lived before: preparing inputs, metadata, predicting.
from pretune.data.outputs import label_sets, lists_as_json, table_format, write_table  # noqa: F401
from pretune.training.inputs import (  # noqa: F401
    position_limit, prepare_image_data, prepare_token_data, resolve_max_length, token_windows)
from pretune.training.loop import predict_proba  # noqa: F401
from pretune.training.metadata import decision_threshold, task_metadata  # noqa: F401
from pretune.training.predict import (  # noqa: F401
    _objective_of, model_outputs, predict, predictions_frame, valid_outputs, valid_predictions)

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
    seconds: float | None = None,
) -> FitResult:
    """Fine-tune ``config.model.model`` on ``config.data`` with ``config.train``.

    With ``out``, the best checkpoint is saved there as a model directory that loads with
    ``AutoModelForSequenceClassification.from_pretrained``, with ``pretune.yaml`` beside it.
    ``caches`` keeps tokenized data and frozen features for the next run on the same data (a
    search passes one for all its trials); without it, tokenized data is kept in this process
    and frozen features for this run only. With ``seconds``, the run (its setup included) ends
    within about that time, its schedule fitted to the steps the measured pace allows.
    """
    began = time.perf_counter()  # ``seconds`` counts the setup below too
    validate(config)
    memory.check_device_settings(config, pick_device())  # 8-bit and 4-bit need CUDA
    set_threads(config.train.threads)
    lp_ft = config.model.transfer == "lp_ft"
    # An lp_ft model is built (its head initialized) and probed under the data's seed, so that
    # every trial of a search shares one probe; its fine-tuning runs under the trial's seed.
    seed_everything(data_seed(config) if lp_ft else config.train.seed)
    config, task, objective = _task_of(config, task)
    caches = caches or RunCaches.for_one_run()
    lap = _Laps()

    model, tokenizer, transfer, model_id = _build(config, task, caches, lap)
    config, data = prepare_inputs(config, task, model, tokenizer, caches, image=is_image_task(task),
                                  model_id=model_id, data_seed=data_seed(config))
    lap("data")
    t = config.train
    # Frozen bottom layers: train from their cached output instead of running them every step.
    depth = _cacheable_depth(model, transfer, data) if t.feature_cache else None
    if depth is not None:
        depth = _features_ready(model, caches, data, depth)
        lap("features")
    probe_metrics = None
    if lp_ft:
        probe_metrics = _probe(model, config, caches, data, depth, should_stop, objective)
        apply_transfer(model, replace(config.model, transfer="full", reinit_layers=0))
        depth = None  # the whole network trains from here on
        seed_everything(t.seed)
        lap("probe")

    micro = FULL_BATCH_MICRO if t.batch_size == "full" else t.batch_size
    # Fit the run to memory: a smaller micro-batch with accumulation, or checkpointing.
    device = pick_device()
    config, micro, fitted = memory.fit_run(model, config, micro, device, frozen_depth=depth)
    t = config.train
    train_batches, valid_batches = _batches(model, caches, data, depth, micro, t.eval_batch_size,
                                            t.seed, augment=True)
    with starting_at(model, depth) if depth is not None else contextlib.nullcontext():
        if seconds is not None:  # what is left of it after the setup
            seconds = max(1.0, seconds - (time.perf_counter() - began))
        result = train(model, train_batches, valid_batches, t, on_eval=on_eval,
                       should_stop=should_stop, on_step=fitted.watch(on_step), objective=objective,
                       seconds=seconds)
    fitted.finish(device)
    lap("train")

    model = merge_lora(model)  # a plain transformers model from here on
    path = None
    if out is not None and not result.failed:
        path = save_model(model, tokenizer, Path(out), run_metadata(config, task, result))
    return FitResult(
        config=config, metrics=result.best_metrics, train_result=result,
        label_names=list(task.label_names), path=path,
        model=model if keep_model else None, tokenizer=tokenizer if keep_model else None,
        timings=lap.timings, feature_depth=depth, probe_metrics=probe_metrics,
        memory=fitted.to_dict(),
    )


def _task_of(config: RunConfig, task: TaskData | None) -> tuple[RunConfig, TaskData, objectives.Objective]:
    """The task as the run reads it (loaded when not given, its texts preprocessed), the config
    whose metric and loss follow the task's kind, and the task's objective (with a teacher's
    soft labels when distilling)."""
    if task is None:
        task = load_task(config.data, data_seed(config))
    task = text_prep.apply_to_task(task, config.data)  # lowercasing, stop words, stems
    config = with_task(config, task.kind)  # the metric and loss follow the task
    privacy.check(config, task.kind)  # settings DP-SGD cannot train with fail here
    objective = objectives.for_task(task, config.train, standardize=config.data.standardize_target)
    if config.train.distill_logits:  # a teacher's soft labels join the task's loss
        from pretune.training.distill import distillation

        objective = distillation(objective, task, config.train)
    return config, task, objective


def _build(config: RunConfig, task: TaskData, caches: RunCaches, lap: "_Laps"):
    """The model (on its device), its tokenizer or image processor, the transfer strategy
    applied, and the fingerprint that names its weights. With ``tapt_steps``, the model is first
    adapted to the task's texts (timed as ``tapt``)."""
    image = is_image_task(task)
    if image and config.model.tapt_steps:
        raise ConfigError(
            f"tapt_steps is masked-language-model pretraining on texts, but the data are images "
            f"and tapt_steps is {config.model.tapt_steps}. Leave tapt_steps at 0 for images."
        )
    with adapted_source(config, task, data_seed(config), caches.directory) as (source, tapt):
        if source is not None:
            lap("tapt")
        built = with_source(config, source)
        model, tokenizer, transfer = build_model(built.model, len(task.label_names),
                                                 task.label_names, problem_type=task.problem_type,
                                                 image=image, checkpoint=config.model)
    log.info("transfer: %s", transfer)
    model.to(pick_device())
    lap("model")
    return model, tokenizer, transfer, model_fingerprint(built.model.model, built.model.revision)


def _cacheable_depth(model, transfer, data) -> int | None:
    """How many frozen bottom layers the frozen-feature cache can stand in for, or None when
    it cannot serve this run (image inputs, text augmentation)."""
    depth = frozen_depth(model, transfer)
    if depth is not None and not isinstance(data, _Prepared):
        log.info("the frozen-feature cache takes token inputs; %s trains without it",
                 type(model).__name__)
        return None
    if depth is not None and data.augment is not None:
        log.info("text augmentation changes the inputs each epoch; training without the "
                 "frozen-feature cache")
        return None
    return depth


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


class _Laps:
    """Seconds per named part of a run: each call closes the part that ran since the last."""

    def __init__(self):
        self.timings: dict[str, float] = {}
        self.since = time.perf_counter()

    def __call__(self, name: str) -> None:
        now = time.perf_counter()
        self.timings[name] = round(self.timings.get(name, 0.0) + now - self.since, 4)
        self.since = now
