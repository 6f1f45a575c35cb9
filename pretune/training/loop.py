"""The training loop: one fine-tuning run, readable top to bottom.

``train`` knows nothing of Optuna. It calls ``on_eval(step, metrics)`` after each evaluation;
a search passes a callback that reports to its study and raises to prune. ``should_stop()`` is
asked after every optimizer step (a deadline, a signal). At the end the model holds the weights
of its best evaluation, which is the checkpoint a caller saves.

``train`` is the story; ``_Plan`` (steps and evaluation points), ``_Stepper`` (one optimizer
step) and ``_Evaluations`` (history, best checkpoint, patience) hold its details. Inside
``pretune.training.timing.measure()`` the phases of each step are timed; otherwise not.
"""

from __future__ import annotations

import itertools
import logging
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Iterable, Iterator

import numpy as np
import torch
from torch import nn

from pretune.config import TrainConfig, metric_direction
from pretune.models.transfer import frozen_blocks
from pretune.training import cpu_speed, privacy, timing
from pretune.training.device import autocast, pick_device, resolve_precision
from pretune.training.metrics import is_better
from pretune.training.objectives import Classification, Objective, class_weights
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
    eval_seconds: float = 0.0  # of ``seconds``: the evaluations' (the pace of training without)
    # The steps the run had planned, when ``train(seconds=...)`` fitted it to fewer; else None.
    planned_steps: int | None = None

    @property
    def failed(self) -> bool:
        return not self.best_metrics


def train(model: nn.Module, train_batches, valid_batches, settings: TrainConfig, *,
          on_eval: Callable[[int, dict], None] | None = None,
          should_stop: Callable[[], bool] | None = None, class_counts: np.ndarray | None = None,
          on_step: Callable[[int, int, float], None] | None = None,
          objective: Objective | None = None, seconds: float | None = None) -> TrainResult:
    """Train ``model`` on ``train_batches``, evaluating on ``valid_batches``.

    ``train_batches`` is a ``pretune.data.collate.Batches`` (``set_epoch``, ``len``, iteration
    yielding dicts of tensors with ``labels``); ``valid_batches`` likewise, unshuffled.
    ``objective`` is the task's loss, outputs and metrics (``pretune.training.objectives``);
    the default is single-label classification weighted by ``class_counts``. With
    ``seconds``, the run ends within about that time: its steps, warmup and decay are fitted to
    what the measured pace allows (``_TimeFit``).
    """
    objective = objective or Classification(class_counts)
    started = time.perf_counter()
    torch.manual_seed(settings.seed)
    device = pick_device()
    precision = _precision(settings, device)
    model.to(device)
    plan = _Plan.of(train_batches, settings)
    optimizer = build_optimizer(model, settings)
    private, optimizer, train_batches = _private(model, optimizer, train_batches, settings, plan)
    stepper = _Stepper(model, optimizer, build_schedule(optimizer, settings, lambda: plan.total_steps),
                       objective, settings, precision, device)
    evals = _Evaluations(settings)
    fit = _TimeFit(plan, settings, started + seconds) if seconds and private is None else None
    clock = timing.current()

    evaluating = [0.0]  # seconds spent evaluating

    def measure() -> dict[str, float]:
        began = time.perf_counter()
        with clock.phase("evaluation"):
            metrics = evaluate_model(model, valid_batches, precision=precision, device=device,
                                     objective=objective, settings=settings)
        evaluating[0] += time.perf_counter() - began
        return metrics

    def evaluate(step: int) -> bool:
        """Evaluate, keep the best weights, call on_eval; True when early stopping says stop."""
        metrics = measure()
        metrics.update(step=step, epoch=round(step / plan.steps_per_epoch, 4),
                       train_loss=evals.take_train_loss(), lr=optimizer.param_groups[0]["lr"],
                       seconds=time.perf_counter() - started)
        return evals.record(metrics, step, model, on_eval)

    with cpu_speed.training(model, device, dropout=private is None):
        _train_mode(model)
        step, epoch, stop_reason, done = 0, 0, COMPLETED, False
        while not done:
            evaluated_at, epoch_step = -1, 0
            for group in clock.iterate(plan.groups(train_batches, epoch)):
                outcome, group_loss = stepper.step(group)  # forward, backward, clip, step
                if outcome == _SKIPPED:
                    continue
                if outcome is not None:
                    stop_reason = outcome
                    break
                step, epoch_step = step + 1, epoch_step + 1
                evals.add_train_loss(group_loss)
                if fit is not None:
                    fit.update(step, evaluating[0], len(evals.history))
                if on_step is not None:
                    on_step(step, plan.total_steps, group_loss)
                if plan.eval_due(step, epoch_step) and step < plan.total_steps:
                    evaluated_at = step
                    if evaluate(step):
                        stop_reason = EARLY_STOPPING
                        break
                if step >= plan.total_steps:
                    break
                if should_stop is not None and should_stop():
                    stop_reason = STOPPED
                    break
            epoch += 1
            done = stop_reason != COMPLETED or step >= plan.total_steps
            # Evaluate at each epoch's end (and at the very end) unless this step just was.
            if evaluated_at != step and step > 0 and stop_reason in (COMPLETED, STOPPED):
                if (not settings.eval_steps or done) and evaluate(step) and not done:
                    stop_reason, done = EARLY_STOPPING, True

        optimizer.zero_grad(set_to_none=True)
        if private is not None:
            private.detach()
    soup = _keep_best(model, evals, should_stop, measure)
    if stop_reason == COMPLETED and settings.max_steps is not None and step >= settings.max_steps:
        log.info("stopped at max_steps=%d", settings.max_steps)
    return TrainResult(evals.best_metrics, evals.best_step, stop_reason, step,
                       round(step / plan.steps_per_epoch, 4), time.perf_counter() - started,
                       evals.history, precision, soup, private and private.report(),
                       evaluating[0], fit and fit.fitted())


