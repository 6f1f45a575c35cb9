"""Image classification: an image search on scikit-learn's digits, the one public image set at
hand offline.

Protocol
--------

- Data: ``sklearn.datasets.load_digits`` (1,797 handwritten digits, 8x8 gray, 10 classes; it
  ships with scikit-learn), written as PNG files in a folder per class and split stratified with
  seed 0 into train (60%), valid (20%) and test (20%).
- Model: a ViT built from a config (image size 32, patch 8, width 64, 4 layers, 4 heads) with
  random weights, saved with a ``ViTImageProcessor`` (32x32, mean/std 0.5): no pretrained image
  model can be loaded offline, so this measures pretune's image pipeline and search training a
  small transformer from scratch, not transfer from a pretrained network.
- Contenders, each scored on the test folder with `pretune.predict`:
  1. ``pretune train`` with the default settings (no augmentation), lr 1e-3, 10 epochs;
     both pretune runs use one thread and fp32 (``HARDWARE`` below says why);
  2. ``pretune tune`` within ``--budget`` (default 5m): the default space of an image search
     (optimizer settings, epochs, transfer, and flip, rotation, random resized crop,
     brightness and contrast), with its lr range test and priors;
  3. the same with a space file that lets epochs range from 5 to 20 (the default 2 to 5 is
     made for fine-tuning pretrained models; a network trained from scratch needs longer);
  4. for scale, scikit-learn's logistic regression on the raw 64 pixels (not a transformer).

    .venv/bin/python bench/images.py                 # about 12 minutes on 2 cores
    .venv/bin/python bench/images.py --budget 2m
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


# One thread and fp32: on a model this small, a second thread and bf16 autocast cost more than
# they save (measured: 35 ms a step of 32 images with one thread in fp32, 87 ms in bf16, and
# over a second with two threads while other jobs shared the two cores).
HARDWARE = {"threads": 1, "precision": "fp32"}


def write_digits(root: Path) -> dict[str, Path]:
    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    images = (digits.images * (255 / 16)).round().astype(np.uint8)
    idx = np.arange(len(images))
    train, rest = train_test_split(idx, test_size=0.4, random_state=0, stratify=digits.target)
    valid, test = train_test_split(rest, test_size=0.5, random_state=0,
                                   stratify=digits.target[rest])
    folders = {}
    for name, part in (("train", train), ("valid", valid), ("test", test)):
        for i in part:
            d = root / name / str(digits.target[i])
            d.mkdir(parents=True, exist_ok=True)
            Image.fromarray(images[i], mode="L").save(d / f"{i}.png")
        folders[name] = root / name
    return folders


def build_vit(path: Path) -> Path:
    import torch
    from transformers import ViTConfig, ViTForImageClassification

    try:
        from transformers import ViTImageProcessorPil as Processor
    except ImportError:
        from transformers import ViTImageProcessor as Processor

    torch.manual_seed(0)
    config = ViTConfig(image_size=32, patch_size=8, hidden_size=64, num_hidden_layers=4,
                       num_attention_heads=4, intermediate_size=128, num_labels=10)
    ViTForImageClassification(config).save_pretrained(path)
    Processor(size={"height": 32, "width": 32}).save_pretrained(path)
    return path


def test_accuracy(model_dir: Path, test: Path) -> float:
    import pretune

    frame = pretune.predict(model_dir, test)
    truth = [Path(p).parent.name for p in frame["image"]]
    return float((frame["prediction"].astype(str) == truth).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--out-dir", type=Path, default=None)
    args = parser.parse_args()
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="pretune-digits-"))
    folders = write_digits(root / "data")
    vit = build_vit(root / "vit")

    import pretune

    rows = []
    began = time.perf_counter()
    once = pretune.train(model=str(vit), train=str(folders["train"]), valid=str(folders["valid"]),
                         out=root / "train", lr=1e-3, epochs=10, batch_size=32, **HARDWARE)
    rows.append(("pretune train (defaults, no augmentation, lr 1e-3, 10 epochs)",
                 once.metrics["accuracy"], test_accuracy(root / "train", folders["test"]),
                 time.perf_counter() - began, "1 run"))

    began = time.perf_counter()
    result = pretune.tune(model=str(vit), train=str(folders["train"]),
                          valid=str(folders["valid"]), out=root / "tune", budget=args.budget,
                          **HARDWARE)
    trials = result.trials
    rows.append((f"pretune tune (budget {args.budget})", result.best_metrics["accuracy"],
                 test_accuracy(root / "tune", folders["test"]), time.perf_counter() - began,
                 f"{len(trials)} trials ({int((trials['state'] == 'PRUNED').sum())} pruned)"))
    best_aug = {k: v for k, v in result.best_params.items()
                if k in ("flip_prob", "rotate_degrees", "crop_scale", "brightness", "contrast")}

    # The default space is made for fine-tuning pretrained models (2 to 5 epochs); a network
    # trained from scratch needs longer, which a space file says.
    began = time.perf_counter()
    longer = pretune.tune(model=str(vit), train=str(folders["train"]),
                          valid=str(folders["valid"]), out=root / "tune-longer",
                          budget=args.budget, space={"epochs": {"low": 5, "high": 20}},
                          **HARDWARE)
    trials = longer.trials
    rows.append((f"pretune tune (budget {args.budget}), space file: epochs 5-20",
                 longer.best_metrics["accuracy"], test_accuracy(root / "tune-longer", folders["test"]),
                 time.perf_counter() - began,
                 f"{len(trials)} trials ({int((trials['state'] == 'PRUNED').sum())} pruned)"))

    from sklearn.linear_model import LogisticRegression

    import numpy as np
    from PIL import Image

    def xy(folder: Path):
        files = sorted(folder.rglob("*.png"))
        return (np.stack([np.asarray(Image.open(f), dtype=np.float32).ravel() / 255 for f in files]),
                np.array([int(f.parent.name) for f in files]))

    began = time.perf_counter()
    (xt, yt), (xv, yv), (xs, ys) = (xy(folders[n]) for n in ("train", "valid", "test"))
    lr = LogisticRegression(max_iter=2000).fit(xt, yt)
    rows.append(("scikit-learn logistic regression on the 64 pixels", lr.score(xv, yv),
                 lr.score(xs, ys), time.perf_counter() - began, "for scale"))

    print(f"digits (scikit-learn): {len(yt)} train, {len(yv)} valid, {len(ys)} test images; "
          f"tiny ViT from a config, random init; run directory {root}")
    width = max(len(r[0]) for r in rows)
    print(f"{'contender'.ljust(width)}  valid acc  test acc  seconds  note")
    for name, v, t, s, note in rows:
        print(f"{name.ljust(width)}  {v:9.4f}  {t:8.4f}  {s:7.0f}  {note}")
    print(f"best augmentations: {best_aug}")


if __name__ == "__main__":
    main()
