"""`pretune show`: a search's summary and its best trials in the terminal."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pretune.cli.common import run_command, with_example
from pretune.cli.distill import print_comparison
from pretune.report.tables import summary, top_trials

EXAMPLE = """
Example:

  pretune show runs/sst2 --top 5
"""


def command(
    run: Path = typer.Argument(..., help="Run directory of a search (the --out of pretune tune)."),
    top: int = typer.Option(10, "--top", min=1, help="How many trials to list, best first."),
) -> None:
    """Print a search's summary and its best trials."""

    def body():
        from pretune.search.history import read_history  # optuna loads only when this runs

        history = read_history(run, importance=False)
        out = Console()
        for label, text in summary(history):
            out.print(f"[bold]{escape(label)}[/]: {escape(text)}", highlight=False, soft_wrap=True)
        frame = top_trials(history, top)
        from pretune.search.distill import read_report  # optuna loads only when this runs

        print_comparison(read_report(run))  # a student's run: the comparison with its teacher
        if not len(frame):
            return
        table = Table(title=f"top {len(frame)} of {len(history.trials)} trials", title_justify="left")
        for column in frame.columns:
            wide = column == "parameters"
            table.add_column(str(column), justify="left" if wide or column == "outcome" else "right",
                             overflow="fold", ratio=1 if wide else None, no_wrap=not wide)
        for _, row in frame.iterrows():
            style = "bold green" if row["best"] else None
            table.add_row(*(escape(str(v)) for v in row), style=style)
        out.print(table)

    run_command(body)


with_example(command, EXAMPLE)
