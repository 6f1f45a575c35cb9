"""Several trials at once: worker processes that share one study through its storage.

A **worker** (``join``, the ``pretune worker`` command) is a process that opens a study that
``pretune tune`` started, reads from the study itself what the search is (``handoff.publish``:
settings with absolute data and model paths, space, pins, metric, pruner schedule, trial budget,
deadline, run directory), loads the data and runs trials until the budget is spent. So a worker
needs only ``--storage`` and ``--study``; on another machine the data and model must be at the
same paths (a shared file system), and best/ is written to the same run directory when it is
shared, else to the worker's ``--out``.

``pretune tune --workers N`` prepares the search as usual (range test, plan, queued recipes), then
starts N workers and follows them (``run_workers``): as local processes (``executor="local"``;
logs in ``OUT/workers/``; each with its share of the cores, and one GPU each where there are
several), or as Ray tasks (``executor="ray"``; one per ``cpus_per_trial`` CPUs, or one per GPU).

What keeps workers apart:

* the storage hands out trial numbers and queued trials atomically, and the TPE sampler's
  constant liar treats running trials as bad points, so workers do not sample the same place;
* the trial budget counts finished trials and those running in other workers, so N workers do
  not overshoot it, and a worker with nothing left to start waits for the others' last trials:
  if one of them dies, its trial is failed by heartbeat and retried once (``storage``);
* best/ is compared and replaced under ``rundir.BestLock``, by the worker that ran the trial.

The seed check of the final pick runs only in a one-process search.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Mapping

import optuna

from pretune.config import Budget, RunConfig, TuneConfig
from pretune.data.task import load_task
from pretune.errors import ConfigError, MissingExtraError, PretuneError
from pretune.search import rundir, storage, strategies
from pretune.search.handoff import STUDY_ATTR
from pretune.search.records import derive_seed, quiet_optuna
from pretune.search.results import TuneResult, trial_report
from pretune.search.runner import Search
from pretune.search.space import resolve_space
from pretune.search.strategies import Fidelity, make_pruner, make_sampler

log = logging.getLogger(__name__)

POLL_SECONDS = 1.0  # how often the coordinator looks at the study for finished trials
STOP_SECONDS = 60.0  # how long stopped workers get to record their trials before being killed


# --- one worker ----------------------------------------------------------------------------------


def join(url: str, study_name: str, *, out: str | Path | None = None, budget: str | None = None,
         threads: int | None = None, heartbeat: int | None = None,
         on_trial: Callable[[Any], None] | None = None, progress: Any = None,
         executor: str = "worker") -> TuneResult:
    """Join the study ``study_name`` in storage ``url`` and run its trials until its budget is
    spent (``budget``: this worker's own time and/or trial limit instead of the study's).
    ``heartbeat`` replaces the study's interval; every worker of a study should use the same,
    since a worker judges the others' trials by its own grace period. ``executor`` is recorded
    in each trial's ``executor`` attribute (``worker``, or ``ray`` in a Ray task)."""
    quiet_optuna()
    study = load(url, study_name, heartbeat=heartbeat)
    info = study.user_attrs[STUDY_ATTR]
    beat = heartbeat or info.get("heartbeat") or TuneConfig.heartbeat
    if beat != heartbeat:  # reopen with the study's interval
        study = load(url, study_name, heartbeat=beat)
    record = info["record"]
    base = RunConfig.from_dict(record["settings"])
    if threads is not None:
        base = base.with_settings({"threads": threads})
    dims, pinned = resolve_space({"extend": False, **record["space"]}, record["fixed"], base,
                                 source=f"the space of study {study_name!r}")
    run_dir = Path(out if out is not None else info["out"]).expanduser()
    rundir.preflight(run_dir, base, TuneConfig())  # writable, the model there, room on disk
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise ConfigError(
            f"A worker writes the best model to the run directory, but {run_dir} cannot be "
            f"created ({err.strerror or err}). Share that directory with this machine or pass "
            f"--out DIR."
        ) from None

    from pretune.training.caches import RunCaches  # torch loads only when this runs
    from pretune.training.run import data_seed

    task = load_task(base.data, data_seed(base))
    if record.get("data_fingerprint") not in (None, task.fingerprint):
        raise ConfigError(
            f"A worker must train on the data its study started with, but the data at "
            f"{base.data.train} differs from it (fingerprint {task.fingerprint}, study "
            f"{record['data_fingerprint']}). Give this machine the same files at the same path."
        )
    seen = len(study.get_trials(deepcopy=False))
    strategy = strategies.for_run(TuneConfig(), record["tune"])  # the one the study started with
    study.sampler = make_sampler(strategy.sampler, derive_seed(base.train.seed, seen, os.getpid()),
                                 n_startup_trials=strategy.startup)
    plan = info["plan"]
    study.pruner = make_pruner(plan["pruner"], Fidelity(plan["min_resource"],
                                                        plan["max_resource"]))
    search = Search(study=study, task=task, base=base, dims=dims, pinned=pinned,
                     metric=record["metric"], direction=record["direction"], out=run_dir,
                     budget=worker_budget(info, budget), on_trial=on_trial, progress=progress,
                     caches=RunCaches(run_dir / rundir.CACHE_DIR))
    search.executor = executor
    keep = int(record["tune"].get("keep") or 0)  # models kept for the final assembly, if any
    search.keep = keep if record["tune"].get("assemble", True) and keep > 1 else 0
    search.isolate_trials = record["tune"].get("isolate_trials") or "auto"
    try:
        search.run()
    finally:
        search.write_trials()
    return search.result()


