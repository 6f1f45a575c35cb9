"""The study: a search over a space, run trial after trial until the budget is spent.

``run_tune`` opens (or continues) an Optuna study in a run directory and runs trials in this
process. Each trial samples the space (``space.suggest``), builds its ``RunConfig`` from the base
settings, the pinned values and the sample, and calls ``training.run.fit`` on data loaded once
for the whole search. Its ``on_eval`` callback reports the objective metric to Optuna after
every evaluation and raises ``optuna.TrialPruned`` when the pruner says so.

Choices made here, and why:

* **Fidelity steps.** A trial reports at ``step = round(epoch * 100)``: percent of an epoch.
  Optimizer steps are not comparable across batch sizes (an epoch at batch 16 is twice the steps
  at 32); epochs are. Each trial evaluates ``TuneConfig.evals_per_epoch`` (2) times an epoch so
  the pruner has points to act on. The sampler and pruner come from ``strategies`` (``--strategy``;
  ``auto`` by default), the schedule they judge on from ``planning``: no trial is judged before
  the strategy's first rung nor before its own warmup has ended.
* **Before the first trial** (``prepare``): a learning-rate range test (cached in plan.yaml)
  centers the default lr range and times a step; the budget plan says how many full trials fit;
  a new study queues the recipes of ``priors`` first.
* **Trial budget** counts every finished trial in the storage (complete, pruned, failed), except
  trials cut short by a killed or interrupted process: those are retried once, and the retry
  counts. The **time budget** applies to each start of the search, loading and the range test
  included (Optuna's ``timeout`` gets what they left); a trial running at the deadline is
  stopped, evaluated, and kept as complete with ``stop_reason="deadline"``.
* **Final pick.** When the budget has room, the end of it re-runs the best settings with other
  seeds and keeps the best mean (``final_pick``).
* **Seeds.** The sampler is seeded from the run seed and the number of trials already in the
  storage, so a continued search does not redraw the points of its first start. Each trial's
  training seed is derived from the run seed and its number.
"""

from __future__ import annotations

import ctypes
import gc
import logging
import math
import os
import socket
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np
import optuna
import pandas as pd
from optuna.trial import TrialState

from pretune.config import (
    Budget,
    RunConfig,
    TuneConfig,
    metric_direction,
    validate,
    validate_tune,
)
from pretune.data.images import detect_modality
from pretune.errors import ConfigError, PretuneError
from pretune.search import (assemble, final_pick, memory_plan, planning, prepare, priors, rundir,
                            storage, strategies)
from pretune.search.planning import STEPS_PER_EPOCH, Plan
from pretune.search.strategies import make_pruner, make_sampler  # noqa: F401 - public here too
from pretune.yamlfile import plain
from pretune.search.space import Dimension, resolve_space, resolve_task, space_to_dict, suggest

log = logging.getLogger(__name__)

FAIL_STREAK = 5  # this many trials in a row failing with the same error stop the search
WAIT_SECONDS = 2.0  # how often a worker with no trial left to start looks at the others' trials

INTERRUPTED = "interrupted"  # fail_reason of a trial its process did not finish
DEADLINE = "deadline"  # stop_reason of a trial stopped by the time budget
PRUNED = "pruned"
PREDICTIONS_FILE = "valid-predictions.csv"  # in best/: the best model's validation predictions


# --- what a search returns --------------------------------------------------------------------


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
            from pretune.models.io import load_model_dir

            self._loaded = load_model_dir(self.best_path)
        return self._loaded

    @property
    def best_model(self):
        return self.load_best()[0]

    @property
    def best_tokenizer(self):
        return self.load_best()[1]


# --- seeds, budget counting, memory -----------------------------------------------------------------


def quiet_optuna() -> None:
    """Only Optuna's warnings (it resets its logger's level on import, so set it through it)."""
    optuna.logging.set_verbosity(optuna.logging.WARNING)


def derive_seed(seed: int, *keys: int) -> int:
    """A seed in [0, 2**32) determined by ``seed`` and ``keys`` (a trial number, ...)."""
    return int(np.random.SeedSequence([int(seed), *map(int, keys)]).generate_state(1)[0])


