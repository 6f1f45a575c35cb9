"""`pretune train`: one fine-tuning run with fixed settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pretune.api import build_config, train as api_train
from pretune.cli.common import (
    AllowPickleOption, DpDeltaOption, DpEpsilonOption, DpMaxGradNormOption,
    ImageColumnOption, LabelAllSubtokensOption, LabelColumnOption, MaskPiiOption,
    LabelNamesOption, MaxLengthOption, ModelOption, PrecisionOption, TaskOption,
    TextColumnOption, TextPairColumnOption, TrainOption, TrainRowsOption,
    TrustRemoteCodeOption, UnlabeledOption, ValidOption,
    DATA_FLAGS, console, flag_settings, parse_sets, read_yaml, run_command, training_progress,
    with_example,
)

EXAMPLE = """
Example:

  pretune train --model sentence-transformers/all-MiniLM-L6-v2 \\
      --train data/train.csv --valid data/validation.csv --out models/sst2 --epochs 3

  pretune train --config runs/sst2/best/pretune.yaml --train data/train.csv --out models/again

Any setting can be given with --set NAME=VALUE (repeatable), e.g. --set head_layers=1.
"""

# Training settings only `pretune train` takes as flags (a search searches them).
RUN_FLAGS = ("epochs", "lr", "batch_size", "optimizer", "schedule", "transfer")


def command(
    train: TrainOption = None,
    valid: ValidOption = None,
    out: Path = typer.Option(Path("runs/model"), "--out", help="Directory to write the trained model to."),
    model: ModelOption = None,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of settings (a pretune.yaml works)."),
    text_column: TextColumnOption = None,
    text_pair_column: TextPairColumnOption = None,
    label_column: LabelColumnOption = None,
    image_column: ImageColumnOption = None,
    task: TaskOption = None,
    label_all_subtokens: LabelAllSubtokensOption = None,
    label_names: LabelNamesOption = None,
    train_rows: TrainRowsOption = None,
    unlabeled: UnlabeledOption = None,
    max_length: MaxLengthOption = None,
    epochs: Optional[float] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="An integer, or 'full' for gradient descent."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer"),
    schedule: Optional[str] = typer.Option(None, "--schedule"),
    transfer: Optional[str] = typer.Option(None, "--transfer", help="full, linear_probe or freeze_bottom."),
    metric: Optional[str] = typer.Option(None, "--metric"),
    precision: PrecisionOption = None,
    seed: Optional[int] = typer.Option(None, "--seed"),
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    dp_max_grad_norm: DpMaxGradNormOption = None,
    mask_pii: MaskPiiOption = None,
    allow_pickle: AllowPickleOption = False,
    trust_remote_code: TrustRemoteCodeOption = False,
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any setting, NAME=VALUE; repeatable."),
) -> None:
    """Fine-tune a model once with fixed settings and save it."""
    given = dict(locals())

    def body():
        base = read_yaml(config) if config else None
        settings = flag_settings(given, DATA_FLAGS + RUN_FLAGS)
        settings.update(parse_sets(set_))
        cfg = build_config(base, settings)
        with training_progress() as (on_step, on_eval):
            result = api_train(cfg, out=out, on_step=on_step, on_eval=on_eval)
        m = result.metrics
        judged = result.config.train.metric  # the task's default when --metric was not given
        also = "" if judged == "accuracy" or "accuracy" not in m else \
            f", accuracy {m['accuracy']:.4f}"
        console.print(
            f"[bold green]done[/]: {judged} {m.get(judged, float('nan')):.4f}{also} on validation "
            f"({result.train_result.stop_reason}, {result.train_result.steps} steps, "
            f"{result.train_result.seconds:.0f}s); model saved to {result.path}",
            highlight=False,
        )
        if result.train_result.privacy:
            from pretune.training.privacy import describe

            console.print(describe(result.train_result.privacy), highlight=False)
            print(f"dp_epsilon_spent={result.train_result.privacy['epsilon']:.4f}")
        shown = "accuracy" if "accuracy" in m else judged
        print(f"validation_{shown}={m.get(shown, float('nan')):.4f}")

    run_command(body)


with_example(command, EXAMPLE)
