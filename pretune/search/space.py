"""The search space, as data: which settings a search varies, over which values, and when.

A space is an ordered tuple of ``Dimension``s. Each names a ``RunConfig`` setting (its bare
name), a kind (``float``, ``int`` or ``categorical``), its range (``low``/``high``, with ``log``
or ``step``) or its ``choices``, and optionally a condition ``when={"optimizer": ["momentum",
"nesterov"]}``: the dimension exists only in trials where every named setting has one of the
listed values. Conditions are evaluated in declaration order, against the values already
sampled in the trial, else the pinned (fixed) values, else the base configuration. Every space
is kept in the order of ``FULL_SPACE``, which declares each parent before its children.

``FULL_SPACE`` covers every searchable setting, with wide ranges that ``validate`` accepts.
``DEFAULT_SPACE`` is the part practitioners search when fine-tuning a transformer; the source
of each range is given beside it. ``suggest(trial, space)`` samples a space with Optuna.

The space file (``pretune tune --space FILE``)
----------------------------------------------

A YAML mapping from setting names to specs::

    extend: true            # default: change the default space; false: only what is listed
    lr: {low: 1e-5, high: 1e-4, log: true}     # a float range (log scale)
    warmup_ratio: {high: 0.1}                  # change one bound of a default dimension
    epochs: {int: true, low: 2, high: 4}       # an integer range (step: 2 for every other)
    batch_size: {choices: [16, 32]}            # a categorical
    momentum: {low: 0.8, high: 0.99}           # add a dimension from the full space
    schedule: linear                           # a plain value pins the setting
    dropout: null                              # null or false removes the dimension

A spec has ``low`` and ``high`` (with optional ``log: true`` or ``step``, and ``int: true`` for
whole numbers; settings that only take whole numbers are integer ranges anyway), or
``choices``, and may set ``when: {setting: [values]}``. A dimension that is also in the full
space keeps that space's condition unless the spec gives ``when``; one that is in the default
space takes the bounds the spec leaves out from there. Pinned values (plain scalars here, and
``--fixed``) are taken out of the space. A dimension whose condition can never hold (momentum
while the optimizer is fixed to adamw) is dropped.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable, Mapping

from pretune.config import (
    CLASS_WEIGHTS,
    HEAD_ACTIVATIONS,
    HEAD_INITS,
    HEAD_NORMS,
    OPTIMIZERS,
    POOLINGS,
    PENALTIES,
    SCHEDULES,
    STEMMERS,
    TASK_LOSSES,
    TRANSFERS,
    DataConfig,
    ModelConfig,
    RunConfig,
    TrainConfig,
    locate,
    setting_names,
    validate,
    with_task,
)
from pretune.data.task import task_of
from pretune.errors import ConfigError, PretuneError
from pretune.yamlfile import read_mapping

KINDS = ("float", "int", "categorical")
SPEC_KEYS = ("low", "high", "log", "step", "int", "choices", "when")


@dataclass(frozen=True)
class Dimension:
    """One searched setting: its name, kind, range or choices, and the condition for it."""

    name: str
    kind: str  # float | int | categorical
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    when: tuple[tuple[str, tuple], ...] = field(default=())  # ((setting, (values...)), ...)

    def applies(self, values: Mapping[str, Any]) -> bool:
        """Whether the condition holds for the settings in ``values``."""
        return all(values.get(name) in allowed for name, allowed in self.when)

    def suggest(self, trial) -> Any:
        """Sample this dimension in an Optuna trial."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high),
                                     step=int(self.step or 1), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high),
                                   step=self.step, log=self.log)

    def to_spec(self) -> dict[str, Any]:
        """The dimension as a space-file spec (what ``pretune.yaml`` records)."""
        if self.kind == "categorical":
            spec: dict[str, Any] = {"choices": list(self.choices)}
        else:
            spec = {"low": self.low, "high": self.high}
            if self.kind == "int":
                spec["int"] = True
            if self.log:
                spec["log"] = True
            if self.step is not None:
                spec["step"] = self.step
        if self.when:
            spec["when"] = {name: list(values) for name, values in self.when}
        return spec


