"""One trial of a search: sample the space, train, report to Optuna, record what happened.

``run_trial`` is the Optuna objective of ``runner.Search``. The training loop knows nothing of
trials: ``TrialWatch`` gives it ``on_step`` and ``on_eval`` callbacks that report the objective
metric after every evaluation (at ``step = round(epoch * 100)``, see ``planning``) and raise
``optuna.TrialPruned`` when the pruner says so, and it records the trial's time, peak memory,
steps and reasons on the trial. A trial whose memory is tight (``memory_plan.isolation``)
trains in a child process (``isolate``), served by the same ``TrialWatch``.
"""

from __future__ import annotations

import math
import os
import socket
import time
from typing import Any

import optuna

from pretune.config import RunConfig, validate
from pretune.search import final_pick, isolate, memory_plan, planning, priors
from pretune.search.memory import rss_mb
from pretune.search.planning import STEPS_PER_EPOCH
from pretune.search.records import DEADLINE, INTERRUPTED, PRUNED, derive_seed
from pretune.search.space import suggest
from pretune.yamlfile import plain


class TrialFailed(Exception):
    """A trial that ended without a usable result (its reason is in the trial's fail_reason)."""


class TrialWatch:
    """Follows one trial as it trains: reports evaluations to Optuna, prunes, samples memory,
    and records the trial's outcome in its user attributes."""

    def __init__(self, search: Any, trial: optuna.Trial):
        self.search = search
        self.trial = trial
        self.started = time.perf_counter()
        self.peak = rss_mb()
        self.child_mb: float | None = None  # the child's resident memory, when isolated
        self.last: dict[str, Any] = {}
        self.reported: set[int] = set()
        self.warm = math.inf  # the step its warmup ends at: no judgement before it

    def sample_memory(self, *_: Any) -> None:
        self.peak = max(self.peak, rss_mb() if self.child_mb is None else self.child_mb)

    def on_step(self, step: int, total: int, loss: float) -> None:
        self.sample_memory()
        self.search.tell("on_step", step, total, loss)

    def on_eval(self, step: int, metrics: dict) -> None:
        self.sample_memory()
        self.search.tell("on_eval", step, metrics)
        self.last.update(step=metrics.get("step"), epoch=metrics.get("epoch"))
        fidelity = int(round(float(metrics["epoch"]) * STEPS_PER_EPOCH))
        metric = self.search.metric
        value = metrics.get(metric)
        if value is None or not math.isfinite(value) or fidelity in self.reported:
            return
        self.reported.add(fidelity)
        self.trial.report(float(value), fidelity)
        # A recipe from practice (priors) or a seed check runs to its end; any other trial
        # is judged once its warmup is over.
        attrs = self.trial.user_attrs
        protected = final_pick.SEED_OF in attrs or attrs.get("source") == priors.SOURCE
        if (not protected and not self.search.past_deadline() and fidelity >= self.warm
                and self.trial.should_prune()):
            raise optuna.TrialPruned(
                f"{metric} {value:.4f} at {fidelity / STEPS_PER_EPOCH:g} epochs")

    def record(self, stop_reason: str | None, fail_reason: str | None = None) -> None:
        self.sample_memory()
        trial = self.trial
        trial.set_user_attr("seconds", round(time.perf_counter() - self.started, 2))
        trial.set_user_attr("peak_rss_mb", round(self.peak, 1))
        trial.set_user_attr("steps", self.last.get("step"))
        trial.set_user_attr("epochs", self.last.get("epoch"))
        trial.set_user_attr("stop_reason", stop_reason)
        if fail_reason is not None:
            trial.set_user_attr("fail_reason", fail_reason)


