"""Run directories are for their owner only (pretune.permissions)."""

import os
import stat

import pytest

import pretune
from pretune.permissions import private_files

pytestmark = pytest.mark.skipif(os.name != "posix", reason="file modes are POSIX")


def modes(root):
    """{relative path: permission bits} of ``root`` and everything under it."""
    out = {".": stat.S_IMODE(os.stat(root).st_mode)}
    for folder, dirs, files in os.walk(root):
        for name in dirs + files:
            path = os.path.join(folder, name)
            out[os.path.relpath(path, root)] = stat.S_IMODE(os.lstat(path).st_mode)
    return out


@pytest.fixture
def open_umask():
    before = os.umask(0o022)  # a usual umask: new files readable by everyone
    yield
    os.umask(before)


def test_private_files_sets_and_restores_the_umask(open_umask, tmp_path):
    with private_files():
        (tmp_path / "d").mkdir()
        (tmp_path / "d" / "f").write_text("x")
    (tmp_path / "after").write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "d").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(tmp_path / "d" / "f").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(tmp_path / "after").st_mode) == 0o644  # restored


def test_a_trained_model_directory_is_for_its_owner_only(open_umask, tiny_model_dir,
                                                        sentiment_csv, tmp_path):
    out = tmp_path / "models" / "sst2"
    pretune.train(model=tiny_model_dir, train=str(sentiment_csv), out=out, epochs=1,
                  batch_size=4, precision="fp32", threads=1)
    found = modes(tmp_path / "models")
    assert len(found) > 5 and (out / "pretune.yaml").is_file()
    for path, mode in found.items():
        full = tmp_path / "models" / path
        assert mode == (0o700 if full.is_dir() else 0o600), (path, oct(mode))


def test_pretune_private_0_leaves_the_umask_alone(open_umask, tmp_path, monkeypatch):
    monkeypatch.setenv("PRETUNE_PRIVATE", "0")
    with private_files():
        (tmp_path / "f").write_text("x")
    assert stat.S_IMODE(os.stat(tmp_path / "f").st_mode) == 0o644
