"""Transfer strategies: how much of the pretrained network trains, and re-initializing its top.

``full`` trains everything; ``linear_probe`` freezes the whole body (``model.base_model``) so
that only the head trains (``lp_ft`` starts so, and ``pretune.training.run`` unfreezes the body
once the head is probed); ``freeze_bottom`` freezes the embeddings and the bottom
``freeze_layers`` encoder layers. ``reinit_layers`` re-initializes the top k encoder layers with
the model's own initializer, whatever the strategy. Freezing means ``requires_grad=False``.

The encoder's layers are found generically: the ``nn.ModuleList`` in the body holding the most
parameters (BERT ``encoder.layer``, DistilBERT ``transformer.layer``, GPT-2 ``h``, Llama
``layers``).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
from torch import nn

from pretune.config import ModelConfig
from pretune.errors import ModelError
from pretune.models.heads import base_prefix

logger = logging.getLogger(__name__)


def find_layers(model: nn.Module) -> tuple[str, nn.ModuleList]:
    """The dotted name (from the model's root) and the ModuleList of the encoder's layers."""
    prefix = base_prefix(model)
    base = getattr(model, prefix)
    best: tuple[str, nn.ModuleList] | None = None
    best_size = -1
    for name, module in base.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) > 0:
            size = sum(p.numel() for p in module.parameters())
            if size > best_size:
                best, best_size = (f"{prefix}.{name}", module), size
    if best is None:
        raise ModelError(
            f"pretune looks for the model's layers as a list of blocks, but "
            f"{type(model).__name__} has none. Use transfer=full for this model."
        )
    return best


def find_embeddings(model: nn.Module) -> list[nn.Module]:
    """The body's embedding modules: ``base_model.embeddings`` when the model has one (with its
    LayerNorm), else every ``nn.Embedding`` of the body outside its layers (GPT-2's ``wte`` and
    ``wpe``, Llama's ``embed_tokens``)."""
    base = getattr(model, base_prefix(model))
    embeddings = getattr(base, "embeddings", None)
    if isinstance(embeddings, nn.Module):
        return [embeddings]
    _, layers = find_layers(model)
    inside = {id(m) for m in layers.modules()}
    found = [m for m in base.modules() if isinstance(m, nn.Embedding) and id(m) not in inside]
    input_embeddings = model.get_input_embeddings() if hasattr(model, "get_input_embeddings") else None
    if isinstance(input_embeddings, nn.Module) and all(m is not input_embeddings for m in found):
        found.insert(0, input_embeddings)
    return found


def frozen_blocks(model: nn.Module) -> list[nn.Module]:
    """The body's embeddings and encoder layers of which no parameter trains (the whole body
    when nothing in it trains); [] for a model pretune cannot take apart."""
    try:
        base = getattr(model, base_prefix(model))
        _, layers = find_layers(model)
        blocks = [*find_embeddings(model), *layers]
    except (ModelError, AttributeError):
        return []
    if not any(p.requires_grad for p in base.parameters()):
        return [base]

    def frozen(module: nn.Module) -> bool:
        params = list(module.parameters())
        return bool(params) and not any(p.requires_grad for p in params)

    return [m for m in blocks if frozen(m)]


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts; shared parameters are counted once."""
    trainable = total = 0
    for p in model.parameters():  # parameters() yields a shared parameter once
        total += p.numel()
        if p.requires_grad:
            trainable += p.numel()
    return trainable, total


def _set_trainable(module: nn.Module, trainable: bool) -> None:
    for p in module.parameters():
        p.requires_grad_(trainable)


@torch.no_grad()
def reinit_module(model: nn.Module, module: nn.Module) -> None:
    """Re-initialize ``module`` (and its submodules) with ``model._init_weights``.

    transformers 5 marks loaded tensors with ``_is_hf_initialized`` and its initializers skip
    marked tensors, so the marks are cleared first; without that, re-initializing would silently
    do nothing.
    """
    for sub in module.modules():
        if hasattr(sub, "_is_hf_initialized"):
            sub._is_hf_initialized = False
        for tensor in [*sub.parameters(recurse=False), *sub.buffers(recurse=False)]:
            if getattr(tensor, "_is_hf_initialized", False):
                tensor._is_hf_initialized = False
    for sub in module.modules():
        model._init_weights(sub)  # type: ignore[operator]


def apply_transfer(model: nn.Module, cfg: ModelConfig) -> dict[str, Any]:
    """Freeze and re-initialize parts of ``model`` in place as ``cfg`` asks; return a summary.

    Call it after ``apply_head`` (a head put in later would train whatever the strategy). The
    summary holds ``transfer``, ``layers`` (the encoder's depth), ``frozen_layers``,
    ``embeddings_frozen``, ``reinit_layers``, ``trainable_params`` and ``total_params``.
    """
    layers_name, layers = find_layers(model)
    n_layers = len(layers)
    _set_trainable(model, True)

    frozen_layers = 0
    embeddings_frozen = False
    if cfg.transfer == "full":
        pass
    elif cfg.transfer in ("linear_probe", "lp_ft"):  # lp_ft: unfrozen after its probe
        _set_trainable(getattr(model, base_prefix(model)), False)
        frozen_layers, embeddings_frozen = n_layers, True
    elif cfg.transfer == "freeze_bottom":
        frozen_layers = min(cfg.freeze_layers, n_layers)
        if cfg.freeze_layers > n_layers:
            logger.warning(
                "freeze_layers=%d but the model has %d layers: freezing all %d.",
                cfg.freeze_layers, n_layers, n_layers,
            )
        for module in find_embeddings(model):
            _set_trainable(module, False)
        embeddings_frozen = True
        for layer in layers[:frozen_layers]:
            _set_trainable(layer, False)
    else:
        raise ValueError(f"unknown transfer strategy {cfg.transfer!r}")

    reinit = min(cfg.reinit_layers, n_layers)
    if cfg.reinit_layers > n_layers:
        logger.warning(
            "reinit_layers=%d but the model has %d layers: re-initializing all %d.",
            cfg.reinit_layers, n_layers, n_layers,
        )
    for layer in layers[n_layers - reinit:] if reinit else []:
        reinit_module(model, layer)
    if reinit and frozen_layers + reinit > n_layers:
        logger.warning(
            "%d re-initialized layer(s) are also frozen (transfer=%s), so they stay random.",
            frozen_layers + reinit - n_layers, cfg.transfer,
        )

    trainable, total = count_parameters(model)
    summary = {
        "transfer": cfg.transfer,
        "layers": n_layers,
        "frozen_layers": frozen_layers,
        "embeddings_frozen": embeddings_frozen,
        "reinit_layers": reinit,
        "trainable_params": trainable,
        "total_params": total,
    }
    logger.info(
        "transfer %s: %d of %d layers (%s) frozen, embeddings %s, top %d re-initialized; "
        "%d of %d parameters train",
        cfg.transfer, frozen_layers, n_layers, layers_name,
        "frozen" if embeddings_frozen else "train", reinit, trainable, total,
    )
    return summary
