from pathlib import Path

from pretune.config import RunConfig
from pretune.errors import ConfigError
from pretune.search.rundir import BEST_DIR, META_FILE, clean_leftovers


def _model_dir(path, trial):
    path.mkdir()
    (path / "model.safetensors").write_text("weights")
    (path / META_FILE).write_text(f"trial: {trial}\n")
    return path


def test_a_kill_between_the_renames_of_a_save_loses_no_best_model(tmp_path):
    # save_model moved best/ aside and was killed before moving the new one in.
    _model_dir(tmp_path / f"{BEST_DIR}.old-11", trial=1)
    _model_dir(tmp_path / f"{BEST_DIR}.tmp-11", trial=2)
    clean_leftovers(tmp_path)
    assert (tmp_path / BEST_DIR / META_FILE).read_text() == "trial: 2\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == [BEST_DIR]


def test_a_half_written_new_model_falls_back_to_the_previous_one(tmp_path):
    _model_dir(tmp_path / f"{BEST_DIR}.old-11", trial=1)
    half = tmp_path / f"{BEST_DIR}.tmp-11"
    half.mkdir()
    (half / "model.safetensors").write_text("half")  # no pretune.yaml: not finished
    clean_leftovers(tmp_path)
    assert (tmp_path / BEST_DIR / META_FILE).read_text() == "trial: 1\n"
    assert not half.exists()


def test_leftovers_beside_an_intact_best_are_removed(tmp_path):
    _model_dir(tmp_path / BEST_DIR, trial=3)
    _model_dir(tmp_path / f"{BEST_DIR}.tmp-11", trial=4)
    clean_leftovers(tmp_path)
    assert (tmp_path / BEST_DIR / META_FILE).read_text() == "trial: 3\n"
    assert not (tmp_path / f"{BEST_DIR}.tmp-11").exists()


# --- before a search: --out writable, room on its disk ---------------------------------------

import errno
import hashlib
import os
import shutil
from collections import namedtuple

import pytest
import yaml

from pretune import outdir
from pretune.models.io import SAVE_MARGIN
from pretune.models.load import weights_bytes
from pretune.config import ModelConfig

from .helpers import NARROW, cli, data_files, space_file

Usage = namedtuple("Usage", "total used free")


def _tune_args(model, tmp_path, out, *extra):
    train, valid = data_files(tmp_path / "data")
    space = space_file(tmp_path / "space.yaml", NARROW)
    return ["tune", "--model", model, "--train", train, "--valid", valid, "--out", out,
            "--space", space, "--fixed", "epochs=1", "--fixed", "threads=1", "--metric", "loss",
            "--pruner", "none", "--precision", "fp32", "--no-lr-range-test", *extra]


@pytest.fixture()
def no_data_loading(monkeypatch):
    """Fail the test if the search reads its data: the checks must come before."""
    from pretune.data import task

    def refuse(*args, **kwargs):
        raise AssertionError("the data was loaded before the run directory was checked")

    monkeypatch.setattr(task, "load_task", refuse)


def _error_line(result) -> str:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.exit_code == 2 and len(lines) == 1, result.output
    assert "Traceback" not in result.output
    return lines[0]


def test_a_disk_without_room_is_an_error_before_the_data_loads(tiny_model_dir, tmp_path,
                                                                 monkeypatch, no_data_loading):
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda path: Usage(10**12, 10**12, 5 * 2**20))
    out = tmp_path / "run"
    line = _error_line(cli(*_tune_args(tiny_model_dir, tmp_path, out)))
    assert "--out needs room on its disk" in line and "5.0 MB free" in line
    assert "Free some space" in line and "another disk" in line
    assert not out.exists()


def test_the_room_asked_for_is_the_models_copies_plus_a_margin(tiny_model_dir, tmp_path,
                                                                monkeypatch):
    from pretune.config import TuneConfig
    from pretune.search.rundir import preflight

    size = weights_bytes(ModelConfig(model=tiny_model_dir))
    safetensors = (Path(tiny_model_dir) / "model.safetensors").stat().st_size
    assert size == safetensors
    tune = TuneConfig(seed_check=3, keep=4)
    # best/, its replacement, three kept re-runs, four kept trials and two assembled models
    need = (2 + 3 + 4 + 2) * size + SAVE_MARGIN
    config = RunConfig(model=ModelConfig(model=tiny_model_dir))
    free = {"bytes": need - 1}
    monkeypatch.setattr(outdir.shutil, "disk_usage", lambda path: Usage(0, 0, free["bytes"]))
    with pytest.raises(ConfigError, match="needs room"):
        preflight(tmp_path / "run", config, tune)
    free["bytes"] = need
    preflight(tmp_path / "run", config, tune)
    assert not (tmp_path / "run").exists()  # a check creates nothing
    free["bytes"] = need - 1  # a smaller --keep, without the assembly, fits
    preflight(tmp_path / "run", config, TuneConfig(seed_check=3, keep=1, assemble=False))


