"""The memory part of the budget plan, and what each trial records of its memory.

Before the first trial, ``line`` estimates the peak memory of the largest trial the space
allows (its largest batch size, the data's sequence length, the transfer strategy and optimizer
that hold the most) from the model's config alone, checks it against what the process may use
(``pretune.training.memory.limit``) and says whether it fits as is, fits with a smaller
micro-batch and accumulation or with gradient checkpointing, or does not fit at all. Each trial
then fits itself (``pretune.training.memory.fit_run``, deciding through the same
``plan_config`` as the line) and records its estimate beside the peak it measured
(``record``); ``calibration`` says how close the estimates came. ``isolation`` says when a
trial's estimate is tight enough that it trains in a child process (``pretune.search.isolate``).
"""

from __future__ import annotations

import logging
import statistics
from dataclasses import replace
from typing import Any, Iterable, Mapping

from pretune.config import RunConfig

log = logging.getLogger(__name__)

# Choices of searched settings that hold the most memory, tried in this order.
HUNGRIEST = {"transfer": ("full", "lp_ft", "lora", "freeze_bottom", "linear_probe"),
             "optimizer": ("adamw", "adam", "momentum", "nesterov", "rmsprop", "adagrad", "sgd")}


def _largest(dims: Iterable[Any], name: str, default: Any) -> Any:
    """The searched value of ``name`` that holds the most memory, else ``default``."""
    dim = next((d for d in dims if d.name == name), None)
    if dim is None:
        return default
    if dim.kind == "categorical":
        values = list(dim.choices)
        if name in HUNGRIEST:
            return next((v for v in HUNGRIEST[name] if v in values), values[0])
        numbers = [v for v in values if isinstance(v, (int, float))]
        return max(numbers) if numbers else default
    return dim.high


def line(shared: RunConfig, dims: Iterable[Any], task: Any, caches: Any = None,
         trials: Iterable[Any] = (), isolate: str = "auto") -> str | None:
    """One sentence on the memory of the largest trial, or None when it cannot be estimated
    (a model pretune cannot read the shape of, images); whether such a trial would train in a
    child process (``isolate``: the ``isolate_trials`` setting); with how close the estimates of
    the study's earlier ``trials`` came to their measured peaks, when it has any."""
    text = _largest_trial(shared, dims, task, caches, isolate)
    seen = calibration(trials)
    if text and seen:
        text += (f"; the estimates of {seen['trials']} earlier trials were {seen['min']:g} to "
                 f"{seen['max']:g} times their measured peaks")
    return text


def _largest_trial(shared: RunConfig, dims: Iterable[Any], task: Any, caches: Any,
                   isolate: str = "auto") -> str | None:
    from pretune.training import memory  # torch: not imported until a search plans
    from pretune.training.device import pick_device, resolve_precision
    from pretune.training.run import FULL_BATCH_MICRO

    dims = tuple(dims)
    device = pick_device()
    memory.check_device_settings(shared, device)  # before any trial: one clear line
    batch = _largest(dims, "batch_size", shared.train.batch_size)
    largest = shared.with_settings({
        "transfer": _largest(dims, "transfer", shared.model.transfer),
        "optimizer": _largest(dims, "optimizer", shared.train.optimizer),
        "batch_size": batch if batch == "full" else int(batch)})
    try:
        fitted, config = _fit(largest, task, caches, device)
    except memory.DoesNotFit as err:
        fitted, config = err, getattr(err, "config", largest)
    if fitted is None:
        return None
    t = config.train
    micro = FULL_BATCH_MICRO if t.batch_size == "full" else t.batch_size
    what = (f"the largest trial (batch {micro}, length {config.data.max_length}, "
            f"{config.model.transfer}, {t.optimizer}, {resolve_precision(t.precision, device)}, "
            f"{device.type})")
    if isinstance(fitted, memory.DoesNotFit):
        return f"{what} would not fit: {fitted}"
    if fitted.adapted:
        return f"{what}: {fitted.adapted}"
    text = (f"{what} needs about {memory.gib(fitted.estimate.total)} of "
            f"{fitted.limit.describe()}, so it fits")
    if isolate == "always":
        return text + "; every trial trains in a child process (isolate_trials=always)"
    if isolate == "auto" and device.type == "cpu" and tight_share(fitted) is not None:
        text += (f", but tightly: trials this large train in a child process, so that running "
                 f"out fails the trial and not the search (isolate_trials=auto)")
    return text


# What ``_fit`` read once per model and data: transformers configs, and sequence lengths.
_SEEN: dict[tuple, Any] = {}


