"""The Python API: ``pretune.train`` and ``pretune.predict`` mirror the commands."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path
from typing import Any, Callable, Mapping

import pandas as pd

from pretune.config import RunConfig, TuneConfig, validate
from pretune.deploy.runtime import is_export_dir, predict as onnx_predict
from pretune.errors import ConfigError, PretuneError
from pretune.permissions import private_files


def build_config(base: Mapping[str, Any] | RunConfig | None = None,
                 settings: Mapping[str, Any] | None = None) -> RunConfig:
    """A validated RunConfig from a base (a mapping, a pretune.yaml, or a RunConfig) and
    settings by name (``{"lr": 3e-5, "train": "f.csv"}``) that override it."""
    if isinstance(base, RunConfig):
        config = base
    else:
        raw = dict(base or {})
        if isinstance(raw.get("settings"), Mapping):  # a pretune.yaml written beside a model
            raw = dict(raw["settings"])
        config = RunConfig.from_dict(raw)
    return validate(config.with_settings(dict(settings or {})))


def train(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    out: str | Path | None = None,
    on_step: Callable[[int, int, float], None] | None = None,
    on_eval: Callable[[int, dict], None] | None = None,
    **settings: Any,
):
    """Fine-tune once with fixed settings; returns a ``FitResult``.

    >>> result = pretune.train(train="train.csv", valid="valid.csv", out="models/sst2", lr=3e-5)
    >>> result.metrics["accuracy"], result.path

    Any setting of ``pretune.config`` can be passed by name.
    """
    from pretune.training.run import fit  # torch loads only when this runs

    config = build_config(config, settings)
    if out is not None:  # an --out that cannot take the model fails now, not after training
        from pretune.models.io import check_save_room  # torch loads only when this runs

        check_save_room(out, config.model, 1, "the trained model")
    with private_files():  # the model directory is for its owner only (pretune.permissions)
        result = fit(config, out, on_step=on_step, on_eval=on_eval)
    if result.train_result.failed:
        raise PretuneError(
            f"Training must reach one evaluation to give a model, but it stopped at step "
            f"{result.train_result.steps} with {result.train_result.stop_reason.replace('_', ' ')}. "
            f"Lower --lr, keep gradient clipping on (max_grad_norm), or check the data."
        )
    return result


def predict(model: str | Path, input: str | Path, *, output: str | Path | None = None,
            **options: Any) -> pd.DataFrame:
    """Predicted label and per-class probabilities for each row of ``input``; for a regression
    model the value in the training data's units, for a multi-label model the list of labels
    (at the saved threshold) and per-label probabilities.

    ``model`` is a model directory written by pretune or a run directory holding ``best/``;
    ``ensemble=True`` (a run directory) averages the ensemble the search selected instead.
    ``onnx=DIR`` (or ``model`` naming a directory ``pretune export --format onnx`` wrote)
    predicts with ONNX Runtime, without torch; ``int8=True`` uses its quantized copy.
    """

    onnx = options.pop("onnx", None)
    int8 = options.pop("int8", False)
    if onnx is not None or int8 or (model is not None and is_export_dir(model)):
        if options.pop("ensemble", False):
            raise ConfigError("--ensemble averages a run's torch models, but an ONNX model was "
                              "given. Drop --ensemble, or pass the run directory without --onnx.")
        keep = ("batch_size", "text_column", "text_pair_column", "image_column", "entities",
                "on_batch")
        return onnx_predict(onnx or model, input, output=output, int8=int8,
                            **{k: v for k, v in options.items() if k in keep})
    if options.pop("ensemble", False):  # the kept models of a run, averaged (RUN/ensemble.yaml)
        from pretune.search.assemble import predict_ensemble  # optuna loads only when this runs

        return predict_ensemble(model, input, output=output, **options)
    from pretune.training.run import predict as run_predict  # torch loads only when this runs

    return run_predict(model, input, output=output, **options)


# The parameters of ``tune`` named other than the TuneConfig field they set.
_PARAMETER_OF_FIELD = {"study_name": "study"}


def tune_parameters() -> tuple[str, ...]:
    """The parameters of ``tune`` that set a TuneConfig field (``study`` sets ``study_name``),
    by the names ``tune`` takes them."""
    return tuple(_PARAMETER_OF_FIELD.get(f.name, f.name) for f in fields(TuneConfig))


def tune_config_of(given: Mapping[str, Any]) -> TuneConfig:
    """A TuneConfig from ``tune``'s arguments by name: the fields given as None keep their
    defaults, and names that are not fields are left out."""
    values = {field: given.get(_PARAMETER_OF_FIELD.get(field, field))
              for field in (f.name for f in fields(TuneConfig))}
    return TuneConfig(**{k: v for k, v in values.items() if v is not None})


def tune(
    config: RunConfig | Mapping[str, Any] | None = None,
    *,
    out: str | Path = "runs/tune",
    budget: str | None = None,
    space: str | Path | Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    strategy: str | None = None,
    sampler: str | None = None,
    pruner: str | None = None,
    storage: str | None = None,
    study: str | None = None,
    evals_per_epoch: int | None = None,
    data_fraction: float | None = None,
    priors: bool | None = None,
    lr_range_test: bool | None = None,
    seed_check: int | None = None,
    keep: int | None = None,
    assemble: bool | None = None,
    refit: bool | None = None,
    screen: bool | None = None,
    workers: int | None = None,
    executor: str | None = None,
    ray_address: str | None = None,
    cpus_per_trial: int | None = None,
    heartbeat: int | None = None,
    isolate_trials: str | None = None,
    on_trial: Callable[[Any], None] | None = None,
    on_plan: Callable[[Any], None] | None = None,
    progress: Any = None,
    log_to: str | list[str] | None = None,
    **settings: Any,
):
    """Search hyperparameters within a budget; returns a ``TuneResult``.

    >>> result = pretune.tune(train="train.csv", valid="valid.csv", budget="10m", out="runs/sst2")
    >>> result.best_params, result.best_metrics["accuracy"], result.best_model

    ``budget`` is a time ("10m", "2h"), a trial count ("30trials") or both ("10m,30trials").
    ``space`` is a space file (YAML) or its content as a mapping: it narrows or extends the
    default space (see ``pretune.search.space``). ``fixed`` pins settings by name, and so does
    any setting passed by name that the space would search (``lr=3e-5``); other settings
    (``metric="f1_macro"``, ``seed=1``, ``train=...``) apply to every trial. Running it again
    with the same ``out`` continues the search; ``on_trial`` gets a ``TrialReport`` after each
    trial, and ``progress`` follows the running trial (see ``pretune.search.study.run_tune``).
    ``log_to`` ("mlflow", "tensorboard" or a list of them) records each trial as a run of that
    tracker (see ``pretune.search.trackers``).

    ``strategy`` names the sampler and pruner (``auto``, ``tpe``, ``random``, ``hyperband``,
    ``asha``, ``median``, ``random-hyperband``; see ``pretune.search.strategies``); by default a
    continued search keeps the one it started with, and a new one uses ``auto``. ``sampler`` and
    ``pruner`` replace one part of it. A new search first runs a short learning-rate range test
    (``lr_range_test=False`` skips it) and queues known fine-tuning recipes as its first trials
    (``priors=False`` skips them); ``on_plan`` gets the budget plan before the first trial.
    When the budget allows, the ``seed_check`` (3) best settings are re-run with another seed at
    the end and the best mean wins (``0`` skips it; see ``pretune.search.final_pick``).
    ``refit`` (on by default) trains the recipe of the model in best/ once more on the training
    and validation rows at the end and puts that model in best/ (see ``pretune.search.refit``).
    ``data_fraction`` is the part of the training rows each epoch of a trial runs on (default
    1: all; see ``pretune.search.planning``). ``screen`` picks one on data too large for the
    budget: the trials screen recipes on it and the refit trains the chosen one on more rows.

    ``workers`` runs that many trials at once, each in its own process, on a storage that
    several processes may write (``OUT/study.journal`` by default, or ``storage``: PostgreSQL,
    ...); ``executor="ray"`` starts them as Ray tasks (on ``ray_address``, else a local Ray
    instance; ``cpus_per_trial`` cores each). Other machines join with ``pretune worker``
    (``pretune.search.workers.join``). Running trials send a heartbeat every ``heartbeat``
    seconds; a trial whose worker died is failed and retried once. ``isolate_trials``
    (``auto``, ``always``, ``never``) trains trials in a child process, so that one the kernel
    kills for memory fails alone (``auto``: when its memory estimate is tight).
    """
    given = dict(locals())  # the TuneConfig fields among them make the search's settings
    from pretune.search.space import FULL  # the search layer loads optuna
    from pretune.search.study import run_tune
    from pretune.search.trackers import make_trackers, with_trackers

    space_spec, space_file, source = _read_space(space)
    tune_config = tune_config_of({**given, "space": space_file})
    searched = {k: v for k, v in settings.items() if k.split(".")[-1].replace("-", "_") in FULL}
    base = build_config(config, {k: v for k, v in settings.items() if k not in searched})
    tune_config = _private_search(base, tune_config, given)
    names = [log_to] if isinstance(log_to, str) else list(log_to or [])
    trackers = make_trackers(names, out, tune_config.study_name)
    progress, on_trial = with_trackers(trackers, progress, on_trial)
    with private_files():  # the run directory is for its owner only (pretune.permissions)
        return run_tune(base, tune_config, out, space=space_spec,
                        fixed={**searched, **(fixed or {})}, on_trial=on_trial, on_plan=on_plan,
                        progress=progress, space_source=source)


def _private_search(base: RunConfig, tune_config: TuneConfig, given: Mapping[str, Any]
                    ) -> TuneConfig:
    """Under DP the budget is per trial: no range test and no ensemble (asking for either is
    refused; see ``pretune.training.privacy.search_options``)."""
    if base.train.dp_epsilon is None:
        return tune_config
    from dataclasses import replace

    from pretune.training.privacy import search_options  # torch loads only when this runs

    lr_range_test, assemble = search_options(base, given.get("lr_range_test"),
                                             given.get("assemble"))
    return replace(tune_config, lr_range_test=lr_range_test, assemble=assemble)


def _read_space(space: str | Path | Mapping[str, Any] | None
                ) -> tuple[Mapping[str, Any] | None, str | None, str]:
    """(the space's content, its file, how messages name it) for ``tune``'s ``space``."""
    if isinstance(space, Mapping):
        return space, None, "the search space"
    if space is None:
        return None, None, "the search space"
    from pretune.search.space import read_space_file  # the search layer loads optuna

    return read_space_file(str(space)), str(space), Path(str(space)).name


def distill(run: str | Path, *, student: str = "layers:3", budget: str | None = "5m",
            out: str | Path | None = None, **options: Any):
    """Train a smaller ``student`` from the best model of the search in ``run``; returns a
    ``DistillResult`` (the student's path, its metrics and the comparison with the teacher).

    >>> result = pretune.distill("runs/sst2", student="layers:3", budget="5m")
    >>> result.student_path, result.student["accuracy"], result.ratios["speedup"]

    ``student`` is ``layers:N`` (the teacher's encoder with N of its layers) or a model id or
    directory; ``out`` defaults to ``run/distill``. See ``pretune.search.distill.distill``.
    """
    from pretune.search.distill import distill as run_distill  # optuna loads only when this runs

    with private_files():
        return run_distill(run, student=student, budget=budget, out=out, **options)
