import ctypes

import numpy as np
import pytest
import torch
from torch import nn

from pretune.training import cpu_speed
from pretune.training.cpu_speed import BitsDropout, fast_dropout, reuse_freed_memory
from pretune.training.loop import train

from .test_loop import settings
from .toy import ToyBatches, separable, tiny_bert


def test_bits_dropout_drops_at_its_rate_and_scales_what_it_keeps():
    drop = BitsDropout(0.1, np.random.SFC64(0))
    x = torch.ones(200, 1000, requires_grad=True)
    y = drop(x)
    kept = y.detach() != 0
    assert kept.float().mean().item() == pytest.approx(0.9, abs=0.005)
    scale = 65536 / (65536 - 6554)  # the rate rounded to 1/65536: 0.1 becomes 6554/65536
    assert torch.equal(y.detach()[kept], torch.full((int(kept.sum()),), scale))
    y.sum().backward()  # the gradient flows through the kept elements only, scaled alike
    assert torch.equal(x.grad, y.detach())
    drop.eval()
    assert drop(x) is x


def test_bits_dropout_keeps_the_dtype_and_shape_and_draws_new_masks():
    drop = BitsDropout(0.5, np.random.SFC64(1))
    x = torch.ones(3, 5, 7, dtype=torch.bfloat16)  # 105 elements: not a multiple of four
    a, b = drop(x), drop(x)
    assert a.dtype == torch.bfloat16 and a.shape == x.shape
    assert not torch.equal(a, b)
    assert set(a.unique().tolist()) <= {0.0, 2.0}


def test_fast_dropout_swaps_every_plain_dropout_and_puts_them_back():
    model = nn.Sequential(nn.Linear(4, 4), nn.Dropout(0.2),
                          nn.ModuleList([nn.Dropout(0.3), nn.AlphaDropout(0.1)]))
    originals = [model[1], model[2][0], model[2][1]]
    with pytest.raises(RuntimeError, match="inside"):
        with fast_dropout(model) as swapped:
            assert swapped == 2
            assert isinstance(model[1], BitsDropout) and model[1].p == 0.2
            assert isinstance(model[2][0], BitsDropout) and model[2][0].p == 0.3
            assert model[2][1] is originals[2]  # not a plain nn.Dropout: left alone
            model.eval()
            raise RuntimeError("inside")
    assert [model[1], model[2][0], model[2][1]] == originals
    assert not model[1].training  # the mode set inside carries over to the originals


def test_a_seeded_run_with_dropout_repeats_itself_and_learns():
    ids, labels = separable(48)

    def run():
        model = tiny_bert(dropout=0.2)
        result = train(model, ToyBatches(ids, labels, 8, shuffle=True), ToyBatches(ids, labels, 48),
                       settings(lr=1e-2, epochs=3, seed=3))
        return model, result

    (first, a), (second, b) = run(), run()
    for p, q in zip(first.parameters(), second.parameters()):
        assert torch.equal(p, q)
    assert a.best_metrics["accuracy"] == b.best_metrics["accuracy"] >= 0.9
    assert not any(isinstance(m, BitsDropout) for m in first.modules())  # torch's are back


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in
                ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks",
                 "uordblks", "fordblks", "keepcost")]


def _mmapped_blocks() -> int:
    libc = cpu_speed._glibc()
    libc.mallinfo2.restype = _MallInfo2
    return libc.mallinfo2().hblks


@pytest.mark.skipif(cpu_speed._glibc() is None, reason="glibc's malloc only")
def test_large_blocks_come_from_the_heap_inside_and_from_mappings_again_after():
    size = 48 * 2**20 // 4  # 48 MiB of floats: above the largest mmap threshold (32 MiB)
    with reuse_freed_memory() as on:
        assert on
        before = _mmapped_blocks()
        block = torch.zeros(size)
        assert _mmapped_blocks() == before
        del block
    before = _mmapped_blocks()
    block = torch.zeros(size)
    assert _mmapped_blocks() == before + 1
    del block


@pytest.mark.parametrize("masked", ["none", "bool", "additive"])
def test_written_out_attention_equals_torchs_without_dropout(masked):
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 4, generator=gen) for _ in range(3))
    allowed = torch.ones(2, 1, 5, 5, dtype=torch.bool)
    allowed[1, :, :, 3:] = False  # the second text's last two tokens are padding
    mask = {"none": None, "bool": allowed,
            "additive": torch.zeros(2, 1, 5, 5).masked_fill(~allowed, -1e9)}[masked]
    ours = cpu_speed.attention(q, k, v, mask, 0.5, lambda p: p)
    theirs = torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=mask, scale=0.5)
    assert torch.allclose(ours, theirs, atol=1e-6)


def test_attention_dropout_of_an_encoder_draws_from_the_bits_while_it_trains(monkeypatch):
    from transformers.modeling_utils import AttentionInterface

    model = tiny_bert(dropout=0.3)
    model.config._attn_implementation = "sdpa"
    original = AttentionInterface._global_mapping["sdpa"]
    drawn = []
    real_drop = cpu_speed.drop
    monkeypatch.setattr(cpu_speed, "drop", lambda x, p, bits: drawn.append(x.shape) or real_drop(x, p, bits))
    ids = torch.tensor([[1, 5, 6, 7], [1, 8, 9, 0]])
    mask = torch.tensor([[1, 1, 1, 1], [1, 1, 1, 0]])
    model.eval()
    expected = model(input_ids=ids, attention_mask=mask).logits
    with fast_dropout(model):
        assert AttentionInterface._global_mapping["sdpa"] is not original
        model.train()
        trained = model(input_ids=ids, attention_mask=mask).logits
        assert (2, 2, 4, 4) in drawn  # the probabilities of 2 heads over 4 tokens
        model.eval()
        assert torch.allclose(model(input_ids=ids, attention_mask=mask).logits, expected)
    assert AttentionInterface._global_mapping["sdpa"] is original
    assert torch.isfinite(trained).all()