def counted(trial: optuna.trial.FrozenTrial) -> bool:
    """Whether a trial counts toward a trial budget: finished, and not cut short by its process.

    A failed trial without a ``fail_reason`` was failed by another worker because its own
    process died (its heartbeat stopped): every failure this module records has a reason."""
    if trial.state == TrialState.FAIL:
        return trial.user_attrs.get("fail_reason") not in (INTERRUPTED, None)
    return trial.state in (TrialState.COMPLETE, TrialState.PRUNED)


def rss_mb() -> float:
    """Resident memory of this process in MB (current, not peak)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):  # pragma: no cover - not Linux
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def release_memory() -> None:
    """Collect garbage and hand freed heap memory back to the system (glibc)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # pragma: no cover - not glibc
        pass


# --- the search -------------------------------------------------------------------------------


def run_tune(
    base: RunConfig,
    tune: TuneConfig,
    out: str | Path,
    *,
    space: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    on_trial: Callable[[TrialReport], None] | None = None,
    on_plan: Callable[[Plan], None] | None = None,
    progress: Any = None,
    space_source: str = "the search space",
) -> TuneResult:
    """Search in run directory ``out``, starting or continuing its study.

    ``base`` holds every setting that is not searched; ``space`` is a space file's content (see
    ``pretune.search.space``), ``fixed`` pins settings by name. Stops when ``tune.budget`` is
    spent. Data errors raise before any trial; a trial that fails is recorded and the search
    goes on. ``on_plan`` gets the budget plan before the first trial.


    ``progress`` (optional) follows the search as it runs: any of its methods
    ``search_started(trials_left, seconds, metric)`` (None where the budget has no such limit),
    ``trial_started(number, params)``, ``on_step(step, total_steps, loss)`` and
    ``on_eval(step, metrics)`` that it has are called (a terminal display, a tracker).
    """
    validate_tune(tune)
    budget = Budget.parse(tune.budget)
    began = time.monotonic()  # what runs before the first trial counts toward a time budget
    out = Path(out).expanduser()
    base = validate(base.with_settings({"evals_per_epoch": tune.evals_per_epoch}))
    base = base.with_settings({"modality": detect_modality(base.data)})  # the space follows it
    base = resolve_task(base, space, fixed)  # the metric and the space follow the data's task
    dims, pinned = resolve_space(space, fixed, base, source=space_source)
    shared = validate(base.with_settings(pinned))  # what every trial shares
    metric = shared.train.metric
    direction = metric_direction(metric)

    parallel = check_storage(tune)
    rundir.preflight(out, shared, tune)  # --out writable, the model there, room on disk
    with rundir.RunLock(out):
        rundir.clean_leftovers(out)
        started = rundir.read_record(out).get("tune") or {}
        strategy = strategies.for_run(tune, started)
        if tune.data_fraction is None and started.get("data_fraction") is not None:
            tune = replace(tune, data_fraction=started["data_fraction"])  # as it started
        if tune.data_fraction is not None:  # a setting of every trial, recorded with the rest
            shared = validate(shared.with_settings({"data_fraction": tune.data_fraction}))
        found = prepare.cached_lr_range(out)
        dims = prepare.search_space(dims, space, pinned, found)
        record = {
            "settings": shared.to_dict(),
            "tune": {**{k: v for k, v in vars(tune).items() if k != "budget"},
                     "strategy": strategy.name, "sampler": strategy.sampler,
                     "pruner": strategy.pruner},
            "metric": metric,
            "direction": direction,
            "space": space_to_dict(dims),
            "fixed": dict(pinned),
        }
        # A mismatch raises before the data loads, and once more with the data's fingerprint.
        started_before = rundir.check_record(out, record, only_given=True)

        from pretune.data.task import load_task
        from pretune.training.caches import RunCaches
        from pretune.training.run import data_seed

        task = load_task(shared.data, data_seed(shared))  # DataErrors propagate from here
        skipped = assemble.skipped_for(task) if tune.assemble else None
        if skipped is not None:  # nothing is kept for an assembly that will not run
            log.info("final assembly: %s", skipped["skipped"])
            tune = replace(tune, assemble=False)
        caches = RunCaches(out / rundir.CACHE_DIR)  # shared by the range test and every trial
        record["data_fingerprint"] = task.fingerprint
        url = tune.storage or rundir.default_storage(out, parallel)
        own_sqlite = tune.storage is None and storage.kind(url) == "sqlite"
        # The run directory's own SQLite file has one writer, so a trial left RUNNING there
        # was interrupted; on a shared storage a dead worker's trial is found by its heartbeat.
        study = _open_study(url, tune.study_name, direction,
                            heartbeat=None if own_sqlite else tune.heartbeat)
        if started_before:
            rundir.check_record(out, record)
        else:  # written once the data and the storage are known to work
            if tune.lr_range_test and found is None:
                found = prepare.lr_range(out, shared, task, tune, budget, caches)
                dims = prepare.search_space(dims, space, pinned, found)
                record["space"] = space_to_dict(dims)
            rundir.write_record(out, record)
        if own_sqlite:
            _recover_interrupted(study)

        plan = planning.make_plan(
            strategy, budget, dims, {**shared.flat(), **pinned},
            seconds_per_example=(found or {}).get("seconds_per_example"),
            train_rows=len(task.train.labels), valid_rows=len(task.valid.labels),
            evals_per_epoch=tune.evals_per_epoch, lr_test=found,
            fraction=shared.train.data_fraction)
        plan = _with_keep(plan, tune, shared, budget, len(task.train), parallel)
        plan = replace(plan, memory=memory_plan.line(shared, dims, task, caches,
                                                     study.get_trials(deepcopy=False)))
        rundir.update_plan(out, plan=plan.to_dict())
        if skipped is not None:
            rundir.update_plan(out, assembly=skipped)
        log.info("plan: %s", plan.message())
        if on_plan is not None:
            on_plan(plan)
        study.sampler = make_sampler(
            strategy.sampler, derive_seed(shared.train.seed, len(study.get_trials(deepcopy=False))),
            n_startup_trials=strategy.startup)
        study.pruner = make_pruner(plan.pruner, plan.fidelity)
        if tune.priors:
            lr_dim = next((d for d in dims if d.name == "lr"), None)
            prior_lr = priors.base_lr(prepare.hidden_size(shared)) if lr_dim else shared.train.lr
            queued = priors.enqueue(study, dims, prior_lr, {**shared.flat(), **pinned})
            if queued:
                log.info("queued %d recipes from practice as the first trials", queued)

        if budget.seconds is not None:  # the trials get what preparing left of the time
            budget = Budget(seconds=max(1.0, budget.seconds - (time.monotonic() - began)),
                            trials=budget.trials)
        deadline = None if budget.seconds is None else time.time() + budget.seconds
        publish(study, record, out=out, plan=plan, budget=budget, deadline=deadline,
                heartbeat=tune.heartbeat)
        if parallel:
            from pretune.search import workers as launch

            result = launch.run_workers(
                study, url, tune, out, workers=tune.workers, task=task, base=shared, dims=dims,
                pinned=pinned, metric=metric, direction=direction, on_trial=on_trial,
                progress=progress, budget=budget)
            if tune.assemble and tune.keep > 1:  # soups and the ensemble; no time to distill
                result.assembly = _assemble_safely(out, task, caches, metric, direction,
                                                   distill=False)
                _from_best(result)
            result.assembly = result.assembly or skipped
            result.plan = plan.to_dict()
            result.lr_range = found
            return result
        search = _Search(study=study, task=task, base=shared, dims=dims, pinned=pinned,
                         metric=metric, direction=direction, out=out, budget=budget,
                         on_trial=on_trial, progress=progress,
                         caches=caches)
        search.seed_check_size = (tune.seed_check, tune.seed_check_runs)
        search.min_start = planning.first_eval_seconds(plan, tune.evals_per_epoch)
        search.reserve = final_pick.reserve(
            budget, plan.trial_seconds, tune.seed_check, tune.seed_check_runs,
            trials_done=sum(counted(t) for t in study.get_trials(deepcopy=False)))
        if search.reserve.active:
            log.info("keeping %s for the seed check of the final pick", search.reserve)
        search.keep = tune.keep if tune.assemble and tune.keep > 1 else 0  # kept to be used
        final = plan.assembly_seconds
        end = search.deadline
        if final and end is not None:  # the trials stop where the assembly's time begins
            search.deadline = end - final
            log.info("keeping %.0fs for building the final model", final)
        search.write_trials()
        try:
            search.run()
        finally:
            search.write_trials()
            search.deadline = end
        built = rundir.read_plan(out).get("assembly")
        if tune.assemble and tune.keep > 1 and search.stop_error is None:
            if search.trials_run or not built:  # a rerun that trained nothing rebuilds nothing
                built = _assemble_safely(out, task, caches, metric, direction, deadline=end)
            search.assembly = built
        result = search.result()
        result.assembly = search.assembly or skipped
        result.plan = plan.to_dict()
        result.lr_range = found
        result.seed_check = search.picked
        return result


