"""Differentially private training (pretune.training.privacy) on a tiny BERT."""

import numpy as np
import pytest
import torch
import yaml

pytest.importorskip("opacus", reason="the dp extra is needed: pip install 'pretune[dp]'")

from pretune.api import build_config  # noqa: E402
from pretune.config import TrainConfig  # noqa: E402
from pretune.data.collate import Batches  # noqa: E402
from pretune.data.tokenize import Encoded  # noqa: E402
from pretune.errors import ConfigError  # noqa: E402
from pretune.training import privacy  # noqa: E402
from pretune.training.loop import train  # noqa: E402
from pretune.training.run import fit  # noqa: E402

from .toy import separable, tiny_bert  # noqa: E402


def encoded(n=64):
    ids, labels = separable(n)
    return Encoded(ids, None, labels)


def dp_settings(**kw) -> TrainConfig:
    base = dict(precision="fp32", schedule="constant", warmup_ratio=0.0, weight_decay=0.0,
                patience=None, threads=1, checkpoint_soup=1, lr=5e-3, batch_size=16, epochs=2,
                dp_epsilon=3.0)
    base.update(kw)
    return TrainConfig(**base)


def test_a_dp_run_spends_at_most_its_epsilon_and_records_it():
    enc = encoded()
    result = train(tiny_bert(), Batches(enc, 16, pad_id=0, shuffle=True),
                   Batches(enc, 64, pad_id=0, shuffle=False), dp_settings())
    report = result.privacy
    assert report is not None and report["sampling"] == "poisson"
    assert 0 < report["epsilon"] <= 3.0
    assert report["delta"] == pytest.approx(1 / 64)  # default: 1 / training rows
    assert report["sample_rate"] == pytest.approx(16 / 64)
    assert report["steps"] == report["planned_steps"] == 8  # 2 epochs of 64 / 16 draws
    assert report["noise_multiplier"] > 0.3
    # The accountant agrees with the recorded numbers: the full run spends (nearly) all of it.
    assert privacy.spent_epsilon(report["noise_multiplier"], 0.25, 8, 1 / 64) == pytest.approx(
        report["epsilon"], abs=1e-3)
    assert report["epsilon"] > 2.9


def test_dp_steps_differ_from_plain_steps_and_clip_each_example():
    enc = encoded(32)
    plain, private = tiny_bert(), tiny_bert()
    kw = dict(max_steps=1, optimizer="sgd", lr=1.0, batch_size=32, epochs=1)
    train(plain, Batches(enc, 32, pad_id=0, shuffle=True), Batches(enc, 32, pad_id=0, shuffle=False),
          dp_settings(dp_epsilon=None, max_grad_norm=None, **kw))
    train(private, Batches(enc, 32, pad_id=0, shuffle=True),
          Batches(enc, 32, pad_id=0, shuffle=False), dp_settings(dp_max_grad_norm=1e-3, **kw))
    start = tiny_bert()
    moved_plain = sum((p - q).norm() ** 2 for p, q in zip(plain.parameters(), start.parameters()))
    moved_dp = sum((p - q).norm() ** 2 for p, q in zip(private.parameters(), start.parameters()))
    assert moved_plain > 0 and moved_dp > 0
    # Each example's gradient is clipped to 1e-3, so the private step is far shorter.
    assert moved_dp < moved_plain / 100
    # No hooks or per-example gradients are left on the model after the run.
    assert all(getattr(p, "grad_sample", None) is None for p in private.parameters())
    assert not any(m._forward_hooks for m in private.modules())


def test_poisson_batches_draw_rows_independently_at_the_rate():
    enc = encoded(400)
    draws = privacy.PoissonBatches(Batches(enc, 40, pad_id=0, shuffle=True), 0.1, seed=0)
    sizes = [len(b["labels"]) for b in draws]
    assert len(sizes) == 10 and draws.draws == 10
    assert len(set(sizes)) > 1  # sizes vary around the expected 40
    assert 25 < np.mean(sizes) < 55
    again = privacy.PoissonBatches(Batches(enc, 40, pad_id=0, shuffle=True), 0.1, seed=0)
    assert [len(b["labels"]) for b in again] == sizes  # seeded: a run repeats


