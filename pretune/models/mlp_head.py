"""The MLP classification head, self-contained: this file imports only torch.

``save_model`` copies this file's text into a saved model directory as ``pretune_head.py`` (with
a short class definition appended), so that ``AutoModelForSequenceClassification.from_pretrained(
dir, trust_remote_code=True)`` can rebuild a model whose head is an MLP. Keep it free of any
pretune import, and keep the module structure stable: the state-dict keys of a saved head
(``classifier.0.weight``, ...) depend on it.

A head is described by a plain dict, stored in the model's config as ``pretune_head``::

    {"path": "classifier", "in_features": 384, "num_labels": 2, "layers": 1, "width": 384,
     "activation": "gelu", "norm": "none", "dropout": 0.1}

``path`` is the dotted name of the module the MLP replaces (the model's final ``nn.Linear``).
"""

from __future__ import annotations

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


def mlp_head_class(base: type) -> type:
    """A subclass of the transformers model class ``base`` whose head is built from
    ``config.pretune_head``, so that ``from_pretrained`` loads a saved MLP head."""

    class PretuneForSequenceClassification(base):  # type: ignore[misc, valid-type]
        def __init__(self, config, *args, **kwargs):
            super().__init__(config, *args, **kwargs)
            attach_mlp_head(self, config.pretune_head)

    PretuneForSequenceClassification._pretune_base = base
    PretuneForSequenceClassification.__name__ = f"Pretune{base.__name__}"
    PretuneForSequenceClassification.__qualname__ = f"Pretune{base.__name__}"
    return PretuneForSequenceClassification
