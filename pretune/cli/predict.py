"""`pretune predict`: labels and per-class probabilities for a file of texts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pretune.cli.common import console, run_command, with_example

EXAMPLE = """
Example:

  pretune predict runs/sst2 --input data/test.csv --output preds.csv
  pretune predict runs/pets --input photos/ --output preds.csv     (an image model)
  pretune predict runs/sst2 --input data/test.csv --ensemble        (the search's ensemble)
  pretune predict runs/ner --input sentences.txt --entities --output tags.jsonl   (NER)

MODEL is a model directory written by pretune, or a run directory holding best/.
"""


def command(
    model: Path = typer.Argument(..., help="Model directory, or a run directory with best/."),
    input: str = typer.Option(..., "--input", help="File of texts: CSV, TSV, JSONL or Parquet; for an image model also a folder of images."),
    output: Optional[Path] = typer.Option(None, "--output", help="Where to write predictions (.csv, .tsv, .jsonl, .parquet)."),
    text_column: Optional[str] = typer.Option(None, "--text-column"),
    text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column"),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Column of image paths, for an image model."),
    batch_size: int = typer.Option(64, "--batch-size"),
    entities: bool = typer.Option(False, "--entities", help="Token classification: also each sentence's entities with character offsets and scores."),
    ensemble: bool = typer.Option(False, "--ensemble", help="Average the ensemble a search selected (RUN/ensemble.yaml) instead of best/."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading pickle weights (can run code)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow the model's own Python code."),
) -> None:
    """Predict the label of every row of a file with a trained model."""

    def body():
        from rich.progress import Progress

        from pretune.api import predict as api_predict

        with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("predicting", total=None)
            frame = api_predict(
                model, input, output=output, batch_size=batch_size, text_column=text_column,
                text_pair_column=text_pair_column, image_column=image_column,
                allow_pickle=allow_pickle, ensemble=ensemble, **({"entities": True} if entities else {}),
                trust_remote_code=trust_remote_code,
                on_batch=lambda done, total: bar.update(task, completed=done, total=total),
            )
        where = f" to {output}" if output else ""
        console.print(f"predicted {len(frame)} rows{where}", highlight=False)
        if output is None:
            from pretune.training.run import lists_as_json

            print(lists_as_json(frame).to_csv(index=False), end="")

    run_command(body)


with_example(command, EXAMPLE)
