"""Ensembles of trained models: their outputs averaged, and greedy ensemble selection.

Outputs are what ``Objective.outputs`` gives: class probabilities (classification), per-label
probabilities (multi-label), values in the data's units (regression), tag probabilities of
each word of each sentence (token classification, ``tokens.sentence_outputs``). An ensemble
averages them with weights; ``as_logits`` turns the average back into the logits a model would
give (log probabilities, log-odds, standardized values), so that the task's own loss and
metrics score it and a student can be distilled from it.

``select`` is ensemble selection (Caruana, Niculescu-Mizil, Crew, Ksikes 2004, "Ensemble
Selection from Libraries of Models"): start from the best model, then repeatedly add, with
replacement, the model whose addition scores best on the validation set; the weights are how
often each was added, at the round that scored best.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from pretune.config import TrainConfig
from pretune.training.metrics import is_better
from pretune.training.objectives import Objective

EPS = 1e-7
ROUNDS = 25  # additions tried by ensemble selection


def average(outputs: list[np.ndarray], weights: list[float]) -> np.ndarray:
    w = np.asarray(weights, dtype=np.float64)
    stacked = np.stack([np.asarray(o, dtype=np.float64) for o in outputs])
    return np.tensordot(w / w.sum(), stacked, axes=1)


def as_logits(objective: Objective, outputs: np.ndarray) -> np.ndarray:
    """Logits whose ``objective.outputs`` are ``outputs``."""
    if objective.kind == "regression":
        return (outputs - objective.mean) / objective.std
    p = np.clip(outputs, EPS, 1 - EPS)
    if objective.kind == "multilabel":
        return np.log(p) - np.log1p(-p)
    return np.log(p / p.sum(axis=-1, keepdims=True))  # classes last (tags of each word too)


def score(objective: Objective, outputs: np.ndarray, labels: np.ndarray,
          settings: TrainConfig) -> dict[str, float]:
    """The task's validation metrics of ``outputs``, with its loss."""
    logits = torch.as_tensor(as_logits(objective, outputs), dtype=torch.float32)
    target = torch.as_tensor(labels)
    loss = objective.eval_loss(logits, target) / max(len(labels), 1)
    return objective.metrics(np.asarray(outputs, dtype=np.float32), labels, loss, settings)


@dataclass
class Selection:
    weights: list[int]  # times each model was chosen (0: not in the ensemble)
    metrics: dict[str, float]
    curve: list[float]  # the metric after each round


def _beats(new: dict, old: dict, metric: str) -> bool:
    """Better on ``metric``; on a tie, lower loss (accuracy ties often on small sets)."""
    if is_better(new[metric], old[metric], metric) or is_better(old[metric], new[metric], metric):
        return is_better(new[metric], old[metric], metric)
    return new.get("loss", 0.0) < old.get("loss", 0.0)


def select(outputs: list[np.ndarray], labels: np.ndarray, objective: Objective,
           settings: TrainConfig, rounds: int = ROUNDS, should_stop=None) -> Selection:
    """Ensemble selection over ``outputs`` (one array per model, best model first); with
    ``should_stop``, the rounds end when it says so (the best round so far is kept)."""
    metric = settings.metric
    counts = [0] * len(outputs)
    counts[0] = 1
    current = score(objective, outputs[0], labels, settings)
    best = Selection(list(counts), current, [current[metric]])
    for _ in range(rounds):
        if should_stop is not None and should_stop():
            break
        trials = []
        for i in range(len(outputs)):
            tried = list(counts)
            tried[i] += 1
            trials.append((score(objective, average(outputs, tried), labels, settings), tried))
        top = trials[0]
        for candidate in trials[1:]:
            if _beats(candidate[0], top[0], metric):
                top = candidate
        current, counts = top
        best.curve.append(current[metric])
        if _beats(current, best.metrics, metric):
            best.weights, best.metrics = list(counts), current
    return best
