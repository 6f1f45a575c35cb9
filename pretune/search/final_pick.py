"""Seed-robust final pick: re-run the best few settings with other seeds, pick by the mean.

Fine-tuning on small data is noisy: the same settings with another seed can move accuracy by a
point or more (Dodge et al. 2020, "Fine-Tuning Pretrained Language Models: Weight
Initializations, Data Orders, and Early Stopping"; Mosbach et al. 2021). The single best trial
of a search is therefore partly the luckiest one. When the budget allows, the search keeps a
reserve at its end, re-runs the ``top`` best settings ``runs`` more times each (every trial
derives its own seed from its number, so a re-run trains with another seed) and chooses the
settings with the best mean. The re-runs are trials of the study (user attribute ``seed_of``:
the number of the trial they repeat), are never pruned, and count toward the budget.

The reserve: ``top * runs`` trials of a trial budget, and the estimated time of that many full
trials of a time budget, at most ``MAX_SHARE`` of the budget. When the whole check does not fit
in that share, it keeps room for as many settings as fit, if that is at least two (a 10-minute
search of one-minute trials compares its best two); with fewer the search runs without it.
"""

from __future__ import annotations

import logging
import math
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

from pretune.config import Budget
from pretune.search import rundir

log = logging.getLogger(__name__)

MAX_SHARE = 0.25  # the most of a budget the check may take
SEED_OF = "seed_of"  # user attribute of a re-run: the trial it repeats


@dataclass
class Reserve:
    trials: int = 0  # trials kept for the re-runs (0: none)
    seconds: float = 0.0  # time kept for the re-runs (0: none)

    @property
    def active(self) -> bool:
        return self.trials > 0 or self.seconds > 0


def reserve(budget: Budget, trial_seconds: float | None, top: int, runs: int,
            trials_done: int = 0) -> Reserve:
    """What to keep for the check of up to ``top`` settings, or an empty Reserve when fewer
    than two fit."""
    if top * runs <= 0:
        return Reserve()
    if budget.trials is not None:
        top = min(top, int(MAX_SHARE * budget.trials) // runs)
        left = budget.trials - trials_done
        if left <= top * runs:
            top = (left - 1) // runs  # the search itself keeps at least one trial
    if budget.seconds is not None:
        if trial_seconds is None or trial_seconds <= 0:
            return Reserve()
        top = min(top, int(MAX_SHARE * budget.seconds // (runs * trial_seconds)))
    if top < 2:
        return Reserve()
    return Reserve(trials=top * runs if budget.trials is not None else 0,
                   seconds=top * runs * trial_seconds if budget.seconds is not None else 0.0)


@dataclass
class Candidate:
    """One setting and every run of it (the original trial and its re-runs)."""

    trial: int  # the original trial's number
    params: dict[str, Any]
    runs: dict[int, float] = field(default_factory=dict)  # trial number -> value

    @property
    def mean(self) -> float:
        return sum(self.runs.values()) / len(self.runs)

    @property
    def std(self) -> float:
        values = list(self.runs.values())
        if len(values) < 2:
            return 0.0
        m = self.mean
        return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "mean": self.mean, "std": self.std, "n": len(self.runs)}


def candidates(trials: Iterable[Any], direction: str, top: int) -> list[Candidate]:
    """The ``top`` best complete original trials (distinct settings), each with its runs."""
    trials = [t for t in trials if t.state.name == "COMPLETE" and t.value is not None
              and math.isfinite(t.value)]
    originals = [t for t in trials if SEED_OF not in t.user_attrs]
    originals.sort(key=lambda t: t.value, reverse=direction == "maximize")
    chosen: list[Candidate] = []
    for t in originals:
        if any(c.params == t.params for c in chosen):
            continue
        chosen.append(Candidate(t.number, dict(t.params), {t.number: float(t.value)}))
        if len(chosen) == top:
            break
    for t in trials:
        for c in chosen:
            if t.number not in c.runs and t.params == c.params:
                c.runs[t.number] = float(t.value)
    return chosen


def choose(found: list[Candidate], direction: str) -> Candidate | None:
    """The candidate with the best mean among those run more than once (ties: more runs, then
    the earlier trial); None when fewer than two were (a mean of one run is no evidence)."""
    repeated = [c for c in found if len(c.runs) > 1]
    if len(repeated) < 2:
        return None
    sign = 1 if direction == "maximize" else -1
    return max(repeated, key=lambda c: (sign * c.mean, len(c.runs), -c.trial))


def fitting(top: int, runs: int, trial_seconds: float | None, seconds_left: float | None) -> int:
    """How many of the ``top`` settings can be re-run ``runs`` times in the time left, given the
    measured time of a trial."""
    if seconds_left is None or not trial_seconds:
        return top
    return max(0, min(top, int(seconds_left // (runs * trial_seconds))))


def adopt(out: Path, chosen: Candidate | None, best_params: Mapping[str, Any] | None) -> None:
    """Make best/ a run of the chosen settings: it stays when it already is one (it is then
    their best run, being the best of all); else the best re-run of the chosen settings, kept
    in ``rundir.CHECK_DIR`` while the re-runs ran, replaces it. The kept re-runs are removed."""
    spares = Path(out) / rundir.CHECK_DIR
    try:
        if chosen is None or (best_params is not None and dict(best_params) == chosen.params):
            return
        spare = spares / str(chosen.trial)
        if (spare / rundir.META_FILE).is_file():
            rundir.replace_best(out, spare)
            log.info("best/ now holds the best run of trial %d's settings", chosen.trial)
        else:
            log.warning("no re-run of trial %d's settings finished with a model; best/ keeps "
                        "the best single trial", chosen.trial)
    finally:
        shutil.rmtree(spares, ignore_errors=True)
