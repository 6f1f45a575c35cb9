"""The numbers a report, ``pretune show`` and ``pretune export`` print, from a ``History``.

Plain pandas and scikit-learn: no plotting, no terminal formatting.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from pretune.errors import ConfigError
from pretune.outdir import atomic_write

EXPORT_FORMATS = ("csv", "json")


def format_value(value: Any) -> str:
    """A parameter or score as a person reads it: 3 significant digits for floats."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return ""
    if isinstance(value, (float, np.floating)):
        v = float(value)
        if v.is_integer() and abs(v) < 1e6:
            return str(int(v))
        return f"{v:.3g}"
    return str(value)


def format_seconds(seconds: float | None) -> str:
    if seconds is None or (isinstance(seconds, float) and math.isnan(seconds)):
        return ""
    seconds = float(seconds)
    if seconds < 60:
        return f"{seconds:.0f}s"
    minutes, s = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{s:02d}s"
    hours, m = divmod(minutes, 60)
    return f"{hours}h{m:02d}m"


def param_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c.startswith("params_")]


def outcome(row: pd.Series) -> str:
    """What happened to a trial, in words: complete, pruned at N epochs, failed: why."""
    state = str(row.get("state", ""))
    if state == "COMPLETE":
        return "complete (deadline)" if row.get("stop_reason") == "deadline" else "complete"
    if state == "PRUNED":
        epochs = row.get("epochs")
        at = f" at {format_value(float(epochs))} epochs" if _is_number(epochs) else ""
        return f"pruned{at}"
    if state == "FAIL":
        reason = row.get("fail_reason")
        return f"failed: {reason}" if isinstance(reason, str) and reason else "failed"
    return state.lower()


def summary(history) -> list[tuple[str, str]]:
    """(label, text) lines: the metric, the best trial and score, time spent, trials by state."""
    counts = history.counts
    lines = [("run", str(history.path)),
             ("metric", f"{history.metric} ({history.direction})")]
    if history.best_trial is not None and history.best_value is not None:
        lines.append(("best", f"trial {history.best_trial}: {history.metric} "
                              f"{history.best_value:.4f}"))
        lines.append(("best settings", ", ".join(
            f"{k}={format_value(v)}" for k, v in history.best_params.items()) or "(defaults)"))
    else:
        lines.append(("best", "no trial has completed"))
    wall = history.wall_seconds
    lines.append(("time", f"{format_seconds(history.trial_seconds)} in trials"
                          + (f", {format_seconds(wall)} from first start to last end"
                             if wall is not None else "")))
    tally = ", ".join(f"{n} {s.lower()}" for s, n in sorted(counts.items())) or "none"
    lines.append(("trials", f"{len(history.trials)} ({tally})"))
    if getattr(history, "final", None):
        lines.append(("final model", history.final))
    if history.plan:
        lines.append(("plan", history.plan))
    return lines


def top_trials(history, n: int = 10) -> pd.DataFrame:
    """The ``n`` best trials (complete first, then pruned, then failed) for display: number,
    best marker, score, outcome, seconds, peak memory, and the searched parameters in one
    ``name=value`` column."""
    ranked = history.ranked().head(n)
    params = param_columns(ranked)
    rows = []
    for _, r in ranked.iterrows():
        row = {"trial": int(r["number"]),
               "best": "*" if history.best_trial == int(r["number"]) else "",
               history.metric: f"{float(r['value']):.4f}" if _is_number(r["value"]) else "",
               "outcome": outcome(r)}
        row["seconds"] = format_seconds(r["seconds"]) if _is_number(r["seconds"]) else ""
        row["peak MB"] = format_value(round(float(r["peak_rss_mb"]))) if _is_number(r["peak_rss_mb"]) else ""
        row["parameters"] = " ".join(f"{c[len('params_'):]}={format_value(r[c])}" for c in params
                                     if format_value(r[c]) != "")
        rows.append(row)
    return pd.DataFrame(rows)


def classification_table(predictions: pd.DataFrame, labels: list[str] | None = None
                         ) -> tuple[list[str], np.ndarray, pd.DataFrame]:
    """Label names, the confusion matrix (rows: true label, columns: predicted) and per-class
    precision, recall, F1 and support, from a frame with ``label`` and ``prediction``."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    y_true = predictions["label"].astype(str).to_numpy()
    y_pred = predictions["prediction"].astype(str).to_numpy()
    names = [str(x) for x in labels] if labels else sorted(set(y_true) | set(y_pred))
    names += sorted((set(y_true) | set(y_pred)) - set(names))
    matrix = confusion_matrix(y_true, y_pred, labels=names)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=names, zero_division=0)
    table = pd.DataFrame({"class": names, "precision": p, "recall": r, "f1": f, "support": s})
    return names, matrix, table


def export_trials(history, fmt: str, output: str | Path | None = None) -> str:
    """The trials table as CSV or JSON (a list of records); written to ``output`` when given,
    and returned as text."""
    if fmt not in EXPORT_FORMATS:
        raise ConfigError(
            f"--format must be one of {', '.join(EXPORT_FORMATS)}, but got {fmt!r}. "
            f"Pass --format csv or --format json."
        )
    frame = history.trials
    if fmt == "csv":
        text = frame.to_csv(index=False)
    else:
        records = json.loads(frame.to_json(orient="records", date_format="iso"))
        text = json.dumps(records, indent=1) + "\n"
    if output is not None:
        path = Path(output).expanduser()
        if path.is_dir():
            raise ConfigError(
                f"--output must be a file path, but {path} is a directory. "
                f"Pass a file name such as {path / ('trials.' + fmt)}."
            )
        atomic_write(path, text)
    return text


def _is_number(value: Any) -> bool:
    try:
        return value is not None and math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
