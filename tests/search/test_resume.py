"""A search killed with SIGKILL continues where it stopped when the same command runs again."""

from __future__ import annotations

import os
import signal
import sqlite3
import time

import optuna

from pretune.search.study import INTERRUPTED, counted

from .helpers import NARROW, cli, data_files, pretune_subprocess, space_file

BUDGET = 3


N_PARAMS = len(NARROW) - 1  # the dimensions of the space (less "extend")


def _progress(db) -> tuple[set[int], int | None]:
    """(numbers of COMPLETE trials, number of a RUNNING trial that has sampled all its
    parameters), read without writing to the database the search is using."""
    if not db.exists():
        return set(), None
    try:
        with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as con:
            rows = con.execute("SELECT trial_id, number, state FROM trials").fetchall()
            sampled = {i for i, n in con.execute(
                "SELECT trial_id, COUNT(*) FROM trial_params GROUP BY trial_id") if n == N_PARAMS}
    except sqlite3.OperationalError:  # not created yet, or locked for a moment
        return set(), None
    complete = {n for _, n, s in rows if s == "COMPLETE"}
    running = [n for i, n, s in rows if s == "RUNNING" and i in sampled]
    return complete, (running[0] if running else None)


def test_a_killed_search_resumes_and_never_reruns_a_finished_trial(tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    out = tmp_path / "run"
    args = ["tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
            "--budget", f"{BUDGET}trials", "--out", out, "--space", space_file(tmp_path / "s.yaml", NARROW),
            "--fixed", "epochs=2", "--fixed", "threads=1", "--pruner", "none", "--precision", "fp32"]
    with open(tmp_path / "first.log", "w") as log:
        proc = pretune_subprocess(*args, stdout_file=log)
        try:
            give_up = time.monotonic() + 180
            while True:
                complete, running = _progress(out / "study.db")
                if complete and running is not None and running > max(complete):
                    break
                assert proc.poll() is None, (
                    "the search ended before it could be killed:\n" + (tmp_path / "first.log").read_text())
                assert time.monotonic() < give_up, "no trial completed in time"
                time.sleep(0.05)
            os.kill(proc.pid, signal.SIGKILL)
            proc.wait(timeout=30)
        finally:
            if proc.poll() is None:
                proc.kill()
    assert proc.returncode == -signal.SIGKILL

    storage = f"sqlite:///{out / 'study.db'}"
    before = optuna.load_study(study_name="pretune", storage=storage).trials
    killed = next(t for t in before if t.number == running)
    assert killed.state.name == "RUNNING"
    finished = [t for t in before if t.state.name == "COMPLETE"]
    assert {t.number for t in finished} >= complete

    result = cli(*args)  # the same command again
    assert result.exit_code == 0, result.output
    after = optuna.load_study(study_name="pretune", storage=storage).trials

    # The budget is reached, counting every trial except the one the kill cut short.
    assert sum(counted(t) for t in after) == BUDGET
    assert not [t for t in after if t.state.name in ("RUNNING", "WAITING")]
    # Trials finished before the kill are kept as they were ...
    by_number = {t.number: t for t in after}
    for t in finished:
        kept = by_number[t.number]
        assert (kept.state, kept.params, kept.value) == (t.state, t.params, t.value)
    # ... and none of them ran again.
    new = [t for t in after if t.number not in {b.number for b in before}]
    assert new and all(t.params not in [f.params for f in finished] for t in new)
    # The killed trial is marked interrupted and its parameters ran once more.
    assert by_number[killed.number].state.name == "FAIL"
    assert by_number[killed.number].user_attrs["fail_reason"] == INTERRUPTED
    retries = [t for t in after if t.user_attrs.get("retry_of") == killed.number]
    assert len(retries) == 1 and retries[0].params == killed.params
    assert retries[0].state.name == "COMPLETE"
    assert (out / "best" / "model.safetensors").exists() and not list(out.glob("best.tmp-*"))