def Float(name: str, low: float, high: float, *, log: bool = False, step: float | None = None,
          when: Mapping[str, Iterable] | None = None) -> Dimension:
    return Dimension(name, "float", float(low), float(high), log, step, (), _when(when))


def Int(name: str, low: int, high: int, *, log: bool = False, step: int | None = None,
        when: Mapping[str, Iterable] | None = None) -> Dimension:
    return Dimension(name, "int", int(low), int(high), log, step, (), _when(when))


def Choice(name: str, choices: Iterable, *, when: Mapping[str, Iterable] | None = None) -> Dimension:
    return Dimension(name, "categorical", choices=tuple(choices), when=_when(when))


def _when(when: Mapping[str, Iterable] | None) -> tuple[tuple[str, tuple], ...]:
    return tuple((str(k), tuple(v)) for k, v in (when or {}).items())


# --- the full space: every searchable setting ------------------------------------------------
# Wide ranges that `validate` accepts; parents come before the dimensions that depend on them.

MOMENTUM_OPTIMIZERS = ("momentum", "nesterov")
ADAM_OPTIMIZERS = ("adam", "adamw")
WEIGHTED_PENALTIES = ("l1", "l2", "elasticnet")
HEAD_LAYERS = (1, 2, 3)  # head_layers values that build a hidden head layer
# Settings that only some tasks have: ``resolve_space`` leaves them out of the others' spaces.
# The task is never sampled, so this is decided once, when the space is built; "auto" (the task
# is not known yet) counts as classification, so a space built before the data is read is the
# one it always was. A search resolves the task first (``pretune.data.task.task_of``).
_SENTENCE_TASKS = ("classification", "regression", "multilabel")
TASK_SETTINGS: dict[str, tuple[str, ...]] = {
    "label_smoothing": ("classification", "multilabel", "token"),
    "class_weights": ("classification", "multilabel", "token"),
    "loss": ("regression",),  # classification, multi-label and token have one loss each
    "huber_delta": ("regression",),
    # token classification tags the words as written, by a linear layer per token
    **{name: _SENTENCE_TASKS for name in ("lowercase", "stopwords", "stem", "word_delete",
                                          "word_swap", "text_aug_prob", "head_layers", "pooling")},
}
# [NER] Token classification recipes: the transformers token-classification examples and
# model cards of CoNLL-2003 fine-tunes train 3 to 5 epochs at 2e-5 to 5e-5 (BERT-base) with
# linear warmup and decay; small models such as MiniLM up to about 1e-4. The task's default
# space narrows the lr and epochs there (unless a space file sets them).
TOKEN_DEFAULTS = (Float("lr", 2e-5, 1e-4, log=True), Int("epochs", 3, 5))

TEXT = {"modality": ("text",)}  # resolved from the data before a search builds its space
IMAGE = {"modality": ("image",)}
# The augmentations an image search tries by default (common choices for fine-tuning vision
# transformers: flips, small rotations, random resized crops, mild color jitter).
IMAGE_AUGMENTATIONS = (
    Choice("flip_prob", (0.0, 0.5), when=IMAGE),
    Choice("rotate_degrees", (0.0, 10.0, 20.0), when=IMAGE),
    Choice("crop_scale", (1.0, 0.8, 0.5), when=IMAGE),
    Choice("brightness", (0.0, 0.2, 0.4), when=IMAGE),
    Choice("contrast", (0.0, 0.2, 0.4), when=IMAGE),
)

