"""The study: a search over a space, run trial after trial until the budget is spent.

``run_tune`` opens (or continues) an Optuna study in a run directory, prepares it step by step
(settings, record, data, study, plan, sampler and pruner) and runs its trials in this process
(``runner.Search``) or in workers (``workers``). Each trial (``trial.run_trial``) samples the
space, builds its ``RunConfig`` from the base settings, the pinned values and the sample, and
calls ``training.run.fit`` on data loaded once for the whole search. Its ``on_eval`` callback
reports the objective metric to Optuna after every evaluation and raises ``optuna.TrialPruned``
when the pruner says so. What a search returns is in ``results``.

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

import logging
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from pretune.config import (
    Budget,
    RunConfig,
    TuneConfig,
    metric_direction,
    validate,
    validate_tune,
)
from pretune.data.images import detect_modality
from pretune.data.unlabeled import read_unlabeled
from pretune.errors import ConfigError
from pretune.search import (assemble, final_pick, memory_plan, planning, prepare, priors, refit,
                            rundir, storage, strategies, workers)
from pretune.search.handoff import STUDY_ATTR, open_study, publish, recover_interrupted  # noqa: F401
from pretune.search.memory import release_memory, rss_mb  # noqa: F401 - public here too
from pretune.search.planning import STEPS_PER_EPOCH, Plan  # noqa: F401
from pretune.search.records import (  # noqa: F401 - public here too
    DEADLINE, FAIL_STREAK, INTERRUPTED, PREDICTIONS_FILE, PRUNED, WAIT_SECONDS, counted,
    derive_seed, quiet_optuna,
)
from pretune.search.results import TrialReport, TuneResult, from_best, trial_report  # noqa: F401
from pretune.search.runner import Search
from pretune.search.space import Dimension, resolve_space, resolve_task, space_to_dict
from pretune.search.strategies import make_pruner, make_sampler  # noqa: F401 - public here too

log = logging.getLogger(__name__)


@dataclass
class _Start:
    """One start of a search, as it is prepared step by step before its first trial."""

    out: Path
    tune: TuneConfig
    budget: Budget
    shared: RunConfig  # what every trial shares
    dims: tuple[Dimension, ...]
    pinned: dict[str, Any]
    metric: str
    direction: str
    parallel: bool
    strategy: Any = None
    found: dict[str, Any] | None = None  # the learning-rate range test, cached or run now
    record: dict[str, Any] | None = None
    task: Any = None
    caches: Any = None
    skipped: dict[str, Any] | None = None  # why the final assembly will not run, if it won't
    url: str = ""
    study: optuna.Study | None = None
    plan: Plan | None = None


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
    began = time.monotonic()  # what runs before the first trial counts toward a time budget
    start = _settle(base, tune, Path(out).expanduser(), space, fixed, space_source)
    rundir.preflight(start.out, start.shared, tune)  # --out writable, the model there, room
    with rundir.RunLock(start.out):
        rundir.clean_leftovers(start.out)
        _open(start, space)
        _plan(start, on_plan)
        _set_strategy(start)
        if start.budget.seconds is not None:  # the trials get what preparing left of the time
            start.budget = Budget(
                seconds=max(1.0, start.budget.seconds - (time.monotonic() - began)),
                trials=start.budget.trials)
        deadline = None if start.budget.seconds is None else time.time() + start.budget.seconds
        publish(start.study, start.record, out=start.out, plan=start.plan, budget=start.budget,
                deadline=deadline, heartbeat=start.tune.heartbeat)
        if start.parallel:
            result = _run_workers(start, on_trial, progress)
        else:
            result = _run_here(start, on_trial, progress)
        result.plan = start.plan.to_dict()
        result.lr_range = start.found
        return result


def _settle(base: RunConfig, tune: TuneConfig, out: Path, space: Mapping[str, Any] | None,
            fixed: Mapping[str, Any] | None, space_source: str) -> _Start:
    """The settings every trial shares, the space and the pins: what can be known before the
    run directory is touched. The metric and the space follow the data's modality and task."""
    budget = Budget.parse(tune.budget)
    base = validate(base.with_settings({"evals_per_epoch": tune.evals_per_epoch}))
    base = base.with_settings({"modality": detect_modality(base.data)})  # the space follows it
    base = resolve_task(base, space, fixed)  # the metric and the space follow the data's task
    dims, pinned = resolve_space(space, fixed, base, source=space_source)
    shared = validate(base.with_settings(pinned))
    metric = shared.train.metric
    return _Start(out=out, tune=tune, budget=budget, shared=shared, dims=dims, pinned=pinned,
                  metric=metric, direction=metric_direction(metric),
                  parallel=check_storage(tune))


