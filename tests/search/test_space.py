"""The search space: conditions, the default and full spaces, space files, pinned values."""

from __future__ import annotations

import optuna
import pytest

from pretune.config import RunConfig, validate
from pretune.errors import ConfigError
from pretune.search.space import (
    DEFAULT_SPACE,
    FULL_SPACE,
    read_space_file,
    resolve_space,
    space_to_dict,
    suggest,
)

# Which values of which setting each conditional dimension needs (the rules users rely on).
CONDITIONS = {
    "momentum": ("optimizer", {"momentum", "nesterov"}),
    "beta1": ("optimizer", {"adam", "adamw"}),
    "beta2": ("optimizer", {"adam", "adamw"}),
    "penalty_alpha": ("penalty", {"l1", "l2", "elasticnet"}),
    "l1_ratio": ("penalty", {"elasticnet"}),
    "poly_power": ("schedule", {"polynomial"}),
    "decay_gamma": ("schedule", {"exponential", "step"}),
    "decay_drops": ("schedule", {"step"}),
    "freeze_layers": ("transfer", {"freeze_bottom"}),
    "lora_r": ("transfer", {"lora"}),
    "lora_alpha": ("transfer", {"lora"}),
    "lora_dropout": ("transfer", {"lora"}),
    "probe_lr": ("transfer", {"lp_ft"}),
    "probe_epochs": ("transfer", {"lp_ft"}),
    "head_width": ("head_layers", {1, 2, 3}),
    "head_activation": ("head_layers", {1, 2, 3}),
    "head_norm": ("head_layers", {1, 2, 3}),
}


def sample(space, n, context=None, seed=0):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    study.optimize(lambda t: (suggest(t, space, context), 0.0)[1], n_trials=n)
    return [t.params for t in study.trials]


def test_conditional_parameters_exist_exactly_where_they_apply():
    context = RunConfig().flat()
    samples = sample(FULL_SPACE, 400, context)
    for params in samples:
        for child, (parent, values) in CONDITIONS.items():
            applies = params.get(parent, context[parent]) in values
            assert (child in params) == applies, (child, params)
        # Every sample is a configuration that validates.
        validate(RunConfig().with_settings(params))
    # And each conditional parameter did occur somewhere.
    seen = set().union(*samples)
    assert set(CONDITIONS) <= seen


# Text preprocessing and augmentation (modality text), image augmentations (modality image).
MEDIA_OPTIONS = {
    "lowercase", "stopwords", "stem", "word_delete", "word_swap", "text_aug_prob", "flip_prob",
    "rotate_degrees", "crop_scale", "noise_std", "salt_pepper", "brightness", "contrast",
    "saturation",
}


def test_the_full_space_covers_every_searchable_setting():
    names = {d.name for d in FULL_SPACE}
    assert MEDIA_OPTIONS <= names
    assert names - MEDIA_OPTIONS == {
        "optimizer", "lr", "momentum", "beta1", "beta2", "weight_decay", "layer_decay", "penalty",
        "penalty_alpha", "l1_ratio", "batch_size", "epochs", "schedule", "warmup_ratio",
        "min_lr_ratio", "poly_power", "decay_gamma", "decay_drops", "max_grad_norm",
        "label_smoothing", "class_weights", "dropout", "transfer", "freeze_layers",
        "reinit_layers", "pooling", "head_layers", "head_width", "head_activation", "head_dropout",
        "head_norm", "head_init", "lora_r", "lora_alpha", "lora_dropout", "probe_lr",
        "probe_epochs", "max_length", "tapt_steps", "loss", "huber_delta", "distill_alpha",
        "distill_temperature",
    }
    order = [d.name for d in FULL_SPACE]
    for child, (parent, _) in CONDITIONS.items():
        assert order.index(parent) < order.index(child), f"{parent} must come before {child}"


def test_tapt_steps_is_searched_for_texts_only():
    """Masked-LM pretraining (tapt_steps) needs texts: a space for images leaves it out, so an
    image search whose space lists it runs its trials instead of failing every one with it."""
    text = RunConfig().with_settings({"modality": "text"})
    image = RunConfig().with_settings({"modality": "image"})
    spec = {"extend": False, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
            "tapt_steps": {"choices": [0, 100]}}
    dims, _ = resolve_space(spec, None, text)
    assert [d.name for d in dims] == ["lr", "tapt_steps"]
    assert space_to_dict(dims)["tapt_steps"] == {"choices": [0, 100], "when": {"modality": ["text"]}}
    dims, _ = resolve_space(spec, None, image)
    assert [d.name for d in dims] == ["lr"]
    # The full space: sampled for texts it proposes tapt_steps, for images never.
    assert all("tapt_steps" in p for p in sample(FULL_SPACE, 20, text.flat()))
    assert not any("tapt_steps" in p for p in sample(FULL_SPACE, 60, image.flat()))
    full = {d.name: d for d in resolve_space({"extend": False, **{
        d.name: d.to_spec() for d in FULL_SPACE}}, None, image)[0]}
    assert "tapt_steps" not in full and "flip_prob" in full and "lr" in full


