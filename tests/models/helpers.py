"""Small models of several architectures, built from configs (no download), for the models tests."""

from __future__ import annotations

import torch
from safetensors.torch import load_file

SENTENCES = ["a wonderful , moving film", "a dull , boring mess"]


def tiny(arch: str, num_labels: int = 3):
    """A randomly initialized 2-layer model of ``arch`` for sequence classification."""
    from transformers import (
        DistilBertConfig,
        DistilBertForSequenceClassification,
        GPT2Config,
        GPT2ForSequenceClassification,
        LlamaConfig,
        LlamaForSequenceClassification,
        RobertaConfig,
        RobertaForSequenceClassification,
    )

    torch.manual_seed(0)
    if arch == "roberta":
        return RobertaForSequenceClassification(RobertaConfig(
            vocab_size=100, hidden_size=16, num_hidden_layers=2, num_attention_heads=2,
            intermediate_size=32, max_position_embeddings=40, num_labels=num_labels))
    if arch == "distilbert":
        return DistilBertForSequenceClassification(DistilBertConfig(
            vocab_size=100, dim=16, n_layers=2, n_heads=2, hidden_dim=32,
            max_position_embeddings=40, num_labels=num_labels))
    if arch == "gpt2":
        return GPT2ForSequenceClassification(GPT2Config(
            vocab_size=100, n_embd=16, n_layer=2, n_head=2, n_positions=40,
            num_labels=num_labels, pad_token_id=0))
    if arch == "llama":
        return LlamaForSequenceClassification(LlamaConfig(
            vocab_size=100, hidden_size=16, intermediate_size=32, num_hidden_layers=2,
            num_attention_heads=2, num_key_value_heads=2, num_labels=num_labels, pad_token_id=0))
    raise ValueError(arch)


def checkpoint(model_dir) -> dict[str, torch.Tensor]:
    """The tensors of a directory's model.safetensors."""
    from pathlib import Path

    return load_file(str(Path(model_dir) / "model.safetensors"))


def logits(model, tokenizer, sentences=SENTENCES) -> torch.Tensor:
    model.eval()
    batch = tokenizer(sentences, padding=True, return_tensors="pt")
    with torch.no_grad():
        return model(**batch).logits
