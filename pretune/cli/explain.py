"""`pretune explain`: which tokens made a text model predict what it did, as a page or a table."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import Progress

from pretune.cli.common import console, run_command, with_example
from pretune.errors import ConfigError
from pretune.report.explain import write_explanation
from pretune.training.explain import explain, order

EXAMPLE = """
Example:

  pretune explain runs/sst2 --input data/validation.csv --output runs/sst2/explain.html
  pretune explain runs/sst2 --input data/validation.csv --output explain.csv --limit 500
  pretune explain runs/pets --input photos/valid/ --output runs/pets/explain.html

Integrated gradients (Captum) on the input embeddings (on the pixels for an image model),
toward each row's predicted label. The page shades every token or pixel (green toward the
prediction, red against) and lists misclassified rows first when the file has labels, then by
confidence; the CSV holds each row's top tokens.
The report of a run links to RUN/explain*.html.
"""


def command(
    model: Path = typer.Argument(..., help="Run directory (its best/) or model directory."),
    input: str = typer.Option(..., "--input", help="File of texts (CSV, TSV, JSONL or Parquet), with labels to mark misclassified rows; for an image model a folder (class folders give labels) or a table of paths."),
    output: Path = typer.Option(..., "--output", help="explain.html (a page) or explain.csv (top tokens per row)."),
    limit: int = typer.Option(200, "--limit", min=1, help="Explain the first N rows (each costs --steps forward and backward passes)."),
    steps: int = typer.Option(32, "--steps", min=2, help="Points on the integration path."),
    text_column: Optional[str] = typer.Option(None, "--text-column"),
    text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column"),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Column of image paths, for an image model."),
    label_column: Optional[str] = typer.Option(None, "--label-column", help="Column of true labels (default: the training run's)."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading pickle weights (can run code)."),
) -> None:
    """Attribute a model's predictions to their tokens or pixels (integrated gradients)."""

    def body():

        if output.suffix.lower() not in (".html", ".htm", ".csv"):
            raise ConfigError(f"--output must end in .html or .csv, but got {output.name!r}. "
                              f"Choose one of those extensions.")
        with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("explaining", total=None)
            rows = explain(model, input, limit=limit, steps=steps, text_column=text_column,
                           text_pair_column=text_pair_column, image_column=image_column,
                           label_column=label_column,
                           allow_pickle=allow_pickle,
                           on_row=lambda done, total: bar.update(task, completed=done, total=total))
        path = write_explanation(order(rows), output, f"pretune explain: {Path(model).name}")
        wrong = sum(1 for r in rows if r.misclassified)
        shown = f" ({wrong} misclassified)" if any(r.label is not None for r in rows) else ""
        console.print(f"explained {len(rows)} rows{shown}", highlight=False)
        print(f"written to {escape(str(path))}")

    run_command(body)


with_example(command, EXAMPLE)
