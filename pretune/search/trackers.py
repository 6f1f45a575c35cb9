"""Recording each trial of a search in an experiment tracker: MLflow or TensorBoard.

A tracker follows the search through the same hooks as a progress display (``run_tune``'s
``progress`` and ``on_trial``): a trial becomes one tracker run with its sampled parameters, its
validation metrics at every evaluation (x = optimizer step) and, at its end, its outcome.

* ``mlflow``: one MLflow run per trial in the experiment named after the study, in the tracking
  server that ``MLFLOW_TRACKING_URI`` names, else in ``RUN/mlflow.db`` (SQLite; open it with
  ``mlflow ui --backend-store-uri sqlite:///RUN/mlflow.db``). Needs ``pip install
  'pretune[mlflow]'``.
* ``tensorboard``: one log directory per trial, ``RUN/tensorboard/trial-NNNN``, with scalars and
  the trial's hyperparameters and final score (the HPARAMS tab); open it with
  ``tensorboard --logdir RUN/tensorboard``. Needs ``pip install 'pretune[tensorboard]'``.

A tracker that fails while the search runs logs a warning and stops recording; it never stops
the search.
"""

from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterable

from pretune.errors import ConfigError, MissingExtraError

log = logging.getLogger(__name__)

TRACKERS = ("mlflow", "tensorboard")
SKIP_METRICS = ("step", "epoch", "seconds")  # the axes, not measurements


def make_trackers(names: Iterable[str] | None, out: str | Path, study_name: str = "pretune") -> list[Any]:
    """Trackers for ``names`` (each one of TRACKERS), checked before the search starts."""
    trackers = []
    for name in names or ():
        key = str(name).strip().lower()
        if key == "mlflow":
            trackers.append(MlflowTracker(Path(out), study_name))
        elif key == "tensorboard":
            trackers.append(TensorBoardTracker(Path(out)))
        else:
            raise ConfigError(
                f"--log-to must be one of {', '.join(TRACKERS)}, but got {name!r}. "
                f"Pass --log-to mlflow or --log-to tensorboard."
            )
    return trackers


def _numbers(metrics: dict) -> dict[str, float]:
    out = {}
    for k, v in metrics.items():
        if k in SKIP_METRICS or isinstance(v, bool):
            continue
        try:
            v = float(v)
        except (TypeError, ValueError):
            continue
        if math.isfinite(v):
            out[k] = v
    return out


class _Guarded:
    """Calls into a tracker that disable it, with a warning, the first time they fail."""

    name = "tracker"
    broken = False

    def _safely(self, fn: Callable[[], Any]) -> None:
        if self.broken:
            return
        try:
            fn()
        except Exception as err:  # noqa: BLE001 - a tracker must never stop the search
            self.broken = True
            log.warning("%s stopped recording the search: %s: %s", self.name,
                        type(err).__name__, err)


class MlflowTracker(_Guarded):
    name = "mlflow"

    def __init__(self, out: Path, study_name: str):
        try:
            from mlflow.tracking import MlflowClient  # an optional extra, imported when used
        except ImportError:
            raise MissingExtraError("mlflow", "mlflow", "--log-to mlflow") from None
        self.uri = os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(out / 'mlflow.db').resolve()}"
        self._client_class = MlflowClient
        self._client = None  # made at the first trial: a client creates its database at once
        self.experiment_name = study_name
        self.artifacts = (out / "mlflow-artifacts").resolve().as_uri()
        self.experiment_id: str | None = None
        self.run_id: str | None = None
        self.step = 0

    @property
    def client(self):
        if self._client is None:
            self._client = self._client_class(tracking_uri=self.uri)
        return self._client

    def _experiment(self) -> str:
        if self.experiment_id is None:
            found = self.client.get_experiment_by_name(self.experiment_name)
            self.experiment_id = (found.experiment_id if found is not None else
                                  self.client.create_experiment(self.experiment_name,
                                                                artifact_location=self.artifacts))
        return self.experiment_id

    def trial_started(self, number: int, params: dict) -> None:
        def start():
            from mlflow.entities import Param  # an optional extra, imported when used

            run = self.client.create_run(self._experiment(), run_name=f"trial {number}",
                                         tags={"pretune.trial": str(number)})
            self.run_id = run.info.run_id
            self.client.log_batch(self.run_id, params=[Param(k, str(v)) for k, v in params.items()])
        self._safely(start)

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.run_id is None:
            return

        def record():
            from mlflow.entities import Metric  # an optional extra, imported when used

            now = int(time.time() * 1000)
            self.client.log_batch(self.run_id, metrics=[
                Metric(f"valid_{k}" if k not in ("train_loss", "lr") else k, v, now, int(step))
                for k, v in _numbers(metrics).items()])
        self._safely(record)

    def on_trial(self, report) -> None:
        if self.run_id is None:
            return
        run_id, self.run_id = self.run_id, None

        def finish():
            from mlflow.entities import Metric, RunStatus  # an optional extra, imported when used

            if report.value is not None and math.isfinite(report.value):
                self.client.log_batch(run_id, metrics=[
                    Metric(f"final_{report.metric}", float(report.value), int(time.time() * 1000), 0)])
            self.client.set_tag(run_id, "pretune.state", report.state)
            if report.fail_reason:
                self.client.set_tag(run_id, "pretune.fail_reason", str(report.fail_reason)[:500])
            status = {"COMPLETE": "FINISHED", "PRUNED": "KILLED"}.get(report.state, "FAILED")
            self.client.set_terminated(run_id, RunStatus.to_string(getattr(RunStatus, status)))
        self._safely(finish)


