import dataclasses

import torch
from transformers import AutoModelForSequenceClassification

from pretune.config import ModelConfig
from pretune.models import build_model, is_lora, merge_lora, save_model


def _lora(tiny_model_dir, **kw):
    cfg = ModelConfig(model=tiny_model_dir, transfer="lora", lora_r=4, **kw)
    return build_model(cfg, 2, ["neg", "pos"])


def test_lora_trains_adapters_and_head_only(tiny_model_dir):
    model, _, summary = _lora(tiny_model_dir)
    assert is_lora(model) and summary["transfer"] == "lora"
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or "classifier" in n for n in trainable)
    assert any("lora_A" in n for n in trainable) and any("classifier" in n for n in trainable)
    assert summary["trainable_params"] < summary["total_params"] / 5


def test_merged_model_matches_the_adapted_one_and_loads_without_peft(tiny_model_dir, tmp_path):
    model, tokenizer, _ = _lora(tiny_model_dir, head_layers=0)
    # Move the adapters away from their zero start, as training would.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    model.eval()
    enc = tokenizer(["a fine film", "a dull one"], padding=True, return_tensors="pt")
    with torch.no_grad():
        adapted = model(**enc).logits
    merged = merge_lora(model)
    assert not is_lora(merged)
    with torch.no_grad():
        assert torch.allclose(merged(**enc).logits, adapted, atol=1e-5)
    save_model(merged, tokenizer, tmp_path / "m", {})
    names = [p.name for p in (tmp_path / "m").iterdir()]
    assert "adapter_config.json" not in names
    plain = AutoModelForSequenceClassification.from_pretrained(tmp_path / "m").eval()
    with torch.no_grad():
        assert torch.allclose(plain(**enc).logits, adapted, atol=1e-5)
