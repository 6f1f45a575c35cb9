"""Optimizers by name, with the usual fine-tuning parameter groups.

Biases and normalization weights get no weight decay (as in BERT's original recipe and the
Hugging Face Trainer); every other trainable parameter gets ``weight_decay``. Frozen
parameters (``requires_grad=False``) are left out entirely.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from pretune.config import OPTIMIZERS, TrainConfig
from pretune.errors import one_of


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    norm_types = (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm)
    for module in model.modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            if name == "bias" or isinstance(module, norm_types) or "norm" in type(module).__name__.lower():
                no_decay.append(param)
            else:
                decay.append(param)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _sgd(groups, s: TrainConfig):
    return torch.optim.SGD(groups, lr=s.lr)


def _momentum(groups, s: TrainConfig):
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum)


def _nesterov(groups, s: TrainConfig):
    return torch.optim.SGD(groups, lr=s.lr, momentum=s.momentum, nesterov=s.momentum > 0)


def _adagrad(groups, s: TrainConfig):
    return torch.optim.Adagrad(groups, lr=s.lr, eps=s.eps)


def _rmsprop(groups, s: TrainConfig):
    return torch.optim.RMSprop(groups, lr=s.lr, eps=s.eps, alpha=0.99)


def _adam(groups, s: TrainConfig):
    # Adam's weight_decay is the classic L2 added to the gradient (coupled).
    return torch.optim.Adam(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps)


def _adamw(groups, s: TrainConfig):
    # Decoupled weight decay (Loshchilov & Hutter, 2019).
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps)


REGISTRY: dict[str, Callable] = {
    "sgd": _sgd,
    "momentum": _momentum,
    "nesterov": _nesterov,
    "adagrad": _adagrad,
    "rmsprop": _rmsprop,
    "adam": _adam,
    "adamw": _adamw,
}
assert tuple(REGISTRY) == OPTIMIZERS


def build_optimizer(model: nn.Module, settings: TrainConfig) -> torch.optim.Optimizer:
    """The optimizer named by ``settings.optimizer`` over ``model``'s trainable parameters."""
    one_of("optimizer", settings.optimizer, REGISTRY)
    groups = [g for g in parameter_groups(model, settings.weight_decay) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    return REGISTRY[settings.optimizer](groups, settings)
