"""Optimizers by name, with the usual fine-tuning parameter groups.

Biases and normalization weights get no weight decay (as in BERT's original recipe and the
Hugging Face Trainer); every other trainable parameter gets ``weight_decay``. Frozen
parameters (``requires_grad=False``) are left out entirely.

Layer-wise learning-rate decay (``layer_decay`` d < 1; Clark et al. 2020, ELECTRA; Bao et al.
2022, BEiT): the head (everything outside the base model, and the base model's pooler and other
modules above its layers) gets ``lr``, the top layer ``lr * d``, the one below ``lr * d^2``, ...,
the embeddings ``lr * d^(L + 1)`` for L layers. A parameter's layer comes from its name
(``.layer.<i>.``, ``.layers.<i>.``, ``.h.<i>.``, ``.block.<i>.``). Each group carries its
``lr_scale``; schedules multiply every group's rate alike. A LoRA model ignores it: its
adapters train at ``lr``.
"""

from __future__ import annotations

import logging
import re
from typing import Callable

import torch
from torch import nn

from pretune.config import OPTIMIZERS, TrainConfig
from pretune.errors import ModelError, one_of
from pretune.models.heads import base_prefix
from pretune.models.lora import is_lora
from pretune.models.transfer import find_embeddings

logger = logging.getLogger(__name__)

LAYER_INDEX = re.compile(r"\.(?:layer|layers|h|block)\.(\d+)\.")
NORM_TYPES = (nn.LayerNorm, nn.BatchNorm1d, nn.GroupNorm)


def _no_decay(module: nn.Module, name: str) -> bool:
    return name == "bias" or isinstance(module, NORM_TYPES) or "norm" in type(module).__name__.lower()


def layer_depths(model: nn.Module) -> dict[str, int]:
    """Each parameter's depth by name: 0 for the embeddings, i + 1 for encoder layer i, L + 1
    (L layers) for everything above them: the head, the pooler, a final norm."""
    prefix = base_prefix(model) + "."
    try:
        embedded = {id(p) for m in find_embeddings(model) for p in m.parameters()}
    except ModelError:
        embedded = set()
    found: dict[str, int | None] = {}
    for name, param in model.named_parameters():
        match = LAYER_INDEX.search(name) if name.startswith(prefix) else None
        if match:
            found[name] = int(match.group(1)) + 1
        elif name.startswith(prefix) and (id(param) in embedded or ".embeddings." in name):
            found[name] = 0
        else:
            found[name] = None  # above the layers
    top = max((d for d in found.values() if d is not None), default=0) + 1
    return {name: top if d is None else d for name, d in found.items()}


def parameter_groups(model: nn.Module, weight_decay: float, layer_decay: float = 1.0) -> list[dict]:
    """The optimizer's parameter groups: by weight decay, and with ``layer_decay`` < 1 by depth
    too, the top (the head's, at the full rate) first. Each group has its ``lr_scale``."""
    depths = layer_depths(model) if layer_decay < 1.0 else {}
    top = max(depths.values(), default=0)
    groups: dict[tuple[int, bool], list] = {}
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad:
                continue
            full = f"{module_name}.{name}" if module_name else name
            key = (depths.get(full, top), _no_decay(module, name))
            groups.setdefault(key, []).append(param)
    out = []
    for (depth, spared), params in sorted(groups.items(), key=lambda kv: (-kv[0][0], kv[0][1])):
        scale = float(layer_decay ** (top - depth))
        out.append({"params": params, "weight_decay": 0.0 if spared else weight_decay,
                    "lr_scale": scale})
    return out


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
    return torch.optim.Adam(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps,
                            fused=fusable(groups))


def _adamw(groups, s: TrainConfig):
    # Decoupled weight decay (Loshchilov & Hutter, 2019).
    return torch.optim.AdamW(groups, lr=s.lr, betas=(s.beta1, s.beta2), eps=s.eps,
                             fused=fusable(groups))


# Adam and AdamW update all parameters in one fused kernel where torch has one (CPU and CUDA,
# floating-point weights). On a CPU this is what pays most in a trial on short texts: a step of
# all-MiniLM-L6-v2's 22.7M parameters took about a tenth of the time of torch's default
# per-parameter loop (bench/README.md, "Trial speed"). The result is the same update up to
# rounding. Benchmarks set this to False to measure the difference.
FUSED = True


def fusable(groups: list[dict]) -> bool | None:
    """True when every parameter can take the fused update; else None (torch's default)."""
    params = [p for g in groups for p in g["params"]]
    ok = FUSED and all(p.device.type in ("cpu", "cuda") and p.is_floating_point() for p in params)
    return True if ok else None


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
    """The optimizer named by ``settings.optimizer`` over ``model``'s trainable parameters,
    each group's rate ``settings.lr`` times its ``lr_scale`` (layer-wise decay)."""
    one_of("optimizer", settings.optimizer, REGISTRY)
    decay = settings.layer_decay
    if decay < 1.0 and is_lora(model):
        logger.info("layer_decay %g is ignored with LoRA: its adapters train at lr", decay)
        decay = 1.0
    groups = [g for g in parameter_groups(model, settings.weight_decay, decay) if g["params"]]
    if not groups:
        raise ValueError("the model has no trainable parameters")
    for group in groups:
        group["lr"] = settings.lr * group["lr_scale"]
    if getattr(settings, "optimizer_bits", 32) == 8:  # checked for CUDA before training
        from pretune.training.memory import eight_bit_adamw

        return eight_bit_adamw(groups, settings)
    return REGISTRY[settings.optimizer](groups, settings)