class TensorBoardTracker(_Guarded):
    name = "tensorboard"

    def __init__(self, out: Path):
        try:
            import tensorboard  # noqa: F401 - SummaryWriter needs it
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise MissingExtraError("tensorboard", "tensorboard", "--log-to tensorboard") from None
        self.SummaryWriter = SummaryWriter
        self.root = out / "tensorboard"
        self.writer = None
        self.params: dict[str, Any] = {}

    def trial_started(self, number: int, params: dict) -> None:
        def start():
            self.params = {k: v if isinstance(v, (int, float, str, bool)) else str(v)
                           for k, v in params.items()}
            self.writer = self.SummaryWriter(log_dir=str(self.root / f"trial-{number:04d}"))
        self._safely(start)

    def on_step(self, step: int, total: int, loss: float) -> None:
        if self.writer is not None and math.isfinite(loss):
            self._safely(lambda: self.writer.add_scalar("train/loss", float(loss), step))

    def on_eval(self, step: int, metrics: dict) -> None:
        if self.writer is None:
            return

        def record():
            for k, v in _numbers(metrics).items():
                if k == "lr":
                    self.writer.add_scalar("train/lr", v, step)
                elif k != "train_loss":  # train/loss is written at every step
                    self.writer.add_scalar(f"valid/{k}", v, step)
        self._safely(record)

    def on_trial(self, report) -> None:
        writer, self.writer = self.writer, None
        if writer is None:
            return

        def finish():
            value = report.value if report.value is not None else float("nan")
            writer.add_hparams(self.params, {f"hparam/{report.metric}": float(value)},
                               run_name=".")
            writer.add_text("outcome", f"{report.state.lower()}"
                            + (f": {report.fail_reason}" if report.fail_reason else ""))
            writer.close()
        self._safely(finish)


class Fanout:
    """One ``progress`` object that tells each of several (a display, trackers) what happens
    during a trial; the end of a trial comes through ``on_trial`` (see ``with_trackers``)."""

    def __init__(self, *targets: Any):
        self.targets = [t for t in targets if t is not None]

    def _tell(self, event: str, *args: Any) -> None:
        for target in self.targets:
            method = getattr(target, event, None)
            if method is not None:
                method(*args)

    def search_started(self, *args: Any) -> None:
        self._tell("search_started", *args)

    def trial_started(self, *args: Any) -> None:
        self._tell("trial_started", *args)

    def on_step(self, *args: Any) -> None:
        self._tell("on_step", *args)

    def on_eval(self, *args: Any) -> None:
        self._tell("on_eval", *args)


def with_trackers(trackers: list[Any], progress: Any, on_trial: Callable[[Any], None] | None):
    """``(progress, on_trial)`` for ``run_tune`` that also feed ``trackers``."""
    if not trackers:
        return progress, on_trial

    def each_trial(report) -> None:
        for tracker in trackers:
            tracker.on_trial(report)
        if on_trial is not None:
            on_trial(report)

    return Fanout(progress, *trackers), each_trial
