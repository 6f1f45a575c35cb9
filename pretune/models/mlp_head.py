"""The MLP classification head and token pooling, self-contained: this file imports only torch.

``save_model`` copies this file's text into a saved model directory as ``pretune_head.py`` (with
a short class definition appended), so that ``AutoModelForSequenceClassification.from_pretrained(
dir, trust_remote_code=True)`` can rebuild a model whose head is an MLP or whose pooler pools the
tokens. Keep it free of any pretune import, and keep the module structure stable: the state-dict
keys of a saved head (``classifier.0.weight``, ...) depend on it.

A head is described by a plain dict, stored in the model's config as ``pretune_head``::

    {"path": "classifier", "in_features": 384, "num_labels": 2, "layers": 1, "width": 384,
     "activation": "gelu", "norm": "none", "dropout": 0.1}

``path`` is the dotted name of the module the MLP replaces (the model's final ``nn.Linear``).

Token pooling is stored in the model's config as ``pretune_pooling`` (``"mean"`` or ``"max"``):
the base model's pooler (BERT's dense + tanh over [CLS]) is replaced by a ``TokenPooler``, the
masked mean or max of the last hidden states, without parameters.
"""

from __future__ import annotations

import inspect

from typing import Any, Mapping

import torch
from torch import nn

HEAD_ACTIVATION_CLASSES: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "tanh": nn.Tanh,
    "silu": nn.SiLU,
}

HEAD_SPEC_KEYS = ("in_features", "num_labels", "layers", "width", "activation", "norm", "dropout")


class TokenBatchNorm(nn.BatchNorm1d):
    """BatchNorm1d over the last dimension, for inputs of any rank.

    Heads of encoder models see ``[batch, features]``; heads of decoder models (GPT-2's and
    Llama's ``score``) see ``[batch, sequence, features]``, which ``nn.BatchNorm1d`` would
    normalize over the wrong dimension.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() == 2:
            return super().forward(x)
        shape = x.shape
        return super().forward(x.reshape(-1, shape[-1])).reshape(shape)


class MLPHead(nn.Sequential):
    """``[Linear, norm, activation, Dropout] x layers`` then ``Linear(width, num_labels)``."""

    def __init__(
        self,
        in_features: int,
        num_labels: int,
        layers: int,
        width: int,
        activation: str = "gelu",
        norm: str = "none",
        dropout: float = 0.1,
    ):
        modules: list[nn.Module] = []
        size = in_features
        for _ in range(layers):
            modules.append(nn.Linear(size, width))
            if norm == "layer":
                modules.append(nn.LayerNorm(width))
            elif norm == "batch":
                modules.append(TokenBatchNorm(width))
            elif norm != "none":
                raise ValueError(f"unknown head norm {norm!r}")
            modules.append(HEAD_ACTIVATION_CLASSES[activation]())
            modules.append(nn.Dropout(dropout))
            size = width
        modules.append(nn.Linear(size, num_labels))
        super().__init__(*modules)


def attach_mlp_head(model: nn.Module, spec: Mapping[str, Any]) -> MLPHead:
    """Replace the module at ``spec["path"]`` in ``model`` by a new ``MLPHead``; return it."""
    parent_name, _, attr = str(spec["path"]).rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    head = MLPHead(**{key: spec[key] for key in HEAD_SPEC_KEYS})
    setattr(parent, attr, head)
    return head


TOKEN_POOLINGS = ("mean", "max")


class TokenPooler(nn.Module):
    """The masked mean (or max) of the last hidden states over the attention mask, standing in
    for a base model's pooler. The pooler is called with the hidden states alone, so the mask
    comes from ``capture_mask``, a forward pre-hook on the base model; without a mask (or one of
    another shape) every token counts."""

    def __init__(self, mode: str):
        super().__init__()
        if mode not in TOKEN_POOLINGS:
            raise ValueError(f"unknown token pooling {mode!r}")
        self.mode = mode
        self.mask: torch.Tensor | None = None

    def capture_mask(self, module: nn.Module, args: tuple, kwargs: dict) -> None:
        mask = kwargs.get("attention_mask")
        if mask is None:
            names = list(inspect.signature(module.forward).parameters)
            at = names.index("attention_mask") if "attention_mask" in names else -1
            mask = args[at] if 0 <= at < len(args) else None
        self.mask = mask

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        mask = self.mask
        if mask is None or tuple(mask.shape) != tuple(hidden_states.shape[:2]):
            mask = torch.ones(hidden_states.shape[:2], device=hidden_states.device)
        keep = mask.to(device=hidden_states.device, dtype=torch.bool).unsqueeze(-1)
        if self.mode == "max":
            low = torch.finfo(hidden_states.dtype).min
            return hidden_states.masked_fill(~keep, low).amax(dim=1)
        total = (hidden_states * keep.to(hidden_states.dtype)).sum(dim=1)
        return total / keep.sum(dim=1).clamp(min=1).to(hidden_states.dtype)

    def extra_repr(self) -> str:
        return f"mode={self.mode}"


def attach_pooling(model: nn.Module, mode: str) -> TokenPooler:
    """Replace the pooler of ``model``'s base model by a ``TokenPooler(mode)``; return it."""
    base = getattr(model, model.base_model_prefix)
    pooler = TokenPooler(mode)
    base.pooler = pooler
    base.register_forward_pre_hook(pooler.capture_mask, with_kwargs=True)
    return pooler


def attach_from_config(model: nn.Module) -> None:
    """Attach what ``model.config`` records: token pooling, then the MLP head."""
    if getattr(model.config, "pretune_pooling", None):
        attach_pooling(model, model.config.pretune_pooling)
    if getattr(model.config, "pretune_head", None):
        attach_mlp_head(model, model.config.pretune_head)


def mlp_head_class(base: type) -> type:
    """A subclass of the transformers model class ``base`` whose pooling and head are built from
    ``config.pretune_pooling`` and ``config.pretune_head``, so that ``from_pretrained`` loads
    them."""

    class PretuneForSequenceClassification(base):  # type: ignore[misc, valid-type]
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            attach_from_config(self)

    PretuneForSequenceClassification._pretune_base = base
    PretuneForSequenceClassification.__name__ = f"Pretune{base.__name__}"
    PretuneForSequenceClassification.__qualname__ = f"Pretune{base.__name__}"
    return PretuneForSequenceClassification
