"""Several workers on one study: PostgreSQL and journal storages, `pretune worker`, heartbeats
and retries of a killed worker's trial, the Ray executor.

The PostgreSQL tests use the server that ``.ci/run`` installs and starts; its URL comes from
``PRETUNE_TEST_POSTGRES``. Where that variable is set, an unreachable server fails the tests;
where it is not, they try the local default and skip with the reason when there is none. They
and the Ray test take minutes, so they are marked ``slow`` (``make test-slow``, which CI runs);
the default suite runs two local workers on the journal file.
"""

from __future__ import annotations

import os
import signal
import time
import uuid
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState

from pretune.errors import ConfigError
from pretune.search import rundir, storage
from pretune.search.study import counted
from tests.search.helpers import NARROW, cli, data_files, pretune_subprocess, space_file

LOCAL_POSTGRES = "postgresql://pretune:pretune@localhost/pretune_test"


@pytest.fixture(scope="module")
def postgres_url() -> str:
    url = os.environ.get("PRETUNE_TEST_POSTGRES")
    try:
        storage.open_storage(url or LOCAL_POSTGRES).get_all_studies()
    except Exception as err:  # noqa: BLE001 - any reason the server cannot be used
        if url:
            pytest.fail(f"PRETUNE_TEST_POSTGRES={url} is set but cannot be opened: {err}")
        pytest.skip(f"no PostgreSQL server at {LOCAL_POSTGRES} (.ci/run starts one): {err}")
    return url or LOCAL_POSTGRES


def _args(model: str, tmp_path: Path, out: Path, budget: str, *extra) -> list:
    train, valid = data_files(tmp_path / "data")
    return ["tune", "--model", model, "--train", train, "--valid", valid, "--budget", budget,
            "--out", out, "--space", space_file(tmp_path / "space.yaml", NARROW),
            "--precision", "fp32", "--no-report", "--no-lr-range-test", *map(str, extra)]


def _trials(url: str, name: str) -> list[optuna.trial.FrozenTrial]:
    return optuna.load_study(study_name=name, storage=storage.open_storage(url)).trials


