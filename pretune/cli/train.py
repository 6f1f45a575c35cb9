"""`pretune train`: one fine-tuning run with fixed settings."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from pretune.cli.common import (
    console, given_settings, parse_sets, read_yaml, run_command, training_progress, with_example,
)

EXAMPLE = """
Example:

  pretune train --model sentence-transformers/all-MiniLM-L6-v2 \\
      --train data/train.csv --valid data/validation.csv --out models/sst2 --epochs 3

  pretune train --config runs/sst2/best/pretune.yaml --train data/train.csv --out models/again

Any setting can be given with --set NAME=VALUE (repeatable), e.g. --set head_layers=1.
"""


def command(
    train: Optional[str] = typer.Option(None, "--train", help="Training data: CSV, TSV, JSONL, Parquet, or a Hugging Face dataset."),
    valid: Optional[str] = typer.Option(None, "--valid", help="Validation data; without it, a stratified split of --train."),
    out: Path = typer.Option(Path("runs/model"), "--out", help="Directory to write the trained model to."),
    model: Optional[str] = typer.Option(None, "--model", help="Hugging Face model id or local directory."),
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of settings (a pretune.yaml works)."),
    text_column: Optional[str] = typer.Option(None, "--text-column"),
    text_pair_column: Optional[str] = typer.Option(None, "--text-pair-column"),
    label_column: Optional[str] = typer.Option(None, "--label-column"),
    image_column: Optional[str] = typer.Option(None, "--image-column", help="Column of image paths (images are detected without it)."),
    task: Optional[str] = typer.Option(None, "--task", help="auto (default: detected from the label column; lists of words with lists of tags: token), classification, regression, multilabel or token."),
    label_all_subtokens: Optional[bool] = typer.Option(None, "--label-all-subtokens/--label-first-subtoken", help="Token classification: every sub-word token of a word learns its tag (default: only the first)."),
    label_names: Optional[str] = typer.Option(None, "--label-names", help="Token classification: names of integer tags in id order, e.g. O,B-PER,I-PER,B-LOC,I-LOC."),
    train_rows: Optional[int] = typer.Option(None, "--train-rows", help="Sample this many training rows (stratified)."),
    unlabeled: Optional[str] = typer.Option(None, "--unlabeled", help="More texts (one per line, or a table's text column) for masked-LM pretraining on the task before fine-tuning (tapt_steps)."),
    max_length: Optional[int] = typer.Option(None, "--max-length"),
    epochs: Optional[float] = typer.Option(None, "--epochs"),
    lr: Optional[float] = typer.Option(None, "--lr"),
    batch_size: Optional[str] = typer.Option(None, "--batch-size", help="An integer, or 'full' for gradient descent."),
    optimizer: Optional[str] = typer.Option(None, "--optimizer"),
    schedule: Optional[str] = typer.Option(None, "--schedule"),
    transfer: Optional[str] = typer.Option(None, "--transfer", help="full, linear_probe or freeze_bottom."),
    metric: Optional[str] = typer.Option(None, "--metric"),
    precision: Optional[str] = typer.Option(None, "--precision", help="auto (bf16 where the hardware has it), bf16, fp16 or fp32."),
    seed: Optional[int] = typer.Option(None, "--seed"),
    dp_epsilon: Optional[float] = typer.Option(None, "--dp-epsilon", help="Train with differential privacy (DP-SGD, needs opacus) within this epsilon."),
    dp_delta: Optional[float] = typer.Option(None, "--dp-delta", help="Delta of --dp-epsilon (default 1 / training rows)."),
    dp_max_grad_norm: Optional[float] = typer.Option(None, "--dp-max-grad-norm", help="Per-example gradient clipping norm of --dp-epsilon (default 1.0)."),
    mask_pii: Optional[bool] = typer.Option(None, "--mask-pii/--no-mask-pii", help="Replace e-mail addresses, URLs, phone numbers and long numbers by [EMAIL], [URL], [PHONE], [NUMBER] before tokenizing, here and at predict."),
    allow_pickle: bool = typer.Option(False, "--allow-pickle", help="Allow loading pickle weights (can run code)."),
    trust_remote_code: bool = typer.Option(False, "--trust-remote-code", help="Allow a model's own Python code."),
    set_: Optional[list[str]] = typer.Option(None, "--set", help="Any setting, NAME=VALUE; repeatable."),
) -> None:
    """Fine-tune a model once with fixed settings and save it."""

    def body():
        from pretune.api import build_config, train as api_train

        base = read_yaml(config) if config else None
        flags = dict(
            train=train, valid=valid, model=model, text_column=text_column,
            text_pair_column=text_pair_column, label_column=label_column, train_rows=train_rows,
            image_column=image_column, unlabeled=unlabeled,
            max_length=max_length, epochs=epochs, lr=lr, batch_size=batch_size,
            optimizer=optimizer, schedule=schedule, transfer=transfer, metric=metric,
            precision=precision, seed=seed, task=task, label_all_subtokens=label_all_subtokens, label_names=label_names,
            dp_epsilon=dp_epsilon, dp_delta=dp_delta, dp_max_grad_norm=dp_max_grad_norm,
            mask_pii=mask_pii,
        )
        settings = given_settings(flags, allow_pickle=allow_pickle,
                                  trust_remote_code=trust_remote_code)
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
