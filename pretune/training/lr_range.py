"""Learning-rate range test: a short sweep of increasing learning rates before a search.

Smith (2017, "Cyclical Learning Rates for Training Neural Networks", section 3.3) trains for a
few steps while the learning rate grows exponentially and watches the loss: it falls once the
rate is large enough to learn and blows up once the rate is too large. The rate at the lowest
(smoothed) loss is near the edge of stability; a tenth of it is a rate that trains fast and
safely (the rule fastai's ``lr_find`` popularized). A search centers its learning-rate range
there, for this model and this data, instead of on a range published for other models.

``lr_range_test`` sweeps a model in place and puts its weights back afterwards, so the caller's
model is unchanged. It also times the steps, which the search uses to plan its budget.
``range_test`` builds the model and batches from a ``RunConfig`` as a training run does.
"""

from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import time
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
import torch
from torch import nn

from pretune.config import RunConfig, TrainConfig
from pretune.training import cpu_speed
from pretune.training.device import autocast, pick_device, resolve_precision
from pretune.training.optimizers import build_optimizer

log = logging.getLogger(__name__)

MIN_LR = 1e-6
MAX_LR = 1e-2
STEPS = 50
SMOOTHING = 0.8  # exponential moving average of the loss (bias-corrected)
DIVERGE = 4.0  # stop once the smoothed loss is this many times its lowest value
MIN_POINTS = 8  # fewer finite steps than this give no suggestion


@dataclass
class RangeTest:
    """The sweep: learning rate and smoothed loss of each step, and what it suggests."""

    lrs: list[float] = field(default_factory=list)
    losses: list[float] = field(default_factory=list)  # smoothed, bias-corrected
    lr_at_min: float | None = None  # the rate of the lowest smoothed loss
    suggested: float | None = None  # lr_at_min / 10; None when the sweep said nothing
    steps: int = 0
    stop_reason: str = "completed"  # completed | diverged | time
    seconds: float = 0.0
    seconds_per_example: float | None = None  # training time per example (forward + backward)
    batch_size: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "RangeTest":
        names = {f for f in cls.__dataclass_fields__}
        return cls(**{k: v for k, v in raw.items() if k in names})


def lr_range_test(model: nn.Module, batches, settings: TrainConfig, *, min_lr: float = MIN_LR,
                  max_lr: float = MAX_LR, steps: int = STEPS,
                  max_seconds: float | None = None, objective=None) -> RangeTest:
    """Sweep ``model`` on ``batches`` with the optimizer of ``settings``, the rate growing
    from ``min_lr`` to ``max_lr`` in ``steps`` steps; restore the model's weights afterwards.

    With ``max_seconds`` the sweep stops when it has taken that long (``stop_reason="time"``);
    a sweep that neither finished nor diverged saw only low rates, so it suggests nothing and
    serves only to time a step. ``objective`` gives the task's loss (default: cross-entropy)."""
    if not 0 < min_lr < max_lr or steps < 2:
        raise ValueError(f"need 0 < min_lr < max_lr and steps >= 2, got {min_lr}, {max_lr}, {steps}")
    device = pick_device()
    precision = resolve_precision(settings.precision, device)
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    model.to(device)
    model.train()
    optimizer = build_optimizer(model, replace(settings, lr=min_lr))
    if objective is None:
        loss_fn: Any = nn.CrossEntropyLoss()
    else:  # the task's loss, without class weights or label smoothing
        loss_fn = objective.loss_fn(replace(settings, class_weights="none", label_smoothing=0.0),
                                    device)
    result = RangeTest(batch_size=int(settings.batch_size) if settings.batch_size != "full" else 0)
    step = functools.partial(_step, model, optimizer, loss_fn, precision, device,
                             settings.max_grad_norm or math.inf)
    started = time.perf_counter()
    examples = 0
    try:
        with cpu_speed.training(model, device):
            examples = _sweep(result, step, batches, steps, started, max_seconds, min_lr, max_lr)
    finally:
        result.seconds = time.perf_counter() - started
        model.load_state_dict(saved)
        optimizer.zero_grad(set_to_none=True)
        model.train(was_training)
    if examples:
        result.seconds_per_example = result.seconds / examples
    if len(result.losses) >= MIN_POINTS and result.stop_reason != "time":
        i = int(np.argmin(result.losses))
        result.lr_at_min = float(result.lrs[i])
        result.suggested = result.lr_at_min / 10
    log.info("lr range test: %d steps, lowest loss at lr %s, suggests %s", result.steps,
             result.lr_at_min, result.suggested)
    return result


