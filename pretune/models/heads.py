"""The classification head: find it in any transformers model, re-initialize it or replace it
by an MLP.

The head is everything outside ``model.base_model`` (BERT's ``classifier``, RoBERTa's
``classifier.dense`` + ``classifier.out_proj``, DistilBERT's ``pre_classifier`` + ``classifier``,
GPT-2's and Llama's ``score``). Its final layer is the last ``nn.Linear`` there whose
``out_features`` is the number of labels; ``apply_head`` re-initializes that layer or replaces it
by an ``MLPHead`` (see ``mlp_head.py``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pretune.config import ModelConfig
from pretune.errors import ModelError
from pretune.models.mlp_head import MLPHead, attach_mlp_head

logger = logging.getLogger(__name__)

NORMAL_STD = 0.02  # transformers' default initializer_range


def base_prefix(model: nn.Module) -> str:
    """The attribute name of the model's body (``bert``, ``transformer``, ``model``, ...)."""
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix, None) if prefix else None
    if not isinstance(base, nn.Module) or base is model:
        raise ModelError(
            f"pretune needs a model with a separate body and classification head, but "
            f"{type(model).__name__} has no base model. Use a model that "
            f"AutoModelForSequenceClassification supports."
        )
    return prefix


def head_module_names(model: nn.Module) -> list[str]:
    """Names of the top-level modules outside the body: the head (``["classifier"]``)."""
    prefix = base_prefix(model)
    return [name for name, _ in model.named_children() if name != prefix]


def head_parameter_names(model: nn.Module) -> list[str]:
    """Names of the parameters outside the body, e.g. for a separate learning rate."""
    prefix = base_prefix(model) + "."
    return [name for name, _ in model.named_parameters() if not name.startswith(prefix)]


def find_head(model: nn.Module) -> tuple[str, nn.Module]:
    """The dotted name and module of the head's final layer.

    It is the last ``nn.Linear`` outside the body whose ``out_features`` is the number of
    labels, or an ``MLPHead`` already put there by ``apply_head``.
    """
    prefix = base_prefix(model)
    num_labels = model.config.num_labels
    found: tuple[str, nn.Module] | None = None
    for name, module in model.named_modules():
        if not name or name == prefix or name.startswith(prefix + "."):
            continue
        if isinstance(module, MLPHead):
            return name, module
        if isinstance(module, nn.Linear) and module.out_features == num_labels:
            found = (name, module)
    if found is None:
        raise ModelError(
            f"pretune looks for the classification layer as an nn.Linear with {num_labels} "
            f"outputs outside the model body, but {type(model).__name__} has none. "
            f"Use a model that AutoModelForSequenceClassification supports."
        )
    return found


def init_linear(linear: nn.Linear, how: str, *, std: float = NORMAL_STD) -> None:
    """Initialize a Linear's weight in place (``xavier``, ``he``, ``normal``, ``zeros``); its
    bias, if any, becomes zero."""
    with torch.no_grad():
        if how == "xavier":
            nn.init.xavier_uniform_(linear.weight)
        elif how == "he":
            nn.init.kaiming_normal_(linear.weight, mode="fan_in", nonlinearity="relu")
        elif how == "normal":
            nn.init.normal_(linear.weight, mean=0.0, std=std)
        elif how == "zeros":
            nn.init.zeros_(linear.weight)
        else:
            raise ValueError(f"unknown head_init {how!r}")
        if linear.bias is not None:
            nn.init.zeros_(linear.bias)


def apply_head(model: nn.Module, cfg: ModelConfig) -> None:
    """Set up the classification head as ``cfg`` asks, in place.

    ``head_layers`` 0 keeps the final Linear: ``head_init="pretrained"`` keeps its weights (the
    checkpoint's, or transformers' default init for a new head); any other ``head_init``
    re-initializes it. ``head_layers`` 1 to 3 replace it by an MLP of that many hidden layers
    (see ``MLPHead``), recorded in ``model.config.pretune_head`` so a saved model can be
    rebuilt. MLP initialization: ``xavier``, ``he`` and ``normal`` apply to every Linear;
    ``pretrained`` (nothing to copy) draws every Linear as transformers does, from
    N(0, initializer_range); ``zeros`` zeroes the output Linear and draws the hidden ones that
    way too (zeroing them as well would make every weight's gradient zero, so it never learns).
    Biases start at zero.
    """
    path, layer = find_head(model)
    if isinstance(layer, MLPHead):
        raise ValueError(f"the head at {path!r} is already an MLP; apply_head runs once per model")
    assert isinstance(layer, nn.Linear)
    # transformers' own init for a new layer: N(0, initializer_range), 0.02 for most models
    default_std = float(getattr(model.config, "initializer_range", None) or NORMAL_STD)

    if cfg.head_layers == 0:
        if cfg.head_init != "pretrained":
            init_linear(layer, cfg.head_init)
        logger.info("head: %s %s, init %s", path, tuple(layer.weight.shape), cfg.head_init)
        return

    spec: dict[str, Any] = {
        "path": path,
        "in_features": layer.in_features,
        "num_labels": layer.out_features,
        "layers": int(cfg.head_layers),
        "width": int(cfg.head_width or layer.in_features),
        "activation": cfg.head_activation,
        "norm": cfg.head_norm,
        "dropout": float(cfg.head_dropout),
    }
    head = attach_mlp_head(model, spec)
    head.to(device=layer.weight.device, dtype=layer.weight.dtype)
    linears = [m for m in head if isinstance(m, nn.Linear)]
    for i, linear in enumerate(linears):
        last = i == len(linears) - 1
        if cfg.head_init == "pretrained" or (cfg.head_init == "zeros" and not last):
            init_linear(linear, "normal", std=default_std)
        else:
            init_linear(linear, cfg.head_init)
    head.train(model.training)
    model.config.pretune_head = spec
    logger.info(
        "head: %s replaced by an MLP (%d x %d, %s, norm %s, dropout %g), init %s",
        path, spec["layers"], spec["width"], spec["activation"], spec["norm"], spec["dropout"],
        cfg.head_init,
    )


def describe_head(model: nn.Module) -> str:
    """One line naming the head's final layer and its shape, for logs and reports."""
    path, layer = find_head(model)
    if isinstance(layer, MLPHead):
        n = sum(p.numel() for p in layer.parameters())
        return f"{path}: MLP of {len(layer)} modules, {n} parameters"
    return f"{path}: Linear {layer.in_features} -> {layer.out_features}"