FIT_PACE_STEPS = 5  # a run with a time limit measures its pace from this step on (caches warm)


class _TimeFit:
    """A run that must end by ``deadline`` (``train(seconds=...)``): after each step, the steps
    that fit the time left at the pace measured so far (training steps and evaluations apart,
    the last evaluation and the soup's kept), so that its warmup, decay and last evaluation
    fall inside the time instead of being cut. It moves ``plan.total_steps`` (which the
    schedule reads) between this step and the planned steps, never beyond them."""

    def __init__(self, plan: _Plan, settings: TrainConfig, deadline: float):
        self.plan, self.deadline, self.planned = plan, deadline, plan.total_steps
        self.between = settings.eval_steps or plan.steps_per_epoch / max(1, len(plan.eval_points))
        self.finals = 1 + (settings.checkpoint_soup if settings.checkpoint_soup > 1 else 0)
        self.mark: tuple[float, float, int] | None = None  # (clock, evaluation seconds, step)

    def update(self, step: int, evaluating: float, evaluations: int) -> None:
        now = time.perf_counter()
        if self.mark is None or step <= self.mark[2]:
            if step >= FIT_PACE_STEPS:
                self.mark = (now, evaluating, step)
            return
        began, evaluated, first = self.mark
        pace = (now - began - (evaluating - evaluated)) / (step - first)
        per_eval = evaluating / evaluations if evaluations else 0.0
        left = self.deadline - now - self.finals * per_eval
        more = int(left / (pace + per_eval / self.between)) if left > 0 else 0
        fitted = min(self.planned, step + more)  # this step, when no other fits
        if fitted < self.planned and self.plan.total_steps == self.planned:
            log.info("the time limit ends the run at step %d of %d (%.2fs a step)", fitted,
                     self.planned, pace)
        self.plan.total_steps = fitted

    def fitted(self) -> int | None:
        """The planned steps, when the run was fitted to fewer; else None."""
        return self.planned if self.plan.total_steps < self.planned else None


