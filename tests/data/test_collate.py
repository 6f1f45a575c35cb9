"""Batches: coverage per epoch, dynamic padding, bucketing, seeding and order restoration."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pretune.data.collate import Batches
from pretune.data.tokenize import Encoded

PAD = 0


def _encoded(n: int = 1000, *, seed: int = 0, types: bool = False, labels: bool = True) -> Encoded:
    """Example i is [i + 1] * length_i, lengths spread from 2 to 200, so rows are recognizable."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 201, size=n)
    ids = [[i + 1] * int(k) for i, k in enumerate(lengths)]
    halves = [[0] * (len(x) // 2) + [1] * (len(x) - len(x) // 2) for x in ids]
    return Encoded(
        input_ids=ids,
        token_type_ids=halves if types else None,
        labels=rng.integers(0, 3, size=n) if labels else None,
    )


def _indices(batches: Batches) -> list[np.ndarray]:
    return [b["index"].numpy() for b in batches]


def _padding(batches: Batches) -> int:
    return sum(int((b["attention_mask"] == 0).sum()) for b in batches)


@pytest.mark.parametrize("shuffle", [True, False])
@pytest.mark.parametrize("bucket", [True, False])
def test_every_example_exactly_once_per_epoch(shuffle, bucket):
    enc = _encoded(1000)
    batches = Batches(enc, 32, pad_id=PAD, shuffle=shuffle, bucket=bucket, seed=3)
    for epoch in range(2):
        batches.set_epoch(epoch)
        got = _indices(batches)
        assert len(got) == len(batches) == 32  # ceil(1000 / 32)
        assert sorted(np.concatenate(got).tolist()) == list(range(1000))
        assert all(len(b) == 32 for b in got if len(b) != 1000 % 32)


def test_batches_are_padded_to_their_own_longest():
    enc = _encoded(300, types=True)
    for batch in Batches(enc, 16, pad_id=PAD, shuffle=True):
        idx = batch["index"].numpy()
        lengths = enc.lengths[idx]
        assert batch["input_ids"].shape == (len(idx), lengths.max())
        assert batch["attention_mask"].sum(1).tolist() == lengths.tolist()
        for row, i in enumerate(idx):
            n = lengths[row]
            assert batch["input_ids"][row, :n].tolist() == enc.input_ids[i]
            assert (batch["input_ids"][row, n:] == PAD).all()
            assert batch["token_type_ids"][row, :n].tolist() == enc.token_type_ids[i]
            assert (batch["token_type_ids"][row, n:] == 0).all()
        assert batch["labels"].tolist() == enc.labels[idx].tolist()
        assert all(t.dtype == torch.long for t in batch.values())


def test_pad_id_is_used():
    enc = Encoded(input_ids=[[5, 6, 7], [8]], token_type_ids=None, labels=None)
    (batch,) = list(Batches(enc, 2, pad_id=99, shuffle=False))
    assert batch["input_ids"].tolist() in ([[5, 6, 7], [8, 99, 99]], [[8, 99, 99], [5, 6, 7]])
    assert set(batch) == {"input_ids", "attention_mask", "index"}  # no labels, no type ids


def test_bucketing_cuts_padding():
    enc = _encoded(2000)
    bucketed = _padding(Batches(enc, 16, pad_id=PAD, shuffle=True, bucket=True))
    plain = _padding(Batches(enc, 16, pad_id=PAD, shuffle=True, bucket=False))
    assert bucketed < 0.1 * plain
    sorted_eval = _padding(Batches(enc, 16, pad_id=PAD, shuffle=False, bucket=True))
    assert sorted_eval < 0.1 * plain


def test_bucketed_batches_are_still_shuffled():
    enc = _encoded(2000)
    firsts = [b["index"].numpy() for b in Batches(enc, 16, pad_id=PAD, shuffle=True)]
    mean_lengths = [enc.lengths[i].mean() for i in firsts]
    # batch order is random, not sorted by length
    assert mean_lengths != sorted(mean_lengths)
    assert mean_lengths != sorted(mean_lengths, reverse=True)


def test_order_is_seeded_per_epoch():
    enc = _encoded(500)
    a = Batches(enc, 16, pad_id=PAD, shuffle=True, seed=7)
    b = Batches(enc, 16, pad_id=PAD, shuffle=True, seed=7)
    c = Batches(enc, 16, pad_id=PAD, shuffle=True, seed=8)
    for batches in (a, b, c):
        batches.set_epoch(1)
    one_a, one_b, one_c = (np.concatenate(_indices(x)).tolist() for x in (a, b, c))
    assert one_a == one_b  # same (seed, epoch): identical
    assert one_a != one_c  # another seed: another order
    a.set_epoch(2)
    assert np.concatenate(_indices(a)).tolist() != one_a  # another epoch: another order
    a.set_epoch(1)
    assert np.concatenate(_indices(a)).tolist() == one_a  # and back again


def test_unshuffled_order_is_the_same_every_epoch():
    enc = _encoded(200)
    batches = Batches(enc, 16, pad_id=PAD, shuffle=False, bucket=False)
    first = np.concatenate(_indices(batches)).tolist()
    batches.set_epoch(5)
    assert first == np.concatenate(_indices(batches)).tolist() == list(range(200))


def test_full_batch():
    enc = _encoded(100)
    batches = Batches(enc, None, pad_id=PAD, shuffle=True)
    got = list(batches)
    assert len(batches) == len(got) == 1
    assert got[0]["input_ids"].shape == (100, enc.lengths.max())
    assert sorted(got[0]["index"].tolist()) == list(range(100))


def test_drop_last():
    enc = _encoded(100)
    batches = Batches(enc, 32, pad_id=PAD, shuffle=True, drop_last=True)
    got = _indices(batches)
    assert len(batches) == len(got) == 3
    assert all(len(b) == 32 for b in got)


def test_index_restores_the_input_order():
    enc = _encoded(333)
    # A "model" that predicts the first token of each row; put its outputs back in input order.
    out = np.empty(333, dtype=np.int64)
    for batch in Batches(enc, 10, pad_id=PAD, shuffle=False, bucket=True):
        out[batch.pop("index").numpy()] = batch["input_ids"][:, 0].numpy()
    assert out.tolist() == [i + 1 for i in range(333)]


def test_bad_batch_size():
    with pytest.raises(ValueError):
        Batches(_encoded(10), 0, pad_id=PAD, shuffle=False)
