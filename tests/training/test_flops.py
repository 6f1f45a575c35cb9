import pytest
import torch
from transformers import BertConfig, BertModel, DistilBertConfig

from pretune.training.flops import flops_per_token, forward_flops, training_flops


def tiny(**kw) -> BertConfig:
    base = dict(hidden_size=8, num_hidden_layers=2, intermediate_size=16, num_attention_heads=2,
                num_labels=3, vocab_size=50)
    base.update(kw)
    return BertConfig(**base)


def test_forward_flops_match_a_hand_count_for_a_tiny_config():
    # Per token and layer: projections 2*4*8*8 = 512, feed-forward 2*2*8*16 = 512,
    # attention over 4 positions 2*2*4*8 = 128 -> 1152; 4 tokens, 2 layers -> 9216.
    # Per sequence: pooler 2*8*8 = 128 and classifier 2*8*3 = 48 -> 176.
    assert forward_flops(tiny(), rows=1, length=4) == 9216 + 176
    assert forward_flops(tiny(), rows=5, length=4) == 5 * (9216 + 176)
    assert training_flops(tiny(), rows=1, length=4) == 3 * (9216 + 176)


def test_attention_makes_longer_sequences_cost_more_per_token():
    short, long = flops_per_token(tiny(), 4), flops_per_token(tiny(), 64)
    # Only the attention term grows: 2 layers * 3 (training) * 2*2*d per extra position.
    assert long - short == pytest.approx(2 * 3 * 2 * 2 * 8 * (64 - 4) + 3 * 176 * (1 / 64 - 1 / 4))


def test_per_token_cost_is_six_times_the_weights_of_the_layers_for_short_texts():
    config = BertConfig(hidden_size=384, num_hidden_layers=6, intermediate_size=1536,
                        num_attention_heads=12)  # all-MiniLM-L6-v2's shape
    encoder = BertModel(config).encoder
    weights = sum(m.weight.numel() for m in encoder.modules() if isinstance(m, torch.nn.Linear))
    assert weights == 6 * (4 * 384 * 384 + 2 * 384 * 1536)
    # At one position the attention term is tiny; the head is one sequence's worth.
    assert flops_per_token(config, 1) == pytest.approx(6 * weights, rel=0.03)


def test_distilbert_names_are_read_too():
    config = DistilBertConfig(dim=8, n_layers=2, hidden_dim=16, n_heads=2, num_labels=3)
    assert forward_flops(config, 1, 4) == forward_flops(tiny(), 1, 4)


def test_a_config_without_the_dimensions_is_refused_with_their_names():
    with pytest.raises(ValueError, match="hidden_size"):
        forward_flops(object(), 1, 4)