def _assert_whole(trials, budget: int) -> None:
    """The budget is met exactly, nothing is left running or queued, and no parameter set ran
    twice except as the retry of a trial whose process died."""
    assert sum(counted(t) for t in trials) == budget
    assert not [t for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    firsts = [t for t in trials if storage.retried_from(t) is None
              and "retry_of" not in t.user_attrs]
    keys = [tuple(sorted(t.params.items())) for t in firsts]
    assert len(keys) == len(set(keys)), keys


def test_two_local_workers_share_a_journal_study(tiny_model_dir, tmp_path):
    """--workers 2 with nothing else: a journal file in the run directory, two processes."""
    out = tmp_path / "run"
    result = cli(*_args(tiny_model_dir, tmp_path, out, "4trials", "--fixed", "epochs=1",
                        "--workers", "2"))
    assert result.exit_code == 0, result.output
    assert not (out / "study.db").exists()
    trials = _trials(str(out / rundir.JOURNAL_FILE), "pretune")
    _assert_whole(trials, 4)
    assert {t.user_attrs["executor"] for t in trials} == {"worker"}
    assert not any(t.user_attrs["worker"].endswith(f":{os.getpid()}") for t in trials)
    assert (out / "best" / "model.safetensors").is_file()
    # As in one process: best/'s recipe is refit first, then only the ensemble is built
    # (no soup of trials that best/ would no longer be).
    best = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert best["made_of"]["kind"] == "refit"
    built = yaml.safe_load((out / "plan.yaml").read_text()).get("assembly") or {}
    assert not [c for c in built.get("candidates", []) if "soup" in c["kind"]]


@pytest.mark.slow
def test_two_workers_on_postgres_share_twelve_trials(tiny_model_dir, tmp_path, postgres_url):
    name = f"two-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    result = cli(*_args(tiny_model_dir, tmp_path, out, "12trials", "--fixed", "epochs=1",
                        "--storage", postgres_url, "--study", name, "--workers", "2"))
    assert result.exit_code == 0, result.output
    trials = _trials(postgres_url, name)
    _assert_whole(trials, 12)
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
    # Both processes ran trials, and neither is the coordinator.
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2 and not any(w.endswith(f":{os.getpid()}") for w in workers)
    assert {t.user_attrs["executor"] for t in trials} == {"worker"}
    # best/ holds the best complete trial, written once, with no leftovers.
    best = max((t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value)
    import yaml

    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["metrics"]["accuracy"] == pytest.approx(best.value)
    assert not list(out.glob("best.*"))
    assert sorted(p.name for p in (out / rundir.WORKERS_DIR).iterdir()) == [
        "worker-0.log", "worker-1.log"]
    assert "12 trials" in result.output


WHOLE = {name for name in NARROW if name != "extend"}  # the parameters a trial samples


def _running_trial(url: str, name: str, give_up: float, proc):
    while time.monotonic() < give_up and proc.poll() is None:
        try:
            for t in _trials(url, name):
                # "settings" is written once every parameter is suggested: the trial is then
                # training, and its params are whole (a snapshot between suggestions is not).
                # On PostgreSQL the attribute has been seen before the last parameter, so
                # the snapshot also waits for every dimension of the space.
                if (t.state == TrialState.RUNNING and "settings" in t.user_attrs
                        and set(t.params) >= WHOLE):
                    return t
        except (KeyError, ValueError):
            pass  # the study is not created yet
        time.sleep(0.2)
    return None


@pytest.mark.slow
def test_a_worker_killed_mid_trial_has_its_trial_retried(tiny_model_dir, tmp_path, postgres_url):
    name = f"kill-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "run"
    args = _args(tiny_model_dir, tmp_path, out, "5trials", "--fixed", "epochs=12",
                 "--pruner", "none", "--storage", postgres_url, "--study", name,
                 "--workers", "2", "--heartbeat", "2")
    with open(tmp_path / "tune.log", "w") as log:
        proc = pretune_subprocess(*args, stdout_file=log)
        try:
            victim = _running_trial(postgres_url, name, time.monotonic() + 120, proc)
            assert victim is not None, (tmp_path / "tune.log").read_text()
            pid = int(victim.user_attrs["worker"].rsplit(":", 1)[1])
            os.kill(pid, signal.SIGKILL)
            assert proc.wait(timeout=240) == 0, (tmp_path / "tune.log").read_text()
        finally:
            if proc.poll() is None:
                proc.kill()
    trials = _trials(postgres_url, name)
    by_number = {t.number: t for t in trials}
    killed = by_number[victim.number]
    assert killed.state == TrialState.FAIL and not counted(killed)
    retries = [t for t in trials if storage.retried_from(t) == victim.number]
    assert len(retries) == 1
    assert retries[0].params == victim.params and retries[0].state == TrialState.COMPLETE
    assert retries[0].user_attrs["worker"] != victim.user_attrs["worker"]
    _assert_whole(trials, 5)
    frame = __import__("pandas").read_csv(out / rundir.TRIALS_FILE)
    row = frame[frame.number == victim.number].iloc[0]
    assert row.fail_reason == rundir.LOST
    assert (out / "best" / "model.safetensors").is_file()


def test_a_worker_joins_with_only_storage_and_study(tiny_model_dir, tmp_path, monkeypatch):
    """`pretune worker` reads the model, data, space and pins from the study itself: run from
    another directory with no other flag, it adds trials of the same search."""
    journal = tmp_path / "shared" / "study.journal"
    out = tmp_path / "run"
    # No pruner: what is checked is where the worker's settings come from, and a pruned trial
    # (which ones are depends on the evaluations' timing) would not say anything about that.
    first = cli(*_args(tiny_model_dir, tmp_path, out, "2trials", "--fixed", "epochs=1",
                       "--storage", journal, "--study", "s1", "--pruner", "none"))
    assert first.exit_code == 0, first.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    joined = cli("worker", "--storage", journal, "--study", "s1", "--budget", "4trials")
    assert joined.exit_code == 0, joined.output
    trials = _trials(str(journal), "s1")
    _assert_whole(trials, 4)
    added = [t for t in trials if t.number >= 2]
    assert [t.state for t in added] == [TrialState.COMPLETE] * 2, [t.state.name for t in added]
    for t in added:  # the study's space and pins, not the defaults
        assert set(t.params) == {"lr", "batch_size"}
        assert 3e-3 <= t.params["lr"] <= 3e-2
        assert t.user_attrs["settings"]["epochs"] == 1
        assert t.user_attrs["settings"]["model"] == str(Path(tiny_model_dir).resolve())
    assert not list(elsewhere.iterdir())  # everything went to the study's run directory
    assert "worker done: 2 trials run here" in joined.output


def test_worker_errors_name_the_study_and_the_fix(tmp_path):
    journal = tmp_path / "study.journal"
    optuna.create_study(storage=storage.open_storage(str(journal)), study_name="plain")
    missing = cli("worker", "--storage", journal, "--study", "nope")
    assert missing.exit_code == 2
    assert "has no study 'nope'" in missing.output and "'plain'" in missing.output
    foreign = cli("worker", "--storage", journal, "--study", "plain")
    assert foreign.exit_code == 2 and "was not (it has no pretune settings)" in foreign.output
    bad = cli("worker", "--storage", "ftp://host/x", "--study", "s")
    assert bad.exit_code == 2 and "--storage must be an Optuna storage URL" in bad.output


def test_several_workers_refuse_a_sqlite_storage(tiny_model_dir, tmp_path):
    out = tmp_path / "run"
    one = cli(*_args(tiny_model_dir, tmp_path, out, "1trials", "--fixed", "epochs=1"))
    assert one.exit_code == 0, one.output
    again = cli(*_args(tiny_model_dir, tmp_path, out, "2trials", "--fixed", "epochs=1",
                       "--workers", "2"))
    assert again.exit_code == 2 and "keeps its trials in SQLite" in again.output
    given = cli(*_args(tiny_model_dir, tmp_path, tmp_path / "other", "2trials",
                       "--storage", f"sqlite:///{tmp_path / 'x.db'}", "--workers", "2"))
    assert given.exit_code == 2 and "is SQLite" in given.output


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_the_journal_storage_fails_and_retries_a_trial_without_heartbeats(tmp_path):
    url = str(tmp_path / "study.journal")
    store = storage.open_storage(url, heartbeat=1)
    study = optuna.create_study(storage=store, study_name="s")
    trial = study.ask({"x": optuna.distributions.FloatDistribution(0, 1)})
    store.record_heartbeat(trial._trial_id)
    storage.fail_stale_trials(study)  # a fresh heartbeat: left running
    assert study.trials[0].state == TrialState.RUNNING
    store.set_trial_system_attr(trial._trial_id, storage.HEARTBEAT_ATTR, time.time() - 60)
    other = optuna.load_study(study_name="s", storage=storage.open_storage(url, heartbeat=1))
    storage.fail_stale_trials(other)  # another process notices the silence
    trials = other.trials
    assert trials[0].state == TrialState.FAIL and not counted(trials[0])
    assert trials[1].state == TrialState.WAITING and trials[1].params == trials[0].params
    assert storage.retried_from(trials[1]) == 0
    storage.fail_stale_trials(other)  # failing once is enough: no second retry
    assert len(other.trials) == 2


def test_storage_kinds_and_drivers():
    assert storage.kind("sqlite:///x.db") == "sqlite" and not storage.shared("sqlite:///x.db")
    assert storage.kind("runs/x/study.journal") == "journal"
    assert storage.kind("optuna.log") == "journal"
    assert storage.kind("postgresql://u@h/db") == "rdb" and storage.shared("postgresql://u@h/db")
    assert storage.kind("grpc://host:13000") == "grpc"
    with pytest.raises(ConfigError, match="Optuna storage URL"):
        storage.kind("ftp://host/x")
    with pytest.raises(ConfigError, match="journal file"):
        storage.kind("runs/x/study.txt")
    pytest.importorskip("psycopg")
    assert storage.rdb_url("postgresql://u@h/db").startswith(("postgresql://",
                                                            "postgresql+psycopg://"))


@pytest.mark.slow
def test_the_ray_executor_completes_a_small_study(tiny_model_dir, tmp_path):
    pytest.importorskip("ray", reason="the ray extra is needed for --executor ray")
    out = tmp_path / "run"
    with open(tmp_path / "tune.log", "w") as log:
        proc = pretune_subprocess(*_args(tiny_model_dir, tmp_path, out, "4trials",
                                         "--fixed", "epochs=1", "--executor", "ray",
                                         "--cpus-per-trial", "1"), stdout_file=log)
        assert proc.wait(timeout=300) == 0, (tmp_path / "tune.log").read_text()
    trials = _trials(str(out / rundir.JOURNAL_FILE), "pretune")
    _assert_whole(trials, 4)
    # Every trial ran in a Ray task: none in this test's process or in the coordinator.
    assert {t.user_attrs["executor"] for t in trials} == {"ray"}
    workers = {t.user_attrs["worker"] for t in trials}
    assert not any(w.endswith((f":{os.getpid()}", f":{proc.pid}")) for w in workers)
    assert (out / "best" / "model.safetensors").is_file()


def test_a_ray_address_that_nobody_answers_is_an_error_at_once(monkeypatch):
    import socket

    from pretune.search.workers import _check_reachable

    with pytest.raises(ConfigError, match="nothing answers at 127.0.0.1:9"):
        _check_reachable("127.0.0.1:9", timeout=1)
    with pytest.raises(ConfigError, match="HOST:PORT"):
        _check_reachable("no-port-here")
    # An address something listens at passes, in both spellings.
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen()
        port = server.getsockname()[1]
        assert _check_reachable(f"127.0.0.1:{port}", timeout=5) is None
        assert _check_reachable(f"ray://127.0.0.1:{port}", timeout=5) is None
    # No address, or "auto" (Ray finds its own), is not probed at all.
    dialled = []
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: dialled.append(a))
    assert _check_reachable(None) is None
    assert _check_reachable("auto") is None
    assert dialled == []


