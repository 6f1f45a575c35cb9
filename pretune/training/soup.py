"""Weight averaging: greedy soups of checkpoints that share one starting point.

Models fine-tuned from the same pretrained checkpoint tend to lie in one basin of the loss, so the
average of their weights is often better than each of them ("model soups", Wortsman et al.,
2022, ICML). The greedy recipe of that paper is used here: rank the ingredients by their
validation score, start from the best, and add the next one only if the average's validation
score does not drop. It serves two places:

* within a run (``TopCheckpoints`` + ``greedy_soup``): the weights at the best few evaluations
  of one training run, the same idea as checkpoint averaging (SWA; Izmailov et al., 2018);
* across runs (``pretune.search.assemble``): the kept models of a search that share their
  model, head and inputs.

Only floating-point tensors are averaged; integer buffers (BatchNorm's ``num_batches_tracked``,
position ids) are taken from the best ingredient.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Callable, Mapping

import torch

from pretune.training.metrics import is_better

log = logging.getLogger(__name__)

State = Mapping[str, torch.Tensor]

# Checkpoints of one run are kept in memory; a run whose copies would need more than this many
# bytes keeps only its best (a soup of a 7B model's full weights does not fit a workstation).
MAX_SOUP_BYTES = 4 * 2**30


@dataclass
class Ingredient:
    score: float
    metrics: dict[str, float]
    state: State
    name: str | int  # what it is: an optimizer step, a trial number


@dataclass
class Soup:
    state: State
    metrics: dict[str, float]
    members: list[str | int]  # the ingredients averaged, best first
    tried: list[str | int] = field(default_factory=list)  # every ingredient looked at


def state_bytes(state: State) -> int:
    return sum(t.numel() * t.element_size() for t in state.values())


class TopCheckpoints:
    """The ``k`` best checkpoints of a run by ``metric`` (best first), within ``MAX_SOUP_BYTES``."""

    def __init__(self, k: int, metric: str, min_delta: float = 0.0):
        self.k, self.metric, self.min_delta = max(1, int(k)), metric, min_delta
        self.kept: list[Ingredient] = []

    @property
    def best(self) -> Ingredient | None:
        return self.kept[0] if self.kept else None

    def wants(self, score: float) -> bool:
        """Whether a checkpoint scoring ``score`` would be kept (so it is worth copying)."""
        if not self.kept or is_better(score, self.kept[0].score, self.metric, self.min_delta):
            return True
        if state_bytes(self.kept[0].state) * 2 > MAX_SOUP_BYTES:
            return False  # only the best fits: copying this one would be thrown away
        if len(self.kept) < self.k:
            return True
        return is_better(score, self.kept[-1].score, self.metric, 0.0)

    def offer(self, ingredient: Ingredient) -> None:
        """Keep ``ingredient`` if it is among the ``k`` best. A new best must beat the old one by
        ``min_delta`` (as early stopping counts it); the others are ranked by score."""
        best = self.kept[0] if self.kept else None
        if best is None or is_better(ingredient.score, best.score, self.metric, self.min_delta):
            self.kept.insert(0, ingredient)
        else:
            at = 1
            while at < len(self.kept) and not is_better(ingredient.score, self.kept[at].score,
                                                        self.metric, 0.0):
                at += 1
            self.kept.insert(at, ingredient)
        room = self.k
        if len(self.kept) > 1 and state_bytes(ingredient.state) * len(self.kept) > MAX_SOUP_BYTES:
            room = 1
        del self.kept[room:]


def average(states: list[State]) -> dict[str, torch.Tensor]:
    """The uniform average of ``states`` (same keys); integer tensors come from the first."""
    first = states[0]
    out: dict[str, torch.Tensor] = {}
    for name, tensor in first.items():
        if not torch.is_floating_point(tensor) or len(states) == 1:
            out[name] = tensor.clone()
            continue
        total = torch.zeros_like(tensor, dtype=torch.float32)
        for state in states:
            total += state[name].float()
        out[name] = (total / len(states)).to(tensor.dtype)
    return out


def greedy_soup(ingredients: list[Ingredient], evaluate: Callable[[State], dict[str, float]],
                metric: str, *, should_stop: Callable[[], bool] | None = None) -> Soup:
    """Greedy soup of ``ingredients`` (ranked best first by the caller).

    ``evaluate(state)`` returns the validation metrics of a model holding ``state``. An
    ingredient joins when the average with it scores at least as well as the soup without it.
    ``should_stop()`` ends the tasting early (a deadline); the soup so far is returned.
    """
    first = ingredients[0]
    soup = Soup(state=first.state, metrics=dict(first.metrics), members=[first.name],
                tried=[first.name])
    chosen = [first.state]
    for candidate in ingredients[1:]:
        if should_stop is not None and should_stop():
            break
        soup.tried.append(candidate.name)
        state = average(chosen + [candidate.state])
        metrics = evaluate(state)
        if not is_better(soup.metrics[metric], metrics[metric], metric, 0.0):
            chosen.append(candidate.state)
            soup.state, soup.metrics = state, metrics
            soup.members.append(candidate.name)
    log.info("soup of %s: %s %.4f (best alone %.4f)", soup.members, metric,
             soup.metrics[metric], first.score)
    return soup
