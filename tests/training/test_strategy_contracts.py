"""Every transfer strategy and head initialization through the same checks, in a whole run:
one short run lowers the validation loss, and what the strategy freezes does not move."""

import pytest
import torch

from pretune.api import build_config
from pretune.config import HEAD_INITS, TRANSFERS
from pretune.training import run as run_module
from pretune.training.loop import evaluate_model


def _run(monkeypatch, tiny_learner_dir, csv, **kw):
    """fit() with the model's weights captured as built and its loss just before training
    (which may run from cached features of the frozen layers)."""
    seen = {}
    real_build, real_train = run_module.build_model, run_module.train

    def spy_build(*args, **options):
        model, tokenizer, summary = real_build(*args, **options)
        seen["weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["frozen"] = {n for n, p in model.named_parameters() if not p.requires_grad}
        return model, tokenizer, summary

    def spy_train(model, train_batches, valid_batches, settings, **options):
        seen["loss"] = evaluate_model(model, valid_batches)["loss"]
        return real_train(model, train_batches, valid_batches, settings, **options)

    monkeypatch.setattr(run_module, "build_model", spy_build)
    monkeypatch.setattr(run_module, "train", spy_train)
    settings = dict(model=tiny_learner_dir, train=str(csv), valid=str(csv), epochs=4, lr=3e-3,
                    batch_size=8, precision="fp32", threads=1, metric="loss", patience=None,
                    warmup_ratio=0.0)
    settings.update(kw)
    result = run_module.fit(build_config(None, settings))
    return seen, result


# The feature cache applies to strategies with a frozen bottom: those run with and without it.
@pytest.mark.parametrize("transfer,feature_cache", [
    *[(t, True) for t in TRANSFERS], ("linear_probe", False), ("freeze_bottom", False)])
def test_transfer_strategy_lowers_the_loss_and_keeps_frozen_weights(monkeypatch, tiny_learner_dir, sentiment_csv, transfer, feature_cache):
    extra = {"lr": 1e-2} if transfer in ("linear_probe", "lora") else {}
    at_merge = {}  # every weight as it is when LoRA adapters would be merged into the base
    real_merge = run_module.merge_lora

    def spy_merge(model):
        at_merge.update({n: p.detach().clone() for n, p in model.named_parameters()})
        return real_merge(model)

    monkeypatch.setattr(run_module, "merge_lora", spy_merge)
    seen, result = _run(monkeypatch, tiny_learner_dir, sentiment_csv, transfer=transfer,
                        freeze_layers=1, feature_cache=feature_cache, **extra)
    expected_depth = {"linear_probe": 2, "freeze_bottom": 1}.get(transfer) if feature_cache else None
    assert result.feature_depth == expected_depth
    assert result.metrics["loss"] < seen["loss"] * 0.95, (seen["loss"], result.metrics["loss"])
    if transfer == "full":
        assert not seen["frozen"]
        return
    if transfer == "lp_ft":  # built frozen for its probe, then the whole network trains
        assert result.probe_metrics and "loss" in result.probe_metrics
        moved = [n for n in seen["frozen"]
                 if not torch.equal(dict(result.model.named_parameters())[n], seen["weights"][n])]
        assert moved
        return
    assert seen["frozen"]
    # LoRA is checked before its merge (afterwards the base weights have moved by B @ A): the
    # pretrained weights are frozen and unchanged, and the adapters are what trained.
    after = at_merge if transfer == "lora" else dict(result.model.named_parameters())
    for name in seen["frozen"]:
        assert torch.equal(after[name].detach(), seen["weights"][name]), name
    trained = set(seen["weights"]) - seen["frozen"]
    assert trained
    moved = {n for n in trained if not torch.equal(after[n].detach(), seen["weights"][n])}
    if transfer == "lora":
        adapters = {n for n in trained if "lora_" in n}
        assert adapters and not any("lora_" in n for n in seen["frozen"])
        assert any(".base_layer." in n for n in seen["frozen"])
        assert adapters <= moved, sorted(adapters - moved)
    else:
        assert moved


def test_lora_leaves_the_pretrained_weights_alone_until_the_merge(monkeypatch, tiny_learner_dir, sentiment_csv):
    captured = {}
    real_merge = run_module.merge_lora

    def spy(model):
        captured.update({n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n})
        return real_merge(model)

    monkeypatch.setattr(run_module, "merge_lora", spy)
    seen, _ = _run(monkeypatch, tiny_learner_dir, sentiment_csv, transfer="lora", lr=1e-2)
    assert captured
    for name, value in captured.items():
        assert torch.equal(value, seen["weights"][name]), name


@pytest.mark.parametrize("head_layers", [0, 1])
@pytest.mark.parametrize("head_init", HEAD_INITS)
def test_head_initialization_trains(monkeypatch, tiny_learner_dir, sentiment_csv, head_init, head_layers):
    # Without dropout: what is checked is the head's start, not how lucky the masks were (with
    # dropout 0.1, 1 seed in 24 lowered the loss by less than 5%, with torch's masks or pretune's).
    seen, result = _run(monkeypatch, tiny_learner_dir, sentiment_csv, head_init=head_init,
                        head_layers=head_layers, epochs=6, dropout=0.0)
    assert result.metrics["loss"] < seen["loss"] * 0.95, (seen["loss"], result.metrics["loss"])
