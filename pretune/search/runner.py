"""Running the trials of one start of a search in this process, and the bookkeeping after each.

``Search`` drives Optuna one trial at a time (``trial.run_trial``) until the budget is
spent, runs the seed check of the final pick, keeps best/ holding the best trial's model (under
``rundir.BestLock``, since workers share it), writes trials.csv after every trial, keeps the
best few models for the final assembly, and stops a search whose trials keep failing the same
way. ``study.run_tune`` and ``workers.join`` both build one.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from pretune.config import Budget, RunConfig
from pretune.errors import PretuneError
from pretune.outdir import atomic_write
from pretune.search import assemble, final_pick, rundir, storage
from pretune.search.memory import release_memory
from pretune.search.records import (
    DEADLINE, FAIL_STREAK, INTERRUPTED, PREDICTIONS_FILE, WAIT_SECONDS, counted,
)
from pretune.search.results import TuneResult, from_best, trial_report
from pretune.search.space import Dimension
from pretune.search.trial import run_trial

log = logging.getLogger(__name__)


class Search:
    """The trials of one start of a search, run in this process, and the bookkeeping after
    each: the best model in best/, trials.csv, the models kept for the final assembly."""

    def __init__(self, *, study, task, base, dims, pinned, metric, direction, out, budget,
                 on_trial, caches, progress=None):
        self.study: optuna.Study = study
        self.task = task
        self.base: RunConfig = base
        self.dims: tuple[Dimension, ...] = dims
        self.pinned: dict[str, Any] = pinned
        self.context = {**base.flat(), **pinned}
        # Every trial trains on the data loaded once with this seed, and records it.
        self.data_seed = base.train.seed if base.data.data_seed is None else base.data.data_seed
        self.metric: str = metric
        self.direction: str = direction
        self.out: Path = out
        self.budget: Budget = budget
        self.on_trial = on_trial
        self.caches = caches  # tokenized data and frozen features, shared by every trial
        self.progress = progress
        self.deadline = None if budget.seconds is None else time.monotonic() + budget.seconds
        self.pending: tuple[int, Any] | None = None  # (trial number, FitResult) to save as best
        self.fails: list[str] = []  # fail reasons of the trials that failed in a row
        self.stop_error: BaseException | None = None
        self.stopped = False  # set when the search must end (trials keep failing)
        self.ended_early: str | None = None  # why no further trial started, if time was left
        # Once there is a model, no trial starts with less time left than this: it could not
        # reach its first evaluation.
        self.min_start = 0.0
        self.trials_run = 0
        self.reserve = final_pick.Reserve()  # budget kept for the seed check (none by default)
        self.seed_check_size = (0, 0)  # (top settings, runs of each)
        self.picked: dict[str, Any] | None = None  # the seed check's outcome
        self.executor = "local"  # what started this process: local, a worker command, Ray
        self.keep = 0  # the best trials whose models are kept for the final assembly
        self.isolate_trials = "auto"  # when a trial trains in a child process (memory_plan)
        self.assembly: dict[str, Any] | None = None  # what the final assembly built
        # Called after each trial to make the budget plan again from the measured trial times
        # (it may move ``deadline``, ``min_start`` and the study's pruner).
        self.replan: Callable[[], None] | None = None

    # -- driving ----------------------------------------------------------------------------

    def remaining(self) -> int | None:
        """Trials the trial budget has left: finished ones count, and so do the trials other
        workers are running now (None: no trial budget)."""
        if self.budget.trials is None:
            return None
        trials = self.study.get_trials(deepcopy=False)
        taken = sum(counted(t) or t.state == TrialState.RUNNING for t in trials)
        return max(0, self.budget.trials - taken)

    def run(self) -> None:
        n = self.remaining()
        self.tell("search_started", n, self.budget.seconds, self.metric)
        if n == 0 and not self._others_running():
            log.info("the study already has its %d trials; nothing to run", self.budget.trials)
            return
        keep = self.reserve
        self.optimize(keep.trials,
                      None if self.budget.seconds is None else self.budget.seconds - keep.seconds)
        if keep.active and self.stop_error is None:
            self.seed_check()
        if self.stop_error is not None:
            raise self.stop_error

    def optimize(self, keep: int, timeout: float | None) -> None:
        """Run trials one at a time for up to ``timeout`` seconds while the trial budget has
        more than ``keep`` trials left. When its last trials run in other workers, wait for
        them: a worker that dies leaves its trial to be retried (``storage``), and someone must."""
        until = None if timeout is None else time.monotonic() + timeout
        while not self.stopped:
            if self.past_deadline() or (until is not None and time.monotonic() >= until):
                return
            left_s = self.time_left()
            # Until a trial has given a model, one is started anyway: the deadline stops it and
            # it is evaluated then (large data on a short budget), which beats no model at all.
            if (left_s is not None and left_s < self.min_start
                    and self.saved_best() is not None):
                self.ended_early = (f"{left_s:.0f}s were left, less than a trial needs to reach "
                                    f"its first evaluation (about {self.min_start:.0f}s)")
                log.info("%s: no new trial", self.ended_early)
                return
            left = self.remaining()
            if left is not None and left <= keep:
                if not self._others_running():
                    return
                time.sleep(WAIT_SECONDS)
                storage.fail_stale_trials(self.study)
                continue
            self.study.optimize(self.objective, n_trials=1, catch=(Exception,),
                                callbacks=[self.after_trial])

    def _others_running(self) -> bool:
        """Whether trials of other workers are running (this process runs none between trials)."""
        return bool(self.study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)))

    def time_left(self) -> float | None:
        return None if self.deadline is None else max(0.0, self.deadline - time.monotonic())

    def seed_check(self) -> None:
        """Re-run the best settings with other seeds and keep the best mean (``final_pick``)."""
        top, runs = self.seed_check_size
        finished = self._finished()
        took = [t.user_attrs.get("seconds") for t in finished if t.state == TrialState.COMPLETE]
        took = [float(x) for x in took if x is not None]
        measured = float(np.median(took)) if took else None
        top = final_pick.fitting(top, runs, measured, self.time_left())
        left = self.remaining()
        if left is not None:  # the trials kept for the check: maybe fewer than all it asked
            top = min(top, left // runs)
        found = final_pick.candidates(finished, self.direction, top)
        if len(found) < 2:  # nothing to compare in the time left: search on instead
            self.optimize(0, self.time_left())
            return
        for c in found:
            for _ in range(runs):
                self.study.enqueue_trial(c.params, user_attrs={final_pick.SEED_OF: c.trial})
        self.optimize(0, self.time_left())
        found = final_pick.candidates(self._finished(), self.direction, top)
        chosen = final_pick.choose(found, self.direction)
        saved = self.saved_best()
        numbers = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        in_best = numbers[saved[0]].params if saved and saved[0] in numbers else None
        final_pick.adopt(self.out, chosen, in_best)
        self.picked = {"chosen": chosen.trial if chosen else None,
                       "candidates": [c.to_dict() for c in found]}
        rundir.update_plan(self.out, seed_check=self.picked)
        log.info("seed check: %s", "; ".join(
            f"trial {c.trial}: {c.mean:.4f} ± {c.std:.4f} over {len(c.runs)} runs" for c in found))

    def _finished(self) -> list[optuna.trial.FrozenTrial]:
        """Trials whose value is a whole run's (not cut short by the deadline)."""
        return [t for t in self.study.get_trials(deepcopy=False)
                if t.user_attrs.get("stop_reason") != DEADLINE]

    def past_deadline(self) -> bool:
        return self.deadline is not None and time.monotonic() >= self.deadline

    # -- one trial --------------------------------------------------------------------------

    def objective(self, trial: optuna.Trial) -> float:
        """The Optuna objective: one trial (``trial.run_trial``)."""
        return run_trial(self, trial)

    def tell(self, event: str, *args: Any) -> None:
        """Call ``progress``'s method ``event``, when it has one."""
        method = getattr(self.progress, event, None)
        if method is not None:
            method(*args)

    # -- after each trial ---------------------------------------------------------------------

    def after_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.trials_run += 1
        is_best = False
        try:
            if trial.state == TrialState.COMPLETE and self.pending and self.pending[0] == trial.number:
                with rundir.BestLock(self.out):  # other workers may be saving theirs
                    if self._beats_earlier(trial):
                        self._save_best(trial, self.pending[1])
                        is_best = True
                    elif final_pick.SEED_OF in trial.user_attrs:  # kept in case its settings win
                        spare = (self.out / rundir.CHECK_DIR
                                 / str(trial.user_attrs[final_pick.SEED_OF]))
                        if self._beats_earlier(trial, spare):
                            self._save_best(trial, self.pending[1], spare)
                    self._keep(trial)
        finally:
            self.pending = None
            release_memory()
        self.write_trials()
        if self.replan is not None:
            self.replan()
        self._watch_failures(study, trial)
        if self.on_trial is not None:
            self.on_trial(trial_report(trial, self.metric, is_best))

    def _keep(self, trial: optuna.trial.FrozenTrial) -> None:
        """Keep the trial's model for the final assembly when it is among the best few."""
        try:
            assemble.keep_trial(self.out, trial.number, self.pending[1], self.task, self.caches,
                                metric=self.metric, direction=self.direction, keep=self.keep)
        except Exception as err:  # noqa: BLE001 - the search goes on with what it has
            if isinstance(err, PretuneError):  # a full disk: say it and stop keeping
                self.keep = 0
            log.warning("could not keep trial %d's model for the final assembly: %s",
                        trial.number, err)

    def saved_best(self, directory: Path | None = None) -> tuple[int, float] | None:
        """(trial number, value) of the model in best/, from its pretune.yaml; None if none.

        best/ is the source of truth: the study may name a better trial whose model was never
        written (a kill between the trial's end and the save, or another worker's trial)."""
        from pretune.models.io import read_meta  # models.io loads torch

        meta = read_meta(directory or self.out / rundir.BEST_DIR)
        value = (meta.get("metrics") or {}).get(self.metric)
        if meta.get("trial") is None or value is None:
            return None
        return int(meta["trial"]), float(value)

    def _beats_earlier(self, trial: optuna.trial.FrozenTrial, directory: Path | None = None) -> bool:
        saved = self.saved_best(directory)
        if saved is None:
            return True
        if self.direction == "maximize":
            return trial.value > saved[1]
        return trial.value < saved[1]

    def _save_best(self, trial: optuna.trial.FrozenTrial, result, directory: Path | None = None
                   ) -> None:
        from pretune.models.io import save_model  # these load torch
        from pretune.training.run import run_metadata

        meta = run_metadata(result.config, self.task, result.train_result)
        meta["trial"] = trial.number
        meta["params"] = dict(trial.params)
        best = save_model(result.model, result.tokenizer, directory or self.out / rundir.BEST_DIR,
                          meta)
        self._save_predictions(trial.number, result, best)

    def _save_predictions(self, number: int, result, best: Path) -> None:
        """best/valid-predictions.csv, for the report's confusion matrix. The ``trial`` column
        tells a reader whether it belongs to the model beside it. Losing it loses no result."""
        from pretune.training.run import valid_predictions  # loads torch

        try:
            frame = valid_predictions(result, self.task, self.caches)
            frame.insert(0, "trial", number)
            atomic_write(best / PREDICTIONS_FILE, frame.to_csv(index=False))
        except Exception as err:  # noqa: BLE001 - a report detail must not stop a search
            log.warning("could not write the best model's validation predictions: %s", err)

    def _watch_failures(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Stop when trials keep failing the same way: the cause is then not the sample."""
        reason = trial.user_attrs.get("fail_reason")
        refused = trial.user_attrs.get("memory_refused")  # pruned, for want of memory
        if refused is None and (trial.state != TrialState.FAIL or reason in (INTERRUPTED, None)):
            self.fails.clear()
            return
        reason = refused or reason
        self.fails.append("memory" if refused else reason)
        if len(self.fails) >= FAIL_STREAK and len(set(self.fails[-FAIL_STREAK:])) == 1:
            self.stop_error = PretuneError(
                f"A search stops when its trials keep failing the same way, but the last "
                f"{FAIL_STREAK} trials all failed with: {reason} Fix that cause (or pin the "
                f"setting behind it with --fixed) and run the same command again."
            )
            self.stopped = True

    # -- the outcome --------------------------------------------------------------------------

    def write_trials(self) -> None:
        rundir.write_trials(self.out, self.frame())

    def frame(self) -> pd.DataFrame:
        started = [t for t in self.study.get_trials(deepcopy=False)
                   if t.state != TrialState.WAITING]  # queued recipes not run yet
        return rundir.trials_frame(started, [d.name for d in self.dims])

    def result(self) -> TuneResult:
        """The outcome, with the best trial being the one whose model is in best/."""
        saved = self.saved_best()
        trials = {t.number: t for t in self.study.get_trials(deepcopy=False)}
        best = trials.get(saved[0]) if saved else None
        complete = [t.value for t in trials.values()
                    if t.state == TrialState.COMPLETE and t.value is not None]
        if complete and best is not None and self.picked is None:
            top = (max if self.direction == "maximize" else min)(complete)
            if top != best.value:
                log.warning("the study's best value %.4f has no saved model; best/ holds trial %d "
                            "(%.4f)", top, best.number, best.value)
        result = TuneResult(
            path=self.out, metric=self.metric, direction=self.direction,
            best_trial=best.number if best else None,
            best_value=best.value if best else None,
            best_params=dict(best.params) if best else {},
            best_metrics=dict(best.user_attrs.get("metrics") or {}) if best else {},
            best_settings=dict(best.user_attrs.get("settings") or {}) if best else {},
            fixed=dict(self.pinned), trials=self.frame(), trials_run=self.trials_run,
            ended_early=self.ended_early,
        )
        from_best(result)  # a soup or student in best/ (this start's or an earlier one's)
        return result
