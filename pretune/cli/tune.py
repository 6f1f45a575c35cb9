"""`pretune tune`: search hyperparameters within a budget and keep the best model."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer
from rich.markup import escape

from pretune.api import tune as api_tune, tune_parameters
from pretune.cli.common import (
    AllowPickleOption, DpDeltaOption, DpEpsilonOption, DpMaxGradNormOption,
    ImageColumnOption, LabelAllSubtokensOption, LabelColumnOption, MaskPiiOption,
    LabelNamesOption, MaxLengthOption, ModelOption, PrecisionOption, TaskOption,
    TextColumnOption, TextPairColumnOption, TrainOption, TrainRowsOption,
    TrustRemoteCodeOption, UnlabeledOption, ValidOption,
    console, flag_settings, output_level, parse_sets, read_yaml, run_command, set_verbose,
    with_example,
)
from pretune.cli.progress import MODE_QUIET, SearchProgress, choose_mode, short
from pretune.errors import MissingExtraError, PretuneError
from pretune.report import html as report_html

EXAMPLE = """
Example:

  pretune tune --model sentence-transformers/all-MiniLM-L6-v2 \\
      --train data/train.csv --valid data/validation.csv --budget 10m --out runs/sst2

  pretune tune --train data/train.csv --budget 30trials --out runs/sst2 \\
      --space space.yaml --fixed epochs=3 --metric f1_macro

  pretune tune --train data/train.csv --budget 30m --workers 4 --out runs/sst2
  pretune tune --train data/train.csv --budget 1h --executor ray --cpus-per-trial 4 \
      --storage postgresql://user:pw@db/pretune --study sst2

  pretune tune --train prices.csv --task regression --metric mae --budget 20m --out runs/prices

Running the same command again continues the search in --out (a larger budget extends it).
Several workers keep the trials in OUT/study.journal (or the --storage database); more
machines join with: pretune worker --storage URL --study NAME.
At the end OUT/report.html is written (pretune report OUT writes it again); pretune show OUT
prints the summary. On a terminal the search draws live bars and a table of finished trials;
elsewhere it prints one line per trial.
A space file narrows or extends the default space, e.g.:

  lr: {low: 1e-5, high: 1e-4, log: true}
  batch_size: {choices: [16, 32]}
  dropout: null        # do not search dropout
  schedule: linear     # pin schedule
