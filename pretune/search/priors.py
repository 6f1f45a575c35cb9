"""Priors from practice: known fine-tuning recipes that a new study tries first.

A search that starts from random points needs several trials before it finds a reasonable
region; a short budget may not have them. So a new study queues a few recipes that are known to
work for fine-tuning pretrained transformers (``study.enqueue_trial``) before the sampler takes
over. They are trials like any other (the pruner judges them, the sampler learns from them), and
carry the user attribute ``source="prior"``.

The recipes (sources as in ``pretune.search.space``):

1. [BERT] AdamW, weight decay 0.01, batch 32, 3 epochs, linear decay with 6% warmup [RoBERTa].
2. The same at half the learning rate, batch 16 and 10% warmup: the careful variant.
3. Twice the learning rate, 4 epochs, cosine decay, 10% warmup: for models that need more.

The learning rate of recipe 1 follows the model's width (``base_lr``): 2e-5 to 5e-5 is the
published range for BERT-base-sized models (hidden size 768); larger models are fine-tuned lower,
small distilled models (MiniLM, hidden size 384) higher, about 1e-4 [MiniLM]. A learning-rate
range test, when it ran, gives the rate instead.

Every recipe trains all layers at one rate (``layer_decay`` 1.0, as published) and leaves
``pooling`` at its default, ``auto``: the checkpoint's own pooling.

Only settings that the space searches are queued, each clipped into its dimension's range (the
nearest choice when a categorical dimension lacks the value, or left to the sampler when the
choices are names); pinned settings (``--fixed``,
plain values in a space file) are not in the space, so they are never overridden. Recipes that
come out the same after that are queued once.
"""

from __future__ import annotations

import math
from typing import Any, Iterable, Mapping

from pretune.search.space import Dimension

SOURCE = "prior"  # the ``source`` user attribute of a queued recipe

# Relative to the base learning rate; every other value as published.
RECIPES: tuple[dict[str, Any], ...] = (
    {"optimizer": "adamw", "lr": 1.0, "weight_decay": 0.01, "batch_size": 32, "epochs": 3,
     "schedule": "linear", "warmup_ratio": 0.06, "label_smoothing": 0.0, "dropout": 0.1,
     "transfer": "full", "layer_decay": 1.0},
    {"optimizer": "adamw", "lr": 0.5, "weight_decay": 0.01, "batch_size": 16, "epochs": 3,
     "schedule": "linear", "warmup_ratio": 0.1, "label_smoothing": 0.0, "dropout": 0.1,
     "transfer": "full", "layer_decay": 1.0},
    {"optimizer": "adamw", "lr": 2.0, "weight_decay": 0.01, "batch_size": 32, "epochs": 4,
     "schedule": "cosine", "warmup_ratio": 0.1, "label_smoothing": 0.0, "dropout": 0.1,
     "transfer": "full", "layer_decay": 1.0},
)


# Augmentations and text preprocessing stay off in every recipe (the plain recipe is the
# baseline); the sampler tries them once the recipes have run.
OFF = {"flip_prob": 0.0, "rotate_degrees": 0.0, "crop_scale": 1.0, "noise_std": 0.0,
       "salt_pepper": 0.0, "brightness": 0.0, "contrast": 0.0, "saturation": 0.0,
       "lowercase": False, "stopwords": False, "stem": "none", "word_delete": 0.0,
       "word_swap": 0.0}


def base_lr(hidden_size: int | None) -> float:
    """Recipe 1's learning rate for a model of this width: 1e-4 up to 384 [MiniLM], 3e-5 up to
    768 [BERT], 1.5e-5 above (large models diverge at base rates); 3e-5 when unknown."""
    if hidden_size is None:
        return 3e-5
    if hidden_size <= 384:
        return 1e-4
    if hidden_size <= 768:
        return 3e-5
    return 1.5e-5


def recipes(dims: Iterable[Dimension], lr: float, context: Mapping[str, Any] | None = None
            ) -> list[dict[str, Any]]:
    """The recipes as parameters of ``dims``: searched settings only, within their ranges,
    conditions applied in the space's order (``context``: the pinned and base values)."""
    dims = tuple(dims)
    out: list[dict[str, Any]] = []
    for recipe in RECIPES:
        recipe = {**OFF, **recipe}
        values = dict(context or {})
        params: dict[str, Any] = {}
        for dim in dims:
            if not dim.applies(values):
                continue
            if dim.name not in recipe:
                continue  # the sampler picks it
            raw = recipe[dim.name] * lr if dim.name == "lr" else recipe[dim.name]
            value = fit_value(dim, raw)
            if value is not None:
                params[dim.name] = values[dim.name] = value
        if params and params not in out:
            out.append(params)
    return out


def fit_value(dim: Dimension, value: Any) -> Any:
    """``value`` inside ``dim``: clipped into a range (on its step grid); for a categorical
    dimension the value itself, else the nearest numeric choice (batch 16 where 32 is not
    offered), else None (the sampler picks)."""
    if dim.kind == "categorical":
        if value in dim.choices:
            return value
        numbers = [c for c in dim.choices if isinstance(c, (int, float)) and not isinstance(c, bool)]
        if isinstance(value, (int, float)) and numbers:
            return min(numbers, key=lambda c: (abs(math.log(c / value)) if c > 0 < value
                                               else abs(c - value)))
        return None
    low, high = dim.low, dim.high
    v = min(max(float(value), float(low)), float(high))
    if dim.step:
        v = low + round((v - low) / dim.step) * dim.step
        v = min(v, high)
    if dim.kind == "int":
        return int(round(v))
    return float(v) if not math.isnan(v) else None


def enqueue(study, dims: Iterable[Dimension], lr: float,
            context: Mapping[str, Any] | None = None) -> int:
    """Queue the recipes in a study that has no trials yet; returns how many were queued."""
    if study.get_trials(deepcopy=False):
        return 0
    queued = recipes(dims, lr, context)
    for params in queued:
        study.enqueue_trial(params, user_attrs={"source": SOURCE}, skip_if_exists=True)
    return len(queued)
