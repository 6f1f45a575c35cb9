"""The tokenization cache: same result as tokenizing, once per data and tokenizer, on disk too."""

import numpy as np
import pytest
from transformers import AutoTokenizer

from pretune.data.cache import TokenCache, texts_digest, tokenizer_fingerprint
from pretune.data.task import Split
from pretune.data.tokenize import choose_max_length, encode

TEXTS = ["a wonderful , moving film", "a dull mess", "i loved every minute of it !", "ok"]


@pytest.fixture(scope="module")
def tokenizer(tiny_model_dir):
    return AutoTokenizer.from_pretrained(tiny_model_dir)


def split(texts=TEXTS, pairs=None):
    return Split(list(texts), pairs, np.arange(len(texts)) % 2)


def test_cached_encoding_equals_tokenizing_and_the_second_lookup_is_a_hit(tokenizer, tmp_path):
    cache = TokenCache(tmp_path)
    data = split()
    first = cache.encode(data, tokenizer, 16)
    again = cache.encode(data, tokenizer, 16)
    fresh = encode(data.texts, None, data.labels, tokenizer, 16)
    assert first.input_ids == fresh.input_ids == again.input_ids
    assert np.array_equal(first.labels, data.labels)
    assert (cache.misses, cache.hits) == (1, 1)


def test_another_process_reads_the_cache_from_disk(tokenizer, tmp_path):
    data = split(pairs=["good", "bad", "great fun", "meh"])
    written = TokenCache(tmp_path).encode(data, tokenizer, 12)
    assert list(tmp_path.glob("tokens-*.npz"))
    reader = TokenCache(tmp_path)
    read = reader.encode(data, tokenizer, 12)
    assert (reader.misses, reader.hits) == (0, 1)
    assert read.input_ids == written.input_ids
    assert written.token_type_ids is not None and read.token_type_ids == written.token_type_ids
    assert read.lengths.tolist() == written.lengths.tolist()


def test_labels_are_not_part_of_the_key_but_come_back_as_given(tokenizer):
    cache = TokenCache()
    cache.encode(split(), tokenizer, 16)
    relabelled = Split(list(TEXTS), None, np.array([1, 1, 0, 0]))
    enc = cache.encode(relabelled, tokenizer, 16)
    assert cache.hits == 1 and enc.labels.tolist() == [1, 1, 0, 0]


@pytest.mark.parametrize("change", ["max_length", "text", "pairs", "lowercasing", "special token"])
def test_a_changed_setting_misses_the_cache(tokenizer, tiny_model_dir, tmp_path, change):
    cache = TokenCache(tmp_path)
    cache.encode(split(), tokenizer, 16)
    data, tok, max_length = split(), tokenizer, 16
    if change == "max_length":
        max_length = 8
    elif change == "text":
        data = split(TEXTS[:-1] + ["OK"])
    elif change == "pairs":
        data = split(pairs=["x"] * len(TEXTS))
    elif change == "lowercasing":
        tok = AutoTokenizer.from_pretrained(tiny_model_dir, do_lower_case=False)
    else:
        tok = AutoTokenizer.from_pretrained(tiny_model_dir, cls_token="[SEP]")
    enc = cache.encode(data, tok, max_length)
    assert (cache.misses, cache.hits) == (2, 0)
    assert enc.input_ids == encode(data.texts, data.pairs, None, tok, max_length).input_ids


def test_the_tokenizer_fingerprint_ignores_where_it_was_loaded_from(tokenizer, tiny_model_dir, tmp_path):
    tokenizer.save_pretrained(tmp_path / "copy")
    copy = AutoTokenizer.from_pretrained(tmp_path / "copy")
    assert tokenizer_fingerprint(copy) == tokenizer_fingerprint(tokenizer)


def test_text_boundaries_are_part_of_the_digest():
    assert texts_digest(["ab", "c"], None) != texts_digest(["a", "bc"], None)
    assert texts_digest(["a"], None) != texts_digest(["a"], ["a"])


def test_max_length_is_measured_once(tokenizer, tmp_path, monkeypatch):
    import pretune.data.cache as cache_module

    calls = []
    monkeypatch.setattr(cache_module, "choose_max_length",
                        lambda *a, **k: calls.append(1) or choose_max_length(*a, **k))
    data = split()
    first = TokenCache(tmp_path).max_length(data, tokenizer, cap=64)
    assert TokenCache(tmp_path).max_length(data, tokenizer, cap=64) == first
    assert len(calls) == 1
    assert first == choose_max_length(data, tokenizer, cap=64)


def test_a_damaged_cache_file_is_ignored_and_rewritten(tokenizer, tmp_path):
    data = split()
    TokenCache(tmp_path).encode(data, tokenizer, 16)
    (path,) = tmp_path.glob("tokens-*.npz")
    path.write_bytes(b"not a zip file")
    cache = TokenCache(tmp_path)
    enc = cache.encode(data, tokenizer, 16)
    assert cache.misses == 1
    assert enc.input_ids == encode(data.texts, None, None, tokenizer, 16).input_ids
    assert TokenCache(tmp_path).encode(data, tokenizer, 16).input_ids == enc.input_ids
