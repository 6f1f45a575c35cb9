"""A finished (or running) search, read back from its run directory as plain data.

``read_history(run)`` opens the study that ``pretune.yaml`` names (the run directory's own
``study.db`` unless the search was given ``--storage``) and returns what a report or a terminal
summary shows: the trials table, each trial's learning curve, the parameters' importance and
the best model's record and validation predictions. It only reads; nothing is trained or loaded
besides YAML and CSV files, and the storage is not changed.
"""

from __future__ import annotations

import logging
import math
import warnings
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import optuna
import pandas as pd
import yaml
from optuna.trial import TrialState

from pretune.errors import ConfigError
from pretune.search import refit, rundir
from pretune.search.planning import Plan, STEPS_PER_EPOCH
from pretune.search.records import PREDICTIONS_FILE
from pretune.search.storage import open_storage

log = logging.getLogger(__name__)

# fANOVA fits a random forest on the complete trials: with fewer it says nothing useful.
MIN_TRIALS_FOR_IMPORTANCE = 4


@dataclass
class Curve:
    """The objective metric of one trial at each evaluation it reported (x in epochs)."""

    number: int
    state: str  # COMPLETE | PRUNED | FAIL | RUNNING
    epochs: list[float]
    values: list[float]


@dataclass
class History:
    path: Path
    metric: str
    direction: str  # maximize | minimize
    storage: str
    study_name: str
    trials: pd.DataFrame  # as trials.csv, read from the storage
    curves: list[Curve]
    importance: dict[str, float] | None  # parameter -> fANOVA importance (sums to 1), or None
    importance_note: str  # why there is no importance, or how it was computed
    best_trial: int | None  # the trial whose model is in best/ (its pretune.yaml says which)
    best_value: float | None
    best_params: dict[str, Any] = field(default_factory=dict)
    best_metrics: dict[str, float] = field(default_factory=dict)
    labels: list[str] = field(default_factory=list)
    predictions: pd.DataFrame | None = None  # best/valid-predictions.csv of the best model
    task: str = "classification"  # classification | regression | multilabel | token (best/pretune.yaml)
    scheme: str | None = None  # token: the tag scheme (IOB1, IOB2, BIOES)
    plan: str | None = None  # the budget plan of the last start, in words (plan.yaml)
    final: str | None = None  # what best/ is made of and the final assembly's candidates

    @property
    def counts(self) -> dict[str, int]:
        """Number of trials in each state, e.g. {"COMPLETE": 7, "PRUNED": 2}."""
        if not len(self.trials):
            return {}
        return {str(k): int(v) for k, v in self.trials["state"].value_counts().items()}

    @property
    def trial_seconds(self) -> float:
        """Time the trials took, summed (what the budget was spent on)."""
        if not len(self.trials):
            return 0.0
        return float(pd.to_numeric(self.trials["seconds"], errors="coerce").fillna(0).sum())

    @property
    def wall_seconds(self) -> float | None:
        """From the first trial's start to the last trial's end (all starts of the search)."""
        if not len(self.trials):
            return None
        start = pd.to_datetime(self.trials["datetime_start"]).min()
        end = pd.to_datetime(self.trials["datetime_complete"]).max()
        if pd.isna(start) or pd.isna(end):
            return None
        return max(0.0, (end - start).total_seconds())

    def ranked(self) -> pd.DataFrame:
        """Complete trials, best first; then pruned ones, best first; then the others."""
        frame = self.trials.copy()
        if not len(frame):
            return frame
        order = {"COMPLETE": 0, "PRUNED": 1}
        frame["_group"] = frame["state"].map(lambda s: order.get(s, 2))
        frame["_value"] = pd.to_numeric(frame["value"], errors="coerce")
        ascending = [True, self.direction == "minimize", True]
        frame = frame.sort_values(["_group", "_value", "number"], ascending=ascending,
                                  na_position="last")
        return frame.drop(columns=["_group", "_value"]).reset_index(drop=True)

    def best_so_far(self) -> pd.DataFrame:
        """``datetime_complete``, ``elapsed_s`` (since the first start), ``number``, ``value``
        and ``best``: the best value among complete trials at each trial's end."""
        done = self.trials[self.trials["state"] == "COMPLETE"].copy()
        done = done[pd.to_numeric(done["value"], errors="coerce").notna()]
        if not len(done):
            return pd.DataFrame(columns=["datetime_complete", "elapsed_s", "number", "value", "best"])
        done["datetime_complete"] = pd.to_datetime(done["datetime_complete"])
        done = done.sort_values("datetime_complete")
        start = pd.to_datetime(self.trials["datetime_start"]).min()
        done["elapsed_s"] = (done["datetime_complete"] - start).dt.total_seconds()
        values = done["value"].astype(float)
        done["best"] = values.cummax() if self.direction == "maximize" else values.cummin()
        return done[["datetime_complete", "elapsed_s", "number", "value", "best"]].reset_index(drop=True)