def test_fit_writes_the_spent_epsilon_to_pretune_yaml(tiny_model_dir, sentiment_csv, tmp_path):
    config = build_config(None, dict(model=tiny_model_dir, train=str(sentiment_csv), epochs=2,
                                     lr=1e-3, batch_size=4, precision="fp32", threads=1,
                                     dp_epsilon=8.0, dp_delta=1e-3))
    result = fit(config, tmp_path / "model")
    meta = yaml.safe_load((result.path / "pretune.yaml").read_text())
    assert meta["settings"]["train"]["dp_epsilon"] == 8.0
    assert 0 < meta["privacy"]["epsilon"] <= 8.0 and meta["privacy"]["delta"] == 1e-3
    assert "epsilon" in privacy.describe(meta["privacy"])


@pytest.mark.parametrize("settings, fix", [
    (dict(batch_size="full"), "--batch-size"),
    (dict(grad_accum=2), "grad_accum 1"),
    (dict(precision="bf16"), "--precision fp32"),
    (dict(penalty="l2"), "weight_decay"),
    (dict(class_weights="balanced"), "class_weights none"),
    (dict(transfer="lp_ft"), "--transfer full"),
    (dict(tapt_steps=10), "tapt_steps 0"),
    (dict(head_layers=1, head_norm="batch"), "head_norm layer"),
])
def test_settings_dp_cannot_train_with_are_refused_naming_the_fix(settings, fix, tiny_model_dir,
                                                                 sentiment_csv):
    config = build_config(None, dict(model=tiny_model_dir, train=str(sentiment_csv),
                                     dp_epsilon=1.0, **settings))
    with pytest.raises(ConfigError, match=fix):
        fit(config)


def test_token_classification_is_refused_under_dp():
    config = build_config(None, dict(dp_epsilon=1.0))
    assert privacy.refusal(config, "token") is not None
    assert privacy.refusal(config, "classification") is None
    assert privacy.refusal(build_config(None, {}), "token") is None  # DP off: nothing refused


def test_an_epsilon_no_noise_can_reach_is_a_config_error():
    with pytest.raises(ConfigError, match="--dp-epsilon"):
        privacy.noise_multiplier(1e-9, 1e-5, 1.0, 10_000)


@pytest.mark.parametrize("transfer", ["freeze_bottom", "lora", "linear_probe"])
def test_dp_trains_with_frozen_parts_and_lora(transfer, tiny_model_dir, sentiment_csv):
    pytest.importorskip("peft") if transfer == "lora" else None
    config = build_config(None, dict(model=tiny_model_dir, train=str(sentiment_csv), epochs=1,
                                     lr=1e-3, batch_size=4, precision="fp32", threads=1,
                                     transfer=transfer, freeze_layers=1, dp_epsilon=8.0))
    result = fit(config)
    assert result.train_result.privacy["epsilon"] <= 8.0
    assert result.train_result.steps > 0


def test_the_command_refuses_in_one_line_with_exit_status_2(tiny_model_dir, sentiment_csv,
                                                            tmp_path):
    from typer.testing import CliRunner

    from pretune.cli.main import app

    result = CliRunner().invoke(app, ["train", "--model", tiny_model_dir, "--train",
                                      str(sentiment_csv), "--out", str(tmp_path / "m"),
                                      "--dp-epsilon", "1", "--batch-size", "full"])
    assert result.exit_code == 2
    assert "--dp-epsilon 1" in result.output and "--batch-size" in result.output
    assert "Traceback" not in result.output
    assert not (tmp_path / "m").exists()


def test_a_data_fraction_draws_its_steps_by_poisson_sampling_too():
    enc = encoded(64)
    result = train(tiny_bert(), Batches(enc, 16, pad_id=0, shuffle=True),
                   Batches(enc, 64, pad_id=0, shuffle=False),
                   dp_settings(data_fraction=0.5, epochs=2))
    # Half of the 4 batches an epoch, 2 epochs: 4 draws, all Poisson-sampled.
    assert result.privacy["steps"] == result.privacy["planned_steps"] == 4


def test_a_layer_opacus_cannot_clip_is_a_config_error_naming_the_fix():
    model = tiny_bert()
    model.classifier = torch.nn.Sequential(torch.nn.BatchNorm1d(32), torch.nn.Linear(32, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    with pytest.raises(ConfigError, match="--transfer freeze_bottom"):
        privacy.attach(model, optimizer, Batches(encoded(), 16, pad_id=0, shuffle=True),
                       dp_settings(), 10)
    assert not any(m._forward_pre_hooks for m in model.modules())  # nothing left behind
