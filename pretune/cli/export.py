"""`pretune export`: a search's trials table as CSV or JSON, or the best model as ONNX."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape

from pretune.cli.common import console, run_command, with_example
from pretune.deploy.export import export_onnx
from pretune.errors import ConfigError
from pretune.report.tables import export_trials

EXAMPLE = """
Example:

  pretune export runs/sst2 --format json --output trials.json
  pretune export runs/sst2 --format csv | head
  pretune export runs/sst2 --format onnx --output deploy/sst2 --quantize int8

csv and json: one row per trial: number, state, score, parameters, seconds, peak memory,
validation metrics. onnx: the model in RUN/best (RUN may also be a model directory) as
model.onnx with its tokenizer or image processor and label map (a token classification
model: its tag map, logits per sub-token), checked against the torch model on validation rows;
run it with pretune predict DIR (no torch needed; --entities works there too).
"""


def command(
    run: Path = typer.Argument(..., help="Run directory of a search (the --out of pretune tune); for onnx also a model directory."),
    format: str = typer.Option("csv", "--format", help="csv or json (a list of records): the trials; onnx: the best model."),
    output: Optional[Path] = typer.Option(None, "--output", help="File to write (default: standard output); for onnx the directory, required."),
    quantize: Optional[str] = typer.Option(None, "--quantize", help="onnx: also write a dynamically quantized copy (int8)."),
    rows: int = typer.Option(64, "--check-rows", min=1, help="onnx: validation rows the export is checked on."),
    tolerance: float = typer.Option(1e-4, "--tolerance", min=0.0, help="onnx: largest logit difference accepted between torch and ONNX Runtime."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading pickle weights (can run code)."),
) -> None:
    """Write a search's trials table as CSV or JSON, or its best model as ONNX."""

    def body():
        kind = format.lower()
        if kind == "onnx":
            return _onnx()
        if quantize is not None:
            raise ConfigError(f"--quantize applies to --format onnx only, but --format is {format}. "
                              f"Pass --format onnx or drop --quantize.")
        from pretune.search.history import read_history  # optuna loads only when this runs

        history = read_history(run, importance=False)
        text = export_trials(history, kind, output)
        if output is None:
            sys.stdout.write(text)
        else:
            console.print(f"{len(history.trials)} trials written to {escape(str(output))}",
                          highlight=False, soft_wrap=True)

    def _onnx():
        if output is None:
            raise ConfigError("--format onnx writes a directory, but no --output was given. "
                              "Pass --output DIR.")
        if quantize not in (None, "int8"):
            raise ConfigError(f"--quantize must be int8, but got {quantize!r}. Pass --quantize int8.")

        with console.status("exporting to ONNX", spinner="dots"):
            result = export_onnx(run, output, quantize=quantize, rows=rows, tolerance=tolerance,
                                 allow_pickle=allow_pickle)
        noun = "sentences" if result.kind == "token" else "rows"
        console.print(f"checked on {result.rows} validation {noun}: largest logit difference "
                      f"torch vs ONNX Runtime {result.max_diff:.2g} (tolerance {result.tolerance:g})",
                      highlight=False, soft_wrap=True)
        if result.int8:
            agree = result.int8["agreement"]
            unit = "tokens" if result.kind == "token" else "rows"
            shown = "" if agree != agree else f", predictions agree on {agree:.1%} of {unit}"
            console.print(f"int8 copy: largest logit difference {result.int8['max_diff']:.2g}{shown}",
                          highlight=False, soft_wrap=True)
        print(f"ONNX model written to {result.path}")

    run_command(body)


with_example(command, EXAMPLE)
