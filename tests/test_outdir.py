"""The checks on an output directory and the full-disk error."""

from __future__ import annotations

import errno
import os

import pytest

from pretune import outdir
from pretune.errors import ConfigError


def test_a_path_that_does_not_exist_yet_is_checked_at_the_folder_it_would_be_made_in(tmp_path):
    assert outdir.nearest_existing(tmp_path / "a" / "b") == tmp_path
    outdir.check_writable(tmp_path / "a" / "b")  # writable, and nothing is created
    assert not (tmp_path / "a").exists()


def test_free_bytes_are_those_of_the_disk_that_would_hold_the_path(tmp_path):
    assert outdir.free_bytes(tmp_path / "not" / "yet") == outdir.free_bytes(tmp_path) > 0


def test_only_a_full_disk_becomes_a_one_line_error(tmp_path):
    full = outdir.disk_full(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "x")
    assert full is not None and "\n" not in str(full)
    assert f"Writing {tmp_path / 'x'}" in str(full) and "Free some space" in str(full)
    assert outdir.disk_full(OSError(errno.EACCES, "Permission denied"), tmp_path) is None
    assert outdir.disk_full(ValueError("no"), tmp_path) is None


def test_the_mount_point_is_a_folder_above_the_path(tmp_path):
    mount = outdir.mount_point(tmp_path / "missing")
    assert os.path.ismount(mount) and str(tmp_path).startswith(str(mount))


@pytest.mark.parametrize("n, text", [(0, "0 bytes"), (1536, "1.5 KB"), (5 * 2**20, "5.0 MB"),
                                     (3 * 2**40, "3.0 TB")])
def test_sizes_read_as_a_person_writes_them(n, text):
    assert outdir.size_text(n) == text


def test_too_little_room_names_what_is_needed_and_what_is_free(tmp_path, monkeypatch):
    monkeypatch.setattr(outdir, "free_bytes", lambda path: 2**20)
    with pytest.raises(ConfigError, match=r"room on its disk for the model \(about 2.0 MB\), "
                                          r"but the disk of .* has 1.0 MB free"):
        outdir.check_room(tmp_path, 2 * 2**20, "the model")
    outdir.check_room(tmp_path, 2**20, "the model")


def test_atomic_write_replaces_the_file_with_text_bytes_or_what_a_writer_wrote(tmp_path):
    path = tmp_path / "new" / "table.csv"
    assert outdir.atomic_write(path, "a,b\n") == path  # the folder is made
    assert path.read_text() == "a,b\n"
    outdir.atomic_write(path, b"\x00\x01")
    assert path.read_bytes() == b"\x00\x01"
    outdir.atomic_write(path, lambda tmp: tmp.write_text("from a writer"))
    assert path.read_text() == "from a writer"
    assert sorted(p.name for p in path.parent.iterdir()) == ["table.csv"]  # no temp file left


def test_a_writer_that_fails_leaves_the_old_file_and_no_temp_file(tmp_path):
    path = tmp_path / "plan.yaml"
    path.write_text("old")

    def half_then_fail(tmp):
        tmp.write_text("half")
        raise RuntimeError("crashed")

    with pytest.raises(RuntimeError, match="crashed"):
        outdir.atomic_write(path, half_then_fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["plan.yaml"]


@pytest.mark.parametrize("err, fix", [
    (OSError(errno.ENOSPC, "No space left on device"), "Free some space"),
    (PermissionError(errno.EACCES, "Permission denied"), "Change the folder's permissions"),
])
def test_a_full_disk_or_no_permission_is_one_line_naming_the_path_and_the_fix(tmp_path, err, fix):
    path = tmp_path / "trials.csv"

    def fails(tmp):
        tmp.write_text("part")
        raise err

    with pytest.raises(outdir.WriteError) as caught:
        outdir.atomic_write(path, fails)
    message = str(caught.value)
    assert "\n" not in message and f"Writing {path}" in message and fix in message
    assert isinstance(caught.value, OSError)  # cache writers that catch OSError go on
    assert list(tmp_path.iterdir()) == []
