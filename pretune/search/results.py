"""What a search returns: a report per finished trial, and the ``TuneResult`` of the search."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import optuna
import pandas as pd

from pretune.errors import PretuneError
from pretune.search import rundir


@dataclass
class TrialReport:
    """One finished trial, as ``on_trial`` callbacks get it."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL
    metric: str  # the metric ``value`` is of
    value: float | None  # a pruned trial's: its last reported value
    params: dict[str, Any]
    seconds: float | None
    stop_reason: str | None
    fail_reason: str | None
    is_best: bool  # the best complete trial so far (its model is in best/)
    metrics: dict[str, float] = field(default_factory=dict)


def trial_report(trial: optuna.trial.FrozenTrial, metric: str, is_best: bool) -> TrialReport:
    return TrialReport(
        number=trial.number, state=trial.state.name, metric=metric, value=trial.value,
        params=dict(trial.params), seconds=trial.user_attrs.get("seconds"),
        stop_reason=trial.user_attrs.get("stop_reason"),
        fail_reason=trial.user_attrs.get("fail_reason"), is_best=is_best,
        metrics=dict(trial.user_attrs.get("metrics") or {}),
    )


@dataclass
class TuneResult:
    """The outcome of a search. ``best_model`` loads lazily from ``path/best``."""

    path: Path
    metric: str
    direction: str
    best_trial: int | None  # number of the best complete trial; None when none completed
    best_value: float | None
    best_params: dict[str, Any]  # the searched values of the best trial
    best_metrics: dict[str, float]  # validation metrics of its best checkpoint
    best_settings: dict[str, Any]  # every setting of the best trial, by bare name
    fixed: dict[str, Any]  # the pinned settings
    trials: pd.DataFrame  # as trials.csv
    trials_run: int = 0  # trials run by this call
    plan: dict[str, Any] = field(default_factory=dict)  # the budget plan of this start
    lr_range: dict[str, Any] | None = None  # the learning-rate range test, if one ran
    # The final pick's seed check, if one ran: {"chosen": trial, "candidates": [{"trial",
    # "params", "runs": {trial: value}, "mean", "std", "n"}, ...]}
    seed_check: dict[str, Any] | None = None
    ended_early: str | None = None  # why no further trial started although time was left
    # What the final assembly built from the kept trials (see ``assemble``): the chosen kind
    # (trial, soup, distilled), its trials, every candidate's score; None when it did not run.
    assembly: dict[str, Any] | None = None
    # best/'s recipe trained again on the training and validation rows (``refit``): the trial,
    # rows, epochs and seconds; None when it did not run.
    refit: dict[str, Any] | None = None
    _loaded: tuple | None = field(default=None, repr=False)

    @property
    def best_path(self) -> Path:
        return self.path / rundir.BEST_DIR

    def load_best(self) -> tuple[Any, Any, dict]:
        """``(model, tokenizer, meta)`` of the best model, loaded once."""
        if self._loaded is None:
            if self.best_trial is None or not (self.best_path / "config.json").is_file():
                raise PretuneError(
                    f"A best model exists once a trial completes, but no trial of the search in "
                    f"{self.path} has completed. Run the search with a larger budget."
                )
            from pretune.models.io import load_model_dir  # torch loads only when this runs

            self._loaded = load_model_dir(self.best_path)
        return self._loaded

    @property
    def best_model(self):
        return self.load_best()[0]

    @property
    def best_tokenizer(self):
        return self.load_best()[1]


def from_best(result: TuneResult) -> None:
    """``result``'s score and metrics from best/ when the assembly put a model of its own there."""
    from pretune.models.io import read_meta  # torch loads only when this runs

    meta = read_meta(result.best_path)
    if (meta.get("made_of") or {}).get("kind", "trial") != "trial":
        result.best_metrics = dict(meta.get("metrics") or {})
        result.best_value = result.best_metrics.get(result.metric, result.best_value)