FULL_SPACE: tuple[Dimension, ...] = (
    Choice("optimizer", OPTIMIZERS),
    Float("lr", 1e-6, 1e-1, log=True),
    Float("momentum", 0.5, 0.99, when={"optimizer": MOMENTUM_OPTIMIZERS}),
    Float("beta1", 0.8, 0.95, when={"optimizer": ADAM_OPTIMIZERS}),
    Float("beta2", 0.95, 0.9999, when={"optimizer": ADAM_OPTIMIZERS}),
    Float("weight_decay", 0.0, 0.3),
    Float("layer_decay", 0.5, 1.0),
    Choice("penalty", PENALTIES),
    Float("penalty_alpha", 1e-7, 1e-2, log=True, when={"penalty": WEIGHTED_PENALTIES}),
    Float("l1_ratio", 0.0, 1.0, when={"penalty": ("elasticnet",)}),
    Choice("batch_size", (8, 16, 32, 64, 128)),
    Int("epochs", 1, 10),
    Choice("schedule", SCHEDULES),
    Float("warmup_ratio", 0.0, 0.3),
    Float("min_lr_ratio", 0.0, 0.2),
    Float("poly_power", 0.5, 3.0, when={"schedule": ("polynomial",)}),
    Float("decay_gamma", 0.01, 0.9, log=True, when={"schedule": ("exponential", "step")}),
    Int("decay_drops", 1, 4, when={"schedule": ("step",)}),
    Float("max_grad_norm", 0.1, 10.0, log=True),
    Float("label_smoothing", 0.0, 0.2),
    Choice("class_weights", CLASS_WEIGHTS),
    Choice("loss", TASK_LOSSES["regression"]),
    Float("huber_delta", 0.1, 3.0, log=True, when={"loss": ("huber",)}),
    Float("dropout", 0.0, 0.3),
    Choice("transfer", TRANSFERS),
    Int("freeze_layers", 1, 12, when={"transfer": ("freeze_bottom",)}),
    Int("reinit_layers", 0, 4),
    # mean and max need a model whose classifier reads its pooler (BERT and kin); auto, the
    # default, is the checkpoint's own pooling. Searched only when a space file adds it.
    Choice("pooling", POOLINGS),
    Int("head_layers", 0, 2),
    Choice("head_width", (128, 256, 512, 768, 1024), when={"head_layers": HEAD_LAYERS}),
    Choice("head_activation", HEAD_ACTIVATIONS, when={"head_layers": HEAD_LAYERS}),
    Float("head_dropout", 0.0, 0.5),
    Choice("head_norm", HEAD_NORMS, when={"head_layers": HEAD_LAYERS}),
    Choice("head_init", HEAD_INITS),
    Choice("lora_r", (4, 8, 16, 32, 64), when={"transfer": ("lora",)}),
    Float("lora_alpha", 4.0, 64.0, log=True, when={"transfer": ("lora",)}),
    Float("lora_dropout", 0.0, 0.2, when={"transfer": ("lora",)}),
    Float("probe_lr", 1e-4, 1e-2, log=True, when={"transfer": ("lp_ft",)}),
    Float("probe_epochs", 1.0, 5.0, when={"transfer": ("lp_ft",)}),
    Choice("max_length", (64, 128, 256, 512)),
    Choice("tapt_steps", (0, 100, 300, 1000), when=TEXT),  # masked-LM pretraining on texts
    # Only with a teacher's logits (pretune distill searches them); no effect without one.
    Float("distill_alpha", 0.0, 1.0),
    Float("distill_temperature", 1.0, 8.0),
    # Text preprocessing and augmentation (pretune.data.text_prep); off by default.
    Choice("lowercase", (False, True), when=TEXT),
    Choice("stopwords", (False, True), when=TEXT),
    Choice("stem", STEMMERS, when=TEXT),
    Choice("word_delete", (0.0, 0.05, 0.1, 0.2), when=TEXT),
    Choice("word_swap", (0.0, 0.05, 0.1, 0.2), when=TEXT),
    Choice("text_aug_prob", (0.25, 0.5, 1.0), when=TEXT),
    # Image augmentation (pretune.data.augment): each with its off value among the choices.
    *IMAGE_AUGMENTATIONS,
    Choice("noise_std", (0.0, 0.02, 0.05, 0.1), when=IMAGE),
    Choice("salt_pepper", (0.0, 0.01, 0.03), when=IMAGE),
    Choice("saturation", (0.0, 0.2, 0.4), when=IMAGE),
)

FULL: dict[str, Dimension] = {d.name: d for d in FULL_SPACE}
ORDER: dict[str, int] = {d.name: i for i, d in enumerate(FULL_SPACE)}

