"""The `pretune` command: one module per subcommand, registered here."""

from __future__ import annotations

import typer

from pretune._version import __version__
from pretune.cli import distill, explain, export, predict, report, show, train, tune, worker
from pretune.cli.common import OneLineErrors, quiet_libraries, set_output_level

app = typer.Typer(
    name="pretune",
    cls=OneLineErrors,
    help="Fine-tune pretrained models and search their hyperparameters.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Show library logs and warnings."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print results and errors only."),
    version: bool = typer.Option(False, "--version", help="Print the version and exit."),
) -> None:
    quiet_libraries(verbose)
    set_output_level(1 if verbose else -1 if quiet else 0)
    if version:
        print(__version__)
        raise typer.Exit()


app.command("train")(train.command)
app.command("predict")(predict.command)
app.command("tune")(tune.command)
app.command("report")(report.command)
app.command("show")(show.command)
app.command("export")(export.command)
app.command("worker")(worker.command)
app.command("distill")(distill.command)
app.command("explain")(explain.command)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
