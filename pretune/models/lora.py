"""LoRA (Hu et al., 2021) as a transfer strategy, through peft.

The pretrained weights stay frozen; low-rank adapters on the attention projections and the
whole head train. Before saving, the adapters are merged into the weights, so the saved
directory is a plain transformers model that loads without peft.
"""

from __future__ import annotations

import logging
from typing import Any

from torch import nn

from pretune.config import ModelConfig
from pretune.errors import MissingExtraError, ModelError
from pretune.models.heads import head_module_names
from pretune.models.load import is_token_model

logger = logging.getLogger(__name__)


def _peft():
    try:
        import peft
    except ImportError:
        raise MissingExtraError("peft", "peft", "The LoRA transfer strategy") from None
    return peft


def apply_lora(model: nn.Module, cfg: ModelConfig) -> nn.Module:
    """Wrap ``model`` with LoRA adapters; returns the wrapped model (train only what moves)."""
    peft = _peft()
    targets = [t.strip() for t in cfg.lora_targets.split(",") if t.strip()] if cfg.lora_targets else None
    # Image models: peft's plain wrapper (its sequence-classification one passes input_ids),
    # and the attention's query and value projections (by the names the model has) unless told.
    image = type(model).__name__.endswith("ForImageClassification")
    if image and targets is None:
        names = {n.rsplit(".", 1)[-1] for n, _ in model.named_modules()}
        targets = next((pair for pair in (["q_proj", "v_proj"], ["query", "value"])
                        if set(pair) <= names), None)
    config = peft.LoraConfig(
        task_type=None if image else (peft.TaskType.TOKEN_CLS if is_token_model(model)
                                      else peft.TaskType.SEQ_CLS),
        r=cfg.lora_r,
        lora_alpha=cfg.lora_alpha,
        lora_dropout=cfg.lora_dropout,
        target_modules=targets,
        # The head trains in full; only modules with weights (not a bare Dropout).
        modules_to_save=[n for n in head_module_names(model)
                         if any(True for _ in model.get_submodule(n).parameters())],
    )
    try:
        wrapped = peft.get_peft_model(model, config)
    except ValueError as err:
        raise ModelError(
            f"LoRA needs to know which modules to adapt in a {model.config.model_type} model, "
            f"but it could not tell ({str(err).splitlines()[0]}). "
            f"Pass --set lora_targets=NAME1,NAME2 with the names of its attention projections."
        ) from None
    trainable = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    total = sum(p.numel() for p in wrapped.parameters())
    logger.info("LoRA r=%d: %d of %d parameters train", cfg.lora_r, trainable, total)
    return wrapped


def is_lora(model: Any) -> bool:
    return hasattr(model, "merge_and_unload") and hasattr(model, "peft_config")


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain transformers model with LoRA merged in; any other model as it is."""
    if not is_lora(model):
        return model
    merged = model.merge_and_unload()
    merged.eval()
    return merged
