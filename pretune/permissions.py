"""Run directories for their owner only: folders 0o700, files 0o600.

A run directory holds what a model was trained on in other forms: tokenized texts and cached
features, validation predictions, a study's records. ``private_files`` makes everything pretune
creates while it is active readable by its owner only, by setting the process' umask to 077
(added to the umask already set, so a stricter one stays) and restoring it at the end. Every
command of the CLI runs inside it (so reports, explanations, exports and prediction files are
private too), and so do the Python API's ``train``, ``tune`` and ``distill`` and the report.

Folders and files that already existed keep their permissions: a run directory made beforehand
by its user stays as it was made, only what pretune creates in it is private. To share a run,
open it up afterwards (``chmod -R g+rX runs/sst2``), or set ``PRETUNE_PRIVATE=0`` to leave the
umask alone. The umask belongs to the whole process, so other threads that create files while a
run is active create them private too.

It sits beside ``errors.py`` and imports nothing else of ours, so every layer may use it.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

PRIVATE_UMASK = 0o077
ENV = "PRETUNE_PRIVATE"


def enabled() -> bool:
    """Whether runs are private: on unless ``PRETUNE_PRIVATE`` is 0, false, no or off."""
    return os.environ.get(ENV, "1").strip().lower() not in ("0", "false", "no", "off")


@contextlib.contextmanager
def private_files() -> Iterator[None]:
    """While active, what this process creates is for its owner only (umask 077)."""
    if os.name != "posix" or not enabled():
        yield
        return
    before = os.umask(PRIVATE_UMASK)
    os.umask(before | PRIVATE_UMASK)
    try:
        yield
    finally:
        os.umask(before)


__all__ = ["private_files", "enabled", "PRIVATE_UMASK"]