def _from_best(result: TuneResult) -> None:
    """``result``'s score and metrics from best/ when the assembly put a model of its own there."""
    from pretune.models.io import read_meta

    meta = read_meta(result.best_path)
    if (meta.get("made_of") or {}).get("kind", "trial") != "trial":
        result.best_metrics = dict(meta.get("metrics") or {})
        result.best_value = result.best_metrics.get(result.metric, result.best_value)


def _assemble_safely(out: Path, task, caches, metric: str, direction: str,
                     **options: Any) -> dict[str, Any] | None:
    """The final assembly; a failure there is a warning, since best/ already holds the best
    trial's model and the search's results are on disk."""
    try:
        return assemble.assemble(out, task, caches, metric=metric, direction=direction,
                                 **options)
    except Exception as err:  # noqa: BLE001 - the search's own result stands
        log.warning("the final model could not be built from the kept trials; best/ keeps the "
                    "best trial (%s: %s)", type(err).__name__, err)
        return None


def _with_keep(plan: Plan, tune: TuneConfig, shared: RunConfig, budget: Budget,
               train_rows: int, parallel: bool = False) -> Plan:
    """The plan with what keeping models for the final assembly costs: disk and time (the
    distilled student may learn from the --unlabeled texts too; workers distill nothing, so a
    search with workers keeps no time for it)."""
    from pretune.models.load import weights_bytes

    if not (tune.assemble and tune.keep > 1):
        return plan
    weights = weights_bytes(shared.model)
    share = 0.0
    if shared.data.unlabeled:
        from pretune.data.unlabeled import read_unlabeled

        share = len(read_unlabeled(shared.data.unlabeled, shared.data.text_column)) / max(
            train_rows, 1)
    seconds = 0.0 if parallel else assemble.reserve(budget, plan.trial_seconds, True, share)
    return replace(plan, keep=tune.keep,
                   keep_mb=None if weights is None else assemble.disk_bytes(weights, tune.keep) / 2**20,
                   assembly_seconds=round(seconds, 1))


