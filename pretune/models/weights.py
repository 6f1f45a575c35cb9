"""Loading the weights of a saved classification model, rebuilding an MLP head or token
pooling (recorded in config.json) on transformers' own class without remote code.

``pretune.models.io`` (text and token models) and ``pretune.models.vision`` (image models) both
load through ``load_saved_weights``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pretune.errors import ModelError
from pretune.models import mlp_head
from pretune.models.load import check_model_dir, load_config, load_error, quiet_transformers


def has_pretune_parts(config: Any) -> bool:
    """Whether a model's config records an MLP head or token pooling, which the standard
    transformers class does not rebuild."""
    return bool(getattr(config, "pretune_head", None) or getattr(config, "pretune_pooling", None))


def mlp_class(config: Any, directory: Path, mapping: Any, auto_name: str) -> type:
    """transformers' own class for ``config`` in ``mapping`` (sequence or image classification),
    with pretune's MLP head; ModelError when transformers has none for this model type."""
    try:
        base = mapping[type(config)]
    except KeyError:
        raise ModelError(
            f"pretune rebuilds an MLP head on transformers' own model classes, but the model in "
            f"{directory} is of type {getattr(config, 'model_type', '?')}, which has none. Load "
            f"it with {auto_name}.from_pretrained(..., trust_remote_code=True)."
        ) from None
    return mlp_head.mlp_head_class(base)


def load_saved_weights(directory: Path, auto_class: Any, mapping: Any, *, allow_pickle: bool,
                       trust_remote_code: bool) -> Any:
    """The model saved in ``directory`` through ``auto_class`` (sequence or image
    classification; ``mapping`` is its transformers class table), with an MLP head rebuilt from
    config.json's ``pretune_head`` without remote code. Every weight must be in the checkpoint:
    a directory without a trained head is refused."""
    check_model_dir(directory, allow_pickle=allow_pickle)
    source = str(directory)
    config = load_config(source, is_local=True, trust_remote_code=trust_remote_code)
    kwargs: dict[str, Any] = {
        "config": config,
        "use_safetensors": None if allow_pickle else True,
        "output_loading_info": True,
    }
    if has_pretune_parts(config):
        model_class: Any = mlp_class(config, directory, mapping, auto_class.__name__)
    else:
        model_class = auto_class
        kwargs["trust_remote_code"] = trust_remote_code
    try:
        with quiet_transformers():
            model, info = model_class.from_pretrained(source, **kwargs)
    except (OSError, ValueError) as e:
        raise load_error(source, True, e) from e

    missing = sorted(info.get("missing_keys", ()))
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                        for k in info.get("mismatched_keys", ()))
    unexpected = sorted(info.get("unexpected_keys", ()))
    if missing or mismatched or unexpected:
        problems = "; ".join(
            f"{what}: {', '.join(keys[:4])}{' ...' if len(keys) > 4 else ''}"
            for what, keys in (("missing", missing), ("wrong shape", mismatched),
                               ("unexpected", unexpected)) if keys
        )
        raise ModelError(
            f"A saved model's weights must match its config, but {directory} does not ({problems}). "
            f"Pass a directory saved by pretune, or fine-tune this model first with --model."
        )
    return model
