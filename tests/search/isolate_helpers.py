"""Stand-ins for what the trial's child process of ``pretune.search.isolate`` runs (named as
module:function, so that the child can import them)."""

from __future__ import annotations

import os
import signal

from pretune.search import isolate


def killed_at_trial_1(conn, job):
    """The child of trial 1 dies as the kernel's out-of-memory killer would end it; the others
    train as usual."""
    if job["trial"] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    isolate.child(conn, job)
