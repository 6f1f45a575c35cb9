"""choose_max_length and encode with the real MiniLM tokenizer."""

from __future__ import annotations

import numpy as np
import pytest

from conftest import minilm_dir
from pretune.data.task import Split
from pretune.data.tokenize import choose_max_length, encode


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_dir())


def _split(texts, pairs=None) -> Split:
    texts = list(texts)
    pairs = None if pairs is None else list(pairs)
    return Split(texts, pairs, np.zeros(len(texts), dtype=np.int64))


def _words(k: int) -> str:
    return " ".join(["film"] * k)  # "film" is one token: k words -> k + 2 tokens with [CLS], [SEP]


def test_max_length_covers_the_99th_percentile_rounded_to_8(tokenizer):
    split = _split(_words(k) for k in range(1, 101))  # 3 ... 102 tokens
    # the 99th percentile of 3..102 is 101.01: rounded up to a multiple of 8 that is 104
    assert choose_max_length(split, tokenizer) == 104
    assert choose_max_length(split, tokenizer, quantile=0.5) == 56  # median 52.5 -> 56


def test_max_length_is_at_least_8(tokenizer):
    assert choose_max_length(_split(["hi", "yo"]), tokenizer) == 8


def test_max_length_is_capped(tokenizer):
    split = _split(_words(k) for k in range(1, 101))
    assert choose_max_length(split, tokenizer, cap=32) == 32
    long = _split([_words(1000)] * 3)
    assert choose_max_length(long, tokenizer) == tokenizer.model_max_length == 512


def test_max_length_counts_both_texts_of_a_pair(tokenizer):
    texts = [_words(20)] * 10
    single = choose_max_length(_split(texts), tokenizer)
    paired = choose_max_length(_split(texts, texts), tokenizer)
    assert (single, paired) == (24, 48)  # 22 tokens -> 24; 20 + 20 + 3 = 43 -> 48


def test_max_length_on_real_sst2(sst2_dir, tokenizer):
    import pandas as pd

    frame = pd.read_csv(sst2_dir / "validation.csv")
    split = _split(frame.text.tolist())
    length = choose_max_length(split, tokenizer)
    lengths = np.array([len(x) for x in tokenizer(split.texts)["input_ids"]])
    assert length % 8 == 0
    assert np.mean(lengths <= length) >= 0.99  # covers 99% of the examples ...
    assert np.mean(lengths <= length - 8) < 0.99  # ... with the smallest multiple of 8 that does


def test_encode_truncates_to_max_length(tokenizer):
    texts = [_words(3), _words(50), "a wonderful , moving film"]
    enc = encode(texts, None, [0, 1, 0], tokenizer, max_length=16)
    assert len(enc) == 3
    assert enc.lengths.tolist() == [5, 16, len(tokenizer(texts[2])["input_ids"])]
    assert enc.input_ids[0] == tokenizer(texts[0])["input_ids"]  # short texts untouched
    assert enc.input_ids[1][-1] == tokenizer.sep_token_id  # truncated, still well formed
    assert enc.token_type_ids is None  # single texts: all zeros, left to the model
    assert enc.labels.dtype == np.int64 and enc.labels.tolist() == [0, 1, 0]


def test_encode_pairs_truncates_longest_first(tokenizer):
    enc = encode([_words(50)], [_words(4)], None, tokenizer, max_length=20)
    assert enc.lengths.tolist() == [20]
    types = enc.token_type_ids[0]
    assert len(types) == 20
    assert sum(types) == 4 + 1  # the short second text and its [SEP] survive whole
    assert enc.labels is None


def test_encode_many_texts_in_chunks_keeps_order(tokenizer):
    texts = [_words(1 + i % 7) for i in range(12_345)]
    enc = encode(texts, None, None, tokenizer, max_length=64)
    assert len(enc) == 12_345
    assert enc.lengths.tolist() == [3 + i % 7 for i in range(12_345)]
