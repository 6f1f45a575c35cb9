"""Search strategies: a sampler and a pruner under one name (``pretune tune --strategy``).

A strategy says where the next trial goes (the sampler) and when a running trial is stopped
early (the pruner). Pruners work on a *fidelity*: the step a trial reports at. The real search
reports at percent of an epoch (``STEPS_PER_EPOCH`` per epoch); ``bench/replay.py`` reports at
table checkpoints. Both build their sampler and pruner with ``make_sampler`` / ``make_pruner``
below, so the replay measures the very objects a search uses.

=====================  ============================  ==========================================
name                   sampler                       pruner
=====================  ============================  ==========================================
``auto`` (default)     the strategy ``AUTO`` names   (see below)
``tpe``                TPE, multivariate + group     none: every trial runs to its end
``random``             uniform random                none
``hyperband``          TPE, multivariate + group     Hyperband (successive halving in brackets)
``asha``               TPE, multivariate + group     asynchronous successive halving
``median``             TPE, multivariate + group     median of earlier trials at the same step
``random-hyperband``   uniform random                Hyperband
=====================  ============================  ==========================================

``AUTO`` names the candidate (``CANDIDATES``) that ``auto`` runs: the one ``bench/replay.py
--protocol loto`` chooses, on five replayed tasks, scored on the sixth: TPE with 10 random
start-up trials and ASHA from 6% of the longest trial (half an epoch of five in the default
space). Held out it was best or tied on 11 of 12 task-budget rows, mean regret 0.032 against
0.059 for the best careful Optuna set-up (TPE + ``MedianPruner(n_warmup_steps=5)``) and 0.067
to 0.077 for the previous default, TPE with 20 start-up trials and Hyperband from a fifth of
the longest trial. On the SST-2 check (2,000 rows, 10 minutes, four seeds) its ``best/``
averaged 0.846 on test against 0.848 for the previous default, a difference well within one
standard error (0.8 points); the numbers are in bench/README.md. Every pruner waits for the
first rung, the first evaluation, and the trial's own warmup (``planning``); the recipes of
``priors`` are never judged.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, replace
from typing import Any, Mapping

import optuna

from pretune import config
from pretune.config import PRUNERS, SAMPLERS, TuneConfig
from pretune.errors import one_of

REDUCTION_FACTOR = 3  # Hyperband's and ASHA's: a third of the trials go on at each rung
MEDIAN_STARTUP_TRIALS = 5  # the median pruner compares only once this many trials finished
TPE_STARTUP_TRIALS = 20  # TPE samples at random until this many trials (of a Hyperband bracket)
FIRST_RUNG = 0.2  # one epoch of five: where a strategy judges from when epochs are unknown


@dataclass(frozen=True)
class Strategy:
    name: str
    sampler: str  # one of SAMPLERS
    pruner: str  # one of PRUNERS
    about: str
    # No trial is judged before this share of the longest trial the space allows; None: not
    # before one epoch (``epoch`` steps; a fifth of the longest trial where epochs are unknown).
    first_rung: float | None = None
    startup: int = TPE_STARTUP_TRIALS  # TPE samples at random for this many trials

    def fidelity(self, max_resource: int, *, floor: int = 1, epoch: int | None = None
                 ) -> Fidelity:
        """The fidelity of this strategy on steps 1..max_resource; ``floor``: the first step a
        trial can be judged at (its first evaluation); ``epoch``: the steps of one epoch."""
        if self.first_rung is None and epoch is not None:
            first = epoch
        else:
            first = round((self.first_rung or FIRST_RUNG) * max_resource)
        return Fidelity(min(max(floor, 1, first), max_resource), max_resource)


STRATEGIES: dict[str, Strategy] = {s.name: s for s in (
    Strategy("tpe", "tpe", "none", "TPE, no pruning"),
    Strategy("random", "random", "none", "random search, no pruning"),
    Strategy("hyperband", "tpe", "hyperband", "TPE with Hyperband pruning"),
    Strategy("asha", "tpe", "asha", "TPE with asynchronous successive halving"),
    Strategy("median", "tpe", "median", "TPE with the median pruner"),
    Strategy("random-hyperband", "random", "hyperband", "random search with Hyperband pruning"),
)}
NAMES = ("auto", *STRATEGIES)
if NAMES != config.STRATEGIES:  # pragma: no cover - a mistake in a change of either list
    raise ImportError("config.STRATEGIES must list the strategies defined here, auto first")


@dataclass(frozen=True)
class Fidelity:
    """The steps a trial reports at, as the pruners see them.

    ``min_resource``: no trial is judged before this step; ``max_resource``: the step of a
    trial that runs to its end (Hyperband sizes its brackets from the two).
    """

    min_resource: int
    max_resource: int
    reduction_factor: int = REDUCTION_FACTOR

    def __post_init__(self) -> None:
        if not 1 <= self.min_resource <= self.max_resource:
            raise ValueError(f"need 1 <= min_resource <= max_resource, got {self}")


def resolve(strategy: str | None = "auto", *, sampler: str | None = None,
            pruner: str | None = None) -> Strategy:
    """The strategy a name stands for; ``sampler``/``pruner`` (``--sampler``/``--pruner``)
    replace its parts. Unknown names raise ConfigError."""
    name = "auto" if strategy is None else str(strategy)
    one_of("strategy", name, NAMES)
    chosen = STRATEGIES[name] if name != "auto" else replace(
        CANDIDATES[AUTO], name="auto", about=f"auto: {CANDIDATES[AUTO].about}")
    if sampler is not None:
        one_of("sampler", sampler, SAMPLERS)
    if pruner is not None:
        one_of("pruner", pruner, PRUNERS)
    if sampler in (None, chosen.sampler) and pruner in (None, chosen.pruner):
        return chosen
    s, p = sampler or chosen.sampler, pruner or chosen.pruner
    same = [x for x in STRATEGIES.values() if (x.sampler, x.pruner) == (s, p)]
    if same:
        return same[0]
    return Strategy(f"{s}+{p}", s, p, f"{s} sampler with the {p} pruner")


def for_run(tune: TuneConfig, started: Mapping[str, Any] | None = None) -> Strategy:
    """The strategy of one start of a search: the one ``tune`` names; when it names none
    (no strategy, sampler or pruner), the one the run was started with (``started``: the
    ``tune`` section of its pretune.yaml), else ``auto``. A continued search thus keeps its
    strategy, and naming another one is a settings mismatch (``rundir.check_record``)."""
    given = (tune.strategy, tune.sampler, tune.pruner) != (None, None, None)
    if not given and started and started.get("strategy"):
        name, sampler, pruner = (str(started.get(k)) for k in ("strategy", "sampler", "pruner"))
        one_of("sampler", sampler, SAMPLERS)
        one_of("pruner", pruner, PRUNERS)
        if name in NAMES and (resolve(name).sampler, resolve(name).pruner) == (sampler, pruner):
            return resolve(name)
        # The recorded pair, even where "auto" would name another pair today.
        return Strategy(name, sampler, pruner, f"{name}: {sampler} sampler, {pruner} pruner")
    return resolve(tune.strategy, sampler=tune.sampler, pruner=tune.pruner)


def make_sampler(name: str, seed: int | None, *, n_startup_trials: int = TPE_STARTUP_TRIALS
                 ) -> optuna.samplers.BaseSampler:
    """``tpe``: multivariate TPE over groups of parameters that occur together (conditional
    spaces), with the constant liar so parallel workers spread out; ``random``: uniform."""
    one_of("sampler", name, SAMPLERS)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.samplers.TPESampler(multivariate=True, group=True, seed=seed,
                                          constant_liar=True, n_startup_trials=n_startup_trials)


def make_pruner(name: str, fidelity: Fidelity) -> optuna.pruners.BasePruner:
    """The pruner ``name`` on ``fidelity``; none of them stops a trial before its min_resource."""
    one_of("pruner", name, PRUNERS)
    f = fidelity
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=f.min_resource,
                                              max_resource=f.max_resource,
                                              reduction_factor=f.reduction_factor)
    if name == "asha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=f.min_resource,
                                                      reduction_factor=f.reduction_factor)
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=MEDIAN_STARTUP_TRIALS,
                                           n_warmup_steps=f.min_resource)
    return optuna.pruners.NopPruner()


def build(strategy: Strategy, seed: int | None, fidelity: Fidelity
          ) -> tuple[optuna.samplers.BaseSampler, optuna.pruners.BasePruner]:
    """The sampler and pruner of ``strategy``: what a study of this strategy runs with."""
    sampler = make_sampler(strategy.sampler, seed, n_startup_trials=strategy.startup)
    return sampler, make_pruner(strategy.pruner, fidelity)


def _candidates() -> dict[str, Strategy]:
    """The defaults ``bench/replay.py --protocol loto`` chooses among: TPE with 10 random
    start-up trials and no pruner, or the median pruner whose first judgement comes after 2%,
    6%, 10% or 20% of the longest trial, or ASHA or Hyperband from 6%, 10% or 20%; and TPE with
    20 start-up trials, no pruner or Hyperband (today's default: Hyperband from 20%)."""
    grid = [(10, "none", 0.0)] + [(10, "median", r) for r in (0.02, 0.06, 0.1, 0.2)]
    grid += [(10, p, r) for p in ("asha", "hyperband") for r in (0.06, 0.1, 0.2)]
    grid += [(20, "none", 0.0)] + [(20, "hyperband", r) for r in (0.06, 0.1, 0.2)]
    out = {}
    for startup, pruner, rung in grid:
        name = f"tpe{startup}" + (f"+{pruner}@{rung:g}" if pruner != "none" else "")
        about = (f"TPE ({startup} start-up trials) with the {pruner} pruner from {rung:.0%} of "
                 f"the longest trial" if pruner != "none" else
                 f"TPE ({startup} start-up trials), no pruning")
        # A fifth of the curve in the replay is one epoch of five in a real search: the
        # default rule (None), which in a space of other epochs stays one epoch.
        out[name] = Strategy(name, "tpe", pruner, about,
                             first_rung=None if rung in (0.0, FIRST_RUNG) else rung,
                             startup=startup)
    return out


CANDIDATES = _candidates()
AUTO = "tpe10+asha@0.06"  # the candidate that ``auto`` names (see the module's docstring)
