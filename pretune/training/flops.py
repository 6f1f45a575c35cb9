"""Model FLOPs of an encoder (BERT family): what a batch costs, counted from the model's config.

Only matrix multiplications are counted, two FLOPs per multiply-add, as model FLOPs
utilization (MFU; Chowdhery et al. 2022, PaLM, appendix B) counts them: the work the model
needs, not what an implementation happens to do. Per token and layer, a forward pass costs

* ``2 * 4 d^2`` for the query, key, value and output projections,
* ``2 * 2 d f`` for the feed-forward block (width ``f``),
* ``2 * 2 T d`` for the attention scores and their weighted sum over ``T`` positions,

and per sequence the pooler and classifier add ``2 * (d^2 + d k)`` for ``k`` labels. Embedding
lookups, normalization, softmax and activations are left out (they are not matrix products).
A training step costs three forward passes: the backward pass computes gradients for both the
inputs and the weights of every product (Kaplan et al. 2020, section 2.1).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

# Config attribute names of each dimension, the BERT family's first (DistilBERT's after).
_NAMES = {
    "width": ("hidden_size", "dim"),
    "layers": ("num_hidden_layers", "n_layers"),
    "ffn": ("intermediate_size", "hidden_dim"),
}


@dataclass(frozen=True)
class Shape:
    """The dimensions of an encoder that decide its FLOPs."""

    width: int
    layers: int
    ffn: int
    labels: int

    @classmethod
    def of(cls, config: Any) -> "Shape":
        """Read from a transformers config (or any object with the same attributes)."""
        found = {}
        for dim, names in _NAMES.items():
            value = next((getattr(config, n) for n in names if getattr(config, n, None)), None)
            if value is None:
                raise ValueError(f"cannot count FLOPs of {type(config).__name__}: it has none of "
                                 f"{', '.join(names)}")
            found[dim] = int(value)
        return cls(labels=int(getattr(config, "num_labels", 2) or 2), **found)


def forward_flops(config: Any, rows: int, length: int) -> float:
    """Matmul FLOPs of one forward pass over ``rows`` sequences of ``length`` positions each
    (padding included: the model computes it)."""
    s = Shape.of(config)
    per_token = 2 * (4 * s.width ** 2 + 2 * s.width * s.ffn) + 2 * 2 * length * s.width
    head = 2 * (s.width ** 2 + s.width * s.labels)
    return float(rows * (s.layers * length * per_token + head))


def training_flops(config: Any, rows: int, length: int) -> float:
    """Matmul FLOPs of one training step (forward and backward) over such a batch."""
    return 3.0 * forward_flops(config, rows, length)


def flops_per_token(config: Any, length: int, *, training: bool = True) -> float:
    """Training (or forward) FLOPs per position of a sequence of ``length`` positions."""
    count = training_flops if training else forward_flops
    return count(config, 1, length) / length
