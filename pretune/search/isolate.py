"""Training one trial in a child process, so that the kernel killing it for memory fails that
trial and not the search.

``run`` starts the child as a new Python running ``main`` (a fresh interpreter: it
copies none of the search's memory and none of its threads, and unlike multiprocessing's
``spawn`` it does not import the user's ``__main__`` again), hands it the trial's ``RunConfig``,
the task and the cache folder through a pipe, and serves it until it ends:

- each evaluation comes back through a pipe and is reported to Optuna here (``TrialWatch``);
  the child waits for the answer, and stops when the pruner prunes the trial;
- each step feeds the progress display and the trial's peak memory (the child's);
- the search's deadline reaches the child as a message it looks for between steps;
- an out-of-memory retry (``training.memory.retry_on_oom``) happens in the child and is told;
- the child's log records are logged here, under their own logger names.

The child saves the model it kept to a folder in the run directory and sends back the rest of
its ``FitResult``; the model is loaded here from that folder (best/ and the final assembly
need it) and the folder is removed. A child that ends without an answer (the kernel's
SIGKILL, a crash) raises ``ChildFailed`` naming the likely cause, which fails the trial; the
search goes on with the next one. Optuna stays in this process.
"""

from __future__ import annotations

import importlib
import logging
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path
from typing import Any, Callable

import optuna

log = logging.getLogger(__name__)

POLL_SECONDS = 0.2  # how often the parent looks at the deadline and the child's health
END_SECONDS = 10.0  # how long an ended trial's child may take to exit before it is terminated
KILLED = ("the trial's process was killed, most likely out of memory: lower batch_size or "
          "max_length, or use gradient checkpointing")


class ChildFailed(Exception):
    """A trial whose child process failed; the message is the trial's fail_reason."""


class _Pruned(Exception):
    """Raised in the child when the parent's pruner stopped the trial."""


def died(exitcode: int | None) -> str:
    """Why a child that sent no result ended, from its exit code."""
    if exitcode == -signal.SIGKILL:
        return KILLED
    if exitcode is not None and exitcode < 0:
        name = signal.Signals(-exitcode).name if -exitcode in signal.valid_signals() else exitcode
        return (f"the trial's process crashed ({name}) without a result; if it ran out of "
                f"memory, lower batch_size or max_length, or use gradient checkpointing")
    return f"the trial's process ended with exit code {exitcode} without a result"


# --- the parent's side ----------------------------------------------------------------------


def run(search: Any, watch: Any, config: Any, number: int,
        on_retry: Callable[[str], None]) -> Any:
    """Train ``config`` in a child process and return its ``FitResult`` with the model loaded
    here. Raises ``optuna.TrialPruned`` when the pruner stops it, ``DoesNotFit`` when the child
    refused it for memory, and ``ChildFailed`` when the child failed or died."""
    mine, theirs = multiprocessing.Pipe()
    with tempfile.TemporaryDirectory(prefix=f".trial-{number}-", dir=search.out) as folder:
        caches = getattr(search.caches, "directory", None)
        job = {"entry": CHILD, "sys_path": list(sys.path), "config": config,
               "task": search.task, "trial": number, "parent": os.getpid(),
               "log_level": min(logging.getLogger().getEffectiveLevel(),
                                logging.getLogger("pretune").getEffectiveLevel()),
               "cache_dir": None if caches is None else str(caches),
               "save_to": str(Path(folder) / "model")}
        child = _start(theirs)
        theirs.close()
        try:
            try:
                mine.send(job)
            except OSError:  # it died before it read its job
                raise ChildFailed(died(_wait(child))) from None
            result = _serve(search, watch, mine, child, on_retry)
        finally:
            _end(child, mine)
            mine.close()
        return _with_model(result)


def _start(conn: Any) -> subprocess.Popen:
    """A new Python running ``main`` on ``conn``'s end of the pipe, with this process's
    ``pretune`` importable."""
    home = str(Path(__file__).resolve().parents[2])  # the folder that holds pretune/
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join(filter(None, [home, os.environ.get("PYTHONPATH")]))}
    fd = conn.fileno()
    return subprocess.Popen([sys.executable, "-c", ENTRY, str(fd)], pass_fds=[fd], env=env,
                            stdin=subprocess.DEVNULL)


def _serve(search: Any, watch: Any, conn: Any, child: subprocess.Popen,
           on_retry: Callable[[str], None]) -> Any:
    """Answer the child's messages until it sends its result or ends without one."""
    from pretune.training.memory import MB, DoesNotFit

    stopping = False
    while True:
        if not stopping and search.past_deadline():
            conn.send(("stop",))
            stopping = True
        if not conn.poll(POLL_SECONDS):
            if child.poll() is None:
                continue
            if not conn.poll(0):  # a last message may have come as it ended
                break
        try:
            kind, *rest = conn.recv()
        except (EOFError, OSError):
            break
        if kind == "step":
            step, total, loss, rss = rest
            watch.child_mb = rss / MB
            watch.on_step(step, total, loss)
        elif kind == "eval":
            try:
                watch.on_eval(*rest)
            except optuna.TrialPruned as err:
                conn.send(("prune", str(err)))
                raise
            conn.send(("go",))
        elif kind == "retry":
            on_retry(rest[0])
        elif kind == "log":
            level, name, message = rest
            logging.getLogger(name).log(level, "%s", message)
        elif kind == "done":
            return rest[0]
        elif kind == "refused":
            raise DoesNotFit(rest[0])
        elif kind == "error":
            raise ChildFailed(rest[0])
    raise ChildFailed(died(_wait(child)))