def test_a_worker_after_the_deadline_needs_its_own_budget():
    from pretune.search.workers import worker_budget

    with pytest.raises(ConfigError, match="ran out"):
        worker_budget({"trials": None, "deadline": time.time() - 5}, None)
    assert worker_budget({"trials": 8, "deadline": time.time() - 5}, None).trials == 8
    left = worker_budget({"trials": None, "deadline": time.time() + 100}, None).seconds
    assert 90 < left <= 100
    assert worker_budget({"trials": 8, "deadline": None}, "3trials").trials == 3


def test_the_best_lock_excludes_another_process(tmp_path):
    import subprocess
    import sys

    probe = ("import fcntl, sys; f = open(sys.argv[1], 'a+')\n"
             "try:\n    fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)\n"
             "except OSError:\n    sys.exit(3)\n")
    path = tmp_path / rundir.BEST_LOCK_FILE
    with rundir.BestLock(tmp_path):
        held = subprocess.run([sys.executable, "-c", probe, str(path)])
    free = subprocess.run([sys.executable, "-c", probe, str(path)])
    assert (held.returncode, free.returncode) == (3, 0)


@pytest.mark.filterwarnings("ignore:Heartbeat of storage")
def test_a_journal_trial_that_never_beat_is_stale_after_the_grace_period(tmp_path):
    store = storage.open_storage(str(tmp_path / "j.journal"), heartbeat=1)
    study = optuna.create_study(storage=store)
    trial = study.ask()
    assert store._get_stale_trial_ids(study._study_id) == []
    time.sleep(storage.GRACE * 1 + 0.5)
    assert store._get_stale_trial_ids(study._study_id) == [trial._trial_id]


def test_local_workers_default_to_one_per_gpu_and_each_sees_its_own(monkeypatch):
    from pretune.search import workers

    monkeypatch.setattr(workers, "gpu_count", lambda: 0)
    assert workers.local_workers(None) == 1 and workers.local_workers(3) == 3
    monkeypatch.setattr(workers, "gpu_count", lambda: 4)
    assert workers.local_workers(None) == 4
    seen = [workers.worker_env(k, 4, {})["CUDA_VISIBLE_DEVICES"] for k in range(5)]
    assert seen == ["0", "1", "2", "3", "0"]
    # Within the devices the user made visible, not the machine's numbering.
    limited = {"CUDA_VISIBLE_DEVICES": "2,5"}
    assert [workers.worker_env(k, 2, limited)["CUDA_VISIBLE_DEVICES"] for k in range(3)] == [
        "2", "5", "2"]
    assert "CUDA_VISIBLE_DEVICES" not in workers.worker_env(0, 1, {})