def read_history(run: str | Path, *, importance: bool = True) -> History:
    """Read the search in run directory ``run``. A path that is not a run directory, or whose
    storage cannot be opened, raises ConfigError."""
    path = Path(run).expanduser()
    record = _read_record(path)
    tune = record.get("tune") or {}
    storage = tune.get("storage") or None
    study_name = tune.get("study_name") or "pretune"
    if storage is None and (path / rundir.JOURNAL_FILE).is_file():
        storage = str((path / rundir.JOURNAL_FILE).resolve())
    elif storage is None:
        db = path / rundir.STUDY_FILE
        if not db.is_file():
            raise ConfigError(
                f"A run directory holds its study in {rundir.STUDY_FILE}, but {db} does not exist. "
                f"Run pretune tune with --out {path} first, or pass the run directory it wrote."
            )
        storage = f"sqlite:///{db.resolve()}"
    study = _load_study(storage, study_name, path)
    trials = study.get_trials(deepcopy=False)
    space = list((record.get("space") or {}).keys())
    metric = record.get("metric") or "value"
    direction = record.get("direction") or study.direction.name.lower()

    curves = [
        Curve(number=t.number, state=t.state.name,
              epochs=[s / STEPS_PER_EPOCH for s in sorted(t.intermediate_values)],
              values=[float(t.intermediate_values[s]) for s in sorted(t.intermediate_values)])
        for t in trials
    ]
    if importance:
        scores, note = param_importance(study)
    else:
        scores, note = None, "not computed"

    from pretune.models.io import read_meta  # torch loads only when this runs

    meta = read_meta(path / rundir.BEST_DIR)
    best_trial = meta.get("trial")
    best_metrics = dict(meta.get("metrics") or {})
    history = History(
        path=path, metric=metric, direction=direction, storage=storage, study_name=study_name,
        trials=rundir.trials_frame(trials, space), curves=curves, importance=scores,
        importance_note=note,
        best_trial=int(best_trial) if best_trial is not None else None,
        best_value=best_metrics.get(metric), best_params=dict(meta.get("params") or {}),
        best_metrics=best_metrics, labels=[str(x) for x in meta.get("labels") or []],
        predictions=_read_predictions(path / rundir.BEST_DIR, best_trial),
        task=str((meta.get("task") or {}).get("kind") or "classification"),
        scheme=(meta.get("task") or {}).get("scheme"),
        plan=_plan_message(path),
        final=final_message(meta.get("made_of"), metric),
    )
    return history


def final_message(made_of: Any, metric: str) -> str | None:
    """What best/ is made of (its pretune.yaml's ``made_of``) and every candidate of the final
    assembly with its score, in words; None for a model no assembly looked at."""
    if not isinstance(made_of, dict):
        return None

    def trials(c: dict) -> str:
        members = [str(m) for m in c.get("trials") or c.get("members") or []]
        return ("trial " if len(members) == 1 else "trials ") + ", ".join(members)

    text = f"{made_of.get('kind', 'trial')} of {trials(made_of)}"
    again = made_of.get("refit")
    if isinstance(again, dict):  # pretune.search.refit
        before = made_of.get("before") or {}
        text = (f"trial {again.get('trial')}'s recipe trained again on "
                f"{refit.rows_phrase(again)} (refit; the "
                f"search had chosen the {before.get('kind', 'trial')} of {trials(before)}, and "
                f"the score is the trial's, on rows it did not train on)")
    scored = []
    for c in made_of.get("candidates") or []:
        value = c.get(metric)
        score = f"{value:.4f}" if isinstance(value, (int, float)) else "-"
        scored.append(f"{c.get('kind')} ({trials(c)}) {score}")
    if scored:
        text += f"; candidates by validation {metric}: " + "; ".join(scored)
    return text