def _open(start: _Start, space: Mapping[str, Any] | None) -> None:
    """Check the run directory's record, load the data, open the study, and on a first start
    run the learning-rate range test and write the record."""
    out, tune = start.out, start.tune
    begun = rundir.read_record(out).get("tune") or {}
    start.strategy = strategies.for_run(tune, begun)
    if tune.data_fraction is None and begun.get("data_fraction") is not None:
        tune = replace(tune, data_fraction=begun["data_fraction"])  # as it started
    if tune.data_fraction is not None:  # a setting of every trial, recorded with the rest
        start.shared = validate(start.shared.with_settings({"data_fraction": tune.data_fraction}))
    start.found = prepare.cached_lr_range(out)
    start.dims = prepare.search_space(start.dims, space, start.pinned, start.found)
    start.record = _record(start, tune)
    # A mismatch raises before the data loads, and once more with the data's fingerprint.
    started_before = rundir.check_record(out, start.record, only_given=True)

    tune = _load_data(start, tune)
    start.tune = tune
    start.url = tune.storage or rundir.default_storage(out, start.parallel)
    own_sqlite = tune.storage is None and storage.kind(start.url) == "sqlite"
    # The run directory's own SQLite file has one writer, so a trial left RUNNING there
    # was interrupted; on a shared storage a dead worker's trial is found by its heartbeat.
    start.study = open_study(start.url, tune.study_name, start.direction,
                             heartbeat=None if own_sqlite else tune.heartbeat)
    if started_before:
        rundir.check_record(out, start.record)
    else:  # written once the data and the storage are known to work
        if tune.lr_range_test and start.found is None:
            start.found = prepare.lr_range(out, start.shared, start.task, tune, start.budget,
                                           start.caches)
            start.dims = prepare.search_space(start.dims, space, start.pinned, start.found)
            start.record["space"] = space_to_dict(start.dims)
        start.tune = _screening(start, start.tune)
        rundir.write_record(out, start.record)
    if own_sqlite:
        recover_interrupted(start.study)


def _screening(start: _Start, tune: TuneConfig) -> TuneConfig:
    """``--screen``, on a first start with data too large for the time budget: ``tune`` with
    the data fraction its trials screen recipes on (``planning.screening_fraction``), recorded
    so that a continued search keeps it. Only where the refit will train the chosen recipe on
    more rows, the user named no fraction and the strategy is ``auto``."""
    if (not tune.screen or tune.data_fraction is not None or not tune.refit or start.parallel
            or start.strategy.name != "auto" or start.shared.train.dp_epsilon is not None):
        return tune
    task = start.task
    typical, _ = planning.epochs_range(start.dims, {**start.shared.flat(), **start.pinned})
    fraction = planning.screening_fraction(
        start.budget, (start.found or {}).get("seconds_per_example"), len(task.train),
        len(task.valid), typical, tune.evals_per_epoch, share=1 - refit.MAX_SHARE)
    if fraction is None:
        log.info("screen: %d typical trials on all %d rows fit half the budget; no fraction",
                 planning.SCREEN_TRIALS, len(task.train))
        return tune
    log.info("screen: the trials screen recipes on %.3g of the %d rows an epoch and the refit "
             "trains the chosen one on as many rows as its time allows", fraction,
             len(task.train))
    tune = replace(tune, data_fraction=fraction)
    start.shared = validate(start.shared.with_settings({"data_fraction": fraction}))
    start.record.update(_record(start, tune))
    return tune


def _record(start: _Start, tune: TuneConfig) -> dict[str, Any]:
    """What the run directory records of the search, to check a later start against."""
    return {
        "settings": start.shared.to_dict(),
        "tune": {**{k: v for k, v in vars(tune).items() if k != "budget"},
                 "strategy": start.strategy.name, "sampler": start.strategy.sampler,
                 "pruner": start.strategy.pruner},
        "metric": start.metric,
        "direction": start.direction,
        "space": space_to_dict(start.dims),
        "fixed": dict(start.pinned),
    }


def _load_data(start: _Start, tune: TuneConfig) -> TuneConfig:
    """Load the task once for every trial (DataErrors propagate from here); ``tune`` without
    the final assembly when the task rules it out."""
    from pretune.data import task as task_data  # looked up here so tests can stand in for it
    from pretune.training.caches import RunCaches  # the training layer loads torch
    from pretune.training.run import data_seed

    start.task = task_data.load_task(start.shared.data, data_seed(start.shared))
    start.skipped = assemble.skipped_for(start.task) if tune.assemble else None
    if start.skipped is not None:  # nothing is kept for an assembly that will not run
        log.info("final assembly: %s", start.skipped["skipped"])
        tune = replace(tune, assemble=False)
    start.caches = RunCaches(start.out / rundir.CACHE_DIR)  # shared by the range test and trials
    start.record["data_fingerprint"] = start.task.fingerprint
    return tune


