"""Where a study's trials live: opening a ``--storage``, and telling dead workers' trials apart.

``--storage`` takes what Optuna can open:

* an RDB URL: ``sqlite:///runs/x/study.db``, ``postgresql://user:pw@host/db`` (the ``psycopg``
  extra; a plain ``postgresql://`` URL uses psycopg 3 when psycopg2 is not installed),
  ``mysql+pymysql://...``;
* a journal file, as optuna-dashboard names it: a path ending in ``.journal`` or ``.log``
  (Optuna's ``JournalFileBackend``: safe for several processes on one machine or on a shared
  file system);
* ``grpc://host:port``: an Optuna storage proxy (``optuna.storages.run_grpc_proxy_server``).

SQLite is for one process: several workers need a journal file or a database server, so
``pretune tune --workers N`` and ``pretune worker`` refuse SQLite (``shared``).

**Heartbeats.** On every storage but the run directory's own SQLite file, each running trial
records a heartbeat every ``heartbeat`` seconds. A trial whose heartbeat is older than
``GRACE`` heartbeats belongs to a worker that died (killed, out of memory, lost machine): the
next worker that starts a trial marks it failed and queues its parameters once more (Optuna's
``RetryHeartbeatStaleTrialCallback`` with ``max_retry=1``). Optuna's RDB storage has heartbeats;
``HeartbeatJournalStorage`` below gives the journal file the same.
"""

from __future__ import annotations

import importlib.util
import time
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import BaseStorage
from optuna.storages._heartbeat import BaseHeartbeat
from optuna.trial import TrialState

from pretune.errors import ConfigError, MissingExtraError

JOURNAL_SUFFIXES = (".journal", ".log")
RDB_SCHEMES = ("sqlite", "postgresql", "postgres", "mysql", "mariadb", "oracle", "mssql")
GRACE = 3  # a trial is stale after this many heartbeat intervals without one
MAX_RETRY = 1  # a dead worker's trial runs once more, not again and again
HEARTBEAT_ATTR = "pretune:heartbeat"  # the journal storage's heartbeat (a system attribute)


def kind(url: str) -> str:
    """``sqlite``, ``rdb``, ``journal`` or ``grpc``; ConfigError for anything else."""
    text = str(url).strip()
    if text.lower().endswith(JOURNAL_SUFFIXES) and "://" not in text:
        return "journal"
    scheme = text.split("://", 1)[0].split("+", 1)[0].lower() if "://" in text else ""
    if scheme == "sqlite":
        return "sqlite"
    if scheme in RDB_SCHEMES:
        return "rdb"
    if scheme == "grpc":
        return "grpc"
    raise ConfigError(
        f"--storage must be an Optuna storage URL (sqlite:///..., postgresql://..., mysql://..., "
        f"grpc://host:port) or a journal file path ending in .journal or .log, but got {text!r}. "
        f"Give one of those, e.g. postgresql://user:password@host/db or runs/NAME/study.journal."
    )


def shared(url: str) -> bool:
    """Whether several processes may write to this storage at once (not SQLite)."""
    return kind(url) != "sqlite"


def rdb_url(url: str) -> str:
    """``postgresql://`` with the driver that is installed: SQLAlchemy's default for the plain
    scheme is psycopg2, while the ``psycopg`` extra installs psycopg 3."""
    scheme, rest = url.split("://", 1)
    if scheme in ("postgresql", "postgres"):
        if importlib.util.find_spec("psycopg2") is not None:
            return f"postgresql://{rest}"
        if importlib.util.find_spec("psycopg") is None:
            raise MissingExtraError("psycopg", "psycopg", "A postgresql:// --storage")
        return f"postgresql+psycopg://{rest}"
    return url


