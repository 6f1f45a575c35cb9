"""The final model trained once more on the training and the validation rows (``refit``).

A search spends its validation rows on choosing: the settings, when each trial stops, what the
final assembly keeps. Once those choices are made, the validation rows are labelled examples no
model has learned from. ``refit`` trains the recipe of the trial behind ``best/`` again on the
training rows and the validation rows together, and puts that model in ``best/``: the same
settings and seed, for the epochs at which the trial's own model was taken (its best evaluation,
or the last checkpoint of its soup), with nothing left to decide on the validation rows (no
early stopping, no checkpoint soup, no threshold tuning; one evaluation at the end). AutoGluon's
``refit_full`` does the same for the models of its quality presets.

What follows for a user:

* ``best/``'s ``pretune.yaml`` keeps the score of the trial the recipe came from (``metrics``:
  the held-out estimate) and says what was refit in ``made_of``; the model has seen the
  validation rows, so scoring it on them again measures nothing.
* The plan keeps time for it (``reserve``): about a trial, longer by the validation rows'
  share, with a margin. It starts when the time left covers its estimate (the trial's own
  pace on the larger data) and may run past the deadline by ``GRACE`` of that estimate; when
  less time is left, or it is stopped even so, ``best/`` keeps the search's model and the log
  says why.
* A trial that ran on a data fraction (``--data-fraction``, or the plan's screening fraction on
  large data) is refit on more of the rows: as many as the time left allows at the trial's pace
  of training, all of them at most (``widened``), for the same epochs, so its schedule is
  fitted to the longer run.
* Skipped for differentially private runs (the validation rows are outside the privacy
  accounting) and when ``best/`` holds no model of this search.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from dataclasses import replace as with_fields
from pathlib import Path
from typing import Any

import numpy as np

from pretune.config import Budget, RunConfig
from pretune.data.task import Split
from pretune.search import rundir
from pretune.search.assemble import kept_path, mark
from pretune.search.records import PREDICTIONS_FILE

log = logging.getLogger(__name__)

MIN_EPOCHS = 0.1  # a kept model taken earlier than this is refit for this long
SLACK = 1.2  # the plan keeps the refit's estimated time times this
# The most of a time budget the refit and the assembly may keep together. More than the
# assembly alone may (0.35): measured with one fixed recipe (bench/refit.py), the rows a refit
# adds gained more than the later trials of a search did (README, bench/README.md).
MAX_SHARE = 0.5
GRACE = 0.15  # a refit that started in time may run past the deadline by this share of its
              # estimate (a refit stopped before its end is thrown away)
NO_EVALUATION = 10**9  # eval_steps: evaluate at the end only


def rows_share(train_rows: int, valid_rows: int) -> float:
    """A refit's rows per training row of a trial."""
    return (train_rows + valid_rows) / max(train_rows, 1)


def reserve(budget: Budget, trial_seconds: float | None, share: float, most: float) -> float:
    """Seconds of a time budget kept for the refit: a trial's time on ``share`` times its rows,
    or nothing when that is more than ``most`` seconds (then the refit is not planned)."""
    if budget.seconds is None or not trial_seconds:
        return 0.0
    seconds = trial_seconds * share * SLACK
    return seconds if seconds <= most else 0.0


def taken_at(meta: dict[str, Any], config: RunConfig) -> float:
    """The epoch at which a trial's saved model was taken: the last checkpoint of its soup, or
    its best evaluation; all its epochs when its record does not say."""
    training = meta.get("training") or {}
    steps, epochs = training.get("steps"), training.get("epochs")
    last = max(training.get("soup") or [training.get("best_step") or 0])
    if not steps or not epochs or not last:
        return float(config.train.epochs)
    return max(MIN_EPOCHS, round(float(last) * float(epochs) / float(steps), 2))