def test_an_out_under_a_regular_file_is_an_error_before_the_data_loads(tiny_model_dir, tmp_path,
                                                                        no_data_loading):
    blocker = tmp_path / "results.txt"
    blocker.write_text("not a folder")
    line = _error_line(cli(*_tune_args(tiny_model_dir, tmp_path, blocker / "run")))
    assert "results.txt is a file" in line and "Pass an --out outside that file" in line
    assert blocker.read_text() == "not a folder"


def _access_as_the_owner(path, mode, **_):
    """os.access as an ordinary user who owns ``path`` would get it, from the permission bits
    alone: root passes every real check, so as root the test asks this instead."""
    import stat

    try:
        bits = os.stat(path).st_mode
    except OSError:
        return False
    wanted = ((os.R_OK, stat.S_IRUSR), (os.W_OK, stat.S_IWUSR), (os.X_OK, stat.S_IXUSR))
    return all(bits & bit for flag, bit in wanted if mode & flag)


@pytest.mark.skipif(os.name != "posix", reason="needs POSIX permission bits")
def test_an_out_without_write_permission_is_an_error_before_the_data_loads(
        tiny_model_dir, tmp_path, no_data_loading, monkeypatch):
    if os.geteuid() == 0:  # CI runs as root, whom no permission bit stops
        monkeypatch.setattr(os, "access", _access_as_the_owner)
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        line = _error_line(cli(*_tune_args(tiny_model_dir, tmp_path, locked / "run")))
    finally:
        locked.chmod(0o755)
    assert "must be writable" in line and "permission denied" in line
    assert not (locked / "run").exists()


def _tree(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def test_a_disk_that_fills_up_while_saving_best_ends_the_search_and_keeps_the_previous_best(
        tiny_model_dir, tmp_path, monkeypatch):
    import transformers

    out = tmp_path / "run"
    first = cli(*_tune_args(tiny_model_dir, tmp_path, out, "--budget", "1trials"))
    assert first.exit_code == 0, first.output
    # Make the saved best model the worst possible, so that the next trial replaces it.
    meta_path = out / BEST_DIR / META_FILE
    meta = yaml.safe_load(meta_path.read_text())
    meta["metrics"]["loss"] = 1e9
    meta_path.write_text(yaml.safe_dump(meta))
    before = _tree(out / BEST_DIR)

    def no_room(self, directory, *args, **kwargs):
        Path(directory).mkdir(parents=True, exist_ok=True)
        (Path(directory) / "model.safetensors").write_bytes(b"\0" * 1000)  # half written
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(transformers.PreTrainedModel, "save_pretrained", no_room)
    result = cli(*_tune_args(tiny_model_dir, tmp_path, out, "--budget", "2trials"))
    assert result.exit_code == 2 and "Traceback" not in result.output, result.output
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1 and result.stderr.strip().splitlines()[-1] == errors[0], result.output
    line = errors[0]
    assert f"Writing {out / BEST_DIR} needs room" in line and "the disk mounted at" in line
    assert f"is full ({os.strerror(errno.ENOSPC)})" in line
    assert "Free some space" in line
    assert _tree(out / BEST_DIR) == before  # the previous best model, intact
    assert not list(out.glob(f"{BEST_DIR}.*")), list(out.iterdir())


def test_bad_data_in_an_existing_folder_takes_back_only_what_the_start_created(
        tiny_model_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("kept")
    bad = tmp_path / "one-class.csv"
    bad.write_text("text,label\n" + "good,pos\n" * 8)
    result = cli("tune", "--model", tiny_model_dir, "--train", bad, "--out", out)
    assert "at least two classes" in _error_line(result)
    assert [p.name for p in out.iterdir()] == ["notes.txt"]  # no lock file, no study, no cache


def test_a_folder_the_user_may_not_write_in_is_refused(tmp_path, monkeypatch):
    """As root every folder is writable, so the operating system's answer is stood in for
    here; the test above runs the real case where the tests do not run as root."""
    seen = []

    def no_write(path, mode):
        seen.append((Path(path), mode))
        return False

    monkeypatch.setattr(outdir.os, "access", no_write)
    with pytest.raises(ConfigError, match="must be writable.*permission denied"):
        outdir.check_writable(tmp_path / "new" / "run")
    assert seen == [(tmp_path, os.W_OK | os.X_OK)]  # asked of the folder it would be made in


def test_a_full_disk_while_writing_the_trials_table_is_one_line_and_leaves_no_temp_file(
        tmp_path, monkeypatch):
    import pandas as pd

    from pretune.errors import PretuneError
    from pretune.search.rundir import TRIALS_FILE, write_trials

    (tmp_path / TRIALS_FILE).write_text("number\n0\n")

    def no_room(self, path, *args, **kwargs):
        Path(path).write_text("numb")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(pd.DataFrame, "to_csv", no_room)
    with pytest.raises(PretuneError, match="is full"):
        write_trials(tmp_path, pd.DataFrame({"number": [0, 1]}))
    assert [p.name for p in tmp_path.iterdir()] == [TRIALS_FILE]
    assert (tmp_path / TRIALS_FILE).read_text() == "number\n0\n"