def _plan(start: _Start, on_plan: Callable[[Plan], None] | None) -> None:
    """The budget plan: how many trials fit, the pruner's schedule, what the assembly keeps."""
    shared, task, tune = start.shared, start.task, start.tune
    plan = planning.make_plan(
        start.strategy, start.budget, start.dims, {**shared.flat(), **start.pinned},
        seconds_per_example=(start.found or {}).get("seconds_per_example"),
        train_rows=len(task.train.labels), valid_rows=len(task.valid.labels),
        evals_per_epoch=tune.evals_per_epoch, lr_test=start.found,
        fraction=shared.train.data_fraction)
    plan = _with_keep(plan, tune, shared, start.budget, task, start.parallel)
    plan = replace(plan, memory=memory_plan.line(shared, start.dims, task, start.caches,
                                                 start.study.get_trials(deepcopy=False),
                                                 tune.isolate_trials))
    rundir.update_plan(start.out, plan=plan.to_dict())
    if start.skipped is not None:
        rundir.update_plan(start.out, assembly=start.skipped)
    log.info("plan: %s", plan.message())
    if on_plan is not None:
        on_plan(plan)
    start.plan = plan


def _set_strategy(start: _Start) -> None:
    """The study's sampler and pruner, and the recipes from practice queued first."""
    study, shared, strategy = start.study, start.shared, start.strategy
    study.sampler = make_sampler(
        strategy.sampler, derive_seed(shared.train.seed, len(study.get_trials(deepcopy=False))),
        n_startup_trials=strategy.startup)
    study.pruner = make_pruner(start.plan.pruner, start.plan.fidelity)
    if start.tune.priors:
        lr_dim = next((d for d in start.dims if d.name == "lr"), None)
        prior_lr = priors.base_lr(prepare.hidden_size(shared)) if lr_dim else shared.train.lr
        queued = priors.enqueue(study, start.dims, prior_lr, {**shared.flat(), **start.pinned})
        if queued:
            log.info("queued %d recipes from practice as the first trials", queued)


def _run_workers(start: _Start, on_trial: Callable | None, progress: Any) -> TuneResult:
    """Run the trials in worker processes, then, in the order of a search in one process, the
    refit (with a trial budget: a time budget was spent by the workers) and the assembly (no
    time to distill; after a refit, only the ensemble)."""
    tune = start.tune
    result = workers.run_workers(
        start.study, start.url, tune, start.out, workers=tune.workers, task=start.task,
        base=start.shared, dims=start.dims, pinned=start.pinned, metric=start.metric,
        direction=start.direction, on_trial=on_trial, progress=progress, budget=start.budget)
    if tune.refit and start.budget.seconds is None:
        result.refit = _refit_safely(start)
    if tune.assemble and tune.keep > 1:
        plain = result.refit is None
        result.assembly = _assemble_safely(start.out, start.task, start.caches, start.metric,
                                           start.direction, distill=False, soups=plain,
                                           adopt=plain)
    from_best(result)
    result.assembly = result.assembly or start.skipped
    return result


def _run_here(start: _Start, on_trial: Callable | None, progress: Any) -> TuneResult:
    """Run the trials in this process, the seed check, then the final assembly."""
    tune, plan = start.tune, start.plan
    search = Search(study=start.study, task=start.task, base=start.shared, dims=start.dims,
                    pinned=start.pinned, metric=start.metric, direction=start.direction,
                    out=start.out, budget=start.budget, on_trial=on_trial, progress=progress,
                    caches=start.caches)
    search.seed_check_size = (tune.seed_check, tune.seed_check_runs)
    search.min_start = planning.first_eval_seconds(plan, tune.evals_per_epoch)
    search.reserve = final_pick.reserve(
        start.budget, plan.trial_seconds, tune.seed_check, tune.seed_check_runs,
        trials_done=sum(counted(t) for t in start.study.get_trials(deepcopy=False)))
    if search.reserve.active:
        log.info("keeping %s for the seed check of the final pick", search.reserve)
    search.keep = tune.keep if tune.assemble and tune.keep > 1 else 0  # kept to be used
    search.isolate_trials = tune.isolate_trials  # child processes when memory is tight
    final = plan.assembly_seconds
    end = search.deadline
    if final and end is not None:  # the trials stop where the assembly's time begins
        search.deadline = end - final
        log.info("keeping %.0fs for building the final model", final)
    search.replan = lambda: _replan(start, search, end)
    search.write_trials()
    try:
        search.run()
    finally:
        search.write_trials()
        search.deadline = end
    built = rundir.read_plan(start.out).get("assembly")
    again = None
    if tune.refit and search.stop_error is None:  # first: the model is the product
        again = _refit_safely(start, deadline=end)
    if tune.assemble and tune.keep > 1 and search.stop_error is None:
        if search.trials_run or not built:  # a rerun that trained nothing rebuilds nothing
            # after a refit, only the ensemble (predict --ensemble); else the whole assembly
            plain = again is None
            built = _assemble_safely(start.out, start.task, start.caches, start.metric,
                                     start.direction, deadline=end, distill=plain,
                                     soups=plain, adopt=plain)
        search.assembly = built
    result = search.result()
    result.refit = again
    result.assembly = search.assembly or start.skipped
    result.seed_check = search.picked
    return result


