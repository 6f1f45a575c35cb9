"""What ``pretune.yaml`` beside a saved model records: the task, the training, the settings.

Enough to reproduce a model and to trust it: the labels and columns it was trained on, its
validation metrics, how its training ended, the data's fingerprint, and every setting as
resolved. Predicting reads the task part back (regression's target scaling, a multi-label
model's decision threshold).
"""

from __future__ import annotations

import datetime as _dt
from typing import Any

from pretune._version import __version__
from pretune.config import RunConfig
from pretune.data.task import TaskData
from pretune.training.loop import TrainResult
from pretune.yamlfile import plain


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
            "eval_seconds": round(result.eval_seconds, 2),
            "planned_steps": result.planned_steps,  # a time limit fitted the run to fewer; else None
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


def decision_threshold(config: RunConfig, metrics: dict[str, float]) -> float:
    """Multi-label: the fixed ``threshold`` setting, else the one tuned on validation for the
    kept checkpoint (in its metrics), else 0.5."""
    if config.train.threshold is not None:
        return float(config.train.threshold)
    return float(metrics.get("threshold", 0.5))