def run_trial(search: Any, trial: optuna.Trial) -> float:
    """Train the settings ``trial`` samples on ``search``'s data; return the metric's value.

    The result waits in ``search.pending`` for the after-trial callback, which saves the model
    when it is the best so far. A trial without a usable value raises ``TrialFailed``."""
    from pretune.training import memory  # torch loads with the first trial, not before

    watch = TrialWatch(search, trial)
    seed = derive_seed(search.base.train.seed, trial.number)
    trial.set_user_attr("seed", seed)
    trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
    trial.set_user_attr("executor", search.executor)
    try:
        params, config = trial_config(search, trial, seed)
        watch.warm = planning.warmup_end(config.train)
        search.tell("trial_started", trial.number, dict(params))
        result = _train(search, trial, watch, config)
    except memory.DoesNotFit as err:  # the sampler hears it as pruned, with the reason
        watch.record("memory")
        trial.set_user_attr("memory_refused", str(err))
        raise optuna.TrialPruned(str(err)) from None
    except optuna.TrialPruned:
        watch.record(PRUNED)
        raise
    except KeyboardInterrupt:
        watch.record(INTERRUPTED, INTERRUPTED)
        if "retry_of" not in trial.user_attrs:
            search.study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
        raise
    except isolate.ChildFailed as err:  # its reason, as the child said it or died
        watch.record("failed", str(err))
        raise
    except Exception as err:
        watch.record("failed", f"{type(err).__name__}: {' '.join(str(err).split())}")
        raise
    value = _finish(search, trial, watch, result)
    search.pending = (trial.number, result)
    return value


def _train(search: Any, trial: optuna.Trial, watch: TrialWatch, config: RunConfig) -> Any:
    """Train one trial, here or in a child process when its memory is tight; out of memory
    anyway, once more at half the micro-batch (``training.memory.retry_on_oom``)."""
    from pretune.training import memory, run  # torch loads with the first trial, not before

    on_retry = lambda note: trial.set_user_attr("memory_retry", note)  # noqa: E731
    why = memory_plan.isolation(search.isolate_trials, config, search.task,
                                search.caches)
    if why is not None:
        trial.set_user_attr("isolated", why)
        watch.peak = watch.child_mb = 0.0  # the child's memory, not this process's
        return isolate.run(search, watch, config, trial.number, on_retry)
    return memory.retry_on_oom(
        lambda c: run.fit(c, None, task=search.task, on_eval=watch.on_eval,
                          should_stop=search.past_deadline, on_step=watch.on_step,
                          keep_model=True, caches=search.caches),
        config, on_retry=on_retry)


def trial_config(search: Any, trial: optuna.Trial, seed: int) -> tuple[dict[str, Any], RunConfig]:
    """The sampled values and the whole validated configuration of one trial."""
    params = suggest(trial, search.dims, search.context)
    config = search.base.with_settings(
        {**params, **search.pinned, "seed": seed, "data_seed": search.data_seed})
    trial.set_user_attr("settings", plain(config.flat()))
    validate(config)  # a sample the rules refuse fails here, before any training
    return params, config


def _finish(search: Any, trial: optuna.Trial, watch: TrialWatch, result: Any) -> float:
    """Record a trained trial's outcome; its metric's value, or ``TrialFailed``."""
    train = result.train_result
    watch.last.update(step=train.steps, epoch=train.epochs)
    stop_reason = DEADLINE if train.stop_reason == "stopped" else train.stop_reason
    value = result.metrics.get(search.metric) if not train.failed else None
    if value is None or not math.isfinite(value):
        why = (f"no evaluation finished ({train.stop_reason})" if train.failed
               else f"{search.metric} is not a number ({value})")
        watch.record(stop_reason, why)
        raise TrialFailed(why)
    watch.record(stop_reason)
    trial.set_user_attr("timings", plain(result.timings))
    trial.set_user_attr("feature_depth", result.feature_depth)
    memory_plan.record(trial, result.memory)
    trial.set_user_attr("metrics", plain(dict(result.metrics)))
    trial.set_user_attr("settings", plain(result.config.flat()))  # max_length resolved
    return float(value)
