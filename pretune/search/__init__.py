"""Search: the space, the objective and the study. The only package that imports Optuna.

``run_tune`` is what ``pretune tune`` and ``pretune.tune`` run; ``DEFAULT_SPACE`` and
``FULL_SPACE`` describe what it searches; ``suggest`` samples a space in an Optuna trial.
"""

from pretune.search.space import (
    DEFAULT_SPACE,
    FULL_SPACE,
    Choice,
    Dimension,
    Float,
    Int,
    resolve_space,
    space_to_dict,
    suggest,
)
from pretune.search.study import TrialReport, TuneResult, run_tune

__all__ = [
    "DEFAULT_SPACE",
    "FULL_SPACE",
    "Choice",
    "Dimension",
    "Float",
    "Int",
    "TrialReport",
    "TuneResult",
    "resolve_space",
    "run_tune",
    "space_to_dict",
    "suggest",
]
