"""`pretune report`: write a search's self-contained HTML report."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from pretune.cli.common import console, run_command, with_example
from pretune.report import html as report_html

EXAMPLE = """
Example:

  pretune report runs/sst2            # writes runs/sst2/report.html

The page carries everything it needs (plotly.js inline): open it in a browser, offline.
"""


def command(
    run: Path = typer.Argument(..., help="Run directory of a search (the --out of pretune tune)."),
    output: Optional[Path] = typer.Option(None, "--output", help="Where to write the page; default RUN/report.html."),
) -> None:
    """Write RUN/report.html: summary, curves, importance, best model's confusion matrix."""

    def body():
        path = report_html.write_report(run, output)
        console.print(f"report written to {escape(str(path))}", highlight=False, soft_wrap=True)

    run_command(body)


with_example(command, EXAMPLE)
