"""Classification metrics computed from predicted probabilities and true label ids.

Every metric takes the same inputs, so the objective metric is just a name
(``TrainConfig.metric``). Precision and recall are macro-averaged; ROC AUC is binary on the
positive class, one-vs-rest macro-averaged for more classes.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from pretune.config import LOWER_IS_BETTER, METRICS


def classification_metrics(probs: np.ndarray, labels: np.ndarray, loss: float | None = None) -> dict[str, float]:
    """All metrics of ``METRICS`` for ``probs`` (n, k) and integer ``labels`` (n,)."""
    probs = np.asarray(probs, dtype=np.float64)
    probs = probs / np.clip(probs.sum(axis=1, keepdims=True), 1e-12, None)  # float32 softmax drift
    labels = np.asarray(labels, dtype=np.int64)
    k = probs.shape[1]
    preds = probs.argmax(axis=1)
    every = list(range(k))
    out = {
        "accuracy": float((preds == labels).mean()) if len(labels) else math.nan,
        "f1_macro": float(skm.f1_score(labels, preds, labels=every, average="macro", zero_division=0)),
        "f1_micro": float(skm.f1_score(labels, preds, labels=every, average="micro", zero_division=0)),
        "precision": float(skm.precision_score(labels, preds, labels=every, average="macro", zero_division=0)),
        "recall": float(skm.recall_score(labels, preds, labels=every, average="macro", zero_division=0)),
        "roc_auc": roc_auc(probs, labels),
        "log_loss": float(skm.log_loss(labels, np.clip(probs, 1e-15, 1.0), labels=every)),
    }
    out["loss"] = float(loss) if loss is not None else out["log_loss"]
    assert set(out) == set(METRICS)
    return out


def roc_auc(probs: np.ndarray, labels: np.ndarray) -> float:
    """ROC AUC, or NaN when the labels hold a single class (the AUC is undefined then)."""
    present = np.unique(labels)
    if len(present) < 2:
        return math.nan
    if probs.shape[1] == 2:
        return float(skm.roc_auc_score(labels, probs[:, 1]))
    # One-vs-rest over the classes present; renormalize so each row sums to one over them.
    sub = probs[:, present]
    sub = sub / np.clip(sub.sum(axis=1, keepdims=True), 1e-12, None)
    if len(present) == 2:
        return float(skm.roc_auc_score(labels == present[1], sub[:, 1]))
    return float(skm.roc_auc_score(labels, sub, multi_class="ovr", average="macro", labels=present))


def is_better(new: float, old: float | None, metric: str, min_delta: float = 0.0) -> bool:
    """Whether ``new`` improves on ``old`` by more than ``min_delta`` for ``metric``."""
    if new is None or math.isnan(new):
        return False
    if old is None or math.isnan(old):
        return True
    if metric in LOWER_IS_BETTER:
        return new < old - min_delta
    return new > old + min_delta
