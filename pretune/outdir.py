"""Checks on an output directory before anything is written to it, and a full disk as an error.

``check_writable`` and ``check_room`` look at a directory that may not exist yet (they create
nothing): the nearest existing folder above it decides whether it can be made and written,
and how much room its disk has. ``disk_full`` turns the operating system's "no space left"
into a ``PretuneError`` naming the disk, so a search that fills it ends with one line, not a
traceback. ``atomic_write`` is how every file of pretune is written: beside its place first,
then renamed over it, so a reader never sees half a file.

It sits beside ``errors.py``: it imports nothing else of ours, so every layer may use it.
"""

from __future__ import annotations

import errno
import os
import shutil
from pathlib import Path
from typing import Callable, Union

from pretune.errors import ConfigError, PretuneError

# Errors of a disk without room: no space left, and a user's quota spent.
FULL_ERRNOS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}


def nearest_existing(path: str | os.PathLike) -> Path:
    """``path`` itself when it exists, else the nearest folder above it that does."""
    p = Path(path).expanduser().absolute()
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def check_writable(path: str | os.PathLike, flag: str = "--out") -> None:
    """Raise ConfigError unless ``path`` is a directory this process can write in, or a path
    where one can be created. Nothing is created."""
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise ConfigError(
            f"{flag} must be a directory, but {p} is a file. Pass a directory path for {flag}."
        )
    base = nearest_existing(p)
    if not base.is_dir():
        raise ConfigError(
            f"{flag} must be a path where a directory can be created, but {base} is a file, so "
            f"{p} cannot be made under it. Pass an {flag} outside that file."
        )
    if not os.access(base, os.W_OK | os.X_OK):
        raise ConfigError(
            f"{flag} must be writable, but {base} does not allow this user to write in it "
            f"(permission denied). Pass an {flag} you can write to, or change its permissions."
        )


def free_bytes(path: str | os.PathLike) -> int:
    """Bytes free for this user on the disk that holds ``path`` (or would hold it)."""
    return int(shutil.disk_usage(nearest_existing(path)).free)


def check_room(path: str | os.PathLike, need: int, what: str, flag: str = "--out") -> None:
    """Raise ConfigError when the disk of ``path`` has fewer than ``need`` bytes free."""
    free = free_bytes(path)
    if free < need:
        raise ConfigError(
            f"{flag} needs room on its disk for {what} (about {size_text(need)}), but the disk of "
            f"{nearest_existing(path)} has {size_text(free)} free. Free some space, or pass an "
            f"{flag} on another disk."
        )


class WriteError(PretuneError, OSError):
    """A file could not be written for a reason the user can fix: a full disk, no permission.
    It is an OSError too, so a writer that treats a lost cache file as lost speed only (and
    catches OSError) goes on as before."""


# What ``atomic_write`` writes: text (UTF-8), bytes, or a function that writes the file at
# the path it is given.
Content = Union[str, bytes, Callable[[Path], object]]


def atomic_write(path: str | os.PathLike, content: Content) -> Path:
    """Write ``content`` to ``path`` so that no reader (nor a crash) ever sees half a file.

    The file is written in the same directory under a temporary name, flushed to the disk
    (fsync) and renamed over ``path`` (``os.replace``); the folder is made when missing. A full
    disk or a folder this user may not write in raises a one-line ``WriteError`` naming the
    path and the fix; the temporary file is removed whatever happens. Returns ``path``.
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, str):
            tmp.write_text(content, encoding="utf-8")
        elif isinstance(content, bytes):
            tmp.write_bytes(content)
        else:
            content(tmp)
        fd = os.open(tmp, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except OSError as err:
        problem = write_problem(err, path)
        if problem is None:
            raise
        raise problem from None
    finally:
        if tmp.is_file():
            tmp.unlink()
    return path


def write_problem(err: BaseException, path: str | os.PathLike) -> WriteError | None:
    """The one-line error for an OSError met while writing ``path`` that the user can fix (a
    full disk, or no permission to write there); None for any other error."""
    full = disk_full(err, path)
    if full is not None or not isinstance(err, PermissionError):
        return full
    return WriteError(
        f"Writing {path} needs permission to write in {Path(path).parent}, but this user may "
        f"not ({os.strerror(err.errno or errno.EACCES)}). Change the folder's permissions, or "
        f"pass an output directory you can write to."
    )


def disk_full(err: BaseException, path: str | os.PathLike) -> PretuneError | None:
    """A one-line error for an OSError of a full disk met while writing ``path``; None for
    any other error (which stays a bug to report)."""
    if not isinstance(err, OSError) or err.errno not in FULL_ERRNOS:
        return None
    return WriteError(
        f"Writing {path} needs room on its disk, but the disk mounted at {mount_point(path)} is "
        f"full ({os.strerror(err.errno)}). Free some space on it and run the same command "
        f"again (a search continues where it stopped)."
    )


def mount_point(path: str | os.PathLike) -> Path:
    """The mount point of the file system that holds (or would hold) ``path``."""
    p = nearest_existing(path)
    while not os.path.ismount(p) and p != p.parent:
        p = p.parent
    return p


def size_text(n: float) -> str:
    """``1536`` -> ``'1.5 KB'``: bytes in the largest unit that keeps the number >= 1."""
    for unit in ("bytes", "KB", "MB", "GB", "TB"):
        if abs(n) < 1024 or unit == "TB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TB"  # pragma: no cover - the loop returns