def recipe(config: RunConfig, epochs: float, meta: dict[str, Any],
           fraction: float | None = None) -> RunConfig:
    """``config`` for the refit: ``epochs`` long (its schedule fitted to them) on ``fraction``
    of the rows an epoch (default: the trial's), nothing chosen on the validation rows, a
    multi-label threshold fixed where the trial tuned it."""
    settings: dict[str, Any] = {"epochs": epochs, "patience": None, "checkpoint_soup": 1,
                                "eval_steps": NO_EVALUATION, "distill_logits": None,
                                "max_steps": None}
    if fraction is not None:
        settings["data_fraction"] = fraction
    threshold = (meta.get("task") or {}).get("threshold")
    if threshold is not None and config.train.threshold is None:
        settings["threshold"] = float(threshold)
    return config.with_settings(settings)


def merged(task):
    """``task`` whose training split is its training rows followed by its validation rows."""
    train, valid = task.train, task.valid
    pairs = None if train.pairs is None else list(train.pairs) + list(valid.pairs)
    words = None if train.words is None else list(train.words) + list(valid.words)
    if train.labels.dtype == object:  # token tags: one array per sentence
        labels = np.empty(len(train) + len(valid), dtype=object)
        labels[:] = list(train.labels) + list(valid.labels)
    else:
        labels = np.concatenate([train.labels, valid.labels.astype(train.labels.dtype)])
    both = Split(list(train.texts) + list(valid.texts), pairs, labels, words)
    return with_fields(task, train=both)


def source_of(out: Path) -> tuple[RunConfig, dict[str, Any], dict[str, Any]] | None:
    """(the recipe, the record of the trial it came from, best/'s record) for best/'s model;
    None when best/ holds no model this search trained or assembled."""
    from pretune.models.io import read_meta  # torch loads only when this runs

    best = read_meta(Path(out) / rundir.BEST_DIR)
    if best.get("trial") is None or not best.get("settings"):
        return None
    kind = (best.get("made_of") or {}).get("kind", "trial")
    source = best
    if kind != "trial":  # a soup or student: the recipe of the trial it was built around
        kept = kept_path(out, int(best["trial"]))
        source = read_meta(kept) if (kept / "config.json").is_file() else best
    return RunConfig.from_dict(source["settings"]), source, best


def estimate(source: dict[str, Any], epochs: float, share: float) -> float | None:
    """Seconds the refit should take: the trial's own pace of training (its evaluations left
    out, since the refit evaluates once), ``epochs`` long, on ``share`` times its rows; None
    when its record has no pace."""
    training = source.get("training") or {}
    seconds, ran = training.get("seconds"), training.get("epochs")
    if not seconds or not ran:
        return None
    training_seconds = float(seconds) - float(training.get("eval_seconds") or 0.0)
    return max(training_seconds, 0.0) / float(ran) * epochs * share


def widened(fraction: float, needs: float | None, left: float) -> float:
    """The data fraction of the refit of a trial that ran on ``fraction`` of the rows an epoch:
    as many more as ``left`` seconds allow (``needs``: the refit's estimate at ``fraction``,
    with ``SLACK``), all of them at most, never fewer than the trial's."""
    if fraction >= 1 or not needs or not math.isfinite(left):
        return fraction
    return float(f"{min(1.0, max(fraction, fraction * left / (needs * SLACK))):.3g}")


