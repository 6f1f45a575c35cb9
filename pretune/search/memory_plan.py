"""The memory part of the budget plan, and what each trial records of its memory.

Before the first trial, ``line`` estimates the peak memory of the largest trial the space
allows (its largest batch size, the data's sequence length, the transfer strategy and optimizer
that hold the most) from the model's config alone, checks it against what the process may use
(``pretune.training.memory.limit``) and says whether it fits as is, fits with a smaller
micro-batch and accumulation or with gradient checkpointing, or does not fit at all. Each trial
then fits itself (``pretune.training.memory.fit_run``) and records its estimate beside the
peak it measured (``record``); ``calibration`` says how close the estimates came.
"""

from __future__ import annotations

import logging
import statistics
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
         trials: Iterable[Any] = ()) -> str | None:
    """One sentence on the memory of the largest trial, or None when it cannot be estimated
    (a model pretune cannot read the shape of, images); with how close the estimates of the
    study's earlier ``trials`` came to their measured peaks, when it has any."""
    text = _largest_trial(shared, dims, task, caches)
    seen = calibration(trials)
    if text and seen:
        text += (f"; the estimates of {seen['trials']} earlier trials were {seen['min']:g} to "
                 f"{seen['max']:g} times their measured peaks")
    return text


def _largest_trial(shared: RunConfig, dims: Iterable[Any], task: Any, caches: Any) -> str | None:
    from pretune.models.load import load_config, load_tokenizer, resolve_source
    from pretune.training import memory  # torch: not imported until a search plans
    from pretune.training.device import pick_device, resolve_precision

    dims = tuple(dims)
    m, t = shared.model, shared.train
    memory.check_device_settings(shared, pick_device())  # before any trial: one clear line
    try:
        source, local = resolve_source(m.model)
        config = load_config(source, is_local=local, revision=m.revision,
                             trust_remote_code=m.trust_remote_code)
        seq_len = shared.data.max_length or _data_length(source, local, shared, task, caches,
                                                         config, load_tokenizer)
        transfer = _largest(dims, "transfer", m.transfer)
        batch = _largest(dims, "batch_size", t.batch_size)
        batch = int(batch) if not isinstance(batch, str) else 32
        shape = memory.shape_from_config(config, transfer=transfer, freeze_layers=m.freeze_layers,
                                         lora_r=m.lora_r, num_labels=len(task.label_names))
    except Exception as err:  # noqa: BLE001 - the plan goes on without a memory estimate
        log.info("no memory estimate: %s: %s", type(err).__name__, err)
        return None
    device = pick_device()
    optimizer = _largest(dims, "optimizer", t.optimizer)
    settings = shared.with_settings({"optimizer": optimizer}).train
    lim = memory.limit(device)
    base = memory.rss_bytes() if device.type == "cpu" else 0
    what = (f"the largest trial (batch {batch}, length {seq_len}, {transfer}, {optimizer}, "
            f"{resolve_precision(t.precision, device)}, {device.type})")
    try:
        fitted = memory.plan_run(shape, settings, batch, seq_len=seq_len,
                                 precision=resolve_precision(t.precision, device), lim=lim,
                                 base=base, device=device.type, checkpoint_ok=True)
    except memory.DoesNotFit as err:
        return f"{what} would not fit: {err}"
    if fitted.adapted:
        return f"{what}: {fitted.adapted}"
    return (f"{what} needs about {memory.gib(fitted.estimate.total)} of "
            f"{lim.describe()}, so it fits")


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
