"""`pretune worker`: join a study that `pretune tune` started, from this or another machine."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from pretune.cli.common import console, output_level, run_command, with_example

EXAMPLE = """
Example:

  # machine A: start the search on a shared PostgreSQL database
  pretune tune --train /data/train.csv --storage postgresql://user:pw@db/pretune \\
      --study sst2 --budget 2h --out /shared/runs/sst2

  # machines B, C, ...: add workers; everything else is read from the study
  pretune worker --storage postgresql://user:pw@db/pretune --study sst2

A worker needs the data and the model at the paths the study records (a shared file system);
it writes a better model to the study's run directory, or to --out.
"""


def command(
    storage: str = typer.Option(..., "--storage", help="The study's storage: an Optuna URL or a journal file."),
    study: str = typer.Option("pretune", "--study", help="The study's name in the storage."),
    out: Optional[Path] = typer.Option(None, "--out", help="Where best/ goes; default: the study's run directory."),
    budget: Optional[str] = typer.Option(None, "--budget", help="This worker's own budget (10m, 30trials); default: the study's."),
    threads: Optional[int] = typer.Option(None, "--threads", help="torch threads of this worker; default: all cores."),
    heartbeat: Optional[int] = typer.Option(None, "--heartbeat", help="Seconds between heartbeats of a running trial; default: the study's."),
) -> None:
    """Run trials of an existing study until its budget is spent."""

    def body():
        from pretune.search.workers import join  # optuna loads only when this runs

        def on_trial(report) -> None:
            if output_level() < 0:
                return
            value = "-" if report.value is None else f"{report.value:.4f}"
            best = " (best)" if report.is_best else ""
            console.print(f"trial {report.number}: {report.state.lower()} {report.metric} "
                          f"{value}{best}", highlight=False, soft_wrap=True)

        from pretune.permissions import private_files

        with private_files():  # the run directory is for its owner only
            result = join(storage, study, out=out, budget=budget, threads=threads,
                          heartbeat=heartbeat, on_trial=on_trial)
        console.print(f"worker done: {result.trials_run} trials run here; best so far: trial "
                      f"{result.best_trial} in {escape(str(result.path))}", highlight=False,
                      soft_wrap=True)

    run_command(body)


with_example(command, EXAMPLE)
