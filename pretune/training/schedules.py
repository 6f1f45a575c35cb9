"""Learning-rate schedules by name: a linear warmup, then a decay, above a floor.

Each schedule is a multiplier of the base learning rate as a function of the optimizer step.
During the first ``warmup`` steps the multiplier rises linearly from 0 to 1; after that
``progress`` runs from 0 to 1 over the remaining steps and the decay gives ``f(progress)``;
the multiplier is ``min_lr_ratio + (1 - min_lr_ratio) * f``.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from pretune.config import SCHEDULES, TrainConfig
from pretune.errors import one_of


def _constant(p: float, s: TrainConfig) -> float:
    return 1.0


def _linear(p: float, s: TrainConfig) -> float:
    return 1.0 - p


def _cosine(p: float, s: TrainConfig) -> float:
    return 0.5 * (1.0 + math.cos(math.pi * p))


def _polynomial(p: float, s: TrainConfig) -> float:
    return (1.0 - p) ** s.poly_power


def _exponential(p: float, s: TrainConfig) -> float:
    return s.decay_gamma**p  # reaches decay_gamma at the last step


def _step(p: float, s: TrainConfig) -> float:
    drops = min(int(p * (s.decay_drops + 1)), s.decay_drops)  # evenly spaced drops
    return s.decay_gamma**drops


REGISTRY: dict[str, Callable[[float, TrainConfig], float]] = {
    "constant": _constant,
    "linear": _linear,
    "cosine": _cosine,
    "polynomial": _polynomial,
    "exponential": _exponential,
    "step": _step,
}
assert tuple(REGISTRY) == SCHEDULES


def warmup_steps(settings: TrainConfig, total_steps: int) -> int:
    return int(round(settings.warmup_ratio * total_steps))


def lr_multiplier(step: int, total_steps: int, settings: TrainConfig) -> float:
    """The multiplier of ``settings.lr`` at optimizer step ``step`` (0-based)."""
    one_of("schedule", settings.schedule, REGISTRY)
    warmup = warmup_steps(settings, total_steps)
    if step < warmup:
        return (step + 1) / (warmup + 1)
    progress = min(1.0, (step - warmup) / max(1, total_steps - warmup))
    decay = REGISTRY[settings.schedule](progress, settings)
    return settings.min_lr_ratio + (1.0 - settings.min_lr_ratio) * decay


def build_schedule(optimizer: torch.optim.Optimizer, settings: TrainConfig,
                   total_steps: int | Callable[[], int]):
    """The schedule over ``total_steps``; a callable is asked at every step, so a run whose
    length is fitted to a time limit (``train(seconds=...)``) moves its warmup and decay with it."""
    steps = total_steps if callable(total_steps) else (lambda: total_steps)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda step: lr_multiplier(step, steps(), settings)
    )