def open_storage(url: str, *, heartbeat: int | None = None) -> BaseStorage:
    """The storage ``url`` names, with heartbeats every ``heartbeat`` seconds (None: none)."""
    which = kind(url)
    beats = {}
    if heartbeat is not None:
        beats = dict(heartbeat_interval=int(heartbeat), grace_period=GRACE * int(heartbeat),
                     heartbeat_stale_trial_callback=retry_callback())
    if which == "journal":
        from optuna.storages.journal import JournalFileBackend  # optuna loads only when this runs

        path = Path(url).expanduser()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            backend = JournalFileBackend(str(path))
        except OSError as err:
            raise ConfigError(
                f"--storage must be a journal file that can be written, but {url!r} cannot "
                f"({err.strerror or err}). Give a path in a writable directory."
            ) from None
        if heartbeat is None:
            return optuna.storages.JournalStorage(backend)
        return HeartbeatJournalStorage(backend, **beats)
    if which == "grpc":
        host_port = url.split("://", 1)[1].rstrip("/")
        host, _, port = host_port.rpartition(":")
        if not host or not port.isdigit():
            raise ConfigError(
                f"A grpc:// --storage must name a host and a port, but got {url!r}. Write it as "
                f"grpc://HOST:PORT (the address of optuna's storage proxy)."
            )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return optuna.storages.GrpcStorageProxy(host=host, port=int(port))
    try:
        return optuna.storages.RDBStorage(rdb_url(url), **beats)
    except ImportError as err:
        raise ConfigError(
            f"--storage needs the database driver for its URL, but it is not installed "
            f"({' '.join(str(err).split())}). Install the driver its scheme names, e.g. "
            f"pip install 'pretune[psycopg]' for PostgreSQL."
        ) from None


def retry_callback():
    """Requeue a dead worker's trial once (Optuna's callback; it copies params and attributes)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and requeue once) the running trials of dead workers now, not at the next trial."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def retried_from(trial: optuna.trial.FrozenTrial) -> int | None:
    """The number of the trial this one re-runs after its worker died; None if none."""
    return trial.system_attrs.get("failed_trial")


class HeartbeatJournalStorage(optuna.storages.JournalStorage, BaseHeartbeat):
    """Optuna's journal storage with the heartbeats its RDB storage has.

    A heartbeat is the trial's system attribute ``HEARTBEAT_ATTR`` (wall-clock seconds, one
    journal line per beat); a running trial whose last beat (or start, if it never beat) is
    older than ``grace_period`` is stale. Clocks are those of the machines sharing the file, as with NFS itself.
    """

    def __init__(self, backend, *, heartbeat_interval: int, grace_period: int,
                 heartbeat_stale_trial_callback=None) -> None:
        super().__init__(backend)
        if heartbeat_interval < 1 or grace_period < 1:
            raise ValueError("heartbeat_interval and grace_period must be at least 1 second")
        self.heartbeat_interval = heartbeat_interval
        self.grace_period = grace_period
        self.heartbeat_stale_trial_callback = heartbeat_stale_trial_callback

    def record_heartbeat(self, trial_id: int) -> None:
        try:
            self.set_trial_system_attr(trial_id, HEARTBEAT_ATTR, time.time())
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # the trial just finished, or another worker declared it dead

    def _get_stale_trial_ids(self, study_id: int) -> list[int]:
        """Running trials silent for longer than the grace period; a trial that never beat
        (its process died at once) is judged from its start."""
        now = time.time()
        stale = []
        for t in self.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,)):
            last = t.system_attrs.get(HEARTBEAT_ATTR)
            if last is None and t.datetime_start is not None:
                last = t.datetime_start.timestamp()  # naive local time, as the journal keeps it
            if last is not None and now - float(last) > self.grace_period:
                stale.append(t._trial_id)
        return stale

    def get_heartbeat_interval(self) -> int | None:
        return self.heartbeat_interval

    def get_heartbeat_stale_trial_callback(self):
        return self.heartbeat_stale_trial_callback

    def get_failed_trial_callback(self):  # the name of older Optuna releases
        return self.heartbeat_stale_trial_callback
