"""Saving and loading trained model directories.

A saved directory is a Hugging Face model directory (config.json with the label map,
model.safetensors, the tokenizer) plus ``pretune.yaml`` (whatever ``meta`` the caller gives:
settings, metrics, ...). ``AutoModelForSequenceClassification.from_pretrained(dir)`` loads it.

A model whose head is an MLP (``head_layers`` > 0) or whose pooler pools the tokens
(``pooling`` mean or max) does not fit the standard class. Its config.json holds the head's
structure under ``pretune_head`` and the pooling under ``pretune_pooling``; the directory also holds
``pretune_head.py``, a self-contained copy of ``mlp_head.py``, and config.json's ``auto_map``
points ``AutoModelForSequenceClassification`` to it, so that
``from_pretrained(dir, trust_remote_code=True)`` rebuilds them. ``load_model_dir`` needs no
remote code: it builds the same class from pretune's own ``mlp_head`` module. Loaded without
``trust_remote_code``, transformers falls back to the standard class and a new random head or
pooler (it says so in its load report).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from pretune.errors import ModelError
from pretune.models import mlp_head, vision
from pretune.models.load import load_tokenizer, weights_bytes
from pretune.models.weights import (  # noqa: F401 - public here too
    has_pretune_parts, load_saved_weights, mlp_class,
)
from pretune.outdir import check_room, check_writable, disk_full
from pretune.yamlfile import plain

logger = logging.getLogger(__name__)

META_FILE = "pretune.yaml"
HEAD_CODE_FILE = "pretune_head.py"
HEAD_CLASS = "PretuneForSequenceClassification"
AUTO_CLASS = "AutoModelForSequenceClassification"


# --- paths -----------------------------------------------------------------------------------------


def resolve_model_dir(path: str | os.PathLike) -> Path:
    """The model directory ``path`` names: ``path/best`` for a run directory, else ``path``.

    Raises ModelError when ``path`` does not exist or holds no model (no config.json).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise ModelError(
            f"model path {path} does not exist. Pass a saved model directory or a run directory "
            f"(one that holds best/)."
        )
    if (p / "best" / "config.json").is_file():
        return p / "best"
    if (p / "config.json").is_file():
        return p
    if (p / "best").is_dir():
        raise ModelError(
            f"A run directory's best/ must hold a saved model, but {p / 'best'} has no "
            f"config.json. Wait for the run to save its best model, or pass a model directory."
        )
    raise ModelError(
        f"A model directory must hold config.json (or best/config.json for a run directory), "
        f"but {path} has neither. Pass the directory a model was saved to."
    )


# --- saving ----------------------------------------------------------------------------------------


def head_code(model: Any) -> str | None:
    """The text of ``pretune_head.py`` for ``model``, or None when its class cannot be imported
    by name from transformers (a remote-code model)."""
    import transformers  # transformers loads only when this runs

    base = getattr(type(model), "_pretune_base", type(model))
    if getattr(transformers, base.__name__, None) is not base:
        return None
    source = Path(mlp_head.__file__).read_text(encoding="utf-8")
    return (
        f"{source.rstrip()}\n\n\n"
        f"# --- written by pretune's save_model for this model ---\n\n"
        f"from transformers import {base.__name__} as _PretuneBase  # noqa: E402\n\n\n"
        f"class {HEAD_CLASS}(_PretuneBase):\n"
        f'    """{base.__name__} with the pooling and head that config.pretune_pooling and\n'
        f'    config.pretune_head describe."""\n\n'
        f"    def __init__(self, config, *args, **kwargs):\n"
        f"        super().__init__(config, *args, **kwargs)\n"
        f"        attach_from_config(self)\n"
    )


def _write_head_code(model: Any, directory: Path) -> None:
    code = head_code(model)
    if code is None:
        logger.warning(
            "%s is not a transformers class: the saved MLP head or pooling loads with "
            "pretune's load_model_dir only", type(model).__name__,
        )
        return
    (directory / HEAD_CODE_FILE).write_text(code, encoding="utf-8")
    config_path = directory / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8"))
    auto_map = dict(config.get("auto_map") or {})
    base = getattr(type(model), "_pretune_base", type(model)).__name__
    auto_class = "AutoModelForImageClassification" if base.endswith("ForImageClassification") else AUTO_CLASS
    auto_map[auto_class] = f"{Path(HEAD_CODE_FILE).stem}.{HEAD_CLASS}"
    config["auto_map"] = auto_map
    config_path.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")


