"""save_model / load_model_dir: directories transformers and pretune both load, identically."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from pretune.config import ModelConfig
from pretune.errors import ModelError
from pretune.models import build_model
from pretune.models.io import load_model_dir, read_meta, resolve_model_dir, save_model
from pretune.models.load import load_pretrained
from pretune.models.mlp_head import MLPHead

from conftest import build_tiny_model_dir, minilm_dir
from .helpers import checkpoint, logits

LABELS = ["negative", "neutral", "positive"]


def _trained(tiny_model_dir, **settings):
    """A model set up as a trial would have it, with its head's weights moved off their init."""
    model, tokenizer, _ = build_model(ModelConfig(model=tiny_model_dir, **settings), 3, LABELS)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in model.classifier.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    if settings.get("head_norm") == "batch":  # give the running statistics real values
        model.train()
        model(**tokenizer(["one", "two words", "three more words"], padding=True,
                          return_tensors="pt"))
    model.eval()
    return model, tokenizer


def test_a_linear_head_model_loads_with_plain_transformers(tiny_model_dir, tmp_path):
    model, tokenizer = _trained(tiny_model_dir)
    out = save_model(model, tokenizer, tmp_path / "best", {"metric": "accuracy"})

    assert out == tmp_path / "best"
    assert (out / "model.safetensors").is_file() and not list(out.glob("*.bin"))
    assert not (out / "pretune_head.py").exists()
    config = json.loads((out / "config.json").read_text())
    assert config["id2label"] == {"0": "negative", "1": "neutral", "2": "positive"}
    assert config["label2id"] == {"negative": 0, "neutral": 1, "positive": 2}

    loaded = AutoModelForSequenceClassification.from_pretrained(out)
    loaded_tokenizer = AutoTokenizer.from_pretrained(out)
    assert torch.equal(logits(model, tokenizer), logits(loaded, loaded_tokenizer))

    again, _, meta = load_model_dir(out)
    assert torch.equal(logits(model, tokenizer), logits(again, loaded_tokenizer))
    assert meta == {"metric": "accuracy"}


@pytest.mark.parametrize("norm", ["layer", "batch"])
def test_an_mlp_head_model_loads_with_pretune_and_with_remote_code(tiny_model_dir, tmp_path, norm):
    model, tokenizer = _trained(tiny_model_dir, head_layers=2, head_width=16, head_norm=norm)
    out = save_model(model, tokenizer, tmp_path / "best", {})
    expected = logits(model, tokenizer)

    config = json.loads((out / "config.json").read_text())
    assert config["pretune_head"]["layers"] == 2 and config["pretune_head"]["norm"] == norm
    assert config["auto_map"] == {
        "AutoModelForSequenceClassification": "pretune_head.PretuneForSequenceClassification"}
    code = (out / "pretune_head.py").read_text()
    assert "import pretune" not in code and "from pretune" not in code

    # pretune's loader: no remote code runs.
    loaded, loaded_tokenizer, meta = load_model_dir(out)
    assert isinstance(loaded.classifier, MLPHead)
    assert torch.equal(expected, logits(loaded, loaded_tokenizer))
    assert meta == {}

    # transformers with the saved pretune_head.py.
    remote = AutoModelForSequenceClassification.from_pretrained(out, trust_remote_code=True)
    assert type(remote).__name__ == "PretuneForSequenceClassification"
    assert torch.equal(expected, logits(remote, loaded_tokenizer))

    # A reloaded model saves again the same way.
    second = save_model(loaded, loaded_tokenizer, tmp_path / "copy", {})
    assert (second / "pretune_head.py").read_text() == code
    assert torch.equal(expected, logits(load_model_dir(second)[0], loaded_tokenizer))


