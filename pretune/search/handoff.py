"""Opening a search's study, and what it publishes there for ``pretune worker`` to join it."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import optuna
from optuna.trial import TrialState

from pretune.config import Budget
from pretune.errors import ConfigError
from pretune.search import storage
from pretune.search.planning import Plan
from pretune.search.records import INTERRUPTED
from pretune.yamlfile import plain

log = logging.getLogger(__name__)

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


def open_study(url: str, name: str, direction: str, *, heartbeat: int | None = None
                ) -> optuna.Study:
    try:
        from sqlalchemy.exc import SQLAlchemyError  # an optional extra, imported when used
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


def recover_interrupted(study: optuna.Study) -> None:
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
