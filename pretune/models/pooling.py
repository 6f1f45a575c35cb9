"""Pooling that fits the checkpoint: what the classifier sees of the tokens.

A sentence-transformers checkpoint (all-MiniLM-L6-v2, the default model) was trained to be read
through its own pooling, named in ``modules.json`` and ``1_Pooling/config.json`` (mean of the
tokens, for most); its BERT pooler (dense + tanh over [CLS]) never trained. ``pooling="auto"``
reads that pooling (or the ``pretune_pooling`` of a model saved by pretune) and applies it;
``cls`` keeps the model as it is; ``mean`` and ``max`` replace the base model's pooler by a
``TokenPooler`` (see ``mlp_head.py``, which a saved model carries along).

Only models whose classifier reads the base model's pooler can take it (BERT and its kin); for
the others (RoBERTa, DistilBERT, ViT: no pooler) ``auto`` keeps their own head path and an
explicit ``mean`` or ``max`` is an error.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from torch import nn

from pretune.config import ModelConfig
from pretune.errors import ModelError
from pretune.models.heads import base_prefix
from pretune.models.load import is_token_model, resolve_source
from pretune.models.mlp_head import attach_pooling

logger = logging.getLogger(__name__)

# sentence-transformers' Pooling config keys, in the order they are tried, and ours for them
ST_POOLING_KEYS = (("pooling_mode_mean_tokens", "mean"), ("pooling_mode_max_tokens", "max"),
                   ("pooling_mode_cls_token", "cls"))
ST_POOLING_TYPE = "sentence_transformers.models.Pooling"


def _reader(cfg: ModelConfig):
    """A function from a file name in ``cfg.model`` to its text, or None when the file is not
    at hand: a local directory's file, or a hub model's file in the local cache (no download)."""
    source, is_local = resolve_source(cfg.model)
    if is_local:
        def read_local(name: str) -> str | None:
            path = Path(source) / name
            return path.read_text(encoding="utf-8") if path.is_file() else None
        return read_local

    def read_cached(name: str) -> str | None:
        try:
            from huggingface_hub import try_to_load_from_cache

            found = try_to_load_from_cache(source, name, revision=cfg.revision)
        except Exception:  # noqa: BLE001 - a hint read from the cache, never a reason to fail
            return None
        return Path(found).read_text(encoding="utf-8") if isinstance(found, str) else None
    return read_cached


def _json(read, name: str) -> Any:
    try:
        text = read(name)
        return None if text is None else json.loads(text)
    except (OSError, ValueError):
        return None


def checkpoint_pooling(cfg: ModelConfig) -> str | None:
    """The pooling ``cfg.model`` was trained or saved with: ``mean``, ``max`` or ``cls``;
    None when it names none (not a sentence-transformers checkpoint, or its files are not at
    hand without a download)."""
    read = _reader(cfg)
    config = _json(read, "config.json")
    if isinstance(config, dict) and config.get("pretune_pooling") in ("mean", "max"):
        return str(config["pretune_pooling"])
    modules = _json(read, "modules.json")
    if not isinstance(modules, list):
        return None
    for module in modules:
        if isinstance(module, dict) and module.get("type") == ST_POOLING_TYPE:
            folder = str(module.get("path") or "1_Pooling").strip("/")
            pooling = _json(read, f"{folder}/config.json")
            if not isinstance(pooling, dict):
                return None
            return next((ours for key, ours in ST_POOLING_KEYS if pooling.get(key)), None)
    return None


def supports_token_pooling(model: nn.Module) -> bool:
    """Whether ``model``'s classifier reads its base model's pooler, which can be replaced."""
    try:
        base = getattr(model, base_prefix(model))
    except ModelError:
        return False
    return isinstance(getattr(base, "pooler", None), nn.Module)


def apply_pooling(model: nn.Module, cfg: ModelConfig,
                  checkpoint: ModelConfig | None = None) -> str:
    """Set up ``model``'s pooling as ``cfg.pooling`` asks, in place; return the pooling used
    (``cls``, ``mean`` or ``max``). ``auto`` reads the pooling of ``checkpoint`` (default:
    ``cfg``; the original model when ``cfg`` names an adapted copy of it). Token pooling is
    recorded in ``model.config.pretune_pooling`` so a saved model can be rebuilt."""
    wanted = cfg.pooling
    if is_token_model(model):  # a tag per token: nothing is pooled
        if wanted not in ("auto", "cls"):
            raise ModelError(
                f"Token classification tags every token and pools nothing, but pooling={wanted} "
                f"was asked for. Leave pooling at auto."
            )
        return "none"
    if wanted == "auto":
        found = checkpoint_pooling(checkpoint or cfg)
        wanted = found or "cls"
        if wanted != "cls" and not supports_token_pooling(model):
            logger.info("pooling auto: %s pools by %s, but %s has no pooler to replace; "
                        "keeping its own head path", cfg.model, wanted, type(model).__name__)
            wanted = "cls"
    if wanted == "cls":
        logger.info("pooling: cls (the model's own)")
        return "cls"
    if not supports_token_pooling(model):
        raise ModelError(
            f"pooling={wanted} replaces the base model's pooler, but {type(model).__name__} has "
            f"none (its head reads the tokens itself). Use pooling=auto or pooling=cls with this "
            f"model."
        )
    attach_pooling(model, wanted)
    model.config.pretune_pooling = wanted
    logger.info("pooling: %s of the tokens over the attention mask", wanted)
    return wanted