def _wait(child: subprocess.Popen) -> int | None:
    try:
        return child.wait(END_SECONDS)
    except subprocess.TimeoutExpired:
        return None


def _end(child: subprocess.Popen, conn: Any) -> None:
    """Let the child exit (told to stop, it does at its next step); terminate it if it does
    not in time."""
    if child.poll() is not None:
        return
    try:
        conn.send(("stop",))
    except OSError:  # it closed its end: it is ending
        pass
    if _wait(child) is None:
        child.terminate()
        if _wait(child) is None:  # pragma: no cover - a child ignoring SIGTERM
            child.kill()
            child.wait()


def _with_model(result: Any) -> Any:
    """``result`` with the model the child saved loaded here, on the device trials use."""
    if result.path is None:
        return result
    from pretune.models.io import load_model_dir  # these load torch
    from pretune.training.device import pick_device

    model, tokenizer, _ = load_model_dir(
        result.path, trust_remote_code=result.config.model.trust_remote_code)
    return replace(result, model=model.to(pick_device()), tokenizer=tokenizer, path=None)


# --- the child's side -------------------------------------------------------------------------


def main(fd: int) -> None:
    """The child process: read the job from the pipe at ``fd`` and run its entry."""
    from multiprocessing.connection import Connection

    conn = Connection(fd)
    job = conn.recv()
    sys.path[:] = job["sys_path"]
    module, name = job["entry"].split(":")
    getattr(importlib.import_module(module), name)(conn, job)


class _Link:
    """The child's end of the pipe: questions that wait for the parent's answer, and the
    parent's word to stop, which may come at any time."""

    def __init__(self, conn: Any, parent: int):
        self.conn = conn
        self.parent = parent
        self.stopped = False

    def _take(self) -> tuple:
        message = self.conn.recv()
        if message[0] == "stop":
            self.stopped = True
        return message

    def ask(self, message: tuple) -> tuple:
        self.conn.send(message)
        while (answer := self._take())[0] == "stop":
            pass
        return answer

    def should_stop(self) -> bool:
        while self.conn.poll(0):
            self._take()
        return self.stopped or os.getppid() != self.parent  # told, or the search died


def child(conn: Any, job: dict[str, Any]) -> None:
    """Train the job's config, telling the parent through ``conn`` (see the module's docstring)."""
    from pretune.training import memory, run as training
    from pretune.training.caches import RunCaches

    _send_logs(conn, job["log_level"])
    caches = RunCaches(job["cache_dir"]) if job["cache_dir"] else RunCaches.for_one_run()
    link = _Link(conn, job["parent"])

    def on_eval(step: int, metrics: dict) -> None:
        answer = link.ask(("eval", step, dict(metrics)))
        if answer[0] == "prune":
            raise _Pruned(answer[1])

    def on_step(step: int, total: int, loss: float) -> None:
        conn.send(("step", step, total, float(loss), memory.rss_bytes()))

    def fit(config: Any) -> Any:
        return training.fit(config, job["save_to"], task=job["task"], on_eval=on_eval,
                            should_stop=link.should_stop, on_step=on_step, keep_model=False,
                            caches=caches)

    try:
        result = memory.retry_on_oom(fit, job["config"],
                                     on_retry=lambda note: conn.send(("retry", note)))
    except _Pruned as err:
        conn.send(("pruned", str(err)))
        return
    except memory.DoesNotFit as err:
        conn.send(("refused", str(err)))
        return
    except BaseException as err:  # noqa: BLE001 - the parent records it as the trial's failure
        conn.send(("error", f"{type(err).__name__}: {' '.join(str(err).split())}"))
        return
    conn.send(("done", result))


def _send_logs(conn: Any, level: int) -> None:
    """Send the child's log records at ``level`` and above to the parent, formatted."""

    class Forward(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            try:
                conn.send(("log", record.levelno, record.name, record.getMessage()))
            except Exception:  # noqa: BLE001 - a lost log line must not end the trial
                pass

    root = logging.getLogger()
    root.handlers[:] = [Forward()]
    root.setLevel(level)


# What the child process runs, as module:function (tests name one that dies in its place).
CHILD = "pretune.search.isolate:child"
ENTRY = "import sys; from pretune.search.isolate import main; main(int(sys.argv[1]))"
