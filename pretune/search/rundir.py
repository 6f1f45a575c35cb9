"""The run directory of a search: its lock, its record of settings, and its trials table.

::

    runs/NAME/
      pretune.yaml   what the search was started with (see ``run_record``); a later start must
                     match it, except for the budget
      study.db       Optuna storage (SQLite) unless --storage names another; a search with
                     several --workers keeps its trials in study.journal instead (see
                     ``default_storage``)
      trials.csv     one row per trial (see ``trials_frame``), rewritten after every trial
      plan.yaml      the learning-rate range test (run once, reused by a continued search), the
                     budget plan of the latest start, and the seed check of the final pick
      best/          the best model so far (``pretune.models.io.save_model``)
      cache/         tokenized data and frozen features shared by the trials; safe to delete

Files are replaced atomically (written beside, then ``os.replace``), so a killed process leaves
either the old or the new file, never half of one.

Before a search reads its data, ``preflight`` checks what would otherwise fail late: that
``--out`` can be written, that the model can be loaded as asked, and that the disk has room for
the best model and its copies. A start that fails on bad input before its record is written
leaves the run directory as it was (``RunLock`` takes back what it created); a disk that fills
up later ends the search with one line naming the disk, and best/ keeps the previous model.
"""

from __future__ import annotations

import math
import os
import shutil
from pathlib import Path
from typing import Any, Iterable, Mapping

import pandas as pd
import yaml

from pretune.config import (
    ALL_METRICS, CLASSIFICATION_METRICS, GROUPS, PACKAGED_MODEL_ID, RunConfig, TuneConfig,
)
from pretune.errors import ConfigError, PretuneError
from pretune.outdir import atomic_write, check_writable, disk_full
from pretune.yamlfile import plain

META_FILE = "pretune.yaml"
STUDY_FILE = "study.db"
JOURNAL_FILE = "study.journal"  # the default storage of a search with several workers
WORKERS_DIR = "workers"  # the logs of local worker processes
TRIALS_FILE = "trials.csv"
PLAN_FILE = "plan.yaml"
CHECK_DIR = "seed_check"  # models of seed re-runs, while the final pick is being made
BEST_DIR = "best"
CACHE_DIR = "cache"  # tokenized data and frozen features (pretune.training.caches)
LOCK_FILE = ".pretune.lock"
BEST_LOCK_FILE = ".best.lock"
LOST = "worker lost: its heartbeat stopped"  # fail reason of a trial another worker failed

# Keys of the record that may change between starts of the same search.
# The space file's path (its content is `space`); what only a first start uses (priors, the
# range test, whose outcome is in `space` and plan.yaml).
# How many workers run it, and where, may change too.
MAY_CHANGE = {"tune.budget", "tune.space", "tune.priors", "tune.lr_range_test",
              "tune.lr_range_steps", "tune.seed_check", "tune.seed_check_runs", "tune.workers",
              "tune.executor", "tune.ray_address", "tune.cpus_per_trial", "tune.heartbeat", "tune.keep",
              "tune.assemble", "tune.screen"}  # a screening fraction is kept as data_fraction


class RunLock:
    """An exclusive lock on a run directory, held while a search runs in it.

    The operating system releases it when the process ends, however it ends, so a killed run
    never leaves a stale lock behind. The lock creates the directory when it is missing. When a
    ``PretuneError`` (bad input) ends a start before it wrote its record (pretune.yaml), what
    this start created is removed again: a new directory as a whole, else the entries that were
    not there before, so the directory is left as it was.
    """

    def __init__(self, out: Path):
        self.path = Path(out) / LOCK_FILE
        self.handle = None
        self.created: Path | None = None  # the topmost folder this lock created
        self.before: set[str] = set()  # the entries of an existing run directory
        self.had_record = False

    def __enter__(self) -> "RunLock":
        out = self.path.parent
        self.created = _topmost_missing(out)
        self.before = set() if self.created is not None else set(os.listdir(out))
        self.had_record = (out / META_FILE).is_file()
        try:
            out.mkdir(parents=True, exist_ok=True)
            self.handle = open(self.path, "a+")
        except OSError as err:
            self._undo()
            raise disk_full(err, self.path) or ConfigError(
                f"--out must be a directory this process can write in, but {out} could not be "
                f"made or written ({err.strerror or err}). Pass another --out, or fix its "
                f"permissions."
            ) from None
        try:
            import fcntl  # Unix only

            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        except OSError:
            self.handle.close()
            self.handle = None
            raise ConfigError(
                f"Only one search may run in a run directory at a time, but another process is "
                f"searching in {self.path.parent}. Wait for it to finish, or pass another --out "
                f"(to add machines to one search, share a --storage database instead)."
            ) from None
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if self.handle is not None:
            self.handle.close()  # closing the file releases the lock
            self.handle = None
        if isinstance(exc, PretuneError):
            self._undo()

    def _undo(self) -> None:
        """Remove what this start created, unless it wrote its record (the search began)."""
        out = self.path.parent
        if self.had_record or (out / META_FILE).is_file():
            return
        if self.created is not None:
            shutil.rmtree(self.created, ignore_errors=True)
            return
        if not out.is_dir():
            return
        for name in set(os.listdir(out)) - self.before:
            path = out / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)