def _sweep(result: RangeTest, step, batches, steps: int, started: float,
           max_seconds: float | None, min_lr: float, max_lr: float) -> int:
    """Take up to ``steps`` steps, the rate growing exponentially, recording each step's
    smoothed loss in ``result``; stop early when the loss diverges or time is up. Returns the
    examples trained on."""
    growth = (max_lr / min_lr) ** (1.0 / (steps - 1))
    avg, best, lr, examples = 0.0, math.inf, min_lr, 0
    for batch in _endless(batches):
        value, n = step(batch, lr)
        result.steps += 1
        examples += n
        if not math.isfinite(value):
            result.stop_reason = "diverged"
            break
        avg = SMOOTHING * avg + (1 - SMOOTHING) * value
        smoothed = avg / (1 - SMOOTHING ** result.steps)
        result.lrs.append(lr)
        result.losses.append(smoothed)
        best = min(best, smoothed)
        if result.steps > MIN_POINTS and smoothed > DIVERGE * best:
            result.stop_reason = "diverged"
            break
        if result.steps >= steps:
            break
        if max_seconds is not None and time.perf_counter() - started > max_seconds:
            result.stop_reason = "time"
            break
        lr *= growth
    return examples


def _step(model: nn.Module, optimizer, loss_fn, precision: str, device, max_norm: float,
          batch: dict, lr: float) -> tuple[float, int]:
    """One training step at rate ``lr``: its loss and the examples in it."""
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
    batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
    labels = batch.pop("labels")
    with autocast(precision, device):
        logits = model(**batch).logits
    loss = loss_fn(logits.float(), labels)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    params = [p for g in optimizer.param_groups for p in g["params"]]
    torch.nn.utils.clip_grad_norm_(params, max_norm)
    optimizer.step()
    return float(loss.item()), len(labels)


def _endless(batches):
    """The batches of epoch 0, 1, 2, ... one after the other (each pass in its own order)."""
    for epoch in itertools.count():
        batches.set_epoch(epoch)
        yield from batches


def range_test(config: RunConfig, task, *, steps: int = STEPS,
               max_seconds: float | None = None, caches=None) -> RangeTest:
    """Build the model and training batches of ``config`` (as a training run does) on the
    loaded ``task`` and sweep them. With ``caches`` (a ``RunCaches``), the tokenized data is the
    one the trials then reuse."""
    from pretune.data.collate import Batches
    from pretune.models import build_model
    from pretune.training.caches import RunCaches
    from pretune.training.device import set_threads
    from pretune.config import with_task
    from pretune.training import objectives
    from pretune.data import text_prep
    from pretune.data.images import is_image_task
    from pretune.training.inputs import (position_limit, prepare_image_data, resolve_max_length,
                                         token_windows)
    from pretune.training.run import FULL_BATCH_MICRO, seed_everything

    set_threads(config.train.threads)
    seed_everything(config.train.seed)

    caches = caches or RunCaches.for_one_run()
    image = is_image_task(task)
    task = text_prep.apply_to_task(task, config.data)
    config = with_task(config, task.kind)
    objective = objectives.for_task(task, config.train,
                                    standardize=config.data.standardize_target)
    model, tokenizer, _ = build_model(config.model, len(task.label_names), task.label_names,
                                      problem_type=task.problem_type, image=image)
    t = config.train
    micro = FULL_BATCH_MICRO if t.batch_size == "full" else t.batch_size
    if image:
        batches = prepare_image_data(config, task, tokenizer, caches).batches(
            micro, t.eval_batch_size, t.seed, augment=False)[0]
    elif task.kind == "token":
        max_length = config.data.max_length or position_limit(model) or 512
        enc = token_windows(replace(config, data=replace(config.data, max_length=max_length)),
                            task, tokenizer, "train", training=True).encoded
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = Batches(enc, micro, pad_id=pad_id, shuffle=True, seed=t.seed)
    else:
        max_length = resolve_max_length(config, task, model, tokenizer, caches)
        enc = caches.tokens.encode(task.train, tokenizer, max_length)
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        batches = Batches(enc, micro, pad_id=pad_id, shuffle=True, seed=t.seed)
    try:
        return lr_range_test(model, batches, replace(t, batch_size=micro), steps=steps,
                             max_seconds=max_seconds, objective=objective)
    finally:
        del model