# --- the default space: what practitioners search when fine-tuning a transformer -------------
# Sources:
#   [BERT]    Devlin et al. 2019, BERT, appendix A.3: lr {2e-5, 3e-5, 5e-5}, batch {16, 32},
#             epochs {2, 3, 4}, Adam with weight decay 0.01, linear decay, dropout 0.1.
#   [RoBERTa] Liu et al. 2019, RoBERTa, appendix (GLUE fine-tuning): warmup 6% of the steps,
#             weight decay 0.1, lr {1e-5, 2e-5, 3e-5}, batch {16, 32}, up to 10 epochs.
#   [Mosbach] Mosbach, Andriushchenko, Klakow 2021, "On the Stability of Fine-tuning BERT":
#             train longer (more epochs) with warmup and bias-corrected Adam(W) for stable runs.
#   [MiniLM]  Small distilled models (MiniLM, Wang et al. 2020; sentence-transformers
#             checkpoints) are commonly fine-tuned at higher rates, about 1e-4.
#   [Freeze]  Lee, Tang, Lin 2019, "What Would Elsa Do? Freezing Layers During Transformer
#             Fine-Tuning": freezing the bottom layers keeps most of the quality.
#   [LS]      Szegedy et al. 2016 (label smoothing 0.1); Müller et al. 2019, "When does label
#             smoothing help?".
#   [Huber]   Huber 1964, "Robust Estimation of a Location Parameter": quadratic near zero,
#             linear beyond delta, so a few outlying targets do not dominate the gradient.
#   [LoRA]    Hu et al. 2021, LoRA: rank 4 to 16 (8 is common), alpha about 2 x rank,
#             dropout 0.05 to 0.1.
#   [LLRD]    Layer-wise lr decay: Clark et al. 2020, ELECTRA (appendix: 0.8 for Base, 0.9 for
#             Large); Bao et al. 2022, BEiT (0.65 to 0.9); AutoGluon's multimodal presets
#             (optim.lr_decay 0.9). 1.0 (off) stays a choice so the plain recipes are reachable.
#   [LP-FT]   Kumar et al. 2022, "Fine-Tuning can Distort Pretrained Features": probing the
#             head first, then fine-tuning everything, matches or beats fine-tuning in
#             distribution and beats it out of distribution; the probe is cheap here (its
#             frozen features are cached and one probe serves every trial).

DEFAULT_SPACE: tuple[Dimension, ...] = (
    Choice("optimizer", ("adamw",)),  # [BERT], [RoBERTa], [Mosbach]: AdamW
    Float("lr", 1e-5, 2e-4, log=True),  # [BERT] 2e-5..5e-5, [RoBERTa] 1e-5, [MiniLM] ~1e-4
    Float("weight_decay", 0.0, 0.1),  # [BERT] 0.01, [RoBERTa] 0.1
    Choice("layer_decay", (1.0, 0.9, 0.8, 0.7)),  # [LLRD]
    Choice("batch_size", (16, 32, 64)),  # [BERT], [RoBERTa] {16, 32}; 64 for small models
    Int("epochs", 2, 5),  # [BERT] {2, 3, 4}; [Mosbach] longer training is more stable
    Choice("schedule", ("linear", "cosine")),  # [BERT], [RoBERTa] linear decay; cosine common
    Float("warmup_ratio", 0.0, 0.2),  # [RoBERTa] 6%; [Mosbach] warmup stabilizes
    Float("label_smoothing", 0.0, 0.1),  # [LS] 0.1
    # [Huber] regression: MSE, MAE or Huber (robust to outlying targets); delta 1 is in the
    # standardized targets' units, i.e. one standard deviation.
    Choice("loss", TASK_LOSSES["regression"]),  # regression only (TASK_SETTINGS)
    Float("dropout", 0.0, 0.2),  # [BERT] 0.1
    # To search LoRA as well, add "lora" to these choices: lora_* below then take part.
    # lp_ft ([LP-FT]) and linear_probe are in the full space; a space file adds them. With
    # pooling auto (the default) a probe of the default MiniLM reads its own mean pooling, not
    # BERT's untrained pooler over [CLS], and reaches about 0.80 on SST-2 (docs/models.md), so
    # both are usable; they are not searched by default until a search shows them worth their
    # trials.
    Choice("transfer", ("full", "freeze_bottom")),  # [Freeze]
    Int("freeze_layers", 1, 4, when={"transfer": ("freeze_bottom",)}),  # [Freeze]; MiniLM-L6: 6
    Choice("lora_r", (4, 8, 16), when={"transfer": ("lora",)}),  # [LoRA]
    Float("lora_alpha", 8.0, 32.0, log=True, when={"transfer": ("lora",)}),  # [LoRA]
    Float("lora_dropout", 0.0, 0.1, when={"transfer": ("lora",)}),  # [LoRA]
    *IMAGE_AUGMENTATIONS,  # only where the data are images
)

