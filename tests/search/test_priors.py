"""Priors from practice: recipes queued as the first trials, inside the space."""

from __future__ import annotations

import optuna

from pretune.config import RunConfig
from pretune.search import priors
from pretune.search.space import DEFAULT_SPACE, resolve_space, suggest


def in_space(params, dims):
    by_name = {d.name: d for d in dims}
    for name, value in params.items():
        d = by_name[name]
        if d.kind == "categorical":
            assert value in d.choices, (name, value)
        else:
            assert d.low <= value <= d.high, (name, value)


def test_recipes_of_the_default_space_are_the_published_ones():
    found = priors.recipes(DEFAULT_SPACE, 3e-5)
    assert len(found) == 3
    first = found[0]
    assert first == {"optimizer": "adamw", "lr": 3e-5, "weight_decay": 0.01, "batch_size": 32,
                     "epochs": 3, "schedule": "linear", "warmup_ratio": 0.06,
                     "label_smoothing": 0.0, "dropout": 0.1, "transfer": "full",
                     "layer_decay": 1.0}
    assert [r["lr"] for r in found] == [3e-5, 1.5e-5, 6e-5]
    assert all(r["layer_decay"] == 1.0 and "pooling" not in r for r in found)
    for params in found:
        in_space(params, DEFAULT_SPACE)


def test_recipes_stay_inside_a_narrowed_space_and_never_name_a_pinned_setting():
    spec = {"lr": {"low": 1e-4, "high": 3e-4}, "batch_size": {"choices": [8, 16]},
            "epochs": {"low": 1, "high": 2}, "schedule": {"choices": ["cosine", "constant"]}}
    dims, pinned = resolve_space(spec, {"weight_decay": "0.05", "warmup_ratio": "0"}, RunConfig())
    found = priors.recipes(dims, 3e-5, pinned)
    assert found
    for params in found:
        in_space(params, dims)
        assert "weight_decay" not in params and "warmup_ratio" not in params
        assert params["lr"] >= 1e-4 and params["batch_size"] == 16 and params["epochs"] == 2
    # Clipping made recipes 1 and 2 the same: it is queued once.
    assert len(found) == len({tuple(sorted(p.items())) for p in found})
    # "linear" is not offered: the sampler picks the schedule of recipes 1 and 2.
    assert "schedule" not in found[0] and found[-1]["schedule"] == "cosine"


def test_conditional_settings_follow_the_recipe():
    dims, _ = resolve_space({"transfer": {"choices": ["freeze_bottom", "lora"]}}, None, RunConfig())
    for params in priors.recipes(dims, 3e-5):
        assert "transfer" not in params  # "full" is not offered
        assert "freeze_layers" not in params and "lora_r" not in params


def test_base_lr_follows_the_model_width():
    assert priors.base_lr(384) == 1e-4
    assert priors.base_lr(768) == 3e-5
    assert priors.base_lr(1024) < 3e-5
    assert priors.base_lr(None) == 3e-5


def test_a_new_study_runs_the_recipes_first_and_marks_them():
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    queued = priors.enqueue(study, DEFAULT_SPACE, 1e-4)
    assert queued == 3
    expected = priors.recipes(DEFAULT_SPACE, 1e-4)
    study.optimize(lambda t: len(suggest(t, DEFAULT_SPACE)), n_trials=5)
    trials = study.trials
    for trial, params in zip(trials, expected):
        assert {k: trial.params[k] for k in params} == params
        assert trial.user_attrs["source"] == priors.SOURCE
    assert all("source" not in t.user_attrs for t in trials[3:])
    # A study that has trials (a continued search) gets none again.
    assert priors.enqueue(study, DEFAULT_SPACE, 1e-4) == 0


def test_recipes_of_an_image_search_keep_augmentation_off():
    base = RunConfig().with_settings({"modality": "image"})
    dims, _ = resolve_space(None, None, base)
    augmentations = {"flip_prob", "rotate_degrees", "crop_scale", "brightness", "contrast"}
    assert augmentations <= {d.name for d in dims}
    for params in priors.recipes(dims, 1e-4, base.flat()):
        assert {k: params[k] for k in augmentations} == {
            "flip_prob": 0.0, "rotate_degrees": 0.0, "crop_scale": 1.0, "brightness": 0.0,
            "contrast": 0.0}
