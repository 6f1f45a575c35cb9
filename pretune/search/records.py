"""What a search and its workers record on trials: seeds, reasons, what counts toward a budget."""

from __future__ import annotations

import numpy as np
import optuna
from optuna.trial import TrialState

FAIL_STREAK = 5  # this many trials in a row failing with the same error stop the search
WAIT_SECONDS = 2.0  # how often a worker with no trial left to start looks at the others' trials

INTERRUPTED = "interrupted"  # fail_reason of a trial its process did not finish
DEADLINE = "deadline"  # stop_reason of a trial stopped by the time budget
PRUNED = "pruned"
PREDICTIONS_FILE = "valid-predictions.csv"  # in best/: the best model's validation predictions


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