def check_storage(tune: TuneConfig) -> bool:
    """Check ``--storage`` against the workers before anything else is read or written; True
    when the search runs in several processes."""
    from pretune.search.workers import local_workers

    parallel = tune.executor != "local" or local_workers(tune.workers) > 1
    if tune.storage is not None and not storage.shared(tune.storage) and parallel:
        raise ConfigError(
            f"Several workers need a storage that several processes may write, but "
            f"--storage {tune.storage} is SQLite. Pass a journal file (runs/NAME/study.journal) "
            f"or a database (postgresql://user@host/db), or leave --storage out."
        )
    return parallel


# --- what a worker needs to join a study --------------------------------------------------------

STUDY_ATTR = "pretune"  # the study's user attribute that holds what a worker needs


def publish(study: optuna.Study, record: Mapping[str, Any], *, out: Path, plan: Plan,
            budget: Budget, deadline: float | None, heartbeat: int) -> None:
    """Save in the study what ``pretune worker`` needs to join it from any machine: the run's
    settings (data and model paths made absolute where they exist here), space, pins, metric,
    pruner schedule, trial budget, the wall-clock deadline of this start, the heartbeat interval
    and the run directory.
    """
    settings = {group: dict(values) for group, values in record["settings"].items()}
    for group, key in (("data", "train"), ("data", "valid"), ("model", "model")):
        value = settings.get(group, {}).get(key)
        if isinstance(value, str) and value and Path(value).expanduser().exists():
            settings[group][key] = str(Path(value).expanduser().resolve())
    study.set_user_attr(STUDY_ATTR, plain({
        "record": {**record, "settings": settings},
        "out": str(out.resolve()),
        "plan": {"pruner": plan.pruner, "min_resource": plan.min_resource,
                 "max_resource": plan.max_resource},
        "trials": budget.trials,
        "deadline": deadline,
        "heartbeat": heartbeat,
    }))