def _replan(start: _Start, search: Search, end: float | None) -> None:
    """After a trial: the plan again from the trials' measured times (``planning.remeasure``):
    the pruner, the time a trial needs to be worth starting, and the time kept for the
    assembly follow it."""
    plan = planning.remeasure(start.plan, start.strategy, start.budget,
                              start.study.get_trials(deepcopy=False))
    if plan is None:
        return
    tune = start.tune
    plan = _with_keep(plan, tune, start.shared, start.budget, start.task, start.parallel)
    if plan.pruner != start.plan.pruner:
        start.study.pruner = make_pruner(plan.pruner, plan.fidelity)
    search.min_start = planning.first_eval_seconds(plan, tune.evals_per_epoch)
    if end is not None:
        search.deadline = end - plan.assembly_seconds
    start.plan = plan
    rundir.update_plan(start.out, plan=plan.to_dict())
    log.info("plan, measured: %s", plan.message())


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


def _refit_safely(start: _Start, deadline: float | None = None) -> dict[str, Any] | None:
    """best/'s recipe trained again on the training and validation rows (``refit``); a
    failure there is a warning, since best/ already holds the search's model."""
    try:
        return refit.refit(start.out, start.task, start.caches, metric=start.metric,
                           deadline=deadline)
    except Exception as err:  # noqa: BLE001 - the search's own result stands
        log.warning("best/'s recipe could not be refit on the training and validation rows; "
                    "best/ keeps the search's model (%s: %s)", type(err).__name__, err)
        return None


def _with_keep(plan: Plan, tune: TuneConfig, shared: RunConfig, budget: Budget, task,
               parallel: bool = False) -> Plan:
    """The plan with what building the final model costs: the kept models' disk, the time of
    the assembly (the distilled student may learn from the --unlabeled texts too; workers, and
    a search that refits, distill nothing) and of the refit (``refit.reserve``; a search on a
    data fraction keeps the refit's whole share, which its refit widens to fill)."""
    from pretune.models.load import weights_bytes  # models.load loads torch

    train_rows = len(task.train)
    assembling = tune.assemble and tune.keep > 1
    seconds = 0.0
    if assembling and not parallel:
        share = 0.0
        if shared.data.unlabeled and not tune.refit:
            share = len(read_unlabeled(shared.data.unlabeled, shared.data.text_column)) / max(
                train_rows, 1)
        seconds = assemble.reserve(budget, plan.trial_seconds, True, share,
                                   distill=not tune.refit)
    again = 0.0
    if tune.refit and not parallel and shared.train.dp_epsilon is None and budget.seconds:
        most = refit.MAX_SHARE * budget.seconds - seconds
        again = (max(0.0, most) if shared.train.data_fraction < 1  # it widens to fill it
                 else refit.reserve(budget, plan.trial_seconds,
                                    refit.rows_share(train_rows, len(task.valid)), most=most))
    if assembling:
        weights = weights_bytes(shared.model)
        plan = replace(plan, keep=tune.keep, keep_mb=None if weights is None
                       else assemble.disk_bytes(weights, tune.keep) / 2**20)
    return replace(plan, assembly_seconds=round(seconds + again, 1), refit_seconds=round(again, 1))


def check_storage(tune: TuneConfig) -> bool:
    """Check ``--storage`` against the workers before anything else is read or written; True
    when the search runs in several processes."""
    parallel = tune.executor != "local" or workers.local_workers(tune.workers) > 1
    if tune.storage is not None and not storage.shared(tune.storage) and parallel:
        raise ConfigError(
            f"Several workers need a storage that several processes may write, but "
            f"--storage {tune.storage} is SQLite. Pass a journal file (runs/NAME/study.journal) "
            f"or a database (postgresql://user@host/db), or leave --storage out."
        )
    return parallel