@dataclass
class _Plan:
    """How the training rows become optimizer steps, and when evaluations fall.

    Gradient accumulation: a "full" batch accumulates every micro-batch of the epoch. An epoch
    is a pass over the training rows; with a ``data_fraction`` below 1, that part of one: the
    passes run on, reshuffled at each start, and an epoch takes the next ``steps_per_epoch``
    groups of them. Evaluations come every ``eval_steps`` optimizer steps, or else
    ``evals_per_epoch`` times an epoch at evenly spaced points (the last at its end).
    """

    settings: TrainConfig
    accum: int
    steps_per_epoch: int
    total_steps: int
    eval_points: set[int]
    passes: Iterator | None = None

    @classmethod
    def of(cls, batches, settings: TrainConfig) -> "_Plan":
        accum = len(batches) if settings.batch_size == "full" else settings.grad_accum
        steps_per_epoch = max(1, math.ceil(len(batches) * settings.data_fraction / accum))
        total_steps = math.ceil(settings.epochs * steps_per_epoch)
        if settings.max_steps is not None:
            total_steps = min(total_steps, settings.max_steps)
        n_evals = min(settings.evals_per_epoch, steps_per_epoch)
        points = {math.ceil(k * steps_per_epoch / n_evals) for k in range(1, n_evals + 1)}
        passes = _passes(batches, accum) if settings.data_fraction < 1 else None
        return cls(settings, accum, steps_per_epoch, total_steps, points, passes)

    def groups(self, batches, epoch: int) -> Iterable[list[dict]]:
        """The micro-batch groups (one optimizer step each) of epoch ``epoch``."""
        if self.passes is not None:
            return itertools.islice(self.passes, self.steps_per_epoch)
        batches.set_epoch(epoch)
        return _groups(batches, self.accum)

    def eval_due(self, step: int, epoch_step: int) -> bool:
        if self.settings.eval_steps:
            return step % self.settings.eval_steps == 0
        return epoch_step in self.eval_points


def _precision(settings: TrainConfig, device: torch.device) -> str:
    # DP-SGD computes per-example gradients in fp32: "auto" means fp32 under DP.
    return resolve_precision("fp32" if privacy.enabled(settings) else settings.precision, device)


def _private(model: nn.Module, optimizer, train_batches, settings: TrainConfig, plan: _Plan):
    """Differential privacy, when the settings ask for it: per-example clipping and noise
    around ``optimizer``, and Poisson-sampled batches, which ``plan`` then passes over when an
    epoch is a part of a pass. Returns (the DP state or None, the optimizer, the batches)."""
    if not privacy.enabled(settings):
        return None, optimizer, train_batches
    private = privacy.attach(model, optimizer, train_batches, settings, plan.total_steps)
    if plan.passes is not None:
        plan.passes = _passes(private.batches, plan.accum)
    return private, private.optimizer, private.batches


_SKIPPED = "skipped"  # an fp16 step that overflowed: the scaler skipped it


class _Stepper:
    """One optimizer step: forward and backward over a group of micro-batches, each weighted by
    its size, then clipping, the gradient checks, the step and the schedule."""

    def __init__(self, model: nn.Module, optimizer, scheduler, objective: Objective,
                 settings: TrainConfig, precision: str, device: torch.device):
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.settings, self.precision, self.device = settings, precision, device
        self.loss_fn = objective.loss_fn(settings, device)
        self.uses_index = objective.uses_index
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.weights = penalized_weights(model)
        self.max_norm = settings.max_grad_norm or math.inf
        # fp16 (GPUs without bf16) needs loss scaling; with any other precision this is a no-op.
        self.scaler = torch.amp.GradScaler(device.type, enabled=precision == "fp16")
        self.clock = timing.current()

    def forward_backward(self, group: list[dict]) -> float:
        """Accumulate the gradients of ``group``; its loss (penalty included)."""
        clock, n_group, group_loss = self.clock, sum(len(b["labels"]) for b in group), 0.0
        for i, batch in enumerate(group):
            with clock.phase("data"):
                clock.count("train", batch)
                index = batch.get("index")  # rows of the split: a teacher's logits (distill)
                batch = {k: v.to(self.device) for k, v in batch.items() if k != "index"}
                labels = batch.pop("labels")
            with clock.phase("forward"):
                with autocast(self.precision, self.device):
                    logits = self.model(**batch).logits
                loss = (self.loss_fn(logits.float(), labels, index) if self.uses_index
                        else self.loss_fn(logits.float(), labels)) * (len(labels) / n_group)
                if i == len(group) - 1:
                    extra = penalty(self.weights, self.settings)
                    if extra is not None:
                        loss = loss + extra
            with clock.phase("backward"):
                self.scaler.scale(loss).backward()
            group_loss += loss.item()
        return group_loss

    def step(self, group: list[dict]) -> tuple[str | None, float]:
        """Train on ``group``: what became of the step, and the group's loss. None when the
        step was taken, ``_SKIPPED`` when fp16 loss scaling skipped it, else the reason to stop
        (the loss is not finite, the gradient exploded or vanished)."""
        loss = self.forward_backward(group)
        if not math.isfinite(loss):
            return NAN_LOSS, loss
        return self.optimizer_step(), loss

    def optimizer_step(self) -> str | None:
        """Clip, check the gradient and step (see ``step``)."""
        with self.clock.phase("optimizer"):
            optimizer, scaler, s = self.optimizer, self.scaler, self.settings
            scaler.unscale_(optimizer)
            grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.max_norm))
            if scaler.is_enabled() and not math.isfinite(grad_norm):
                scaler.step(optimizer)  # skips the step and lowers the scale: fp16 overflowed
                scaler.update()
                optimizer.zero_grad(set_to_none=True)
                return _SKIPPED
            if not math.isfinite(grad_norm) or grad_norm > s.grad_norm_max:
                return EXPLODING_GRADIENT
            if grad_norm < s.grad_norm_min:
                return VANISHING_GRADIENT
            scaler.step(optimizer)
            scaler.update()
            self.scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            return None