def save_model(model: Any, tokenizer: Any, out_dir: str | os.PathLike, meta: Mapping[str, Any]) -> Path:
    """Save ``model`` (safetensors), ``tokenizer`` and ``meta`` (as pretune.yaml) to ``out_dir``.

    The directory is written beside ``out_dir`` first and renamed into place, so a crash never
    leaves a half-written model there; an existing ``out_dir`` is replaced. Returns ``out_dir``.
    A full disk is a ``PretuneError`` naming it; ``out_dir`` is then left as it was.
    """
    out = Path(out_dir).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f"{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        model.save_pretrained(tmp)  # safetensors: the default, and the only format since v5
        if not any(tmp.glob("*.safetensors")):
            raise RuntimeError(f"save_pretrained wrote no safetensors file in {tmp}")
        tokenizer.save_pretrained(tmp)
        if has_pretune_parts(model.config):
            _write_head_code(model, tmp)
        text = yaml.safe_dump(plain(dict(meta)), sort_keys=False, allow_unicode=True)
        (tmp / META_FILE).write_text(text, encoding="utf-8")
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        full = disk_full(err, out)
        if full is not None:
            raise full from None
        raise
    swap_in(tmp, out)
    logger.info("saved the model to %s", out)
    return out


SAVE_MARGIN = 128 * 2**20  # room kept beyond the model copies: tokenizer, caches, tables


def check_save_room(out: str | os.PathLike, model: Any, copies: int, what: str,
                    flag: str = "--out") -> int:
    """Before a run: raise ConfigError unless ``out`` can be written and its disk has room for
    ``copies`` saved copies of the model ``model`` (a ModelConfig) names plus a margin. Creates
    nothing; returns the bytes asked for."""
    check_writable(out, flag)
    need = copies * (weights_bytes(model) or 0) + SAVE_MARGIN
    check_room(out, need, what, flag)
    return need


def swap_in(source: Path, target: Path) -> None:
    """Make directory ``source`` the directory ``target`` by renames only: a kill in between
    leaves ``target.old-PID`` beside it, which a search's start puts back."""
    old = target.with_name(f"{target.name}.old-{os.getpid()}")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(source, target)
    shutil.rmtree(old, ignore_errors=True)


# --- loading ---------------------------------------------------------------------------------------


def read_meta(directory: str | os.PathLike) -> dict[str, Any]:
    """The contents of ``directory/pretune.yaml``; {} when there is none."""
    path = Path(directory) / META_FILE
    if not path.is_file():
        return {}
    try:
        meta = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise ModelError(
            f"{path} must be valid YAML, but it could not be read ({' '.join(str(e).split())}). "
            f"Fix or remove the file."
        ) from e
    return meta if isinstance(meta, dict) else {}


def _saved_for_tokens(directory: Path, meta: Mapping[str, Any]) -> bool:
    """Whether the model in ``directory`` tags tokens: pretune.yaml says so, or config.json
    names a ...ForTokenClassification architecture."""
    if (meta.get("task") or {}).get("kind") == "token":
        return True
    try:
        config = json.loads((directory / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return any(str(a).endswith("ForTokenClassification") for a in config.get("architectures") or ())


def load_model_dir(
    path: str | os.PathLike, *, allow_pickle: bool = False, trust_remote_code: bool = False
) -> tuple[Any, Any, dict[str, Any]]:
    """Load a model saved by ``save_model`` (or any sequence-classification model directory);
    return ``(model, tokenizer, meta)``.

    ``path`` may be a run directory (its ``best/`` is loaded). ``meta`` is pretune.yaml's
    content, {} when absent. Every weight must be in the checkpoint: a directory without a
    trained head is refused. An MLP head is rebuilt from config.json's ``pretune_head`` without
    remote code. The model comes back in eval mode.
    """
    # transformers loads only when this runs
    from transformers import AutoModelForSequenceClassification
    from transformers.models.auto.modeling_auto import MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING

    directory = resolve_model_dir(path)
    meta = read_meta(directory)
    if vision.is_image_model_dir(directory, meta):
        model, processor = vision.load_image_model_dir(
            directory, allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
        return model, processor, meta
    if _saved_for_tokens(directory, meta):
        # transformers loads only when this runs
        from transformers import AutoModelForTokenClassification
        from transformers.models.auto.modeling_auto import MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING

        auto_class, mapping = AutoModelForTokenClassification, MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING
    else:
        auto_class, mapping = (AutoModelForSequenceClassification,
                               MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING)
    model = load_saved_weights(directory, auto_class, mapping,
                               allow_pickle=allow_pickle, trust_remote_code=trust_remote_code)
    tokenizer = load_tokenizer(str(directory), is_local=True, trust_remote_code=trust_remote_code)
    return model, tokenizer, meta