def load(url: str, study_name: str, *, heartbeat: int | None = None) -> optuna.Study:
    """The study a worker joins; ConfigError when it is not there or not a pretune search."""
    try:
        from sqlalchemy.exc import SQLAlchemyError  # an optional extra, imported when used
    except ImportError:  # pragma: no cover
        SQLAlchemyError = OSError  # type: ignore[assignment,misc]  # noqa: N806
    if not storage.shared(url):
        raise ConfigError(
            f"A worker shares its study with other processes, so its storage must be a journal "
            f"file or a database server, but --storage {url} is SQLite (one writer at a time). "
            f"Start the search with --storage RUN/study.journal or postgresql://user@host/db "
            f"and join it with that URL."
        )
    try:
        opened = storage.open_storage(url, heartbeat=heartbeat)
        names = [s.study_name for s in opened.get_all_studies()]
    except (ValueError, SQLAlchemyError, optuna.exceptions.StorageInternalError) as err:
        detail = " ".join(str(getattr(err, "orig", None) or err).split())[:200]
        raise ConfigError(
            f"--storage must be an Optuna storage that can be opened, but {url!r} failed "
            f"({detail}). Check the URL and that the database server is reachable."
        ) from None
    if study_name not in names:
        listed = ", ".join(repr(n) for n in names[:10]) or "none"
        raise ConfigError(
            f"A worker joins a study that pretune tune started, but {url} has no study "
            f"{study_name!r} (it has: {listed}). Start it with pretune tune --storage {url} "
            f"--study {study_name}, or pass the right --study."
        )
    study = optuna.load_study(study_name=study_name, storage=opened)
    if STUDY_ATTR not in study.user_attrs:
        raise ConfigError(
            f"A worker joins a study that pretune tune started, but study {study_name!r} in "
            f"{url} was not (it has no pretune settings). Start the search with pretune tune."
        )
    return study


def worker_budget(info: Mapping[str, Any], given: str | None) -> Budget:
    """The study's trial budget and what is left of its start's time budget; ``given`` (a
    budget string) replaces them for this worker."""
    if given is not None:
        return Budget.parse(given)
    trials = info.get("trials")
    deadline = info.get("deadline")
    if deadline is None:
        return Budget(seconds=None, trials=trials)
    left = float(deadline) - time.time()
    if left <= 0 and trials is None:
        raise ConfigError(
            f"A worker runs within the budget of its study's latest start, but that time budget "
            f"ran out {-left:.0f}s ago. Continue the search with pretune tune, or give this "
            f"worker its own --budget."
        )
    return Budget(seconds=max(left, 1.0), trials=trials)


# --- several workers -----------------------------------------------------------------------------