def _topmost_missing(path: Path) -> Path | None:
    """The highest folder of ``path`` that does not exist yet (None when ``path`` exists)."""
    path = Path(path).absolute()
    missing = None
    while not path.exists() and path != path.parent:
        missing = path
        path = path.parent
    return missing


def preflight(out: Path, config: RunConfig, tune: TuneConfig) -> None:
    """What a search checks before it reads its data or writes anything: ``out`` can be
    written; the model can be loaded as asked (``models.load.check_source``); the disk of
    ``out`` has room for the best model, the new copy written beside it while it is replaced,
    and the seed check's kept re-runs, plus a margin (``models.io.check_save_room``)."""
    from pretune.models.io import check_save_room  # torch loads only when this runs
    from pretune.models.load import check_source

    check_writable(out)
    check_source(config.model)
    has_best = (Path(out) / BEST_DIR / "config.json").is_file()
    kept = tune.keep + 2 if tune.assemble and tune.keep > 1 else max(0, tune.keep)
    copies = (1 if has_best else 2) + max(0, tune.seed_check) + kept
    check_save_room(out, config.model, copies,
                    f"the best model and {copies - 1} more copies of it while it is replaced "
                    f"and checked, {kept} of them the kept trials and the final assembly's "
                    f"(--keep {tune.keep}; a smaller --keep needs less)")


class BestLock:
    """An exclusive lock held while a worker compares its trial with best/ and replaces it, so
    that two workers finishing at once never interleave their writes (blocking; released by the
    operating system if the holder dies)."""

    def __init__(self, out: Path):
        self.path = Path(out) / BEST_LOCK_FILE
        self.handle = None

    def __enter__(self) -> "BestLock":
        self.handle = open(self.path, "a+")
        try:
            import fcntl  # Unix only

            fcntl.flock(self.handle.fileno(), fcntl.LOCK_EX)
        except ImportError:  # pragma: no cover - not POSIX: no lock
            pass
        return self

    def __exit__(self, *exc) -> None:
        if self.handle is not None:
            self.handle.close()
            self.handle = None


def default_storage(out: Path, parallel: bool) -> str:
    """The storage of a run directory when --storage names none: its SQLite file for one
    process, a journal file (safe for several processes) for several workers. A run directory
    keeps the storage it was started with."""
    out = Path(out).resolve()
    if (out / JOURNAL_FILE).exists():
        return str(out / JOURNAL_FILE)
    if parallel:
        if (out / STUDY_FILE).exists():
            raise ConfigError(
                f"Several workers need a storage that several processes may write, but {out} "
                f"was started with one process and keeps its trials in SQLite ({STUDY_FILE}). "
                f"Continue it with --workers 1, or start a new --out (or pass --storage "
                f"postgresql://... for a database server)."
            )
        return str(out / JOURNAL_FILE)
    return f"sqlite:///{out / STUDY_FILE}"


def clean_leftovers(out: Path) -> list[Path]:
    """Remove what a killed run can leave behind: half-written best models and temp files.

    A kill between save_model's two renames leaves no best/ but a complete new one (best.tmp-*,
    whose pretune.yaml is written last) and the previous one (best.old-*): the new one, else
    the old one, becomes best/ again before the rest is removed.
    """
    best = Path(out) / BEST_DIR
    if not best.exists():
        complete = [p for p in Path(out).glob(f"{BEST_DIR}.tmp-*") if (p / META_FILE).is_file()]
        previous = [p for p in Path(out).glob(f"{BEST_DIR}.old-*") if (p / META_FILE).is_file()]
        for candidate in complete + previous:
            os.replace(candidate, best)
            break
    removed = []
    if (Path(out) / CHECK_DIR).exists():
        shutil.rmtree(Path(out) / CHECK_DIR, ignore_errors=True)
        removed.append(Path(out) / CHECK_DIR)
    for pattern in (f"{BEST_DIR}.tmp-*", f"{BEST_DIR}.old-*", f".{TRIALS_FILE}.tmp-*",
                    f".{META_FILE}.tmp-*", f".{PLAN_FILE}.tmp-*"):
        for path in Path(out).glob(pattern):
            if path.is_dir():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def replace_best(out: Path, source: Path) -> None:
    """Make the model directory ``source`` the run's best/ (renames only; a kill in between
    leaves best.old-*, which ``clean_leftovers`` puts back)."""
    from pretune.models.io import swap_in  # torch loads only when this runs

    swap_in(Path(source), Path(out) / BEST_DIR)