def refit(out: Path, task, caches, *, metric: str, deadline: float | None = None
          ) -> dict[str, Any] | None:
    """Train best/'s recipe on the training and validation rows and make it best/; returns
    what ``plan.yaml`` records (``refit``; an earlier start's when best/ is its refit), None
    when it was not done (the log says why)."""
    from pretune.training.run import fit  # torch loads only when this runs

    found = source_of(out)
    if found is None:
        log.info("refit: best/ holds no model of this search; nothing to refit")
        return None
    config, source, best = found
    if config.train.dp_epsilon is not None:
        log.info("refit: skipped under differential privacy (the validation rows are outside "
                 "its accounting)")
        return None
    if (best.get("made_of") or {}).get("kind") == "refit":  # by an earlier start of the search
        return dict(best["made_of"].get("refit") or {})
    share = rows_share(len(task.train), len(task.valid))
    epochs = taken_at(source, config)
    needs = estimate(source, epochs, share)
    left = math.inf if deadline is None else deadline - time.monotonic()
    fraction = widened(config.train.data_fraction, needs, left)
    if needs is not None:
        needs *= fraction / config.train.data_fraction
    if needs is not None and needs > left:
        log.info("refit: %.0fs left, less than the %.0fs it would take; best/ keeps the "
                 "search's model", left, needs)
        return None
    started = time.monotonic()
    staged = Path(out) / f"{rundir.BEST_DIR}.tmp-refit"
    shutil.rmtree(staged, ignore_errors=True)
    seconds = None
    if deadline is not None:  # slower than its estimate, it ends its schedule in time
        deadline += GRACE * (needs or 0.0)
        seconds = max(1.0, deadline - time.monotonic())
    should_stop = None if deadline is None else (lambda: time.monotonic() >= deadline)
    result = fit(recipe(config, epochs, source, fraction), staged, task=merged(task),
                 caches=caches, should_stop=should_stop, keep_model=False, seconds=seconds)
    if result.path is None or result.train_result.stop_reason != "completed":
        shutil.rmtree(staged, ignore_errors=True)
        log.info("refit: stopped (%s) before its end; best/ keeps the search's model",
                 result.train_result.stop_reason)
        return None
    record = {"trial": int(best["trial"]), "rows": len(task.train) + len(task.valid),
              "train_rows": len(task.train), "valid_rows": len(task.valid), "epochs": epochs,
              "data_fraction": fraction, "trial_data_fraction": config.train.data_fraction,
              "seconds": round(time.monotonic() - started, 1),
              "estimated_seconds": None if needs is None else round(needs, 1)}
    _describe(staged, best, source, record)
    held_out = Path(out) / rundir.BEST_DIR / PREDICTIONS_FILE
    if held_out.is_file():  # the report's confusion matrix: predictions on rows not trained on
        shutil.copy2(held_out, staged / PREDICTIONS_FILE)
    rundir.replace_best(out, staged)
    rundir.update_plan(out, refit=record)
    log.info("final model: trial %d's recipe trained again on %s in %.0fs; its validation %s "
             "estimate stays the trial's %.4f", record["trial"], rows_phrase(record),
             record["seconds"], metric, (source.get("metrics") or {}).get(metric, float("nan")))
    return record


def rows_phrase(record: dict[str, Any]) -> str:
    """What a refit trained on, in words, from its record: '2,872 training and validation rows
    for 3 epochs', with the part of them an epoch ran on where that was a fraction."""
    rows, epochs = int(record.get("rows") or 0), float(record.get("epochs") or 0)
    fraction = float(record.get("data_fraction") or 1.0)
    if fraction >= 1:
        return f"{rows:,} training and validation rows for {epochs:g} epochs"
    return (f"{fraction:.3g} of the {rows:,} training and validation rows an epoch (about "
            f"{round(fraction * rows):,}) for {epochs:g} epochs (the trial ran on "
            f"{float(record.get('trial_data_fraction') or 1.0):.3g})")


def _describe(path: Path, best: dict[str, Any], source: dict[str, Any], record: dict[str, Any]
              ) -> None:
    """best/'s record for the refit model: the held-out scores of the trial it came from (the
    model's own last evaluation was on rows it trained on), and what it is made of."""
    before = best.get("made_of") or {"kind": "trial", "trials": [best.get("trial")]}
    fields: dict[str, Any] = {"trial": record["trial"],
                              "metrics": dict(source.get("metrics") or {})}
    if best.get("params") is not None:  # the searched values of the trial (the report's)
        fields["params"] = best["params"]
    mark(path, {"kind": "refit", "trials": [record["trial"]], "refit": record,
                "before": {k: v for k, v in before.items() if k != "candidates"},
                "candidates": before.get("candidates") or []}, **fields)