class _Evaluations:
    """The evaluations of a run: their history, the best one (patience counts evaluations
    since it), the best few checkpoints (``checkpoint_soup``), and the training loss since the
    last evaluation."""

    def __init__(self, settings: TrainConfig):
        self.metric, self.min_delta, self.patience = settings.metric, settings.min_delta, settings.patience
        self.top = TopCheckpoints(settings.checkpoint_soup, settings.metric, settings.min_delta)
        self.history: list[dict] = []
        self.best_score: float | None = None
        self.best_metrics: dict[str, float] = {}
        self.best_step, self.since_best = 0, 0
        self.loss_sum, self.loss_n = 0.0, 0

    def add_train_loss(self, loss: float) -> None:
        self.loss_sum, self.loss_n = self.loss_sum + loss, self.loss_n + 1

    def take_train_loss(self) -> float:
        """The mean training loss of the steps since the last evaluation (and start anew)."""
        mean = self.loss_sum / max(self.loss_n, 1)
        self.loss_sum, self.loss_n = 0.0, 0
        return mean

    def record(self, metrics: dict, step: int, model: nn.Module,
               on_eval: Callable[[int, dict], None] | None) -> bool:
        """Add an evaluation, copy the weights when they may be kept, and call ``on_eval``.
        True when early stopping says stop (``patience`` evaluations without improvement)."""
        score = metrics[self.metric]
        self.history.append(metrics)
        log.info("step %d: %s %.4f", step, self.metric, score)
        if self.top.wants(score):
            self.top.offer(Ingredient(score, metrics, _trainable_state(model), step))
        if is_better(score, self.best_score, self.metric, self.min_delta):
            self.best_score, self.best_metrics, self.best_step, self.since_best = score, metrics, step, 0
        else:
            self.since_best += 1
        if on_eval is not None:
            on_eval(step, metrics)
        return self.patience is not None and self.since_best >= self.patience


def _keep_best(model: nn.Module, evals: _Evaluations, should_stop: Callable[[], bool] | None,
               taste: Callable[[], dict[str, float]]) -> list[int] | None:
    """Load the kept weights into ``model`` (eval mode): the best evaluation's, or with
    ``checkpoint_soup`` > 1 a greedy soup of the best few when it scores at least as well.
    Returns the soup's steps, or None when the best checkpoint is kept alone."""
    top, soup, made = evals.top, None, None
    if len(top.kept) > 1 and not (should_stop is not None and should_stop()):
        def score(state) -> dict[str, float]:
            model.load_state_dict(state, strict=False)
            return taste()

        made = greedy_soup(top.kept, score, evals.metric, should_stop=should_stop)
        if len(made.members) > 1:
            soup = [int(m) for m in made.members]
            evals.best_metrics = {**top.best.metrics, **made.metrics}
    if top.best is not None:
        model.load_state_dict(made.state if soup else top.best.state, strict=False)
    model.eval()
    return soup


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
    clock = timing.current()
    for batch in batches:
        clock.count("eval", batch)
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