# --- pretune.yaml: what the search was started with ------------------------------------------


def check_record(out: Path, record: Mapping[str, Any], *, only_given: bool = False) -> bool:
    """Compare ``record`` with ``out/pretune.yaml``; True when there is one and it matches.

    A differing setting raises ConfigError naming it, with both values. False when the file
    does not exist yet (a new search). With ``only_given``, keys that ``record`` lacks are not
    compared (a check before everything is known).
    """
    path = Path(out) / META_FILE
    if not path.is_file():
        return False
    try:
        saved = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError:
        raise ConfigError(
            f"{path} must be the YAML file a search wrote, but it cannot be read. Restore it, or "
            f"pass a new --out to start another search."
        ) from None
    new = plain(record)
    old_flat, new_flat = _flatten(saved), _flatten(new)
    extra = [] if only_given else [k for k in old_flat if k not in new_flat]
    for key in list(new_flat) + extra:
        if key in MAY_CHANGE or _same(old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)):
            continue
        if key not in old_flat and _as_before(key, new_flat[key]):
            continue
        name = _label(key)
        old_v, new_v = old_flat.get(key, _ABSENT), new_flat.get(key, _ABSENT)
        unset = old_v is _ABSENT or old_v is None
        given = "no " + name if unset else f"{name} {_show(old_v)}"
        fix = f"Run without {name}" if unset else f"Run with {name} {_show(old_v)}"
        raise ConfigError(
            f"A search continues only with the settings it started with, but {out} was started "
            f"with {given} and this run has {name} {_show(new_v)}. {fix} to continue it, or "
            f"pass a new --out to start another search."
        )
    return True


def read_record(out: Path) -> dict[str, Any]:
    """The record in ``out/pretune.yaml``; {} when there is none or it cannot be read
    (``check_record`` reports an unreadable one)."""
    return _read_yaml(Path(out) / META_FILE)


def read_plan(out: Path) -> dict[str, Any]:
    """``out/plan.yaml``; {} when there is none yet."""
    return _read_yaml(Path(out) / PLAN_FILE)


def update_plan(out: Path, **sections: Any) -> None:
    """Replace sections of ``out/plan.yaml`` (``lr_range=...``, ``plan=...``), keeping the rest."""
    plan = read_plan(out)
    plan.update(plain(sections))
    atomic_write(Path(out) / PLAN_FILE, yaml.safe_dump(plan, sort_keys=False, allow_unicode=True))


