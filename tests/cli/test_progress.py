"""What `pretune tune` prints while it searches: live bars and a trials table on a terminal,
plain lines elsewhere, only the result with --quiet."""

from __future__ import annotations

import os
import pty
import re
import select
import sys
import time

import pytest

from tests.search.helpers import NARROW, data_files, space_file

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def run_in_terminal(args, timeout=300) -> tuple[int, str]:
    """Run `pretune ARGS` with a pseudo-terminal as its stdout and stderr; returns the exit code
    and everything it wrote."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its standard streams are the terminal
        os.environ.update(HF_HUB_OFFLINE="1", PRETUNE_DEBUG="", TERM="xterm-256color",
                          COLUMNS="140", LINES="60")
        os.environ.pop("NO_COLOR", None)
        os.execv(sys.executable, [sys.executable, "-m", "pretune.cli.main", *map(str, args)])
    chunks, deadline = [], time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 5)
        if not ready:
            continue
        try:
            data = os.read(fd, 65536)
        except OSError:  # the child closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return os.waitstatus_to_exitcode(status), b"".join(chunks).decode("utf-8", "replace")


@pytest.fixture()
def tune_args(tiny_model_dir, tmp_path):
    train, valid = data_files(tmp_path / "data")
    space = space_file(tmp_path / "space.yaml", NARROW)
    return ["tune", "--model", tiny_model_dir, "--train", train, "--valid", valid,
            "--budget", "3trials", "--out", tmp_path / "run", "--space", space,
            "--fixed", "epochs=1", "--metric", "loss", "--pruner", "none", "--precision", "fp32",
            "--fixed", "threads=1", "--no-report"]


def test_terminal_shows_live_bars_and_a_table_then_names_the_best(tune_args):
    code, output = run_in_terminal(tune_args)
    text = ANSI.sub("", output)
    assert code == 0, text[-3000:]
    assert "\x1b[" in output  # drawn for a terminal: colors and cursor moves
    assert "budget 3trials" in text and re.search(r"\d/3 trials", text)  # the budget bar
    assert re.search(r"trial \d .*steps", text)  # the running trial's step bar
    assert "finished trials" in text  # the table, with its columns
    for column in ("trial", "outcome", "loss", "parameters", "time"):
        assert column in text
    assert len(re.findall(r"│\s+\d+( \*)?\s+│ complete", text)) >= 3
    best = re.search(r"best_trial=(\d+)", text)
    assert best, text[-2000:]
    assert f"* best so far: trial {best.group(1)}" in text
    assert f"best: trial {best.group(1)}, loss" in text
    assert "one line per trial" not in text  # the plain mode's lines are not printed


def test_plain_lines_when_not_a_terminal(tiny_search_run):
    _, done, _ = tiny_search_run  # run with its output captured
    err = done.stderr
    assert "\x1b[" not in err and "━" not in err  # no bars, no colors
    lines = [line for line in err.splitlines() if line.startswith("trial ")]
    assert len(lines) == 4
    assert all(re.match(r"trial +\d+  complete +loss \d\.\d{4} +lr=\S+ batch_size=\d+", line)
               for line in lines), lines
    assert sum("* best" in line for line in lines) >= 1
    assert err.splitlines()[0].startswith("searching in ")
    best = re.search(r"best_trial=(\d+)", done.stdout).group(1)
    assert f"best: trial {best}, loss" in err
    assert "report written to" in err


def test_quiet_prints_only_the_result(tune_args):
    from typer.testing import CliRunner

    from pretune.cli.main import app

    result = CliRunner().invoke(app, ["--quiet", *map(str, tune_args)])
    assert result.exit_code == 0, result.output
    assert "trial 0 " not in result.stderr and "searching in" not in result.stderr
    assert re.search(r"best_trial=\d+", result.stdout)
