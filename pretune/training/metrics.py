"""Metrics of each task, computed from model outputs and true labels.

Every metric of a task takes the same inputs, so the objective metric is just a name
(``TrainConfig.metric``). Classification: precision and recall are macro-averaged; ROC AUC is
binary on the positive class, one-vs-rest macro-averaged for more classes. Regression: in the
data's own units. Multi-label: decisions at a threshold tuned on the evaluated data
(``tune_threshold``) unless one is given. Token classification: entities scored with seqeval's
strict definition (type and both ends right) on the words' tags.
"""

from __future__ import annotations

import math

import numpy as np
from sklearn import metrics as skm

from pretune.config import (LOWER_IS_BETTER, METRICS, MULTILABEL_METRICS, REGRESSION_METRICS,
                            TOKEN_METRICS)


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


# --- regression ----------------------------------------------------------------------------------


def regression_metrics(predictions: np.ndarray, targets: np.ndarray,
                       loss: float | None = None) -> dict[str, float]:
    """Every metric of ``REGRESSION_METRICS`` for predicted and true values (n,), both in the
    data's own units. Pearson and Spearman are NaN when either side is constant."""
    from scipy import stats

    pred = np.asarray(predictions, dtype=np.float64).reshape(-1)
    true = np.asarray(targets, dtype=np.float64).reshape(-1)
    mse = float(np.mean((pred - true) ** 2)) if len(true) else math.nan
    varied = len(true) > 1 and np.ptp(pred) > 0 and np.ptp(true) > 0
    out = {
        "r2": float(skm.r2_score(true, pred)) if len(true) > 1 else math.nan,
        "mse": mse,
        "rmse": math.sqrt(mse) if math.isfinite(mse) else math.nan,
        "mae": float(np.mean(np.abs(pred - true))) if len(true) else math.nan,
        "pearson": float(stats.pearsonr(pred, true)[0]) if varied else math.nan,
        "spearman": float(stats.spearmanr(pred, true)[0]) if varied else math.nan,
    }
    out["loss"] = float(loss) if loss is not None else mse
    assert set(out) == set(REGRESSION_METRICS)
    return out


# --- multi-label -----------------------------------------------------------------------------------

# Decision thresholds tried on the validation data: 0.05, 0.10, ..., 0.95.
THRESHOLDS = np.round(np.arange(0.05, 0.951, 0.05), 2)
F1_METRICS = ("f1_micro", "f1_macro", "f1_samples")


def f1_at_thresholds(probs: np.ndarray, targets: np.ndarray, thresholds: np.ndarray,
                     average: str) -> np.ndarray:
    """The F1 (``average`` micro, macro or samples, as scikit-learn's with zero_division=0) of
    deciding ``probs >= t``, for each threshold t; counts in NumPy, one pass per threshold."""
    y = np.asarray(targets, dtype=bool)
    probs = np.asarray(probs)
    axis = {"micro": None, "macro": 0, "samples": 1}[average]
    positives = y.sum(axis=axis)
    scores = []
    for t in np.asarray(thresholds, dtype=np.float64):
        pred = probs >= t
        tp = (pred & y).sum(axis=axis)
        denom = pred.sum(axis=axis) + positives  # 2 tp + fp + fn
        f1 = np.divide(2 * tp, denom, out=np.zeros(np.shape(denom)), where=denom > 0)
        scores.append(float(np.mean(f1)))
    return np.array(scores)


def tune_threshold(probs: np.ndarray, targets: np.ndarray, metric: str = "f1_micro",
                   thresholds: np.ndarray = THRESHOLDS) -> float:
    """The threshold of ``thresholds`` whose decisions have the best ``metric`` (an F1; any
    other metric tunes f1_micro) on ``probs`` against 0/1 ``targets``; ties go to the one
    nearest 0.5."""
    average = (metric if metric in F1_METRICS else "f1_micro").split("_", 1)[1]
    scores = f1_at_thresholds(probs, targets, thresholds, average)
    order = np.argsort(np.abs(np.asarray(thresholds) - 0.5), kind="stable")
    best = order[np.argmax(scores[order])]
    return float(thresholds[best])