def _plan_message(path: Path) -> str | None:
    """The plan in plan.yaml in words; None when there is none (or it is not one this version
    can read)."""

    saved = rundir.read_plan(path).get("plan")
    if not isinstance(saved, dict):
        return None
    known = {f.name for f in fields(Plan)}
    try:
        return Plan(**{k: v for k, v in saved.items() if k in known}).message()
    except (TypeError, ValueError, KeyError):
        return None


def param_importance(study: optuna.Study) -> tuple[dict[str, float] | None, str]:
    """fANOVA importance of each searched parameter over the complete trials, and a sentence
    saying how it was computed or why it could not be."""
    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
                if t.value is not None and math.isfinite(t.value)]
    if len(complete) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (f"Parameter importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} complete "
                      f"trials; this search has {len(complete)}.")
    shared = set.intersection(*(set(t.params) for t in complete))
    varied = [p for p in shared if len({repr(t.params[p]) for t in complete}) > 1]
    if not varied:
        return None, "Parameter importance needs a parameter that took more than one value."
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            scores = optuna.importance.get_param_importances(study, evaluator=evaluator,
                                                             params=sorted(varied))
    except (ValueError, RuntimeError) as err:
        return None, f"Parameter importance could not be computed ({' '.join(str(err).split())})."
    return ({k: float(v) for k, v in scores.items()},
            f"fANOVA (Optuna) over {len(complete)} complete trials, on the parameters every one "
            f"of them has.")


def _read_record(path: Path) -> dict:
    meta = path / rundir.META_FILE
    if not path.is_dir() or not meta.is_file():
        raise ConfigError(
            f"RUN must be a run directory written by pretune tune (with {rundir.META_FILE} and "
            f"{rundir.STUDY_FILE}), but {path} "
            f"{'has no ' + rundir.META_FILE if path.is_dir() else 'does not exist'}. "
            f"Pass the --out directory of a search."
        )
    try:
        record = yaml.safe_load(meta.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        record = None
    if not isinstance(record, dict) or "tune" not in record:
        raise ConfigError(
            f"RUN must be a run directory written by pretune tune, but {meta} is not a search's "
            f"record (a model directory has one too). Pass the --out directory of a search."
        )
    return record


def _load_study(storage: str, name: str, path: Path) -> optuna.Study:
    try:
        return optuna.load_study(study_name=name, storage=open_storage(storage))
    except KeyError:
        raise ConfigError(
            f"The study of a run directory must be in its storage, but {storage} has no study "
            f"named {name!r}. Check that {path} is the run directory of that search."
        ) from None
    except Exception as err:  # noqa: BLE001 - drivers raise their own types
        detail = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise ConfigError(
            f"The storage of {path} must open, but {storage} failed ({detail}). Check that the "
            f"database is reachable and its driver installed."
        ) from None


def _read_predictions(best: Path, trial: Any) -> pd.DataFrame | None:
    """The best model's validation predictions, if they belong to the model in best/."""
    file = best / PREDICTIONS_FILE
    if trial is None or not file.is_file():
        return None
    try:
        frame = pd.read_csv(file, dtype={"label": str, "prediction": str})
    except (OSError, ValueError, pd.errors.ParserError) as err:
        log.warning("could not read %s: %s", file, err)
        return None
    if "trial" in frame.columns and len(frame) and int(frame["trial"].iloc[0]) != int(trial):
        return None  # written for an earlier best model
    return frame