def _open_study(url: str, name: str, direction: str, *, heartbeat: int | None = None
                ) -> optuna.Study:
    try:
        from sqlalchemy.exc import SQLAlchemyError
    except ImportError:  # pragma: no cover - optuna's RDB storage needs sqlalchemy
        SQLAlchemyError = OSError  # type: ignore[assignment,misc]  # noqa: N806
    try:
        opened = storage.open_storage(url, heartbeat=heartbeat)
        study = optuna.create_study(storage=opened, study_name=name, direction=direction,
                                    load_if_exists=True)
    except (ValueError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        detail = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise ConfigError(
            f"--storage must be an Optuna storage URL that can be opened, but {url!r} "
            f"failed ({detail}). Check the URL, e.g. sqlite:///runs/NAME/study.db or "
            f"postgresql://user@host/db."
        ) from None
    if len(study.directions) != 1 or study.direction.name.lower() != direction:
        raise ConfigError(
            f"Study {name!r} in {url} must {direction} the metric, but it was created to "
            f"{study.directions[0].name.lower()}. Use another --study name or the metric it "
            f"was created with."
        )
    return study


def _recover_interrupted(study: optuna.Study) -> None:
    """Mark trials left RUNNING by a killed process as failed ("interrupted") and queue each one's
    parameters once more (a retry that is interrupted too is not queued again).

    Only safe where no other process can be running trials: the run directory's own SQLite
    storage, which the run lock guards. Shared storages need heartbeats instead.
    """
    store = study._storage
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        store.set_trial_user_attr(t._trial_id, "fail_reason", INTERRUPTED)
        store.set_trial_state_values(t._trial_id, TrialState.FAIL)
        if "retry_of" not in t.user_attrs and t.params:
            study.enqueue_trial(t.params, user_attrs={"retry_of": t.number})
        log.info("trial %d was interrupted; it is queued to run again", t.number)


class _TrialFailed(Exception):
    """A trial that ended without a usable result (its reason is in the trial's fail_reason)."""


class _Search:
    """The objective and the after-trial bookkeeping of one start of a search."""

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
        self.assembly: dict[str, Any] | None = None  # what the final assembly built

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
        self._tell("search_started", n, self.budget.seconds, self.metric)
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
        from pretune.training import memory
        from pretune.training.run import fit

        started = time.perf_counter()
        peak = [rss_mb()]
        last: dict[str, Any] = {}
        reported: set[int] = set()
        warm = [math.inf]  # the step its warmup ends at: no judgement before it
        seed = derive_seed(self.base.train.seed, trial.number)
        trial.set_user_attr("seed", seed)
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        trial.set_user_attr("executor", self.executor)

        def sample_memory(*_: Any) -> None:
            peak[0] = max(peak[0], rss_mb())

        def on_step(step: int, total: int, loss: float) -> None:
            sample_memory()
            self._tell("on_step", step, total, loss)

        def on_eval(step: int, metrics: dict) -> None:
            sample_memory()
            self._tell("on_eval", step, metrics)
            last.update(step=metrics.get("step"), epoch=metrics.get("epoch"))
            fidelity = int(round(float(metrics["epoch"]) * STEPS_PER_EPOCH))
            value = metrics.get(self.metric)
            if value is None or not math.isfinite(value) or fidelity in reported:
                return
            reported.add(fidelity)
            trial.report(float(value), fidelity)
            # A recipe from practice (priors) or a seed check runs to its end; any other trial
            # is judged once its warmup is over.
            protected = (final_pick.SEED_OF in trial.user_attrs
                         or trial.user_attrs.get("source") == priors.SOURCE)
            if (not protected and not self.past_deadline() and fidelity >= warm[0]
                    and trial.should_prune()):
                raise optuna.TrialPruned(
                    f"{self.metric} {value:.4f} at {fidelity / STEPS_PER_EPOCH:g} epochs")

        def record(stop_reason: str | None, fail_reason: str | None = None) -> None:
            sample_memory()
            trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            trial.set_user_attr("peak_rss_mb", round(peak[0], 1))
            trial.set_user_attr("steps", last.get("step"))
            trial.set_user_attr("epochs", last.get("epoch"))
            trial.set_user_attr("stop_reason", stop_reason)
            if fail_reason is not None:
                trial.set_user_attr("fail_reason", fail_reason)

        try:
            params = suggest(trial, self.dims, self.context)
            config = self.base.with_settings(
                {**params, **self.pinned, "seed": seed, "data_seed": self.data_seed})
            trial.set_user_attr("settings", plain(config.flat()))
            validate(config)
            warm[0] = planning.warmup_end(config.train)
            self._tell("trial_started", trial.number, dict(params))
            # Out of memory anyway: once more at half the micro-batch (training.memory).
            result = memory.retry_on_oom(
                lambda c: fit(c, None, task=self.task, on_eval=on_eval,
                              should_stop=self.past_deadline, on_step=on_step, keep_model=True,
                              caches=self.caches),
                config, on_retry=lambda note: trial.set_user_attr("memory_retry", note))
        except memory.DoesNotFit as err:  # the sampler hears it as pruned, with the reason
            record("memory")
            trial.set_user_attr("memory_refused", str(err))
            raise optuna.TrialPruned(str(err)) from None
        except optuna.TrialPruned:
            record(PRUNED)
            raise
        except KeyboardInterrupt:
            record(INTERRUPTED, INTERRUPTED)
            if "retry_of" not in trial.user_attrs:
                self.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
            raise
        except Exception as err:
            record("failed", f"{type(err).__name__}: {' '.join(str(err).split())}")
            raise

        train = result.train_result
        last.update(step=train.steps, epoch=train.epochs)
        stop_reason = DEADLINE if train.stop_reason == "stopped" else train.stop_reason
        value = result.metrics.get(self.metric) if not train.failed else None
        if value is None or not math.isfinite(value):
            why = (f"no evaluation finished ({train.stop_reason})" if train.failed
                   else f"{self.metric} is not a number ({value})")
            record(stop_reason, why)
            raise _TrialFailed(why)
        record(stop_reason)
        trial.set_user_attr("timings", plain(result.timings))
        trial.set_user_attr("feature_depth", result.feature_depth)
        memory_plan.record(trial, result.memory)
        trial.set_user_attr("metrics", plain(dict(result.metrics)))
        trial.set_user_attr("settings", plain(result.config.flat()))  # max_length resolved
        self.pending = (trial.number, result)
        return float(value)

    def _tell(self, event: str, *args: Any) -> None:
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
        from pretune.models.io import read_meta

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
        from pretune.models.io import save_model
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
        from pretune.training.run import valid_predictions

        try:
            frame = valid_predictions(result, self.task, self.caches)
            frame.insert(0, "trial", number)
            rundir.write_atomic(best / PREDICTIONS_FILE, frame.to_csv(index=False))
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
        _from_best(result)  # a soup or student in best/ (this start's or an earlier one's)
        return result