def run_workers(study: optuna.Study, url: str, tune: TuneConfig, out: Path, *,
                workers: int | None, task, base: RunConfig, dims, pinned, metric: str,
                direction: str, on_trial=None, progress=None, budget: Budget) -> TuneResult:
    """Start the workers of a prepared search, follow the study until they end, and return the
    search's result (``study.run_tune`` calls this when ``tune`` asks for several workers)."""
    if tune.executor == "ray":
        launched = _RayWorkers(url, tune, out, workers)
    else:
        launched = _LocalWorkers(url, tune, out, local_workers(workers))
    log.info("started %d %s workers", launched.count, tune.executor)
    follower = Search(study=study, task=task, base=base, dims=dims, pinned=pinned,
                       metric=metric, direction=direction, out=out, budget=budget,
                       on_trial=None, progress=None, caches=None)
    method = getattr(progress, "search_started", None)
    if method is not None:
        method(follower.remaining(), budget.seconds, metric)
    reported = {t.number for t in study.get_trials(deepcopy=False) if t.state.is_finished()}
    before = len(reported)
    try:
        while True:
            done = launched.poll()
            _report_new(study, follower, reported, on_trial)
            if done:
                break
            time.sleep(POLL_SECONDS)
        _report_new(study, follower, reported, on_trial)
        failures = launched.failures()
    except KeyboardInterrupt:
        launched.stop()
        raise
    finally:
        follower.write_trials()
        launched.close()
    result = follower.result()
    if failures and result.best_trial is None:
        raise PretuneError(
            f"A search keeps a best model once a worker completes a trial, but none did and "
            f"{len(failures)} of {launched.count} workers stopped with an error; the first: "
            f"{failures[0]} Fix that cause and run the same command again."
        )
    for failure in failures:
        log.warning("a worker stopped with an error: %s", failure)
    result.trials_run = len(reported) - before
    return result


def _report_new(study: optuna.Study, follower: Search, reported: set[int], on_trial) -> None:
    finished = [t for t in study.get_trials(deepcopy=False)
                if t.state.is_finished() and t.number not in reported]
    if not finished:
        return
    follower.write_trials()
    saved = follower.saved_best()
    for t in sorted(finished, key=lambda t: t.datetime_complete or t.datetime_start):
        reported.add(t.number)
        if on_trial is not None:
            on_trial(trial_report(t, follower.metric, bool(saved) and saved[0] == t.number))


