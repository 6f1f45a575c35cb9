"""Budget planning: how long a trial takes, what the budget allows, and the fidelity schedule.

Before the first trial, the search estimates the time of one full trial from the measured time
per training example (the learning-rate range test times its steps), the training rows, the
epochs a typical trial runs (recipe 1 of ``priors``: 3, within the space's epochs) and its
evaluations, and says about how many full trials the time budget allows. After each trial the
time is measured again on the trials that ran (``remeasure``), and the plan follows it when it
was off by more than ``REPLAN_CHANGE``.

The fidelity is percent of an epoch (``STEPS_PER_EPOCH`` per epoch). No pruner judges a trial
before its strategy's first rung (the end of epoch 1, or ``Strategy.first_rung``: a share of
the longest trial the space allows, ``max_resource``; never before the first evaluation), and a
trial is not judged before its own learning-rate warmup is over
(``warmup_end``; the search asks the pruner only from then on), so the early dip of a warmup is
never what stops a trial. Hyperband sizes its brackets from the first rung to the longest trial.

**Data fraction.** ``--data-fraction F`` runs every epoch of a trial on a fraction of the
training rows: the next ``F`` of a shuffled pass each epoch (no row twice while
``epochs * F <= 1``), with the whole schedule (warmup, decay, evaluations) fitted to that
length, and the pruners' fidelity in epochs of the fraction. Without a refit to follow, a
fraction loses: on the whole SST-2 training set (67,349 rows) with a 5-minute budget, two trials
at the fraction that let them finish (0.036) scored 1.0 point lower on test than the first
recipe on all rows stopped by the deadline after a fifth of an epoch
(``bench/data_fraction.py``, 2026-12-02). With the refit to follow, see ``--screen`` below.
A continued search keeps the fraction it started with, so its trials stay comparable.

**Large data: screen, then train the chosen recipe long** (``--screen``). When
``SCREEN_TRIALS`` typical trials on all rows do not fit half the time budget
(``screening_fraction``), and the user named no fraction, the trials screen recipes on the
data fraction at which they do; the rest of the budget is kept for the refit, which trains the
chosen recipe on as many rows as that time allows (``refit.widened``), with its schedule fitted
to them. The trials' evaluations and the pruner's rungs then fall every half of a screening
epoch: trials are judged long before an epoch of the whole data ends. Without it, on data too
large for one trial, the first recipe runs on all rows until the deadline stops it (below).

**The first trial always starts.** A trial is not started when the time left is shorter than
it needs to reach its first evaluation (``first_eval_seconds``), except while no trial has
given a model: on large data with a short budget the first one runs until the deadline stops
it, and is evaluated then.

With ``--strategy auto``, when the time budget fits fewer than ``FEW_TRIALS`` full trials, no
trial is pruned: successive halving needs a handful of trials at a rung to compare, and with
fewer it would stop trials on the word of one or two others; the budget then goes to the priors
and what follows them, run to their end. A strategy the user named is run as named.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import asdict, dataclass, replace
from typing import Any, Iterable, Mapping

from pretune.config import Budget
from pretune.search.space import DEFAULT, Dimension, FULL
from pretune.search.strategies import Fidelity, Strategy

STEPS_PER_EPOCH = 100  # fidelity unit: percent of an epoch
TYPICAL_EPOCHS = 3  # what a typical trial runs (recipe 1 of the priors)
EVAL_COST = 1 / 3  # an evaluation example costs about a third of a training example (no backward)
FEW_TRIALS = 6  # below this many full trials in the budget, auto does not prune
SCREEN_TRIALS = FEW_TRIALS  # typical trials a screening fraction lets finish in the trials' time
MIN_SCREEN_ROWS = 1000  # an epoch of a screening trial runs on at least this many rows


@dataclass
class Plan:
    """What the search expects and how it judges trials."""

    trial_seconds: float | None  # estimated time of one full trial; None: not measured
    full_trials: float | None  # time budget / trial_seconds; None: no time budget or no estimate
    epochs: float  # epochs of the trial that trial_seconds describes
    max_epochs: float  # the longest trial the space allows
    pruner: str  # the pruner the search runs with
    min_resource: int
    max_resource: int
    reason: str  # one sentence on why this schedule
    lr_test: dict[str, Any] | None = None  # the range test's steps, lr_at_min and suggestion
    lr_searched: tuple[float, float] | None = None  # the lr range the search samples
    data_fraction: float = 1.0  # the part of the training rows each epoch of a trial runs on
    train_rows: int | None = None  # the training rows there are
    keep: int = 0  # trials whose models are kept for the final assembly
    keep_mb: float | None = None  # what keeping them takes on disk, in MB (None: not known)
    assembly_seconds: float = 0.0  # the time the search keeps for building the final model
    refit_seconds: float = 0.0  # of which: training best/'s recipe on train and valid rows
    memory: str | None = None  # the largest trial's memory estimate (search.memory_plan)

    @property
    def fidelity(self) -> Fidelity:
        return Fidelity(self.min_resource, self.max_resource)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def message(self) -> str:
        if self.trial_seconds is None:
            time = "trial time not measured"
        else:
            time = f"one {self.epochs:g}-epoch trial takes about {self.trial_seconds:.2g}s"
            if self.full_trials is not None:
                time += f", so the budget allows about {self.full_trials:.1f} full trials"
        text = (f"{time}; pruner {self.pruner}, judging trials from epoch "
                f"{self.min_resource / STEPS_PER_EPOCH:g} of up to {self.max_epochs:g}: {self.reason}")
        if self.lr_test:
            test = self.lr_test
            text += f". Learning-rate range test ({test.get('steps')} steps): "
            text += (f"lowest loss at lr {test['lr_at_min']:.3g}" if test.get("lr_at_min")
                     else f"no suggestion (stopped: {test.get('stop_reason')})")
        if self.lr_searched:
            text += f"; searching lr {self.lr_searched[0]:.3g} to {self.lr_searched[1]:.3g}"
        if self.keep:
            disk = f" (about {self.keep_mb:,.0f} MB on disk)" if self.keep_mb is not None else ""
            text += f". The best {self.keep} trials' models are kept{disk}"
            if self.assembly_seconds - self.refit_seconds >= 0.5:
                text += (f" and {self.assembly_seconds - self.refit_seconds:.0f}s are kept at "
                         f"the end to build the final model from them")
        if self.refit_seconds:
            rows = ("on as many of the training and validation rows as that time allows"
                    if self.data_fraction < 1 else "on the training and validation rows")
            text += (f". {self.refit_seconds:.0f}s are kept to train the final model's recipe "
                     f"again {rows} (refit)")
        if self.data_fraction < 1:
            rows = (f" (about {round(self.data_fraction * self.train_rows):,} of "
                    f"{self.train_rows:,})" if self.train_rows else "")
            text += (f". Each epoch of a trial runs on {self.data_fraction:.3g} of the training "
                     f"rows{rows}")
        if self.memory:
            text += f". Memory: {self.memory}"
        return text


def epochs_range(dims: Iterable[Dimension], context: Mapping[str, Any]) -> tuple[float, float]:
    """(typical, longest) epochs of a trial: from the epochs dimension, else the fixed value."""
    for d in dims:
        if d.name == "epochs" and d.kind != "categorical":
            typical = min(max(TYPICAL_EPOCHS, d.low), d.high)
            return float(typical), float(d.high)
        if d.name == "epochs":
            values = [float(c) for c in d.choices]
            return float(min(values, key=lambda v: abs(v - TYPICAL_EPOCHS))), max(values)
    epochs = float(context.get("epochs") or TYPICAL_EPOCHS)
    return epochs, epochs


def trial_seconds(seconds_per_example: float | None, train_rows: int, valid_rows: int,
                  epochs: float, evals_per_epoch: int) -> float | None:
    """Training and evaluation time of one trial of ``epochs`` epochs."""
    if seconds_per_example is None:
        return None
    examples = epochs * (train_rows + EVAL_COST * evals_per_epoch * valid_rows)
    return seconds_per_example * examples


def screening_fraction(budget: Budget, seconds_per_example: float | None, train_rows: int,
                       valid_rows: int, epochs: float, evals_per_epoch: int, share: float
                       ) -> float | None:
    """The data fraction at which ``SCREEN_TRIALS`` typical trials (``epochs`` long, their
    evaluations included) fit in ``share`` of a time budget; None when they fit on all rows, or
    when the time of a trial is not known.

    Screening halves the examples the final model sees, and buys it a recipe chosen among
    several and a schedule that ends. Measured against every trial on all rows (the first
    recipe cut by the deadline; 2026-12-05, one run each), it won on the whole SST-2 training
    set with 10 minutes (0.898 test accuracy against 0.883) and lost on the whole CoNLL-2003
    training set with 5 and 3 minutes (0.850 test entity F1 against 0.868, 0.829 against
    0.862), where a screening trial of 1,000 sentences told little and more passes over the
    rows were worth more than a schedule that ends. So it is asked for (``TuneConfig.screen``),
    not the default."""
    if seconds_per_example is None or budget.seconds is None or not train_rows:
        return None
    evaluating = trial_seconds(seconds_per_example, 0, valid_rows, epochs, evals_per_epoch)
    per_trial = budget.seconds * share / SCREEN_TRIALS
    rows = (per_trial - evaluating) / (seconds_per_example * epochs)
    fraction = max(rows, MIN_SCREEN_ROWS) / train_rows
    return None if fraction >= 1 else float(f"{fraction:.3g}")


def warmup_end(train: Any) -> float:
    """The fidelity step at which a trial's learning-rate warmup ends (``train``: its
    TrainConfig). No pruner is asked about a trial before it: the early dip of a warmup is not
    what a trial is judged on."""
    return float(train.warmup_ratio) * float(train.epochs) * STEPS_PER_EPOCH


def first_eval_seconds(plan: Plan, evals_per_epoch: int) -> float:
    """About how long a trial takes to reach its first evaluation (0 when not measured): a
    trial started with less time left would be stopped by the deadline before giving a score."""
    if not plan.trial_seconds or not plan.epochs:
        return 0.0
    return float(plan.trial_seconds) / (float(plan.epochs) * max(1, evals_per_epoch))


def make_plan(strategy: Strategy, budget: Budget, dims: Iterable[Dimension],
              context: Mapping[str, Any], *, seconds_per_example: float | None,
              train_rows: int, valid_rows: int, evals_per_epoch: int,
              lr_test: Mapping[str, Any] | None = None, fraction: float = 1.0) -> Plan:
    """The plan of one start of a search; ``fraction``: the data fraction (``--data-fraction``)."""
    dims = tuple(dims)
    lr = next((d for d in dims if d.name == "lr"), None)
    typical, longest = epochs_range(dims, context)
    max_resource = max(1, math.ceil(longest * STEPS_PER_EPOCH))
    first_eval = math.ceil(STEPS_PER_EPOCH / max(1, evals_per_epoch))
    min_resource = strategy.fidelity(max_resource, floor=first_eval,
                                     epoch=STEPS_PER_EPOCH).min_resource
    seconds = trial_seconds(seconds_per_example, round(fraction * train_rows), valid_rows,
                            typical, evals_per_epoch)
    full = None if seconds is None or budget.seconds is None else budget.seconds / max(seconds, 1e-9)
    pruner, reason = _pruner(strategy, full, min_resource)
    return Plan(trial_seconds=seconds, full_trials=full, epochs=typical, max_epochs=longest,
                pruner=pruner, min_resource=min_resource, max_resource=max_resource,
                reason=reason,
                lr_test={k: lr_test.get(k) for k in ("steps", "lr_at_min", "suggested",
                                                     "stop_reason")} if lr_test else None,
                lr_searched=(float(lr.low), float(lr.high)) if lr is not None else None,
                data_fraction=float(fraction), train_rows=train_rows)


def _pruner(strategy: Strategy, full: float | None, min_resource: int) -> tuple[str, str]:
    """The pruner a search runs with, and why: ``auto`` prunes nothing when fewer than
    ``FEW_TRIALS`` full trials fit the budget."""
    if strategy.pruner == "none":
        return "none", f"strategy {strategy.name} runs every trial to its end"
    if strategy.name == "auto" and full is not None and full < FEW_TRIALS:
        return "none", (f"fewer than {FEW_TRIALS} full trials fit, too few for a pruner to "
                        "compare, so every trial runs to its end")
    return strategy.pruner, (f"no trial is judged before {min_resource / STEPS_PER_EPOCH:g} "
                             f"epochs nor before its warmup ends")


# --- the plan again, from the trials' own times ---------------------------------------------------

REPLAN_CHANGE = 0.25  # the plan is made again when the measured time differs by more than this
MIN_MEASURED_EPOCHS = 0.5  # a trial that trained less than this tells too little of its pace


def measured_trial_seconds(trials: Iterable[Any], epochs: float) -> float | None:
    """The time of an ``epochs``-epoch trial measured on the trials that ran: the median of
    their seconds per epoch (each trial's ``seconds`` and ``epochs`` attributes, so its model
    loading and evaluations count), times ``epochs``. None before a trial has trained
    ``MIN_MEASURED_EPOCHS``."""
    rates = []
    for t in trials:
        seconds, ran = t.user_attrs.get("seconds"), t.user_attrs.get("epochs")
        if seconds and ran and float(ran) >= MIN_MEASURED_EPOCHS:
            rates.append(float(seconds) / float(ran))
    return statistics.median(rates) * epochs if rates else None


def remeasure(plan: Plan, strategy: Strategy, budget: Budget, trials: Iterable[Any]
              ) -> Plan | None:
    """The plan with its trial time measured on the trials that ran, and the pruner that time
    calls for; None while nothing was measured or the estimate holds within ``REPLAN_CHANGE``.

    The first estimate comes from the learning-rate range test, whose few steps pay the
    one-time costs of every new batch shape: on the SST-2 protocol it said 127 s for a trial
    that took 38 to 50 s, which turned the pruner off and kept too much time for the assembly."""
    seconds = measured_trial_seconds(trials, plan.epochs)
    if seconds is None:
        return None
    if plan.trial_seconds and abs(seconds / plan.trial_seconds - 1) <= REPLAN_CHANGE:
        return None
    full = None if budget.seconds is None else budget.seconds / max(seconds, 1e-9)
    pruner, reason = _pruner(strategy, full, plan.min_resource)
    return replace(plan, trial_seconds=seconds, full_trials=full, pruner=pruner,
                   reason=f"{reason} (trial time measured on the trials that ran)")


# --- the learning-rate range ---------------------------------------------------------------------

LR_SPAN = 4.0  # the centered range reaches this factor below and above the suggested rate


def lr_is_free(dims: Iterable[Dimension], spec: Mapping[str, Any] | None,
               pinned: Mapping[str, Any]) -> bool:
    """Whether the search may move the lr range: lr is searched over the default range, and
    neither the space file nor --fixed says anything about it."""

    lr = next((d for d in dims if d.name == "lr"), None)
    given = {str(k).strip().replace("-", "_").split(".")[-1] for k in (spec or {})}
    return lr is not None and lr == DEFAULT["lr"] and "lr" not in given and "lr" not in pinned


def center_lr(dims: Iterable[Dimension], suggested: float | None) -> tuple[Dimension, ...]:
    """``dims`` with the lr range moved to [suggested / LR_SPAN, suggested * LR_SPAN] (log
    scale), kept inside the full space's lr range; unchanged when there is no suggestion."""

    dims = tuple(dims)
    if suggested is None or not math.isfinite(suggested) or suggested <= 0:
        return dims
    full = FULL["lr"]
    low = max(float(full.low), suggested / LR_SPAN)
    high = min(float(full.high), suggested * LR_SPAN)
    if not low < high:
        return dims
    return tuple(replace(d, low=float(f"{low:.3g}"), high=float(f"{high:.3g}"), log=True)
                 if d.name == "lr" else d for d in dims)
