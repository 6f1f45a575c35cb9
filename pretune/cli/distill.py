"""`pretune distill`: train a smaller student from a search's best model and compare them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from pretune.api import distill as api_distill
from pretune.cli.common import (
    console, output_level, parse_sets, run_command, set_verbose, with_example,
)
from pretune.cli.progress import MODE_QUIET, SearchProgress, choose_mode
from pretune.cli.tune import print_summary, write_report_safely
from pretune.report.distill import by_model, comparison_rows

EXAMPLE = """
Example:

  pretune distill runs/sst2 --student layers:3 --budget 5m

The teacher is runs/sst2/best; data and settings come from runs/sst2/pretune.yaml. --student
is layers:N (the teacher's own encoder with N of its layers, evenly spaced, as DistilBERT was
built) or a model id or directory. The student's search (default space plus distill_alpha and
distill_temperature) runs in --out (default RUN/distill), which gets its own trials.csv, best/
and report; OUT/distill.yaml holds the comparison (size, speed, and the task's main validation
metrics), and pretune show OUT prints it again. Text runs only (classification, regression,
multi-label, token classification); an image run is refused.
"""


def command(
    run: Path = typer.Argument(..., help="Run directory of a finished search: its best/ is the teacher."),
    student: str = typer.Option("layers:3", "--student", help="layers:N (the teacher with N of its encoder layers) or a model id or directory."),
    budget: Optional[str] = typer.Option("5m", "--budget", help="The student's search: time (5m), trials (10trials) or both."),
    out: Optional[Path] = typer.Option(None, "--out", help="The student's run directory (default RUN/distill)."),
    fixed: Optional[list[str]] = typer.Option(None, "--fixed", help="Pin a setting of the student's search, NAME=VALUE (distill_alpha=0: no teacher); repeatable."),
    priors: Optional[bool] = typer.Option(None, "--priors/--no-priors", help="Start with known fine-tuning recipes (default on)."),
    lr_range_test: Optional[bool] = typer.Option(None, "--lr-range-test/--no-lr-range-test", help="Center the lr range on a short sweep (default on)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Plain lines instead of live bars, with library logs."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write OUT/report.html at the end (needs plotly)."),
) -> None:
    """Distill a search's best model into a smaller student; compare size, speed and metrics."""

    def body():
        if verbose:
            set_verbose()
        level = output_level()
        mode = choose_mode(quiet=quiet or level < 0, verbose=verbose or level > 0)
        pins = parse_sets(fixed, "--fixed")
        progress = SearchProgress(mode, budget_label=budget or "5m", metric=None)
        with progress:
            result = api_distill(run, student=student, budget=budget, out=out, fixed=pins,
                                 priors=priors, lr_range_test=lr_range_test,
                                 on_trial=progress.on_trial, on_plan=progress.on_plan,
                                 progress=progress)
        print_summary(result.tune)
        print_comparison(result.report)
        console.print(f"comparison written to {escape(str(result.path / 'distill.yaml'))}",
                      highlight=False, soft_wrap=True)
        if report:
            write_report_safely(result.path, quiet=mode == MODE_QUIET)

    run_command(body)


def print_comparison(report: dict[str, Any] | None) -> None:
    """The teacher-student table of a distill report, on standard output."""
    if not report:
        return

    columns, rows = by_model(*comparison_rows(report))
    table = Table(title=f"distillation: the validation set ({report.get('valid_rows')} rows); "
                        f"speed at batch {report.get('batch_size')}, {report.get('threads')} "
                        f"threads; MB on disk", title_justify="left")
    for i, column in enumerate(columns):
        table.add_column(column, justify="left" if i == 0 else "right", no_wrap=True)
    for row in rows:
        table.add_row(*(escape(v) for v in row))
    Console().print(table)


with_example(command, EXAMPLE)