def _read_yaml(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        loaded = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError:
        return {}
    return loaded if isinstance(loaded, dict) else {}


def write_record(out: Path, record: Mapping[str, Any]) -> None:
    text = yaml.safe_dump(plain(record), sort_keys=False, allow_unicode=True)
    atomic_write(Path(out) / META_FILE, text)


class _Absent:
    def __repr__(self) -> str:
        return "(not set)"


_ABSENT = _Absent()


def _flatten(d: Any, prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    if isinstance(d, Mapping):
        for k, v in d.items():
            key = f"{prefix}{k}"
            # Settings and the space are compared leaf by leaf; a dimension's spec as a whole.
            if isinstance(v, Mapping) and not prefix.startswith("space."):
                out.update(_flatten(v, key + "."))
            else:
                out[key] = v
    return out


def _as_before(key: str, value: Any) -> bool:
    """Whether a setting that a run directory's record lacks (it was written before the setting
    existed) has the value that version ran with: its default, or classification as the task."""
    parts = key.split(".")
    if parts[0] == "tune" and len(parts) == 2:  # a search setting added since (refit, ...)
        defaults = vars(TuneConfig())
        return parts[1] in defaults and _same(plain(defaults[parts[1]]), value)
    if parts[0] != "settings" or len(parts) != 3 or parts[1] not in GROUPS:
        return False
    if parts[2] == "task":
        return value == "classification"
    defaults = RunConfig().to_dict().get(parts[1], {})
    return parts[2] in defaults and _same(plain(defaults[parts[2]]), value)


def _label(key: str) -> str:
    parts = key.split(".")
    if parts[0] == "settings" and len(parts) == 3 and parts[1] in GROUPS:
        return parts[2]  # a setting by its bare name
    if parts[0] == "tune" and len(parts) == 2:
        return {"study_name": "study", "evals_per_epoch": "evals_per_epoch"}.get(parts[1], parts[1])
    if parts[0] == "space" and len(parts) == 2:
        return f"the search space's {parts[1]}"
    if parts[0] == "fixed" and len(parts) == 2:
        return f"pinned {parts[1]}"
    if key == "data_fingerprint":
        return "the data (its content fingerprint)"
    return key


def _show(value: Any) -> str:
    if value is _ABSENT:
        return "(not set)"
    if isinstance(value, Mapping):
        return "{" + ", ".join(f"{k}: {_show(v)}" for k, v in value.items()) + "}"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]  # a fingerprint
    return repr(value)


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) \
            and not isinstance(b, bool):
        return float(a) == float(b)
    if isinstance(a, str) and isinstance(b, str) and PACKAGED_MODEL_ID in (a, b):
        # Runs started before the default model was recorded by its id hold the packaged path.
        from pretune.models.load import packaged_model_dir

        packaged = packaged_model_dir()
        return packaged is not None and {a, b} <= {PACKAGED_MODEL_ID, packaged}
    return a == b


# --- trials.csv ----------------------------------------------------------------------------------

# Per-trial records (Optuna user attributes) that become columns, in this order.
ATTR_COLUMNS = ("source", "seed_of", "seed", "seconds", "peak_rss_mb", "steps", "epochs", "stop_reason",
                "fail_reason", "retry_of", "worker", "memory_estimate_mb", "memory_peak_mb",
                "memory_adapted", "memory_retry", "memory_refused", "isolated")


def trials_frame(trials: Iterable[Any], space_order: Iterable[str] = ()) -> pd.DataFrame:
    """One row per trial: number, state, value, ``params_<name>``, the attributes of
    ``ATTR_COLUMNS``, ``valid_<metric>`` for every metric of its best checkpoint, ``best_epoch``,
    and start and end times."""
    trials = list(trials)
    order = {name: i for i, name in enumerate(space_order)}
    names = sorted({p for t in trials for p in t.params}, key=lambda n: (order.get(n, len(order)), n))
    metric_names = _metric_columns(trials)
    rows = []
    for t in trials:
        metrics = t.user_attrs.get("metrics") or {}
        row: dict[str, Any] = {
            "number": t.number,
            "state": t.state.name,
            "value": t.value if t.values is not None and len(t.values) == 1 else None,
        }
        row.update({f"params_{n}": t.params.get(n) for n in names})
        row.update({a: t.user_attrs.get(a) for a in ATTR_COLUMNS})
        if row["retry_of"] is None:  # a retry of a trial whose worker died (its heartbeat)
            row["retry_of"] = t.system_attrs.get("failed_trial")
        if t.state.name == "FAIL" and row["fail_reason"] is None:
            row["fail_reason"] = LOST
        row.update({f"valid_{m}": metrics.get(m) for m in metric_names})
        row["best_epoch"] = metrics.get("epoch")
        row["datetime_start"] = t.datetime_start
        row["datetime_complete"] = t.datetime_complete
        rows.append(row)
    columns = (["number", "state", "value"] + [f"params_{n}" for n in names] + list(ATTR_COLUMNS)
               + [f"valid_{m}" for m in metric_names]
               + ["best_epoch", "datetime_start", "datetime_complete"])
    return pd.DataFrame(rows, columns=columns)


def _metric_columns(trials: list[Any]) -> list[str]:
    """The classification metrics, or, when the trials have a regression or multi-label
    metric, the metrics they have (and a multi-label search's tuned threshold)."""
    present = {m for t in trials for m in (t.user_attrs.get("metrics") or {})}
    if not present & (set(ALL_METRICS) - set(CLASSIFICATION_METRICS)):
        return list(CLASSIFICATION_METRICS)
    return [m for m in (*ALL_METRICS, "threshold") if m in present]


def write_trials(out: Path, frame: pd.DataFrame) -> None:
    atomic_write(Path(out) / TRIALS_FILE, lambda tmp: frame.to_csv(tmp, index=False))