"""


def command(
    train: TrainOption = None,
    valid: ValidOption = None,
    out: Path = typer.Option(Path("runs/tune"), "--out", help="Run directory: study, trials.csv and best/ go here."),
    budget: Optional[str] = typer.Option(None, "--budget", help="Time (10m, 2h), trials (30trials) or both (10m,30trials). Default 10m."),
    model: ModelOption = None,
    config: Optional[Path] = typer.Option(None, "--config", help="YAML file of base settings (a pretune.yaml works)."),
    metric: Optional[str] = typer.Option(None, "--metric", help="Metric to optimize (accuracy, f1_macro, loss, ...); its direction follows."),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the search; each trial derives its own."),
    space: Optional[Path] = typer.Option(None, "--space", help="YAML file that narrows or extends the search space."),
    fixed: Optional[list[str]] = typer.Option(None, "--fixed", help="Pin a setting, NAME=VALUE; repeatable."),
    strategy: Optional[str] = typer.Option(None, "--strategy", help="auto (default; a continued search keeps its own), tpe, random, hyperband, asha, median or random-hyperband."),
    sampler: Optional[str] = typer.Option(None, "--sampler", help="Replace the strategy's sampler: tpe or random."),
    pruner: Optional[str] = typer.Option(None, "--pruner", help="Replace the strategy's pruner: hyperband, asha, median or none."),
    priors: Optional[bool] = typer.Option(None, "--priors/--no-priors", help="Start a new search with known fine-tuning recipes (default on)."),
    lr_range_test: Optional[bool] = typer.Option(None, "--lr-range-test/--no-lr-range-test", help="Center the default lr range on a short increasing-lr sweep (default on)."),
    keep: Optional[int] = typer.Option(None, "--keep", help="Models of the best trials kept for the final assembly (default 5; 0: none)."),
    assemble: Optional[bool] = typer.Option(None, "--assemble/--no-assemble", help="Build the final model from the kept trials: soups, an ensemble, its distillation (default on)."),
    refit: Optional[bool] = typer.Option(None, "--refit/--no-refit", help="Train the final model's recipe again on the training and validation rows at the end (default on)."),
    screen: Optional[bool] = typer.Option(None, "--screen/--no-screen", help="On data too large for the budget: the trials screen recipes on a fraction of the rows and the refit trains the chosen one on as many rows as half the budget allows (default off)."),
    data_fraction: Optional[float] = typer.Option(None, "--data-fraction", help="Part of the training rows each epoch of a trial runs on, the next part of a shuffled pass (default 1: all)."),
    storage: Optional[str] = typer.Option(None, "--storage", help="Optuna storage URL; default: sqlite in --out."),
    study: Optional[str] = typer.Option(None, "--study", help="Study name in the storage (default pretune)."),
    workers: Optional[int] = typer.Option(None, "--workers", help="Trials at once, each in its own process (default 1; with Ray: one per --cpus-per-trial or GPU)."),
    executor: Optional[str] = typer.Option(None, "--executor", help="How workers start: local processes (default) or ray."),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="An existing Ray cluster (default: a local Ray instance)."),
    cpus_per_trial: Optional[int] = typer.Option(None, "--cpus-per-trial", help="Cores each worker uses (default: all cores / workers)."),
    heartbeat: Optional[int] = typer.Option(None, "--heartbeat", help="Seconds between heartbeats of running trials on a shared storage (default 30)."),
    isolate_trials: Optional[str] = typer.Option(None, "--isolate-trials", help="Train each trial in a child process, so that one killed for memory fails alone: auto (default: when memory is tight), always, never."),
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
    precision: PrecisionOption = None,
    dp_epsilon: DpEpsilonOption = None,
    dp_delta: DpDeltaOption = None,
    dp_max_grad_norm: DpMaxGradNormOption = None,
    mask_pii: MaskPiiOption = None,
    allow_pickle: AllowPickleOption = False,
    trust_remote_code: TrustRemoteCodeOption = False,
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only the result: no progress, no line per trial."),
    verbose: bool = typer.Option(False, "--verbose", "-v", help="Plain lines instead of live bars, with library logs."),
    report: bool = typer.Option(True, "--report/--no-report", help="Write OUT/report.html at the end (needs plotly)."),
    log_to: Optional[list[str]] = typer.Option(None, "--log-to", help="Also record each trial in mlflow or tensorboard; repeatable."),
) -> None:
    """Search hyperparameters within a budget; the best model is kept in OUT/best."""
    given = dict(locals())

    def body():
        if verbose:
            set_verbose()
        level = output_level()
        mode = choose_mode(quiet=quiet or level < 0, verbose=verbose or level > 0)
        base = read_yaml(config) if config else None
        settings = flag_settings(given)
        pins = parse_sets(fixed, "--fixed")
        # The first line once the input is checked: a bad input prints its error alone.
        progress = SearchProgress(
            mode, budget_label=budget or "10m", metric=metric,
            intro=f"searching in {out} (budget {budget or '10m'}); one line per trial")
        with progress:
            result = api_tune(
                base, out=out, space=space, fixed=pins, on_trial=progress.on_trial,
                on_plan=progress.on_plan, progress=progress, log_to=log_to,
                **search_options(given), **settings,
            )
        print_summary(result)
        if report:
            write_report_safely(result.path, quiet=mode == MODE_QUIET)

    run_command(body)


def search_options(given: dict[str, Any]) -> dict[str, Any]:
    """The options among the command's arguments ``given`` that set how the search runs
    (``pretune.api.tune``'s TuneConfig parameters; --space goes its own way)."""
    return {name: given[name] for name in tune_parameters() if name in given and name != "space"}


def write_report_safely(run: Path, *, quiet: bool = False) -> None:
    """The report at the end of a search: a failure to write it is a warning, never an error
    (the search's results are already on disk)."""

    try:
        path = report_html.write_report(run)
    except MissingExtraError as err:
        console.print(f"[yellow]no report:[/] {escape(str(err))}", highlight=False, soft_wrap=True)
        return
    except Exception as err:  # noqa: BLE001 - the search is already saved
        console.print(f"[yellow]warning:[/] the report could not be written "
                      f"({escape(type(err).__name__)}: {escape(str(err))}); run pretune report "
                      f"{escape(str(run))} to try again", highlight=False, soft_wrap=True)
        return
    if not quiet:
        console.print(f"report written to {escape(str(path))}", highlight=False, soft_wrap=True)


with_example(command, EXAMPLE)


def print_summary(result) -> None:
    counts = result.trials["state"].value_counts().to_dict() if len(result.trials) else {}
    tally = ", ".join(f"{n} {s.lower()}" for s, n in counts.items())
    console.print(f"{len(result.trials)} trials in {escape(str(result.path))} ({tally or 'none'}); "
                  f"{result.trials_run} run now", highlight=False, soft_wrap=True)
    if result.best_trial is None:
        reasons = result.trials["fail_reason"].dropna() if len(result.trials) else []
        why = f" The last failure: {reasons.iloc[-1]}" if len(reasons) else ""
        raise PretuneError(
            f"A search keeps a best model once a trial completes, but none has in "
            f"{result.path}.{why} Fix the cause, or give a larger --budget, and run again."
        )
    params = escape(", ".join(f"{k}={short(v)}" for k, v in result.best_params.items()))
    final = result.assembly or {}
    built = final.get("chosen") not in (None, "trial", "refit")  # a refit: the next line
    what = (f"{final['chosen']} of trials {', '.join(map(str, final['members']))}, with the "
            f"settings of trial {result.best_trial}" if built else f"trial {result.best_trial}")
    console.print(
        f"[bold green]best[/]: {what}, {result.metric} {result.best_value:.4f} ({params}); "
        f"model saved to {escape(str(result.best_path))}", highlight=False, soft_wrap=True)
    if result.refit:
        from pretune.search.refit import rows_phrase  # the search layer loads only here

        again = result.refit
        console.print(f"then refit: trial {again['trial']}'s recipe trained again on "
                      f"{rows_phrase(again)} ({again['seconds']:.0f}s); the "
                      f"{result.metric} above is the "
                      f"trial's, on rows it did not train on", highlight=False, soft_wrap=True)
    if final.get("skipped"):
        console.print(f"final assembly {escape(final['skipped'])}", highlight=False,
                      soft_wrap=True)
    if final.get("candidates"):
        console.print("final assembly, by validation " + result.metric + ": " + "; ".join(
            f"{c['kind']} {c.get(result.metric, float('nan')):.4f}" for c in final["candidates"]),
            highlight=False, soft_wrap=True)
    if result.ended_early:
        console.print(f"stopped with time left: {escape(result.ended_early)}", highlight=False,
                      soft_wrap=True)
    epsilon = result.best_settings.get("dp_epsilon")
    if epsilon is not None:  # DP: the per-trial budget, and what the whole search spent
        from pretune.training.privacy import SEARCH_NOTE, search_bound

        console.print(search_bound(epsilon, len(result.trials)), highlight=False, soft_wrap=True)
        console.print(SEARCH_NOTE, highlight=False, soft_wrap=True)
    print(f"best_trial={result.best_trial}")
    print(f"best_{result.metric}={result.best_value:.4f}")
