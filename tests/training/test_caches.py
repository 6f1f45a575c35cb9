"""Runs that share caches: the second run on the same data tokenizes nothing and runs no frozen
layer, and training from cached features is training the same model."""

import numpy as np
import pytest
import torch

from pretune.api import build_config
from pretune.training.caches import RunCaches
from pretune.training.run import fit


@pytest.fixture()
def valid_csv(sentiment_csv, tmp_path):
    import pandas as pd

    path = tmp_path / "valid.csv"
    pd.read_csv(sentiment_csv).iloc[:12].to_csv(path, index=False)
    return path


def settings(model_dir, csv, valid=None, **kw):
    base = dict(model=model_dir, train=str(csv), valid=str(valid or csv), epochs=3, lr=1e-2, batch_size=8,
                precision="fp32", threads=1, metric="loss", patience=None)
    base.update(kw)
    return build_config(None, base)


@pytest.mark.parametrize("pooling", ["cls", "mean"])
@pytest.mark.parametrize("transfer", ["linear_probe", "freeze_bottom"])
def test_training_from_cached_features_trains_the_same_model(tiny_learner_dir, sentiment_csv, transfer,
                                                             pooling):
    # Mean pooling reads the attention mask, which the model gets with cached features too.
    runs = {cache: fit(settings(tiny_learner_dir, sentiment_csv, transfer=transfer, freeze_layers=1,
                                feature_cache=cache, pooling=pooling))
            for cache in (True, False)}
    assert runs[True].feature_depth == (2 if transfer == "linear_probe" else 1)
    assert runs[False].feature_depth is None
    for run in runs.values():
        assert getattr(run.model.config, "pretune_pooling", None) == {"cls": None}.get(pooling, pooling)
    assert runs[True].metrics["loss"] == pytest.approx(runs[False].metrics["loss"], rel=1e-4)
    cached, plain = (dict(runs[c].model.named_parameters()) for c in (True, False))
    assert cached.keys() == plain.keys()  # the whole model comes back, every layer in place
    for name, p in plain.items():
        if name.endswith("key.bias"):
            # Attention is blind to a key's bias (softmax of a constant shift), so its gradient
            # is rounding noise, which Adam scales up to full steps: it moves at random.
            continue
        assert torch.allclose(cached[name], p, atol=1e-5), name


def test_a_second_run_with_the_same_caches_prepares_no_data(tiny_learner_dir, sentiment_csv, valid_csv, tmp_path):
    caches = RunCaches(tmp_path / "cache")
    fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="linear_probe",
                         epochs=1), caches=caches)
    assert caches.tokens.misses == 2 and caches.features.misses == 2  # train and valid
    second = fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="linear_probe",
                          epochs=1, lr=3e-3, head_layers=1), caches=caches)
    assert caches.tokens.misses == 2 and caches.tokens.hits == 2
    assert caches.features.misses == 2  # the first run's features served the second
    assert {"model", "data", "features", "train"} <= set(second.timings)

    # Another process on the same run directory finds both on disk.
    fresh = RunCaches(tmp_path / "cache")
    fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="linear_probe", epochs=1),
        caches=fresh)
    assert fresh.tokens.misses == 0 and fresh.features.misses == 0


def test_a_deeper_freeze_starts_from_a_shallower_cached_depth(tiny_learner_dir, sentiment_csv, valid_csv, monkeypatch):
    import pretune.training.caches as caches_module

    starts = []
    real = caches_module.compute_features

    def spy(model, encoded, depth, **kw):
        starts.append((depth, None if kw.get("start") is None else kw["start"].depth))
        return real(model, encoded, depth, **kw)

    monkeypatch.setattr(caches_module, "compute_features", spy)
    caches = RunCaches()
    fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="freeze_bottom",
                 freeze_layers=1, epochs=1), caches=caches)
    fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="linear_probe", epochs=1),
        caches=caches)
    assert starts == [(1, None), (1, None), (2, 1), (2, 1)]


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_reduced_precision_training_still_lowers_the_loss(tiny_learner_dir, sentiment_csv, precision):
    result = fit(settings(tiny_learner_dir, sentiment_csv, precision=precision, lr=3e-3, epochs=4,
                          evals_per_epoch=2))
    history = result.train_result.history
    assert result.train_result.precision == precision
    assert all(np.isfinite(h["loss"]) for h in history)
    assert history[-1]["loss"] < history[0]["loss"]


def test_lp_ft_probes_the_head_on_a_frozen_body_then_trains_everything(tiny_learner_dir, sentiment_csv, valid_csv, monkeypatch):
    import pretune.training.run as run_module

    stages = []
    real = run_module.train

    def spy(model, train_batches, valid_batches, settings, **kw):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        stages.append({"trainable": trainable, "lr": settings.lr,
                       "head": {n: p.detach().clone() for n, p in model.named_parameters()
                                if n.startswith("classifier")}})
        return real(model, train_batches, valid_batches, settings, **kw)

    monkeypatch.setattr(run_module, "train", spy)
    caches = RunCaches()
    first = fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="lp_ft", lr=1e-3,
                         probe_lr=3e-2, probe_epochs=2, epochs=1), caches=caches)
    probe, tune = stages
    assert probe["lr"] == 3e-2 and probe["trainable"] == {"classifier.weight", "classifier.bias"}
    assert tune["lr"] == 1e-3 and any(n.startswith("bert.encoder") for n in tune["trainable"])
    assert first.probe_metrics["loss"] > 0 and first.timings["probe"] > 0

    # Another trial (other lr and seed; a search pins data_seed) reuses the probed head.
    stages.clear()
    fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="lp_ft", lr=3e-4, seed=7, data_seed=0,
                 probe_lr=3e-2, probe_epochs=2, epochs=1), caches=caches)
    assert len(stages) == 1
    for name, value in stages[0]["head"].items():
        assert torch.equal(value, tune["head"][name]), name

    # Another probe setting is another probe.
    stages.clear()
    fit(settings(tiny_learner_dir, sentiment_csv, valid_csv, transfer="lp_ft", probe_lr=1e-2,
                 probe_epochs=2, epochs=1), caches=caches)
    assert len(stages) == 2
