"""What a task trains and judges: its loss, how logits become outputs, and its metrics.

The training loop is the same for every task; an ``Objective`` is the part that differs:

- ``Classification``: cross-entropy (class weights, label smoothing); outputs are softmax
  probabilities; ``classification_metrics``.
- ``Regression``: MSE, MAE or Huber on targets standardized with the training data's mean and
  standard deviation (``scale``); outputs are the model's single value brought back to the
  data's units (``value * std + mean``); ``regression_metrics`` in those units.
- ``MultiLabel``: binary cross-entropy per label (positive weights for ``class_weights``,
  label smoothing towards 0.5); outputs are per-label sigmoid probabilities;
  ``multilabel_metrics``, deciding at the threshold tuned on the evaluated data (or the fixed
  ``threshold`` setting).
- ``TokenClassification``: cross-entropy over the tokens that carry a word's tag (-100
  elsewhere; class weights against the many O tags, label smoothing); outputs are per-token
  softmax probabilities (examples, tokens, tags); ``token_metrics`` (seqeval, strict).
"""

from __future__ import annotations

from typing import Callable

import numpy as np
import torch
from torch import nn

from pretune.config import TrainConfig
from pretune.training.metrics import (classification_metrics, multilabel_metrics,
                                      regression_metrics, token_metrics)

LossFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


class Objective:
    """The task-specific part of training and evaluation (see the module docstring)."""

    kind = "classification"
    # True: the training loss also takes each example's row in the training split (the batch's
    # "index"), as (logits, labels, index); distillation looks up the teacher's logits by it.
    uses_index = False

    def loss_fn(self, settings: TrainConfig, device) -> LossFn:
        """The training loss of (float32 logits, labels): a mean over the batch."""
        raise NotImplementedError

    def eval_loss(self, logits: torch.Tensor, labels: torch.Tensor) -> float:
        """The evaluation loss of a batch, summed over its examples (no weights, no smoothing)."""
        raise NotImplementedError

    def outputs(self, logits: torch.Tensor) -> torch.Tensor:
        """What a prediction is: probabilities, or values in the data's units."""
        raise NotImplementedError

    def metrics(self, outputs: np.ndarray, labels: np.ndarray, loss: float | None,
                settings: TrainConfig | None = None) -> dict[str, float]:
        raise NotImplementedError


class Classification(Objective):
    kind = "classification"

    def __init__(self, class_counts: np.ndarray | None = None):
        self.class_counts = class_counts

    def loss_fn(self, settings: TrainConfig, device) -> LossFn:
        weight = class_weights(settings, self.class_counts, device)
        return nn.CrossEntropyLoss(weight=weight, label_smoothing=settings.label_smoothing)

    def eval_loss(self, logits, labels) -> float:
        return float(nn.functional.cross_entropy(logits, labels, reduction="sum"))

    def outputs(self, logits):
        return torch.softmax(logits, dim=-1)

    def metrics(self, outputs, labels, loss, settings=None):
        return classification_metrics(outputs, labels, loss)


class Regression(Objective):
    kind = "regression"

    def __init__(self, mean: float = 0.0, std: float = 1.0, loss: str = "mse",
                 huber_delta: float = 1.0):
        if not std > 0:
            raise ValueError(f"std must be positive, got {std}")
        self.mean, self.std = float(mean), float(std)
        self._eval_fn = regression_loss(loss, huber_delta)  # evaluation uses the training loss

    def _scaled(self, labels: torch.Tensor) -> torch.Tensor:
        return (labels.float() - self.mean) / self.std

    def loss_fn(self, settings: TrainConfig, device) -> LossFn:
        fn = regression_loss(settings.loss, settings.huber_delta)
        return lambda logits, labels: fn(logits.reshape(-1), self._scaled(labels).reshape(-1))

    def eval_loss(self, logits, labels) -> float:
        """The training loss (in standardized units), summed over the batch."""
        return float(self._eval_fn(logits.reshape(-1), self._scaled(labels).reshape(-1))
                     * len(labels))

    def outputs(self, logits):
        return logits.reshape(-1) * self.std + self.mean

    def metrics(self, outputs, labels, loss, settings=None):
        return regression_metrics(outputs, labels, loss)


