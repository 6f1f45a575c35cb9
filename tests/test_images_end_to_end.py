"""Image classification end to end on a tiny ViT and generated images: a search over
augmentations, the best model loaded with transformers alone, and `pretune predict`."""

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

import pretune
from tests.image_helpers import build_tiny_vit_dir, write_square_folder

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PRETUNE_DEBUG": ""}
AUGMENTATIONS = ("flip_prob", "rotate_degrees", "crop_scale", "brightness", "contrast")


@pytest.fixture(scope="module")
def image_data(tmp_path_factory):
    root = tmp_path_factory.mktemp("images")
    vit = build_tiny_vit_dir(root / "vit")
    train = write_square_folder(root / "train", per_class=16, seed=0)
    valid = write_square_folder(root / "valid", per_class=6, seed=1)
    return vit, train, valid


def test_search_save_load_and_predict(image_data, tmp_path):
    vit, train, valid = image_data
    out = tmp_path / "run"
    result = pretune.tune(model=str(vit), train=str(train), valid=str(valid), out=out,
                          budget="3trials", lr_range_test=False, priors=False, seed_check=0,
                          pruner="none", fixed={"epochs": 2, "batch_size": 8, "lr": 2e-3},
                          precision="fp32", threads=1)
    trials = result.trials
    assert len(trials) == 3
    for name in AUGMENTATIONS:  # the default space of an image search has the augmentations
        assert f"params_{name}" in trials.columns
    assert trials[[f"params_{n}" for n in AUGMENTATIONS]].nunique().max() > 1  # and samples them
    assert result.best_metrics["accuracy"] >= 0.75  # red against blue squares
    meta = yaml.safe_load((out / "best" / "pretune.yaml").read_text())
    assert meta["settings"]["data"]["modality"] == "image"
    assert (out / "best" / "preprocessor_config.json").is_file()

    # The final assembly: an ensemble of the kept models; no distillation for images.
    kinds = [c["kind"] for c in result.assembly["candidates"]]
    assert kinds[:2] == ["trial", "ensemble"] and "distilled" not in kinds
    served = pretune.predict(out, str(valid), ensemble=True)
    spec = yaml.safe_load((out / "ensemble.yaml").read_text())
    truth = [Path(p).parent.name for p in served["image"]]
    assert np.mean(served["prediction"] == truth) == pytest.approx(spec["metrics"]["accuracy"])

    # `pretune predict` on a CSV of relative paths ...
    files = sorted(valid.rglob("*.png"))
    pd.DataFrame({"image": [str(f.relative_to(valid)) for f in files]}).to_csv(
        valid / "index.csv", index=False)
    preds = tmp_path / "preds.csv"
    done = subprocess.run([sys.executable, "-m", "pretune.cli.main", "predict", str(out),
                           "--input", str(valid / "index.csv"), "--output", str(preds)],
                          capture_output=True, text=True, env=ENV, timeout=300)
    assert done.returncode == 0, done.stderr
    frame = pd.read_csv(preds)
    assert list(frame.columns) == ["image", "prediction", "prob_blue", "prob_red"]
    truth = [f.parent.name for f in files]
    assert np.mean(frame["prediction"] == truth) >= 0.75

    # ... is what transformers alone gives with the saved processor
    from PIL import Image
    from transformers import AutoImageProcessor, AutoModelForImageClassification

    model = AutoModelForImageClassification.from_pretrained(out / "best").eval()
    processor = AutoImageProcessor.from_pretrained(out / "best")
    pixels = processor(images=[Image.open(f).convert("RGB") for f in files],
                       return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        probs = torch.softmax(model(pixel_values=pixels).logits, -1).numpy()
    assert np.allclose(probs, frame[["prob_blue", "prob_red"]].to_numpy(), atol=1e-4)

    # a folder of images works as input too (the Python API)
    assert len(pretune.predict(out, valid / "red")) == 6


@pytest.mark.parametrize("transfer, extra", [
    ("linear_probe", {}),
    ("freeze_bottom", {"freeze_layers": 1, "head_layers": 1}),
    ("lora", {}),
    ("lp_ft", {"probe_epochs": 1.0}),
])
def test_transfer_strategies_on_vit(image_data, tmp_path, transfer, extra):
    vit, train, valid = image_data
    out = tmp_path / transfer
    result = pretune.train(model=str(vit), train=str(train), valid=str(valid), out=out,
                           transfer=transfer, epochs=1, batch_size=8, lr=1e-3,
                           precision="fp32", threads=1, flip_prob=0.5, **extra)
    # the frozen-feature cache (token inputs only) stands aside; the run trains without it
    assert result.metrics and result.feature_depth is None
    if transfer == "linear_probe":  # only the head moved
        from transformers import AutoModelForImageClassification

        before = AutoModelForImageClassification.from_pretrained(vit)
        after = AutoModelForImageClassification.from_pretrained(out)
        assert torch.equal(before.vit.embeddings.patch_embeddings.projection.weight,
                           after.vit.embeddings.patch_embeddings.projection.weight)
    frame = pretune.predict(out, valid)
    assert len(frame) == 12 and set(frame["prediction"]) <= {"red", "blue"}
    if extra.get("head_layers"):  # the MLP head loads with transformers and remote code
        from transformers import AutoModelForImageClassification

        model = AutoModelForImageClassification.from_pretrained(out, trust_remote_code=True)
        assert "Pretune" in type(model).__name__