def cores_each(workers: int, cores: int | None = None) -> int:
    """torch threads for each of ``workers`` processes sharing this machine's cores."""
    from pretune.training.device import available_cores  # torch loads only when this runs

    return max(1, (cores or available_cores()) // max(1, workers))


def gpu_count() -> int:
    import torch  # torch loads only when this runs

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_workers(given: int | None) -> int:
    """How many local workers a search runs: ``given``, else one per GPU where there are
    several, else one."""
    if given is not None:
        return given
    gpus = gpu_count()
    return gpus if gpus > 1 else 1


def worker_env(k: int, gpus: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of local worker ``k``: with several GPUs, each worker sees one of them
    (worker k gets GPU k mod the count), so trials run one per GPU."""
    env = dict(os.environ if base is None else base)
    if gpus > 1:
        visible = env.get("CUDA_VISIBLE_DEVICES")
        ids = [x for x in visible.split(",") if x.strip()] if visible else [str(i) for i in range(gpus)]
        env["CUDA_VISIBLE_DEVICES"] = ids[k % len(ids)]
    return env


class _LocalWorkers:
    """``pretune worker`` processes on this machine, each logging to ``OUT/workers/K.log``."""

    def __init__(self, url: str, tune: TuneConfig, out: Path, count: int):
        self.count = count
        logs = Path(out) / rundir.WORKERS_DIR
        logs.mkdir(parents=True, exist_ok=True)
        threads = tune.cpus_per_trial or cores_each(count)
        gpus = gpu_count()
        self.procs: list[subprocess.Popen] = []
        self.logs: list[Path] = []
        for k in range(count):
            env = worker_env(k, gpus)
            path = logs / f"worker-{k}.log"
            command = [sys.executable, "-m", "pretune", "worker", "--storage", url,
                       "--study", tune.study_name, "--out", str(out), "--threads", str(threads),
                       "--heartbeat", str(tune.heartbeat)]
            with open(path, "w") as handle:
                self.procs.append(subprocess.Popen(command, stdout=handle,
                                                   stderr=subprocess.STDOUT, env=env))
            self.logs.append(path)

    def poll(self) -> bool:
        return all(p.poll() is not None for p in self.procs)

    def stop(self) -> None:
        for p in self.procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)  # a worker records its trial as interrupted
        until = time.monotonic() + STOP_SECONDS
        for p in self.procs:
            try:
                p.wait(max(0.1, until - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()

    def close(self) -> None:
        pass

    def failures(self) -> list[str]:
        found = []
        for p, path in zip(self.procs, self.logs):
            if p.returncode not in (0, None):
                lines = [x for x in path.read_text(errors="replace").splitlines() if x.strip()]
                found.append(f"{lines[-1].strip() if lines else 'no output'} (exit code "
                             f"{p.returncode}; log {path})")
        return found


def _ray_worker(url: str, study_name: str, out: str, threads: int, heartbeat: int) -> int:
    """A worker run as a Ray task; returns the number of trials it ran."""
    result = join(url, study_name, out=out, threads=threads, heartbeat=heartbeat, executor="ray")
    return result.trials_run


def _check_reachable(address: str | None, timeout: float = 5.0) -> None:
    """Fail fast on a Ray address nothing listens at (Ray itself retries for minutes)."""
    if not address or address == "auto":
        return

    host_port = address.split("://", 1)[-1].rstrip("/")
    host, _, port = host_port.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(
            f"--ray-address must be HOST:PORT (or ray://HOST:PORT, or auto), but got {address!r}. "
            f"Give the address that ray start --head printed."
        )
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as err:
        raise ConfigError(
            f"--ray-address must name a running Ray cluster, but nothing answers at {address} "
            f"({err.strerror or err}). Start one with ray start --head, or leave --ray-address "
            f"out for a local instance."
        ) from None


class _RayWorkers:
    """Workers as Ray tasks, on a local Ray instance or the cluster at ``tune.ray_address``."""

    def __init__(self, url: str, tune: TuneConfig, out: Path, count: int | None):
        try:
            import ray  # an optional extra, imported when used
        except ImportError:
            raise MissingExtraError("ray", "ray", "--executor ray") from None
        if not storage.shared(url):  # pragma: no cover - run_tune refuses it before
            raise ConfigError(f"Ray workers need a shared storage, but got {url}.")
        self.ray = ray
        self.started = not ray.is_initialized()  # a Ray instance this search starts, and ends
        if self.started:
            _check_reachable(tune.ray_address)
            try:
                ray.init(address=tune.ray_address, include_dashboard=False,
                         log_to_driver=False, logging_level=logging.ERROR)
            except (ConnectionError, ValueError, RuntimeError) as err:
                raise ConfigError(
                    f"--ray-address must name a running Ray cluster, but "
                    f"{tune.ray_address!r} could not be joined ({' '.join(str(err).split())[:200]}). "
                    f"Start one with ray start --head, or leave --ray-address out for a local "
                    f"instance."
                ) from None
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        cpus = int(resources.get("CPU", 1))
        per_trial = tune.cpus_per_trial or (max(1, cpus // count) if count else 1)
        if count is None:
            count = gpus if gpus else max(1, cpus // per_trial)
        self.count = count
        task = ray.remote(_ray_worker).options(num_cpus=per_trial, num_gpus=1 if gpus else 0,
                                               max_retries=0)
        self.refs = [task.remote(url, tune.study_name, str(out), per_trial, tune.heartbeat)
                     for _ in range(count)]
        self.errors: list[str] = []

    def poll(self) -> bool:
        ready, _ = self.ray.wait(self.refs, num_returns=len(self.refs), timeout=0)
        return len(ready) == len(self.refs)

    def stop(self) -> None:
        for ref in self.refs:
            self.ray.cancel(ref)

    def failures(self) -> list[str]:
        found = []
        for ref in self.refs:
            try:
                self.ray.get(ref)
            except Exception as err:  # noqa: BLE001 - a Ray task's error, reported as text
                cause = getattr(err, "cause", None) or err
                found.append(f"{type(cause).__name__}: {' '.join(str(cause).split())[:300]}")
        return found

    def close(self) -> None:
        if self.started and self.ray.is_initialized():
            self.ray.shutdown()