def _fit(config: RunConfig, task: Any, caches: Any, device: Any) -> tuple[Any, RunConfig]:
    """How a run of ``config`` would fit memory, from the model's config alone (no weights):
    ``(Fitted, config with its sequence length)``, or ``(None, config)`` when pretune cannot
    read the model's shape. It decides as the trial itself will (``memory.plan_config``); a
    run that cannot fit raises ``DoesNotFit`` carrying the config as ``.config``."""
    from pretune.models.load import load_config, load_tokenizer, resolve_source
    from pretune.training import memory
    from pretune.training.run import FULL_BATCH_MICRO

    m = config.model
    try:
        source, local = resolve_source(m.model)
        key = ("config", source, m.revision)
        if key not in _SEEN:
            _SEEN[key] = load_config(source, is_local=local, revision=m.revision,
                                     trust_remote_code=m.trust_remote_code)
        model_config = _SEEN[key]
        length = ("length", source, m.revision, getattr(task, "fingerprint", None) or id(task),
                  caches is None)
        if not config.data.max_length and length not in _SEEN:
            _SEEN[length] = _data_length(source, local, config, task, caches, model_config,
                                         load_tokenizer)
        config = replace(config, data=replace(
            config.data, max_length=config.data.max_length or _SEEN[length]))
        shape = memory.shape_from_config(model_config, transfer=m.transfer,
                                         freeze_layers=m.freeze_layers, lora_r=m.lora_r,
                                         num_labels=len(task.label_names))
    except Exception as err:  # noqa: BLE001 - the search goes on without a memory estimate
        log.info("no memory estimate: %s: %s", type(err).__name__, err)
        return None, config
    t = config.train
    micro = FULL_BATCH_MICRO if t.batch_size == "full" else int(t.batch_size)
    base = memory.rss_bytes() if device.type == "cpu" else 0
    try:
        fitted = memory.plan_config(shape, config, micro, device, lim=memory.limit(device),
                                    base=base, checkpoint_ok=True)
    except memory.DoesNotFit as err:
        err.config = config
        raise
    return fitted, config


def _data_length(source: str, local: bool, shared: RunConfig, task: Any, caches: Any,
                 config: Any, load_tokenizer: Any) -> int:
    """The sequence length trials will use: measured on the data as trials measure it."""
    from pretune.data.task import Split
    import numpy as np

    cap = getattr(config, "max_position_embeddings", None) or 512
    if caches is None or getattr(task.train, "words", None) is not None:
        return int(cap)
    tokenizer = load_tokenizer(source, is_local=local, revision=shared.model.revision,
                               trust_remote_code=shared.model.trust_remote_code)
    pairs = task.train.pairs + task.valid.pairs if task.train.pairs is not None else None
    both = Split(task.train.texts + task.valid.texts, pairs,
                 np.concatenate([task.train.labels, task.valid.labels]))
    return int(caches.tokens.max_length(both, tokenizer, cap=int(cap)))


# isolate_trials=auto trains a trial in a child process when its estimate passes this share of
# what the process may use: the estimates came within 0.92 to 1.15 of the measured peaks, and
# the allocator's slack and the search's own memory take the rest, so past it the kernel may
# have to kill a process, and it had better be the trial's than the search's.
TIGHT_SHARE = 0.6


def tight_share(fitted: Any) -> float | None:
    """The share of its limit a fitted run's estimate takes, when past ``TIGHT_SHARE``; None
    when it is not tight or the limit is unknown."""
    if not fitted.limit.bytes:
        return None
    share = fitted.estimate.total / fitted.limit.bytes
    return share if share > TIGHT_SHARE else None


def isolation(setting: str, config: RunConfig, task: Any, caches: Any) -> str | None:
    """Why the trial of ``config`` should train in a child process (``isolate_trials``), or
    None to train it here: always when asked; with ``auto``, on the CPU when its estimate is
    tight (``TIGHT_SHARE``). On a GPU running out raises an error the trial recovers from."""
    if setting == "never":
        return None
    if setting == "always":
        return "isolate_trials=always"
    from pretune.training import memory
    from pretune.training.device import pick_device

    device = pick_device()
    if device.type != "cpu":
        return None
    try:
        fitted, _ = _fit(config, task, caches, device)
    except memory.DoesNotFit:  # refused in a moment, without training: no need
        return None
    share = None if fitted is None else tight_share(fitted)
    if share is None:
        return None
    return (f"its estimate, {memory.gib(fitted.estimate.total)}, is {share:.0%} of the "
            f"{fitted.limit.describe()} the process may use")


def record(trial: Any, fitted: Mapping[str, Any] | None) -> None:
    """A trial's memory, as user attributes: the whole record and the columns of trials.csv."""
    if not fitted:
        return
    trial.set_user_attr("memory", dict(fitted))
    trial.set_user_attr("memory_estimate_mb", fitted.get("estimate_mb"))
    trial.set_user_attr("memory_peak_mb", fitted.get("peak_mb"))
    trial.set_user_attr("memory_adapted", fitted.get("adapted"))


def calibration(trials: Iterable[Any]) -> dict[str, Any] | None:
    """How the trials' estimates compare with their measured peaks: the median, least and
    most of estimate / peak over the trials that recorded both; None when none did."""
    ratios = [float(r["ratio"]) for t in trials
              if (r := (t.user_attrs.get("memory") or {})).get("ratio")]
    if not ratios:
        return None
    return {"trials": len(ratios), "median": round(statistics.median(ratios), 3),
            "min": round(min(ratios), 3), "max": round(max(ratios), 3)}
