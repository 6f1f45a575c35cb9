"""Every transfer strategy and head initialization through the same checks, in a whole run:
one short run lowers the validation loss, and what the strategy freezes does not move."""

import pytest
import torch

from pretune.api import build_config
from pretune.config import HEAD_INITS, TRANSFERS
from pretune.training import run as run_module
from pretune.training.loop import evaluate_model


def _run(monkeypatch, tiny_learner_dir, csv, **kw):
    """fit() with the model's loss and weights captured just before training starts."""
    seen = {}
    real_train = run_module.train

    def spy(model, train_batches, valid_batches, settings, **options):
        seen["loss"] = evaluate_model(model, valid_batches)["loss"]
        seen["weights"] = {n: p.detach().clone() for n, p in model.named_parameters()}
        seen["frozen"] = {n for n, p in model.named_parameters() if not p.requires_grad}
        return real_train(model, train_batches, valid_batches, settings, **options)

    monkeypatch.setattr(run_module, "train", spy)
    settings = dict(model=tiny_learner_dir, train=str(csv), valid=str(csv), epochs=4, lr=3e-3,
                    batch_size=8, precision="fp32", threads=1, metric="loss", patience=None,
                    warmup_ratio=0.0)
    settings.update(kw)
    result = run_module.fit(build_config(None, settings))
    return seen, result


@pytest.mark.parametrize("transfer", TRANSFERS)
def test_transfer_strategy_lowers_the_loss_and_keeps_frozen_weights(monkeypatch, tiny_learner_dir, sentiment_csv, transfer):
    extra = {"lr": 1e-2} if transfer in ("linear_probe", "lora") else {}
    seen, result = _run(monkeypatch, tiny_learner_dir, sentiment_csv, transfer=transfer,
                        freeze_layers=1, **extra)
    assert result.metrics["loss"] < seen["loss"] * 0.95, (seen["loss"], result.metrics["loss"])
    if transfer == "full":
        assert not seen["frozen"]
        return
    assert seen["frozen"]
    after = dict(result.model.named_parameters()) if transfer != "lora" else None
    if after is None:  # LoRA was merged after training: base weights moved by exactly B @ A
        return
    for name in seen["frozen"]:
        assert torch.equal(after[name].detach(), seen["weights"][name]), name


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
    seen, result = _run(monkeypatch, tiny_learner_dir, sentiment_csv, head_init=head_init,
                        head_layers=head_layers, epochs=6)
    assert result.metrics["loss"] < seen["loss"] * 0.95, (seen["loss"], result.metrics["loss"])
