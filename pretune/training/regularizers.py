"""Explicit penalties added to the loss: L1, L2 and elastic net over trainable weights.

These are separate from the optimizer's ``weight_decay``: a penalty is part of the objective
(so L1 can drive weights to exactly zero with SGD), weight decay is part of the update.
Biases and normalization parameters are not penalized.
"""

from __future__ import annotations

import torch
from torch import nn

from pretune.config import TrainConfig


def penalized_weights(model: nn.Module) -> list[torch.Tensor]:
    return [
        p for n, p in model.named_parameters()
        if p.requires_grad and p.dim() > 1 and "norm" not in n.lower()
    ]


def penalty(weights: list[torch.Tensor], settings: TrainConfig) -> torch.Tensor | None:
    """The penalty term for ``settings.penalty``, or None when there is none."""
    kind, alpha = settings.penalty, settings.penalty_alpha
    if kind == "none" or alpha == 0 or not weights:
        return None
    l1 = sum(w.abs().sum() for w in weights) if kind in ("l1", "elasticnet") else 0.0
    l2 = sum(w.pow(2).sum() for w in weights) * 0.5 if kind in ("l2", "elasticnet") else 0.0
    if kind == "elasticnet":
        return alpha * (settings.l1_ratio * l1 + (1.0 - settings.l1_ratio) * l2)
    return alpha * (l1 if kind == "l1" else l2)
