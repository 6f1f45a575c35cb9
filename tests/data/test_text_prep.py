"""Text preprocessing (lowercase, stop words, stems) and EDA-style augmentation."""

import numpy as np
import pytest

from pretune.config import DataConfig
from pretune.data.cache import TokenCache
from pretune.data.task import Split, TaskData
from pretune.data.text_prep import (
    AugmentedTextBatches,
    TextAugment,
    TextOptions,
    apply_to_task,
    preprocess,
    random_deletion,
    random_swap,
)

TEXTS = ["The Runners were running quickly!", "A truly generous gift, and the best of all."]


def test_off_by_default_leaves_texts_as_they_are():
    assert not TextOptions.from_config(DataConfig()).active
    assert preprocess(TEXTS, TextOptions()) == TEXTS


def test_lowercase_only_lowers_and_splits_punctuation():
    out = preprocess(TEXTS, TextOptions(lowercase=True))
    assert out[0] == "the runners were running quickly !"


def test_stop_words_removed_case_insensitively_from_scikit_learns_list():
    out = preprocess(TEXTS, TextOptions(stopwords=True))
    assert out[0] == "Runners running quickly !"
    assert "the" not in out[1].lower().split() and "and" not in out[1].split()


@pytest.mark.parametrize("stem, expected", [
    ("porter", "the runner were run quickli !"),
    ("snowball", "the runner were run quick !"),
])
def test_stemmers(stem, expected):
    assert preprocess(TEXTS, TextOptions(lowercase=True, stem=stem))[0] == expected


def test_apply_to_task_rewrites_train_and_valid_and_changes_the_token_key(tiny_model_dir):
    from transformers import AutoTokenizer

    split = Split(list(TEXTS), None, np.array([0, 1]))
    task = TaskData(split, split, ["a", "b"], "text", None, "label", "f", "file")
    cfg = DataConfig(lowercase=True, stopwords=True)
    done = apply_to_task(task, cfg)
    assert done.train.texts == preprocess(TEXTS, TextOptions(lowercase=True, stopwords=True))
    assert done.valid.texts == done.train.texts and task.train.texts == TEXTS
    assert apply_to_task(task, DataConfig()) is task
    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    cache = TokenCache()
    keys = {cache.data_key(t.train, tok, 32) for t in (
        task, done, apply_to_task(task, DataConfig(stem="porter")))}
    assert len(keys) == 3  # three preprocessings, three token sets


def test_random_deletion_keeps_order_and_at_least_one_word():
    rng = np.random.default_rng(0)
    words = "one two three four five six seven eight".split()
    kept = random_deletion(words, 0.5, rng)
    assert 0 < len(kept) < len(words)
    assert kept == [w for w in words if w in kept]  # order kept
    assert len(random_deletion(["only"], 0.9, rng)) == 1
    assert len(random_deletion(words, 0.999, np.random.default_rng(1))) == 1
    assert random_deletion(words, 0.0, rng) == words


def test_random_swap_permutes_the_words():
    words = "one two three four five six".split()
    swapped = random_swap(words, 2, np.random.default_rng(0))
    assert sorted(swapped) == sorted(words) and swapped != words
    assert random_swap(words, 0, np.random.default_rng(0)) == words


def test_augmentation_is_seeded_per_epoch_and_edits_the_asked_share():
    texts = [f"word{i} alpha beta gamma delta epsilon" for i in range(400)]
    aug = TextAugment(text_aug_prob=0.5, word_delete=0.3, word_swap=0.0)
    first = aug.texts(texts, seed=7, epoch=0)
    assert first == aug.texts(texts, seed=7, epoch=0)
    assert first != aug.texts(texts, seed=7, epoch=1)
    assert first != aug.texts(texts, seed=8, epoch=0)
    edited = np.mean([a != b for a, b in zip(first, texts)])
    assert 0.35 < edited < 0.55  # half chosen; a few of those lose no word
    assert not TextAugment().active and TextAugment().texts(texts, 0, 0) == texts


def test_augmented_batches_retokenize_each_epoch(tiny_model_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model_dir)
    texts = [f"a b c d e f g h {i}" for i in range(20)]
    split = Split(texts, None, np.arange(20) % 2)
    batches = AugmentedTextBatches(split, TextAugment(1.0, 0.3, 0.2), tok, 32, 8, pad_id=0, seed=1)
    assert len(batches) == 3
    e0 = list(batches)
    batches.set_epoch(1)
    e1 = list(batches)
    batches.set_epoch(0)
    assert all((a["input_ids"].shape == b["input_ids"].shape and (a["input_ids"] == b["input_ids"]).all())
               for a, b in zip(e0, list(batches)))
    lengths0 = sorted(int(x) for b in e0 for x in b["attention_mask"].sum(1))
    lengths1 = sorted(int(x) for b in e1 for x in b["attention_mask"].sum(1))
    assert lengths0 != lengths1 and max(lengths0) < 13  # words were deleted, anew each epoch
    assert sum(len(b["labels"]) for b in e1) == 20