def test_default_space_is_the_practitioners_subset():
    space, pinned = resolve_space()
    spec = space_to_dict(space)
    assert pinned == {}
    assert list(spec) == ["optimizer", "lr", "weight_decay", "layer_decay", "batch_size", "epochs",
                          "schedule", "warmup_ratio", "label_smoothing", "dropout", "transfer",
                          "freeze_layers"]
    assert spec["layer_decay"] == {"choices": [1.0, 0.9, 0.8, 0.7]}
    assert spec["lr"] == {"low": 1e-5, "high": 2e-4, "log": True}
    assert spec["batch_size"] == {"choices": [16, 32, 64]}
    assert spec["epochs"] == {"low": 2, "high": 5, "int": True}
    assert spec["freeze_layers"]["when"] == {"transfer": ["freeze_bottom"]}
    # LoRA dimensions are declared but dormant until "lora" is one of transfer's choices.
    assert {"lora_r", "lora_alpha", "lora_dropout"} <= {d.name for d in DEFAULT_SPACE}
    with_lora, _ = resolve_space({"transfer": {"choices": ["full", "freeze_bottom", "lora"]}})
    assert {"lora_r", "lora_alpha", "lora_dropout"} <= {d.name for d in with_lora}
    for params in sample(space, 60, RunConfig().flat()):
        validate(RunConfig().with_settings(params))
        assert ("freeze_layers" in params) == (params["transfer"] == "freeze_bottom")


def test_a_space_file_narrows_extends_and_removes(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "lr: {low: 1e-5, high: 1e-4}\n"       # narrow (YAML reads 1e-5 as text)
        "warmup_ratio: {high: 0.1}\n"        # one bound; the rest from the default
        "epochs: {low: 1, high: 3}\n"        # an integer range stays integer
        "momentum: {low: 0.8, high: 0.95}\n"  # extend (conditional on the optimizer)
        "optimizer: {choices: [adamw, momentum]}\n"
        "dropout: null\n"                    # remove
        "label_smoothing: false\n"           # remove
        "schedule: cosine\n",                # pin
        encoding="utf-8",
    )
    space, pinned = resolve_space(read_space_file(path), source=path.name)
    spec = space_to_dict(space)
    assert spec["lr"] == {"low": 1e-5, "high": 1e-4, "log": True}
    assert spec["warmup_ratio"] == {"low": 0.0, "high": 0.1}
    assert spec["epochs"] == {"low": 1, "high": 3, "int": True}
    assert spec["momentum"] == {"low": 0.8, "high": 0.95, "when": {"optimizer": ["momentum", "nesterov"]}}
    assert spec["optimizer"] == {"choices": ["adamw", "momentum"]}
    assert "dropout" not in spec and "label_smoothing" not in spec and "schedule" not in spec
    assert pinned == {"schedule": "cosine"}
    samples = sample(space, 80, {**RunConfig().flat(), **pinned})
    assert all(1e-5 <= p["lr"] <= 1e-4 and isinstance(p["epochs"], int) for p in samples)
    assert all(("momentum" in p) == (p["optimizer"] == "momentum") for p in samples)
    assert any("momentum" in p for p in samples)


def test_extend_false_searches_only_the_listed_settings():
    space, pinned = resolve_space({"extend": False, "lr": {"low": 1e-4, "high": 1e-2, "log": True},
                                   "epochs": 2})
    assert [d.name for d in space] == ["lr"]
    assert pinned == {"epochs": 2.0}


def test_fixed_values_are_pinned_and_leave_the_space():
    space, pinned = resolve_space({"batch_size": 16}, {"lr": "3e-5", "batch_size": "8",
                                                       "transfer": "full", "patience": "2"})
    names = {d.name for d in space}
    assert pinned == {"lr": 3e-5, "batch_size": 8, "transfer": "full", "patience": 2}
    assert not names & {"lr", "batch_size", "transfer"}
    assert "freeze_layers" not in names  # its condition can no longer hold


@pytest.mark.parametrize("spec, words", [
    ({"lrr": {"low": 1, "high": 2}}, ["'lrr'", "not a setting", "Did you mean lr"]),
    ({"eps": {"low": 1e-8, "high": 1e-6}}, ["eps cannot be searched", "Pin it"]),
    ({"lr": {"low": 1e-3, "high": 1e-5}}, ["lr", "low below high", "Swap"]),
    ({"lr": {"low": "fast", "high": 1e-3}}, ["low of lr", "must be a number", "'fast'"]),
    ({"lr": {"low": 0, "high": 1e-3, "log": True}}, ["log-scale", "lr", "Raise low"]),
    ({"lr": {"min": 1e-5, "max": 1e-3}}, ["lr", "may only have the keys", "min, max"]),
    ({"momentum": {"low": 0.5}}, ["momentum", "high is missing"]),
    ({"optimizer": {"choices": ["adamw", "lion"]}}, ["optimizer", "lion", "one of"]),
    ({"batch_size": {"choices": []}}, ["choices of batch_size", "non-empty list"]),
    ({"batch_size": [16, 32]}, ["batch_size", "choices: [16, 32]"]),
    ({"freeze_layers": {"low": 1.5, "high": 3}}, ["freeze_layers", "whole number"]),
    ({"lr": {"low": 1e-5, "high": 20}}, ["lr", "(0.0, 10.0]"]),
    ({"extend": "yes"}, ["extend", "true or false"]),
])
def test_malformed_space_files_name_the_dimension_the_problem_and_the_fix(spec, words):
    with pytest.raises(ConfigError) as err:
        resolve_space(spec, source="space.yaml")
    message = str(err.value)
    for word in words:
        assert word in message, message


def test_unknown_fixed_setting_is_a_config_error():
    with pytest.raises(ConfigError, match="--fixed names 'lrr'.*Did you mean lr"):
        resolve_space(None, {"lrr": "1e-3"})
    with pytest.raises(ConfigError, match="lr must be a number"):
        resolve_space(None, {"lr": "fast"})


def test_space_file_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("- lr\n- batch_size\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        read_space_file(path)
    with pytest.raises(ConfigError, match="does not exist"):
        read_space_file(tmp_path / "missing.yaml")