def test_meta_round_trips_through_pretune_yaml(tiny_model_dir, tmp_path):
    model, tokenizer = _trained(tiny_model_dir)
    meta = {
        "labels": LABELS,
        "params": {"lr": 3e-5, "head_layers": 0, "transfer": "full", "dropout": None},
        "metrics": {"accuracy": np.float64(0.875), "steps": np.int64(40)},
        "shape": (2, 3),
        "data": {"fingerprint": "abc123", "path": tmp_path / "train.csv"},
    }
    out = save_model(model, tokenizer, tmp_path / "best", meta)
    text = (out / "pretune.yaml").read_text()
    assert text.index("labels") < text.index("params") < text.index("metrics")  # order kept
    assert read_meta(out) == yaml.safe_load(text) == {
        "labels": LABELS,
        "params": {"lr": 3e-5, "head_layers": 0, "transfer": "full", "dropout": None},
        "metrics": {"accuracy": 0.875, "steps": 40},
        "shape": [2, 3],
        "data": {"fingerprint": "abc123", "path": str(tmp_path / "train.csv")},
    }


def test_saving_replaces_a_directory_whole_and_leaves_no_temporary_files(tiny_model_dir, tmp_path):
    model, tokenizer = _trained(tiny_model_dir)
    out = tmp_path / "best"
    save_model(model, tokenizer, out, {"round": 1})
    (out / "stale.txt").write_text("from an earlier save")
    save_model(model, tokenizer, out, {"round": 2})

    assert read_meta(out) == {"round": 2}
    assert not (out / "stale.txt").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_a_failed_save_keeps_the_previous_model(tiny_model_dir, tmp_path):
    model, tokenizer = _trained(tiny_model_dir)
    out = save_model(model, tokenizer, tmp_path / "best", {"round": 1})

    class BrokenTokenizer:
        def save_pretrained(self, path):
            raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        save_model(model, BrokenTokenizer(), out, {"round": 2})
    assert read_meta(out) == {"round": 1}
    assert (out / "model.safetensors").is_file()
    assert [p.name for p in tmp_path.iterdir()] == ["best"]


def test_a_run_directory_resolves_to_its_best_model(tiny_model_dir, tmp_path):
    model, tokenizer = _trained(tiny_model_dir)
    run = tmp_path / "run"
    save_model(model, tokenizer, run / "best", {"trial": 3})
    (run / "pretune.yaml").write_text("train: {lr: 0.001}\n")

    assert resolve_model_dir(run) == run / "best"
    assert resolve_model_dir(run / "best") == run / "best"
    loaded, _, meta = load_model_dir(run)
    assert meta == {"trial": 3}
    assert torch.equal(logits(model, tokenizer), logits(loaded, tokenizer))


def _error(call) -> str:
    with pytest.raises(ModelError) as info:
        call()
    assert "\n" not in str(info.value)
    return str(info.value)


def test_load_model_dir_errors(tmp_path):
    assert "does not exist" in _error(lambda: load_model_dir(tmp_path / "missing"))
    assert "config.json" in _error(lambda: load_model_dir(tmp_path))
    (tmp_path / "run" / "best").mkdir(parents=True)
    assert "best/" in _error(lambda: load_model_dir(tmp_path / "run"))


def test_load_model_dir_refuses_pickle_unless_allowed(tmp_path):
    path = build_tiny_model_dir(tmp_path / "old", safetensors=False)
    assert "--allow-pickle" in _error(lambda: load_model_dir(path))
    model, _, meta = load_model_dir(path, allow_pickle=True)
    saved = torch.load(path / "pytorch_model.bin", weights_only=True)
    assert torch.equal(model.classifier.weight, saved["classifier.weight"])
    assert meta == {}


def test_load_model_dir_refuses_a_model_without_a_trained_head():
    # The packaged MiniLM is a bare encoder: loading it as a trained classifier must not
    # silently give a random head.
    message = _error(lambda: load_model_dir(minilm_dir()))
    assert "missing: classifier.bias, classifier.weight" in message


def test_a_saved_mlp_model_can_be_fine_tuned_again(tiny_model_dir, tmp_path):
    model, tokenizer = _trained(tiny_model_dir, head_layers=1)
    out = save_model(model, tokenizer, tmp_path / "best", {})

    again, _ = load_pretrained(ModelConfig(model=str(out)), 2, ["a", "b"])
    assert isinstance(again.classifier, torch.nn.Linear)  # the head is built anew
    assert not hasattr(again.config, "pretune_head")
    key = "bert.encoder.layer.1.output.dense.weight"
    assert torch.equal(again.state_dict()[key], checkpoint(out)[key])