DEFAULT: dict[str, Dimension] = {d.name: d for d in DEFAULT_SPACE}
# Searched when --unlabeled texts are given: none, or a few hundred steps of TAPT ([TAPT]
# Gururangan et al. 2020 adapt for 100 epochs of small task data; a budget of minutes allows less).
TAPT_WITH_UNLABELED = Choice("tapt_steps", (0, 200, 500), when=TEXT)


# --- sampling ----------------------------------------------------------------------------------


def suggest(trial, space: Iterable[Dimension], context: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Sample ``space`` in an Optuna ``trial``; return the sampled values by name.

    ``context`` holds the values of settings that are not sampled (pinned values and the base
    configuration); conditions see them and the values sampled so far, in declaration order.
    """
    values = dict(context or {})
    params: dict[str, Any] = {}
    for dim in space:
        if dim.applies(values):
            params[dim.name] = values[dim.name] = dim.suggest(trial)
    return params


# --- building a space: the default, a space file, pinned values ------------------------------


def resolve_space(
    spec: Mapping[str, Any] | None = None,
    fixed: Mapping[str, Any] | None = None,
    base: RunConfig | None = None,
    *,
    source: str = "the search space",
) -> tuple[tuple[Dimension, ...], dict[str, Any]]:
    """The space to search and the pinned values, from a space file's content and ``--fixed``.

    ``spec`` is the parsed space file (see the module docstring); ``fixed`` maps setting names to
    values (strings from the command line are converted to the setting's type). Returns the
    dimensions (in ``FULL_SPACE`` order) and every pinned value by bare name: the space file's
    plain values, overridden by ``fixed``. Raises ConfigError for unknown names and bad specs.
    """
    base = base or RunConfig()
    spec = dict(spec or {})
    extend = spec.pop("extend", True)
    if not isinstance(extend, bool):
        raise ConfigError(
            f"extend in {source} must be true or false, but got {extend!r}. Write 'extend: true' "
            f"to change the default space or 'extend: false' to search only the listed settings."
        )
    dims: dict[str, Dimension] = dict(DEFAULT) if extend else {}
    pinned: dict[str, Any] = {}
    for raw_name, value in spec.items():
        if value is None or value is False:
            dims.pop(_searchable_name(raw_name, source), None)
        elif isinstance(value, Mapping):
            name = _searchable_name(raw_name, source)
            dims[name] = parse_dimension(name, value, dims.get(name), source=source)
        elif isinstance(value, (list, tuple)):
            name = _searchable_name(raw_name, source)
            raise ConfigError(
                f"The spec of {name} in {source} must be a mapping or a plain value, but got the "
                f"list {list(value)!r}. Write it as '{name}: {{choices: {list(value)!r}}}'."
            )
        else:  # a plain value pins any setting, searchable or not
            pinned[_setting_name(raw_name, source)] = value
    for raw_name, value in (fixed or {}).items():
        pinned[_setting_name(raw_name, "--fixed")] = value
    pinned = _typed(pinned, base, source)
    if extend and base.data.unlabeled and "tapt_steps" not in spec and base.model.tapt_steps == 0:
        dims["tapt_steps"] = TAPT_WITH_UNLABELED  # texts given for it: let the search choose
    for name in pinned:
        dims.pop(name, None)
    ordered = sorted(dims.values(), key=lambda d: ORDER.get(d.name, len(ORDER)))
    context = {**base.flat(), **pinned}
    task = context.get("task", "auto")
    task = "classification" if task == "auto" else task
    ordered = [d for d in ordered if task in TASK_SETTINGS.get(d.name, (task,))]
    if task == "token":
        narrowed = {d.name: d for d in TOKEN_DEFAULTS}
        ordered = [narrowed[d.name] if d.name in narrowed and DEFAULT.get(d.name) == d else d
                   for d in ordered]
    return _drop_impossible(ordered, context), pinned


def resolve_task(base: RunConfig, spec: Mapping[str, Any] | None = None,
                 fixed: Mapping[str, Any] | None = None) -> RunConfig:
    """``base`` with the task of its data (``config.with_task``): the one named by ``task``
    (in ``base``, a space file's plain value or ``fixed``), else the one detected from the
    training data's label column. Pinned data settings (label column, delimiter) are used to
    detect it; the metric left at its default becomes the task's."""

    pins = {k: v for k, v in {**(spec or {}), **(fixed or {})}.items()
            if not isinstance(v, (Mapping, list, tuple)) and v is not None and v is not False}
    data_pins = {}
    for raw, value in pins.items():
        try:
            group, name = locate(str(raw))
        except ConfigError:
            continue  # resolve_space reports it
        if group == "data":
            data_pins[name] = value
    data = base.with_settings(data_pins).data if data_pins else base.data
    return with_task(base, task_of(data))


def parse_dimension(name: str, spec: Mapping[str, Any], current: Dimension | None = None,
                    *, source: str = "the search space") -> Dimension:
    """A Dimension from a space-file spec; bounds the spec leaves out come from ``current``."""
    where = f"The spec of {name} in {source}"
    unknown = [k for k in spec if k not in SPEC_KEYS]
    if unknown:
        raise ConfigError(
            f"{where} may only have the keys {', '.join(SPEC_KEYS)}, but has {', '.join(map(str, unknown))}. "
            f"Write e.g. '{name}: {{low: 1, high: 4}}' or '{name}: {{choices: [a, b]}}'."
        )
    registered = FULL.get(name)
    when = _parse_when(name, spec["when"], where) if "when" in spec else (
        registered.when if registered else ())
    if "choices" in spec:
        return _choice_dimension(name, spec, when, where, source)
    return _range_dimension(name, spec, current, registered, when, where, source)


def _choice_dimension(name: str, spec: Mapping[str, Any], when: tuple, where: str,
                      source: str) -> Dimension:
    """A categorical Dimension from a spec with ``choices``."""
    if any(k in spec for k in ("low", "high", "log", "step", "int")):
        raise ConfigError(
            f"{where} must give either choices or a range (low, high), but gives both. "
            f"Keep one of them."
        )
    choices = spec["choices"]
    if not isinstance(choices, (list, tuple)) or not choices:
        raise ConfigError(
            f"choices of {name} in {source} must be a non-empty list, but got {choices!r}. "
            f"Write '{name}: {{choices: [a, b]}}'."
        )
    bad = [c for c in choices if not isinstance(c, (str, int, float, bool)) and c is not None]
    if bad:
        raise ConfigError(
            f"choices of {name} in {source} must be plain values, but got {bad[0]!r}. "
            f"Use numbers or names."
        )
    dim = Dimension(name, "categorical", choices=tuple(_typed_value(name, c, where) for c in choices),
                    when=when)
    for c in dim.choices:
        _check_value(name, c, where)
    return dim


def _range_dimension(name: str, spec: Mapping[str, Any], current: Dimension | None,
                     registered: Dimension | None, when: tuple, where: str,
                     source: str) -> Dimension:
    """An int or float Dimension from a spec with a range (``low``, ``high``, ``log``, ``step``,
    ``int``); bounds it leaves out come from ``current``."""
    numeric = current if current is not None and current.kind != "categorical" else None
    if numeric is None and not ("low" in spec and "high" in spec):
        missing = " and ".join(k for k in ("low", "high") if k not in spec)
        example = (f"{{low: {registered.low}, high: {registered.high}}}"
                   if registered is not None and registered.kind != "categorical"
                   else "{low: 1, high: 4}")
        raise ConfigError(
            f"{where} must give low and high (or choices), but {missing} is missing. "
            f"Write e.g. '{name}: {example}'."
        )
    low = _number(name, "low", spec["low"], source) if "low" in spec else numeric.low
    high = _number(name, "high", spec["high"], source) if "high" in spec else numeric.high
    log = spec.get("log", numeric.log if numeric and "step" not in spec else False)
    step = _number(name, "step", spec["step"], source) if spec.get("step") is not None else (
        numeric.step if numeric and "log" not in spec else None)
    if not isinstance(log, bool):
        raise ConfigError(f"log of {name} in {source} must be true or false, but got {log!r}. "
                          f"Write 'log: true' or leave it out.")
    kind = _range_kind(name, spec, numeric, source)
    if kind == "int":
        for label, v in (("low", low), ("high", high), ("step", step)):
            if v is not None and float(v) != int(v):
                raise ConfigError(
                    f"{label} of {name} in {source} must be a whole number for an integer range, "
                    f"but got {v!r}. Give a whole number."
                )
        low, high = int(low), int(high)
        step = int(step) if step is not None else None
    _check_range(name, low, high, log, step, where, source)
    return Dimension(name, kind, low, high, log, step, (), when)


def _range_kind(name: str, spec: Mapping[str, Any], numeric: Dimension | None, source: str) -> str:
    """"int" or "float": the spec's ``int``, else whole numbers for whole-number settings and
    for integer dimensions being narrowed."""
    want_int = spec.get("int")
    if want_int is not None and not isinstance(want_int, bool):
        raise ConfigError(f"int of {name} in {source} must be true or false, but got {want_int!r}. "
                          f"Write 'int: true' or leave it out.")
    whole_only = _whole_only(name)
    if want_int is False and whole_only:
        raise ConfigError(
            f"{name} takes whole numbers only, but {source} sets 'int: false'. Remove 'int: false'."
        )
    if want_int is None:  # whole-number settings, and integer dimensions being narrowed
        want_int = whole_only or (numeric is not None and numeric.kind == "int")
    return "int" if want_int else "float"


def _check_range(name: str, low: Any, high: Any, log: bool, step: Any, where: str,
                 source: str) -> None:
    """ConfigError unless low < high, a log range starts above 0 and has no step, and a step is
    positive; the bounds must be values the setting takes."""
    if not low < high:
        raise ConfigError(
            f"{where} must have low below high, but got low {low!r} and high {high!r}. Swap them, "
            f"or pin the setting with a plain value ('{name}: {low}')."
        )
    if log and low <= 0:
        raise ConfigError(
            f"A log-scale range must have low above 0, but {name} in {source} has low {low!r}. "
            f"Raise low or remove 'log: true'."
        )
    if log and step is not None:
        raise ConfigError(
            f"{where} can have log or step, but not both. Remove one of them."
        )
    if step is not None and step <= 0:
        raise ConfigError(f"step of {name} in {source} must be above 0, but got {step!r}. "
                          f"Give a positive step.")
    _check_value(name, low, where)
    _check_value(name, high, where)


def read_space_file(path: str | Path) -> dict[str, Any]:
    """The mapping in a space file, with clear errors for a missing or malformed file."""
    return read_mapping(path, "--space", "'name: spec' lines, e.g. 'lr: {low: 1e-5, high: 1e-4, log: true}'")


def space_to_dict(space: Iterable[Dimension]) -> dict[str, dict[str, Any]]:
    """A space as the mapping of specs that a space file holds (with ``extend: false``)."""
    return {d.name: d.to_spec() for d in space}


# --- helpers -----------------------------------------------------------------------------------


def _searchable_name(raw: Any, source: str) -> str:
    key = str(raw).strip().replace("-", "_")
    if "." in key:
        key = key.split(".", 1)[1]
    if key in FULL:
        return key
    if key in setting_names():
        raise ConfigError(
            f"{key} cannot be searched, but {source} lists it. Pin it with a plain value "
            f"('{key}: value') or --fixed {key}=VALUE, or search one of: {', '.join(FULL)}."
        )
    return _setting_name(key, source)


def _setting_name(raw: Any, source: str) -> str:
    key = str(raw).strip().replace("-", "_")
    try:
        return locate(key)[1]
    except ConfigError:
        pass
    close = difflib.get_close_matches(key.split(".")[-1], setting_names(), n=3)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    raise ConfigError(
        f"{source} names {key!r}, which is not a setting.{hint} Use a setting name such as lr "
        f"or batch_size (see 'pretune train --help')."
    )


def _parse_when(name: str, when: Any, where: str) -> tuple[tuple[str, tuple], ...]:
    if when is None:
        return ()
    if not isinstance(when, Mapping) or not when:
        raise ConfigError(
            f"{where} must give 'when' as a mapping of settings to lists of values, but got "
            f"{when!r}. Write e.g. 'when: {{optimizer: [momentum, nesterov]}}'."
        )
    out = []
    for parent, values in when.items():
        _, parent_name = locate(str(parent))
        if parent_name == name:
            raise ConfigError(f"{where} makes {name} depend on itself. Name another setting in 'when'.")
        if not isinstance(values, (list, tuple)):
            values = [values]
        out.append((parent_name, tuple(_typed_value(parent_name, v, where) for v in values)))
    return tuple(out)


def _number(name: str, label: str, value: Any, source: str) -> float | int:
    # YAML 1.1 reads 1e-5 (no dot) as a string; accept any text that is a number.
    number: Any = value
    if isinstance(number, bool):
        number = None
    elif isinstance(number, str):
        try:
            number = float(number)
        except ValueError:
            number = None
    if not isinstance(number, (int, float)) or not math.isfinite(number):
        raise ConfigError(
            f"{label} of {name} in {source} must be a number, but got {value!r}. "
            f"Write e.g. '{label}: 1e-5'."
        )
    return number


_TYPES = {f.name: str(f.type) for c in (DataConfig, ModelConfig, TrainConfig) for f in fields(c)}


def _whole_only(name: str) -> bool:
    """Whether the setting takes whole numbers only (``int`` in its type, ``float`` not)."""
    kind = _TYPES[locate(name)[1]]
    return kind.startswith("int") and "float" not in kind


def _typed_value(name: str, value: Any, where: str) -> Any:
    """``value`` converted to the setting's type (as ``--set`` would)."""
    if isinstance(value, str):
        try:
            return RunConfig().with_settings({name: value}).flat()[name]
        except PretuneError as err:
            raise ConfigError(f"{where} is not valid: {err}") from None
    if isinstance(value, float) and value.is_integer() and _whole_only(name):
        return int(value)
    return value


def _check_value(name: str, value: Any, where: str) -> None:
    try:
        validate(RunConfig().with_settings({name: value}))
    except PretuneError as err:
        raise ConfigError(f"{where} is not valid: {err}") from None


def _typed(pinned: Mapping[str, Any], base: RunConfig, source: str) -> dict[str, Any]:
    """Pinned values converted to their settings' types and validated together with ``base``."""
    if not pinned:
        return {}
    config = base.with_settings(dict(pinned))
    flat = config.flat()
    typed = {name: flat[name] for name in pinned}
    validate(config)
    return typed


def _drop_impossible(dims: list[Dimension], context: Mapping[str, Any]) -> tuple[Dimension, ...]:
    """Leave out dimensions whose condition no value of their parents can meet."""
    possible: dict[str, set | None] = {}  # name -> values it can take (None: any number)
    kept: list[Dimension] = []
    for dim in dims:
        ok = True
        for parent, allowed in dim.when:
            values = possible.get(parent, {_hashable(context.get(parent))})
            if values is not None and not values & {_hashable(v) for v in allowed}:
                ok = False
                break
            if values is None:  # a numeric range: check that some allowed value is inside it
                p = next(d for d in kept if d.name == parent)
                if not any(isinstance(v, (int, float)) and p.low <= v <= p.high for v in allowed):
                    ok = False
                    break
        if not ok:
            continue
        kept.append(dim)
        if dim.kind == "categorical":
            values_of = {_hashable(c) for c in dim.choices}
        else:
            values_of = None
        if dim.when:  # a conditional dimension can also keep the base value
            values_of = None if values_of is None else values_of | {_hashable(context.get(dim.name))}
        possible[dim.name] = values_of
    return tuple(kept)


def _hashable(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


__all__ = [
    "Dimension", "Float", "Int", "Choice", "FULL_SPACE", "DEFAULT_SPACE", "suggest",
    "resolve_space", "parse_dimension", "read_space_file", "space_to_dict",
]
