"""The Python API: ``pretune.train`` and ``pretune.predict`` mirror the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from pretune.config import RunConfig, validate


def build_config(base: Mapping[str, Any] | RunConfig | None = None,
                 settings: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated RunConfig from a base (a mapping, a pretune.yaml, or a RunConfig) and
    settings by name (``{"lr": 3e-5, "train": "f.csv"}``) that override it."""
    if isinstance(base, RunConfig):
        config = base
    else:
        raw = dict(base or {})
        if isinstance(raw.get("settings"), Mapping):  # a pretune.yaml written beside a model
            raw = dict(raw["settings"])
        config = RunConfig.from_dict(raw)
    return validate(config.with_settings(dict(settings or {})))


def train(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    **settings: Any,
):
    """Fine-tune once with fixed settings; returns a ``FitResult``.

    >>> result = pretune.train(train="train.csv", valid="valid.csv", out="models/sst2", lr=3e-5)
    >>> result.metrics["accuracy"], result.path

    Any setting of ``pretune.config`` can be passed by name.
    """
    from pretune.training.run import fit

    return fit(build_config(config, settings), out, on_step=on_step, on_eval=on_eval)


def predict(model: str | Path, input: str | Path, *, output: str | Path | None = None,
            **options: Any) -> pd.DataFrame:
    """Predicted label and per-class probabilities for each row of ``input``.

    ``model`` is a model directory written by pretune or a run directory holding ``best/``.
    """
    from pretune.training.run import predict as run_predict

    return run_predict(model, input, output=output, **options)
