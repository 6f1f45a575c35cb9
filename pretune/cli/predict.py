"""`pretune predict`: labels and per-class probabilities for a file of texts."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer
from rich.progress import Progress

from pretune.api import predict as api_predict
from pretune.cli.common import console, run_command, with_example
from pretune.data.outputs import lists_as_json
from pretune.deploy.runtime import is_export_dir
from pretune.errors import ConfigError

EXAMPLE = """
Example:

  pretune predict runs/sst2 --input data/test.csv --output preds.csv
  pretune predict runs/pets --input photos/ --output preds.csv     (an image model)
  pretune predict runs/sst2 --input data/test.csv --ensemble        (the search's ensemble)
  pretune predict runs/ner --input sentences.txt --entities --output tags.jsonl   (NER)
  pretune predict --onnx deploy/sst2 --input data/test.csv --int8   (ONNX Runtime, no torch)

MODEL is a model directory written by pretune, a run directory holding best/, or a directory
written by pretune export --format onnx (run with ONNX Runtime, as --onnx does).
"""


def command(
    model: Optional[Path] = typer.Argument(None, help="Model directory, a run directory with best/, or an ONNX export."),
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
    onnx: Optional[Path] = typer.Option(None, "--onnx", help="Directory written by pretune export --format onnx: predict with ONNX Runtime."),
    int8: bool = typer.Option(False, "--int8", help="With an ONNX export: use its int8 copy (--quantize int8)."),
) -> None:
    """Predict the label of every row of a file with a trained model."""

    def body():

        options = {}
        if onnx is not None or int8 or (model is not None and is_export_dir(model)):
            options = {"onnx": onnx or model, "int8": int8}
        elif model is None:
            raise ConfigError("predict needs a model: pass MODEL (a model or run directory) or "
                              "--onnx DIR. See pretune predict --help.")
        with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task("predicting", total=None)
            frame = api_predict(
                model, input, output=output, batch_size=batch_size, text_column=text_column,
                text_pair_column=text_pair_column, image_column=image_column,
                allow_pickle=allow_pickle, ensemble=ensemble, trust_remote_code=trust_remote_code,
                **({"entities": True} if entities else {}), **options,
                on_batch=lambda done, total: bar.update(task, completed=done, total=total),
            )
        where = f" to {output}" if output else ""
        console.print(f"predicted {len(frame)} rows{where}", highlight=False)
        if output is None:
            print(lists_as_json(frame).to_csv(index=False), end="")

    run_command(body)


with_example(command, EXAMPLE)
