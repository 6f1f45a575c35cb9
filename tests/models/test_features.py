"""The frozen-feature cache: cached states equal the model's own, and training from them is
training the same model."""

import numpy as np
import pytest
import torch

from pretune.config import ModelConfig
from pretune.data.collate import Batches
from pretune.data.tokenize import Encoded
from pretune.models import apply_transfer
from pretune.models.features import (
    FeatureBatches,
    FeatureStore,
    agrees,
    compute_features,
    frozen_depth,
    starting_at,
)
from tests.models.helpers import tiny

ROWS = [[101, 7, 8, 9, 102], [101, 11, 102], [101, 3, 4, 5, 6, 7, 8, 102], [101, 20, 21, 102]] * 3


def encoded(with_types=False):
    types = [[0] * len(r) for r in ROWS] if with_types else None
    return Encoded([list(r) for r in ROWS], types, np.arange(len(ROWS)) % 2)


def bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    return BertForSequenceClassification(BertConfig(
        vocab_size=120, hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
        intermediate_size=32, max_position_embeddings=40, num_labels=2)).eval()


@pytest.mark.parametrize("depth", [0, 1, 2, 3])
def test_cached_features_equal_the_models_hidden_states(depth):
    model, enc = bert(), encoded()
    features = compute_features(model, enc, depth, pad_id=0, batch_size=5)
    assert features.depth == depth and len(features) == len(ROWS)
    for i, row in enumerate(ROWS):
        with torch.no_grad():
            states = model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states
        assert torch.allclose(features.example(i), states[depth][0], atol=1e-5), i


def test_features_from_a_lower_depth_equal_features_from_scratch():
    model, enc = bert(), encoded()
    low = compute_features(model, enc, 1, pad_id=0)
    assert torch.allclose(compute_features(model, enc, 3, pad_id=0, start=low).states,
                          compute_features(model, enc, 3, pad_id=0).states, atol=1e-5)


@pytest.mark.parametrize("arch", ["bert", "roberta", "distilbert"])
def test_a_model_fed_cached_features_gives_its_own_logits_and_is_whole_afterwards(arch):
    model = bert() if arch == "bert" else tiny(arch, num_labels=2).eval()
    pad = model.config.pad_token_id or 0
    enc = Encoded([[min(t, 90) for t in r] for r in ROWS], None, np.zeros(len(ROWS), dtype=np.int64))
    names = [n for n, _ in model.named_parameters()]
    features = compute_features(model, enc, 1, pad_id=pad)
    assert agrees(model, enc, features, pad_id=pad)
    assert [n for n, _ in model.named_parameters()] == names
    plain = next(iter(Batches(enc, 12, pad_id=pad, shuffle=False)))
    cached = next(iter(FeatureBatches(features, enc, 12, shuffle=False)))
    assert torch.equal(plain["index"], cached["index"])
    with torch.no_grad():
        expected = model(input_ids=plain["input_ids"], attention_mask=plain["attention_mask"]).logits
        with starting_at(model, 1):
            got = model(inputs_embeds=cached["inputs_embeds"],
                        attention_mask=cached["attention_mask"]).logits
    assert torch.allclose(got, expected, atol=1e-5)


def test_a_model_whose_layers_need_more_than_the_cache_gives_is_refused():
    model, enc = bert(), encoded()
    features = compute_features(model, enc, 2, pad_id=0)
    features.states += torch.randn_like(features.states)  # not what the model computes
    assert not agrees(model, enc, features, pad_id=0)


def test_feature_batches_hold_the_same_examples_as_token_batches_every_epoch():
    enc = encoded()
    features = compute_features(bert(), enc, 1, pad_id=0)
    tokens = Batches(enc, 4, pad_id=0, shuffle=True, seed=3)
    cached = FeatureBatches(features, enc, 4, shuffle=True, seed=3)
    for epoch in range(3):
        tokens.set_epoch(epoch)
        cached.set_epoch(epoch)
        got = [b["index"].tolist() for b in cached]
        assert got == [b["index"].tolist() for b in tokens]
        assert sorted(i for b in got for i in b) == list(range(len(ROWS)))
    batch = next(iter(cached))
    lengths = enc.lengths[batch["index"].numpy()]
    assert batch["inputs_embeds"].shape == (len(lengths), lengths.max(), 16)
    assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()


@pytest.mark.parametrize("transfer,freeze,reinit,expected", [
    ("full", 0, 0, None), ("linear_probe", 0, 0, 3), ("freeze_bottom", 2, 0, 2),
    ("freeze_bottom", 0, 0, 0), ("freeze_bottom", 2, 1, 2), ("freeze_bottom", 2, 2, None),
])
def test_frozen_depth_follows_the_transfer_strategy(transfer, freeze, reinit, expected):
    model = bert()
    summary = apply_transfer(model, ModelConfig(model="x", transfer=transfer, freeze_layers=freeze,
                                                reinit_layers=reinit))
    assert frozen_depth(model, summary) == expected


def test_the_store_keeps_features_on_disk_for_the_next_process(tmp_path):
    features = compute_features(bert(), encoded(), 2, pad_id=0)
    FeatureStore(tmp_path).put("k", features)
    store = FeatureStore(tmp_path)
    again = store.get("k")
    assert store.hits == 1 and again.depth == 2
    assert torch.equal(again.states, features.states)
    assert np.array_equal(again.offsets, features.offsets)
    assert store.get("other") is None and store.misses == 1
    (tmp_path / "features-k.safetensors").write_bytes(b"broken")
    assert FeatureStore(tmp_path).get("k") is None


def test_the_store_drops_the_least_recently_used_past_its_memory_budget():
    features = compute_features(bert(), encoded(), 1, pad_id=0)
    store = FeatureStore(max_bytes=int(features.nbytes * 2.5))
    for key in "abc":
        store.put(key, features)
    assert store.get("a") is None and store.get("c") is not None
