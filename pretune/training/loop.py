"""The training loop: one fine-tuning run, readable top to bottom.

``train`` knows nothing of Optuna. It calls ``on_eval(step, metrics)`` after each evaluation;
a search passes a callback that reports to its study and raises to prune. ``should_stop()`` is
asked after every optimizer step (a deadline, a signal). At the end the model holds the weights
of its best evaluation, which is the checkpoint a caller saves.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from pretune.config import TrainConfig, metric_direction
from pretune.models.transfer import frozen_blocks
from pretune.training.device import autocast, pick_device, resolve_precision
from pretune.training.metrics import is_better
from pretune.training.objectives import Classification, Objective, class_weights
from pretune.training import privacy
from pretune.training.optimizers import build_optimizer
from pretune.training.regularizers import penalized_weights, penalty
from pretune.training.schedules import build_schedule
from pretune.training.soup import Ingredient, TopCheckpoints, greedy_soup

log = logging.getLogger(__name__)

# Why a run ended.
COMPLETED = "completed"
EARLY_STOPPING = "early_stopping"
NAN_LOSS = "nan_loss"
VANISHING_GRADIENT = "vanishing_gradient"
EXPLODING_GRADIENT = "exploding_gradient"
STOPPED = "stopped"  # should_stop() said so (a deadline)


@dataclass
class TrainResult:
    best_metrics: dict[str, float]  # validation metrics of the best evaluation ({} if none)
    best_step: int
    stop_reason: str
    steps: int
    epochs: float
    seconds: float
    history: list[dict] = field(default_factory=list)  # one row per evaluation
    precision: str = "fp32"
    # The steps whose weights were averaged into the kept model (checkpoint_soup), best first;
    # None when the best evaluation is kept alone.
    soup: list[int] | None = None
    # Differential privacy: the budget and the epsilon spent (pretune.training.privacy), or None.
    privacy: dict | None = None

    @property
    def failed(self) -> bool:
        return not self.best_metrics


def train(
    model: nn.Module,
    train_batches,
    valid_batches,
    settings: TrainConfig,
    *,
    on_eval: Callable[[int, dict], None] | None = None,
    should_stop: Callable[[], bool] | None = None,
    class_counts: np.ndarray | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    objective: Objective | None = None,
) -> TrainResult:
    """Train ``model`` on ``train_batches``, evaluating on ``valid_batches``.

    ``train_batches`` is a ``pretune.data.collate.Batches`` (``set_epoch``, ``len``, iteration
    yielding dicts of tensors with ``labels``); ``valid_batches`` likewise, unshuffled.
    ``objective`` is the task's loss, outputs and metrics (``pretune.training.objectives``);
    the default is single-label classification weighted by ``class_counts``.
    """
    objective = objective or Classification(class_counts)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    device = pick_device()
    # DP-SGD computes per-example gradients in fp32: "auto" means fp32 under DP.
    precision = resolve_precision("fp32" if privacy.enabled(settings) else settings.precision,
                                  device)
    model.to(device)

    # Gradient accumulation: a "full" batch accumulates every micro-batch of the epoch.
    accum = len(train_batches) if settings.batch_size == "full" else settings.grad_accum
    # An epoch is a pass over the training rows; with a data_fraction below 1, that part of one:
    # the passes run on, reshuffled at each start, and an epoch takes the next steps_per_epoch
    # groups of them.
    passes = _passes(train_batches, accum) if settings.data_fraction < 1 else None
    steps_per_epoch = max(1, math.ceil(len(train_batches) * settings.data_fraction / accum))
    total_steps = math.ceil(settings.epochs * steps_per_epoch)
    if settings.max_steps is not None:
        total_steps = min(total_steps, settings.max_steps)

    optimizer = build_optimizer(model, settings)
    # Differential privacy: per-example clipping and noise, Poisson-sampled batches.
    private = privacy.attach(model, optimizer, train_batches, settings, total_steps) \
        if privacy.enabled(settings) else None
    if private is not None:
        optimizer, train_batches = private.optimizer, private.batches
        passes = _passes(train_batches, accum) if passes is not None else None
    scheduler = build_schedule(optimizer, settings, total_steps)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    weights = penalized_weights(model)
    loss_fn = objective.loss_fn(settings, device)
    max_norm = settings.max_grad_norm or math.inf
    # fp16 (GPUs without bf16) needs loss scaling; with any other precision this is a no-op.
    scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")

    # Evaluate every eval_steps optimizer steps, or else evals_per_epoch times an epoch at
    # evenly spaced points of each epoch (the last at its end); and always at the very end.
    n_evals = min(settings.evals_per_epoch, steps_per_epoch)
    eval_points = {math.ceil(k * steps_per_epoch / n_evals) for k in range(1, n_evals + 1)}
    metric = settings.metric
    best_score: float | None = None
    best_metrics: dict[str, float] = {}
    top = TopCheckpoints(settings.checkpoint_soup, metric, settings.min_delta)
    best_step, evals_since_best = 0, 0
    history: list[dict] = []
    step, epoch, stop_reason = 0, 0, COMPLETED
    running_loss, running_n = 0.0, 0

    def evaluate() -> bool:
        """Evaluate, keep the best weights, call on_eval; True when early stopping says stop."""
        nonlocal best_score, best_metrics, best_step, evals_since_best
        nonlocal running_loss, running_n
        metrics = evaluate_model(model, valid_batches, precision=precision, device=device,
                                 objective=objective, settings=settings)
        metrics.update(step=step, epoch=round(step / steps_per_epoch, 4),
                       train_loss=running_loss / max(running_n, 1),
                       lr=optimizer.param_groups[0]["lr"], seconds=time.perf_counter() - started)
        running_loss, running_n = 0.0, 0
        history.append(metrics)
        log.info("step %d: %s %.4f", step, metric, metrics[metric])
        if top.wants(metrics[metric]):
            top.offer(Ingredient(metrics[metric], metrics, _trainable_state(model), step))
        if is_better(metrics[metric], best_score, metric, settings.min_delta):
            best_score, best_metrics, best_step, evals_since_best = metrics[metric], metrics, step, 0
        else:
            evals_since_best += 1
        if on_eval is not None:
            on_eval(step, metrics)
        return settings.patience is not None and evals_since_best >= settings.patience

    _train_mode(model)
    done = False
    while not done:
        evaluated_at, epoch_step = -1, 0
        if passes is None:
            train_batches.set_epoch(epoch)
        groups = (_groups(train_batches, accum) if passes is None
                  else itertools.islice(passes, steps_per_epoch))
        for group in groups:
            # One optimizer step over the micro-batches of a group, weighted by their size.
            n_group = sum(len(b["labels"]) for b in group)
            group_loss = 0.0
            for i, batch in enumerate(group):
                index = batch.get("index")  # rows of the split: a teacher's logits (distill)
                batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
                labels = batch.pop("labels")
                with autocast(precision, device):
                    logits = model(**batch).logits
                loss = (loss_fn(logits.float(), labels, index) if objective.uses_index
                        else loss_fn(logits.float(), labels)) * (len(labels) / n_group)
                if i == len(group) - 1:
                    extra = penalty(weights, settings)
                    if extra is not None:
                        loss = loss + extra
                scaler.scale(loss).backward()
                group_loss += loss.item()
            if not math.isfinite(group_loss):
                stop_reason = NAN_LOSS
                break
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, max_norm))
            if scaler.is_enabled() and not math.isfinite(grad_norm):
                scaler.step(optimizer)  # skips the step and lowers the scale: fp16 overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                continue
            if not math.isfinite(grad_norm) or grad_norm > settings.grad_norm_max:
                stop_reason = EXPLODING_GRADIENT
                break
            if grad_norm < settings.grad_norm_min:
                stop_reason = VANISHING_GRADIENT
                break
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            epoch_step += 1
            running_loss, running_n = running_loss + group_loss, running_n + 1
            if on_step is not None:
                on_step(step, total_steps, group_loss)

            due = (step % settings.eval_steps == 0) if settings.eval_steps else epoch_step in eval_points
            if due and step < total_steps:
                evaluated_at = step
                if evaluate():
                    stop_reason = EARLY_STOPPING
                    break
            if step >= total_steps:
                break
            if should_stop is not None and should_stop():
                stop_reason = STOPPED
                break
        epoch += 1
        done = stop_reason != COMPLETED or step >= total_steps
        # Evaluate at each epoch's end (and at the very end) unless this step just was.
        if evaluated_at != step and step > 0 and stop_reason in (COMPLETED, STOPPED):
            if (not settings.eval_steps or done) and evaluate() and not done:
                stop_reason, done = EARLY_STOPPING, True

    optimizer.zero_grad(set_to_none=True)
    if private is not None:
        private.detach()
    soup = None
    if len(top.kept) > 1 and not (should_stop is not None and should_stop()):
        def taste(state) -> dict[str, float]:
            model.load_state_dict(state, strict=False)
            return evaluate_model(model, valid_batches, precision=precision, device=device,
                                  objective=objective, settings=settings)

        made = greedy_soup(top.kept, taste, metric, should_stop=should_stop)
        if len(made.members) > 1:
            soup = [int(m) for m in made.members]
            best_metrics = {**top.best.metrics, **made.metrics}
    if top.best is not None:
        model.load_state_dict(made.state if soup else top.best.state, strict=False)
    model.eval()
    if stop_reason == COMPLETED and settings.max_steps is not None and step >= settings.max_steps:
        log.info("stopped at max_steps=%d", settings.max_steps)
    return TrainResult(
        best_metrics=best_metrics, best_step=best_step, stop_reason=stop_reason, steps=step,
        epochs=round(step / steps_per_epoch, 4), seconds=time.perf_counter() - started,
        history=history, precision=precision, soup=soup,
        privacy=private.report() if private is not None else None,
    )


@torch.no_grad()
def predict_proba(model: nn.Module, batches, *, precision: str = "fp32", device=None,
                  objective: Objective | None = None) -> tuple[np.ndarray, np.ndarray | None, float | None]:
    """Outputs in the data's original order, its labels if any, and mean loss. The outputs
    are the ``objective``'s: class probabilities (n, k) by default, per-label probabilities
    (n, k) for multi-label, values (n,) in the data's units for regression."""
    objective = objective or Classification()
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    chunks, indices, labels, loss_sum = [], [], [], 0.0
    for batch in batches:
        index = batch["index"]
        batch = {k: v.to(device) for k, v in batch.items() if k != "index"}
        y = batch.pop("labels", None)
        with autocast(precision, device):
            logits = model(**batch).logits.float()
        if y is not None:
            loss_sum += objective.eval_loss(logits, y)
            labels.append(y.cpu())
        chunks.append(objective.outputs(logits).cpu())
        indices.append(index)
    if was_training:
        _train_mode(model)
    order = torch.cat(indices).argsort()
    probs = _cat(chunks, 0.0)[order].numpy()
    if not labels:
        return probs, None, None
    y_all = _cat(labels, -100)[order].numpy()
    return probs, y_all, loss_sum / max(len(y_all), 1)


