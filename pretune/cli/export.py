"""`pretune export`: a search's trials table as CSV or JSON."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from pretune.cli.common import console, run_command, with_example

EXAMPLE = """
Example:

  pretune export runs/sst2 --format json --output trials.json
  pretune export runs/sst2 --format csv | head

One row per trial: number, state, score, parameters, seconds, peak memory, validation metrics.
"""


def command(
    run: Path = typer.Argument(..., help="Run directory of a search (the --out of pretune tune)."),
    format: str = typer.Option("csv", "--format", help="csv or json (a list of records)."),
    output: Optional[Path] = typer.Option(None, "--output", help="File to write; default: standard output."),
) -> None:
    """Write a search's trials table as CSV or JSON."""

    def body():
        from pretune.report.tables import export_trials
        from pretune.search.history import read_history

        history = read_history(run, importance=False)
        text = export_trials(history, format.lower(), output)
        if output is None:
            sys.stdout.write(text)
        else:
            console.print(f"{len(history.trials)} trials written to {escape(str(output))}",
                          highlight=False, soft_wrap=True)

    run_command(body)


with_example(command, EXAMPLE)
