"""Where a training run's time goes: an opt-in clock over the loop's phases.

The loop asks ``current()`` for the clock once per run and wraps its phases in
``clock.phase(name)``: ``data`` (drawing batches and moving them to the device), ``forward``
(model and loss), ``backward``, ``optimizer`` (clipping, the step, the schedule, zeroing the
gradients) and ``evaluation`` (the checkpoint soup's tastings included). It also shows the clock each batch (``clock.count``), so that a
benchmark can count the tokens processed and the model FLOPs they cost.

Nothing is measured unless a caller asks for it::

    with timing.measure() as clock:
        fit(config)
    clock.shares()   # {"forward": 0.41, "backward": 0.33, ...}

Outside ``measure()`` the clock is one that does nothing, so the loop pays a few empty calls per
step. On a GPU a measuring clock waits for the device at each phase's edges (the work is
asynchronous), which costs time of its own: measure, then run without it.
"""

from __future__ import annotations

import contextlib
import time
from collections import defaultdict
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Iterable, Iterator

import torch

PHASES = ("data", "forward", "backward", "optimizer", "evaluation")


@dataclass
class BatchShape:
    """One batch as the model saw it: rows, padded length, and the tokens that are not padding."""

    rows: int
    length: int
    tokens: int

    @property
    def padded(self) -> int:
        return self.rows * self.length


@dataclass
class PhaseClock:
    """Seconds per phase and the shapes of the batches trained on (``train``) and evaluated
    (``eval``)."""

    seconds: dict[str, float] = field(default_factory=lambda: defaultdict(float))
    batches: dict[str, list[BatchShape]] = field(default_factory=lambda: {"train": [], "eval": []})

    @contextlib.contextmanager
    def phase(self, name: str) -> Iterator[None]:
        _sync()
        started = time.perf_counter()
        try:
            yield
        finally:
            _sync()
            self.seconds[name] += time.perf_counter() - started

    def iterate(self, items: Iterable, name: str = "data") -> Iterator:
        """``items``, with the time spent drawing each one counted under ``name``."""
        iterator = iter(items)
        while True:
            with self.phase(name):
                item = next(iterator, _END)
            if item is _END:
                return
            yield item

    def count(self, split: str, batch: dict) -> None:
        """Note the shape of a batch of token inputs (others have no ``input_ids``)."""
        ids = batch.get("input_ids")
        if ids is None or ids.dim() != 2:
            return
        mask = batch.get("attention_mask")
        tokens = int(mask.sum()) if mask is not None else ids.numel()
        self.batches[split].append(BatchShape(int(ids.shape[0]), int(ids.shape[1]), tokens))

    def total(self) -> float:
        return sum(self.seconds.values())

    def shares(self) -> dict[str, float]:
        """Each phase's part of the measured time (they add up to 1)."""
        total = self.total() or 1.0
        return {name: self.seconds.get(name, 0.0) / total for name in PHASES}


class _Off:
    """The clock when nothing is measured: every call does nothing."""

    _nothing = contextlib.nullcontext()

    def phase(self, name: str):
        return self._nothing

    def iterate(self, items: Iterable, name: str = "data") -> Iterable:
        return items

    def count(self, split: str, batch: dict) -> None:
        return None


OFF = _Off()
_END = object()
_active: ContextVar[PhaseClock | None] = ContextVar("pretune_phase_clock", default=None)


@contextlib.contextmanager
def measure() -> Iterator[PhaseClock]:
    """Measure the phases of every training run inside the ``with`` block, into one clock."""
    clock = PhaseClock()
    token = _active.set(clock)
    try:
        yield clock
    finally:
        _active.reset(token)


def current() -> PhaseClock | _Off:
    """The clock of the enclosing ``measure()``, else one that does nothing."""
    return _active.get() or OFF


def _sync() -> None:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()