class MultiLabel(Objective):
    kind = "multilabel"

    def __init__(self, positives: np.ndarray | None = None, rows: int | None = None):
        self.positives, self.rows = positives, rows  # per-label positive counts, of ``rows``

    def loss_fn(self, settings: TrainConfig, device) -> LossFn:
        pos_weight = None
        if settings.class_weights == "balanced" and self.positives is not None and self.rows:
            pos = np.maximum(np.asarray(self.positives, dtype=np.float64), 1.0)
            pos_weight = torch.tensor((self.rows - pos).clip(min=1.0) / pos, dtype=torch.float32,
                                      device=device)
        fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        smoothing = float(settings.label_smoothing)
        return lambda logits, labels: fn(logits, labels.float() * (1 - smoothing) + 0.5 * smoothing)

    def eval_loss(self, logits, labels) -> float:
        per_example = nn.functional.binary_cross_entropy_with_logits(
            logits, labels.float(), reduction="none").mean(dim=1)
        return float(per_example.sum())

    def outputs(self, logits):
        return torch.sigmoid(logits)

    def metrics(self, outputs, labels, loss, settings=None):
        metric = settings.metric if settings is not None else "f1_micro"
        threshold = settings.threshold if settings is not None else None
        return multilabel_metrics(outputs, labels, loss, metric=metric, threshold=threshold)


class TokenClassification(Objective):
    kind = "token"

    def __init__(self, label_names: list[str], scheme: str = "IOB2",
                 tag_counts: np.ndarray | None = None):
        self.label_names, self.scheme, self.tag_counts = list(label_names), scheme, tag_counts

    def loss_fn(self, settings: TrainConfig, device) -> LossFn:
        fn = nn.CrossEntropyLoss(weight=class_weights(settings, self.tag_counts, device),
                                 label_smoothing=settings.label_smoothing, ignore_index=-100)
        return lambda logits, labels: fn(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1))

    def eval_loss(self, logits, labels) -> float:
        """The mean loss of the batch's tagged tokens, counted once per example."""
        flat = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                           labels.reshape(-1), ignore_index=-100)
        return float(flat) * len(labels) if bool((labels != -100).any()) else 0.0

    def outputs(self, logits):
        return torch.softmax(logits, dim=-1)

    def metrics(self, outputs, labels, loss, settings=None):
        return token_metrics(outputs, labels, self.label_names, self.scheme, loss)


def regression_loss(name: str, delta: float = 1.0) -> nn.Module:
    """The regression loss called ``name`` (mse, mae, huber), averaged over examples."""
    if name in ("mse", "auto"):
        return nn.MSELoss()
    if name == "mae":
        return nn.L1Loss()
    if name == "huber":
        return nn.HuberLoss(delta=delta)
    raise ValueError(f"no regression loss named {name!r}")


def class_weights(settings: TrainConfig, counts: np.ndarray | None, device) -> torch.Tensor | None:
    """``class_weights="balanced"``: n / (k * count) per class, as in scikit-learn."""
    if settings.class_weights == "none" or counts is None:
        return None
    counts = np.maximum(np.asarray(counts, dtype=np.float64), 1.0)
    weights = counts.sum() / (len(counts) * counts)
    return torch.tensor(weights, dtype=torch.float32, device=device)


def for_task(task, settings: TrainConfig, *, standardize: bool = True) -> Objective:
    """The objective of a loaded ``TaskData`` trained with ``settings``: class counts, label
    positives and (with ``standardize``) the target scaling come from its training split."""
    kind = getattr(task, "kind", "classification")
    labels = task.train.labels
    if kind == "regression":
        mean, std = task.target_scale() if standardize else (0.0, 1.0)
        return Regression(mean, std, settings.loss, settings.huber_delta)
    if kind == "multilabel":
        return MultiLabel(np.asarray(labels).sum(axis=0), len(labels))
    if kind == "token":
        counts = np.bincount(np.concatenate(list(labels)), minlength=len(task.label_names))
        return TokenClassification(task.label_names, task.scheme or "IOB2", counts)
    return Classification(np.bincount(labels, minlength=len(task.label_names)))


__all__ = ["Objective", "Classification", "Regression", "MultiLabel", "TokenClassification",
           "for_task",
           "regression_loss", "class_weights"]
