"""Image classification models: transformers' ``AutoModelForImageClassification`` with its
``AutoImageProcessor``, loaded as safely as the text models (safetensors only unless
``allow_pickle``; ``trust_remote_code`` as given).

The processor plays the tokenizer's part: it is saved beside the model (``save_model`` calls its
``save_pretrained``), and gives the size, resampling, mean and std that ``pretune.data.images``
uses to turn images into ``pixel_values``. Heads and transfer strategies work as for text
models: the body is ``model.base_model`` (ViT's ``vit``), its layers ``encoder.layer``, its
embeddings the patch embeddings.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from pretune.config import ModelConfig
from pretune.errors import ModelError
from pretune.models.load import (
    labelled_config,
    load_error,
    log_loading_info,
    quiet_transformers,
)
from pretune.models.weights import load_saved_weights

logger = logging.getLogger(__name__)


def load_processor(source: str, *, is_local: bool, revision: str | None = None,
                   trust_remote_code: bool = False):
    """``AutoImageProcessor.from_pretrained`` with errors a user can act on."""
    from transformers import AutoImageProcessor  # transformers loads only when this runs

    try:
        return AutoImageProcessor.from_pretrained(source, revision=revision,
                                                  trust_remote_code=trust_remote_code)
    except (OSError, ValueError, KeyError, TypeError) as e:
        if is_local:
            raise ModelError(
                f"An image model directory must hold its image processor "
                f"(preprocessor_config.json), but the one in {source} could not be loaded "
                f"({' '.join(str(e).split())[:200]}). Save it beside the model with "
                f"processor.save_pretrained."
            ) from e
        raise load_error(source, is_local, e) from e


def load_pretrained_image(cfg: ModelConfig, num_labels: int, label_names: list[str]
                          ) -> tuple[Any, Any]:
    """Load ``cfg.model`` for image classification with ``num_labels`` labels; return
    ``(model, processor)``. As ``load_pretrained`` for text: a head of another size is made
    anew, ``cfg.dropout`` replaces the model's dropout, the model comes back in eval mode."""
    # transformers loads only when this runs
    from transformers import AutoModelForImageClassification

    source, is_local, common, config = labelled_config(cfg, num_labels, label_names)
    processor = load_processor(source, is_local=is_local, **common)
    try:
        with quiet_transformers():
            model, info = AutoModelForImageClassification.from_pretrained(
                source, config=config, ignore_mismatched_sizes=True,
                use_safetensors=None if cfg.allow_pickle else True, output_loading_info=True,
                **common)
    except (OSError, ValueError) as e:
        raise load_error(source, is_local, e) from e
    log_loading_info(source, info)
    logger.info("loaded %s (%s) with %d labels", source, type(model).__name__, num_labels)
    return model, processor


def is_image_model_dir(directory: str | Path, meta: dict | None = None) -> bool:
    """True for a directory saved from an image model: its pretune.yaml says so, or it has an
    image processor and no tokenizer."""
    d = Path(directory)
    settings = (meta or {}).get("settings") or {}
    if (settings.get("data") or {}).get("modality") == "image":
        return True
    return (d / "preprocessor_config.json").is_file() and not (d / "tokenizer_config.json").is_file()


def load_image_model_dir(directory: Path, *, allow_pickle: bool = False,
                         trust_remote_code: bool = False) -> tuple[Any, Any]:
    """A saved image model and its processor; every weight must be in the checkpoint."""
    # transformers loads only when this runs
    from transformers import AutoModelForImageClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING

    model = load_saved_weights(directory, AutoModelForImageClassification,
                               MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING,
                               allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    processor = load_processor(str(directory), is_local=True, trust_remote_code=trust_remote_code)
    return model, processor