def multilabel_metrics(probs: np.ndarray, targets: np.ndarray, loss: float | None = None, *,
                       metric: str = "f1_micro", threshold: float | None = None) -> dict[str, float]:
    """Every metric of ``MULTILABEL_METRICS`` for per-label probabilities and 0/1 targets
    (n, k), deciding at ``threshold``, or at the threshold tuned for ``metric`` when None (kept
    as ``threshold`` in the result). Precision and recall are macro-averaged over labels; ROC
    AUC is the macro average over labels that have both outcomes in ``targets``."""
    probs = np.asarray(probs, dtype=np.float64)
    y = np.asarray(targets, dtype=np.int64)
    if threshold is None:
        threshold = tune_threshold(probs, y, metric)
    pred = (probs >= threshold).astype(np.int64)
    kw = {"zero_division": 0}
    both = [j for j in range(y.shape[1]) if 0 < y[:, j].sum() < len(y)]
    out = {
        "f1_micro": float(skm.f1_score(y, pred, average="micro", **kw)),
        "f1_macro": float(skm.f1_score(y, pred, average="macro", **kw)),
        "f1_samples": float(skm.f1_score(y, pred, average="samples", **kw)),
        "precision": float(skm.precision_score(y, pred, average="macro", **kw)),
        "recall": float(skm.recall_score(y, pred, average="macro", **kw)),
        "subset_accuracy": float(skm.accuracy_score(y, pred)),
        "hamming_loss": float(skm.hamming_loss(y, pred)),
        "roc_auc": float(np.mean([skm.roc_auc_score(y[:, j], probs[:, j]) for j in both]))
        if both else math.nan,
    }
    clipped = np.clip(probs, 1e-7, 1 - 1e-7)
    bce = -np.mean(y * np.log(clipped) + (1 - y) * np.log(1 - clipped))
    out["loss"] = float(loss) if loss is not None else float(bce)
    assert set(out) == set(MULTILABEL_METRICS)
    out["threshold"] = float(threshold)
    return out


# --- token classification --------------------------------------------------------------------------

SEQEVAL_SCHEMES = {"IOB1": "IOB1", "IOB2": "IOB2", "BIOES": "IOBES"}


def tag_sequences(probs: np.ndarray, labels: np.ndarray,
                  label_names: list[str]) -> tuple[list[list[str]], list[list[str]]]:
    """(true, predicted) tag sequences, one per example, from per-token ``probs`` (n, tokens,
    tags) and ``labels`` (n, tokens): the positions whose label is not -100, in order."""
    names = np.asarray([str(n) for n in label_names], dtype=object)
    labels = np.asarray(labels)
    preds = np.asarray(probs).argmax(axis=-1)
    true, pred = [], []
    for y, p in zip(labels, preds):
        keep = y != -100
        if keep.any():
            true.append(names[y[keep]].tolist())
            pred.append(names[p[keep]].tolist())
    return true, pred


def entity_report(true: list[list[str]], pred: list[list[str]], scheme: str = "IOB2"
                  ) -> dict[str, dict[str, float]]:
    """seqeval's strict entity-level precision, recall, F1 and support per entity type, and
    their ``micro avg``."""
    from seqeval import scheme as schemes
    from seqeval.metrics import classification_report

    return classification_report(true, pred, mode="strict", output_dict=True, zero_division=0,
                                 scheme=getattr(schemes, SEQEVAL_SCHEMES.get(scheme, "IOB2")))


def token_metrics(probs: np.ndarray, labels: np.ndarray, label_names: list[str],
                  scheme: str = "IOB2", loss: float | None = None) -> dict[str, float]:
    """Every metric of ``TOKEN_METRICS``: strict entity-level precision, recall and F1,
    micro-averaged over entity types (seqeval), and the share of words tagged right."""
    true, pred = tag_sequences(probs, labels, label_names)
    words = sum(len(t) for t in true)
    right = sum(a == b for t, p in zip(true, pred) for a, b in zip(t, p))
    micro = entity_report(true, pred, scheme).get("micro avg", {}) if words else {}
    out = {
        "entity_f1": float(micro.get("f1-score", 0.0)),
        "entity_precision": float(micro.get("precision", 0.0)),
        "entity_recall": float(micro.get("recall", 0.0)),
        "token_accuracy": right / words if words else math.nan,
        "loss": float(loss) if loss is not None else math.nan,
    }
    assert set(out) == set(TOKEN_METRICS)
    return out


def entity_confusion(true: list[list[str]], pred: list[list[str]]
                     ) -> tuple[list[str], list[str], list[list[int]]]:
    """Where entities went, span by span: rows are true entity types plus "none" (predicted
    spans no true entity has), columns predicted types plus "none" (true spans nothing was
    predicted on); a count per (true, predicted) pair of an exact span."""
    from seqeval.metrics.sequence_labeling import get_entities

    pairs: dict[tuple[str, str], int] = {}
    for t, p in zip(true, pred):
        spans_t = {(s, e): k for k, s, e in get_entities(t)}
        spans_p = {(s, e): k for k, s, e in get_entities(p)}
        for span in spans_t.keys() | spans_p.keys():
            key = (spans_t.get(span, "none"), spans_p.get(span, "none"))
            pairs[key] = pairs.get(key, 0) + 1
    kinds = sorted({k for pair in pairs for k in pair} - {"none"})
    if not kinds:
        return [], [], []
    axis = kinds + ["none"]
    return axis, axis, [[pairs.get((a, b), 0) for b in axis] for a in axis]