def evaluate_model(model: nn.Module, batches, *, precision: str = "fp32", device=None,
                   objective: Objective | None = None,
                   settings: TrainConfig | None = None) -> dict[str, float]:
    """The ``objective``'s metrics (classification by default) of ``model`` on ``batches``;
    ``settings`` gives multi-label evaluation its metric and threshold."""
    objective = objective or Classification()
    outputs, labels, loss = predict_proba(model, batches, precision=precision, device=device,
                                          objective=objective)
    return objective.metrics(outputs, labels, loss, settings)


def _cat(tensors: list[torch.Tensor], fill: float) -> torch.Tensor:
    """The batches' tensors joined along the examples; per-token ones (token classification,
    batches padded to their own widths) padded with ``fill`` to the widest first."""
    if not tensors or tensors[0].dim() < 2 or len({t.shape[1] for t in tensors}) == 1:
        return torch.cat(tensors)
    width = max(t.shape[1] for t in tensors)
    return torch.cat([nn.functional.pad(t, (0, 0) * (t.dim() - 2) + (0, width - t.shape[1]),
                                        value=fill) for t in tensors])


def _passes(batches, size: int):
    """The groups of ``size`` batches of pass 0, 1, 2, ... over ``batches``, endlessly, each
    pass in the order of its own epoch (``set_epoch``)."""
    for n in itertools.count():
        batches.set_epoch(n)
        yield from _groups(batches, size)


def _groups(batches: Iterable[dict], size: int):
    """Consecutive lists of ``size`` batches; the last may be shorter."""
    group: list[dict] = []
    for batch in batches:
        group.append(batch)
        if len(group) == size:
            yield group
            group = []
    if group:
        yield group


def _train_mode(model: nn.Module) -> None:
    """Train mode, except frozen embeddings and frozen layers stay in eval mode: they are a fixed
    feature extractor (no dropout), as the frozen-feature cache computes them."""
    model.train()
    for module in frozen_blocks(model):
        module.eval()


def _trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """A CPU copy of what training can change: trainable parameters and all buffers."""
    state = {n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
    state.update({n: b.detach().to("cpu", copy=True) for n, b in model.named_buffers()})
    return state


_class_weights = class_weights  # the name this module had for it


__all__ = ["train", "TrainResult", "evaluate_model", "predict_proba", "metric_direction"]
