"""Pretrained models: safe loading, classification heads, transfer strategies, saving.

The usual sequence::

    model, tokenizer = load_pretrained(cfg.model, num_labels, label_names)
    apply_pooling(model, cfg.model)           # the checkpoint's own pooling, or as asked
    apply_head(model, cfg.model)              # re-initialize or replace the final layer
    summary = apply_transfer(model, cfg.model)  # freeze / re-initialize layers
    ...train...
    save_model(model, tokenizer, run_dir / "best", meta)
    model, tokenizer, meta = load_model_dir(run_dir)

``build_model`` does the first four steps at once.
"""

from __future__ import annotations

from typing import Any

from pretune.config import ModelConfig
from pretune.models.heads import (
    apply_head,
    describe_head,
    find_head,
    head_module_names,
    head_parameter_names,
)
from pretune.models.io import load_model_dir, read_meta, resolve_model_dir, save_model
from pretune.models.load import load_pretrained
from pretune.models.lora import apply_lora, is_lora, merge_lora
from pretune.models.pooling import apply_pooling, checkpoint_pooling
from pretune.models.transfer import apply_transfer, count_parameters, find_embeddings, find_layers


def build_model(
    cfg: ModelConfig, num_labels: int, label_names: list[str], *, problem_type: str | None = None,
    image: bool = False, checkpoint: ModelConfig | None = None
) -> tuple[Any, Any, dict[str, Any]]:
    """Load ``cfg.model``, set up its head and its transfer strategy; return
    ``(model, tokenizer, transfer summary)``. The model is in eval mode, as loaded. With
    ``image``, an image classification model and its image processor (in the tokenizer's place).

    With ``transfer="lora"`` the model comes back wrapped by peft; ``merge_lora`` turns it
    back into a plain model before saving. ``problem_type`` is transformers' name of the task
    (see ``load_pretrained``). With ``image``, an image classification model and its image
    processor (in the tokenizer's place). ``pooling=auto`` reads the pooling of ``checkpoint``
    (default ``cfg``: pass the original when ``cfg`` names an adapted copy of it); the summary
    says which pooling was used."""
    if image:
        from pretune.models.vision import load_pretrained_image

        model, tokenizer = load_pretrained_image(cfg, num_labels, label_names)
    else:
        model, tokenizer = load_pretrained(cfg, num_labels, label_names,
                                           problem_type=problem_type)
    pooling = apply_pooling(model, cfg, checkpoint)
    apply_head(model, cfg)
    if cfg.transfer == "lora":
        plain = apply_transfer(model, ModelConfig(**{**cfg.__dict__, "transfer": "full"}))
        model = apply_lora(model, cfg)
        trainable, total = count_parameters(model)
        summary = {**plain, "transfer": "lora", "trainable_params": trainable, "total_params": total}
    else:
        summary = apply_transfer(model, cfg)
    return model, tokenizer, {**summary, "pooling": pooling}


__all__ = [
    "apply_head",
    "apply_lora",
    "apply_pooling",
    "checkpoint_pooling",
    "is_lora",
    "merge_lora",
    "apply_transfer",
    "build_model",
    "count_parameters",
    "describe_head",
    "find_embeddings",
    "find_head",
    "find_layers",
    "head_module_names",
    "head_parameter_names",
    "load_model_dir",
    "load_pretrained",
    "read_meta",
    "resolve_model_dir",
    "save_model",
]
