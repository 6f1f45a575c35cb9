"""Text preprocessing and augmentation, as settings a search can vary.

Preprocessing (``lowercase``, ``stopwords``, ``stem``) rewrites every text the model sees the
same way: training, validation and prediction inputs (``pretune predict`` reads the settings
from the model's ``pretune.yaml``). With any of them on, a text is split into words and
punctuation, edited, and joined by single spaces. Stop words are scikit-learn's English list
(``ENGLISH_STOP_WORDS``, 318 words, shipped with scikit-learn); stems come from nltk's Porter
or Snowball (English) stemmer, which need no downloaded data (both give lower-case stems).
Lemmatization is not offered: nltk's lemmatizer needs the WordNet data, a separate download.
``mask_pii`` replaces e-mail addresses, URLs, phone numbers and long digit runs by
placeholders (``pretune.data.masking``) before anything else, on the same texts and at
prediction alike.
All are off by default: subword tokenizers of pretrained models were trained on raw text, and
rarely gain from it.

Because the preprocessed texts are what gets tokenized, the tokenization cache (keyed by the
texts' content) never hands one preprocessing's tokens to another.

Augmentation edits training texts only, EDA-style without synonyms (Wei and Zou, 2019): each
epoch, a share ``text_aug_prob`` of the texts is edited by random deletion (each word dropped
with probability ``word_delete``, at least one word kept) and random swap (``word_swap`` times
the number of words, rounded up, swaps of two random words). Edits are drawn anew each epoch
from (seed, epoch), so a trial repeats exactly, and epochs keep their size, so trials with and
without augmentation compare step for step (EDA's offline copies would grow the epoch). The
price is tokenizing the edited texts each epoch, small next to an epoch of training.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Any, Iterator, Sequence

import numpy as np

from pretune.data.masking import mask_all
from pretune.errors import MissingExtraError

_WORDS = re.compile(r"\w+(?:'\w+)*|[^\w\s]", re.UNICODE)


@dataclass(frozen=True)
class TextOptions:
    """The preprocessing of a run (fields as in ``DataConfig``)."""

    lowercase: bool = False
    stopwords: bool = False
    stem: str = "none"
    mask_pii: bool = False  # placeholders for e-mails, URLs, phones, numbers (data.masking)

    @classmethod
    def from_config(cls, data_config: Any) -> "TextOptions":
        return cls(lowercase=bool(getattr(data_config, "lowercase", False)),
                   stopwords=bool(getattr(data_config, "stopwords", False)),
                   stem=str(getattr(data_config, "stem", "none") or "none"),
                   mask_pii=bool(getattr(data_config, "mask_pii", False)))

    @classmethod
    def from_settings(cls, settings: dict) -> "TextOptions":
        """From the ``settings`` of a saved model's pretune.yaml (nested or flat)."""
        data = settings.get("data", settings) if isinstance(settings, dict) else {}
        return cls(lowercase=bool(data.get("lowercase", False)),
                   stopwords=bool(data.get("stopwords", False)),
                   stem=str(data.get("stem") or "none"),
                   mask_pii=bool(data.get("mask_pii", False)))

    @property
    def active(self) -> bool:
        return self.lowercase or self.stopwords or self.stem != "none" or self.mask_pii

    @property
    def edits_words(self) -> bool:
        return self.lowercase or self.stopwords or self.stem != "none"


def stop_words() -> frozenset[str]:
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    return frozenset(ENGLISH_STOP_WORDS)


def stemmer(name: str):
    """nltk's ``porter`` or ``snowball`` (English) stemmer: a function from word to stem."""
    try:
        from nltk.stem import PorterStemmer, SnowballStemmer
    except ImportError:
        raise MissingExtraError("nltk", "text", f"stem={name}") from None
    if name == "porter":
        return PorterStemmer().stem
    if name == "snowball":
        return SnowballStemmer("english").stem
    raise ValueError(f"unknown stemmer {name!r}")


def preprocess(texts: Sequence[str], options: TextOptions) -> list[str]:
    """``texts`` rewritten as ``options`` say; the same list's contents when nothing is on."""
    if not options.active:
        return list(texts)
    if options.mask_pii:  # first: the patterns need the raw text (its "@", "://", digits)
        texts = mask_all(texts)
    if not options.edits_words:
        return list(texts)
    stops = stop_words() if options.stopwords else None
    stem = stemmer(options.stem) if options.stem != "none" else None
    memo: dict[str, str] = {}
    out = []
    for text in texts:
        words = _WORDS.findall(text)
        if options.lowercase:
            words = [w.lower() for w in words]
        if stops is not None:
            words = [w for w in words if w.lower() not in stops]
        if stem is not None:
            kept = []
            for w in words:
                if w not in memo:
                    memo[w] = stem(w) if w[:1].isalnum() else w
                kept.append(memo[w])
            words = kept
        out.append(" ".join(words))
    return out


_MEMO: OrderedDict[str, list[str]] = OrderedDict()
_MEMO_ITEMS = 16


def _preprocess_memo(texts: Sequence[str] | None, options: TextOptions) -> list[str] | None:
    if texts is None:
        return None
    h = hashlib.sha256(json.dumps([vars(options), list(texts)]).encode()).hexdigest()
    found = _MEMO.get(h)
    if found is None:
        found = _MEMO[h] = preprocess(texts, options)
        while len(_MEMO) > _MEMO_ITEMS:
            _MEMO.popitem(last=False)
    return found


def apply_to_task(task: Any, data_config: Any) -> Any:
    """``task`` with the preprocessing of ``data_config`` applied to its train and valid texts
    (and second texts); ``task`` itself when none is on or it is not a text task. Results are
    remembered in this process, so trials with the same preprocessing do the work once."""
    options = TextOptions.from_config(data_config)
    if not options.active or getattr(task, "modality", "text") != "text":
        return task

    def split(s):
        return replace(s, texts=_preprocess_memo(s.texts, options),
                       pairs=_preprocess_memo(s.pairs, options))

    return replace(task, train=split(task.train), valid=split(task.valid))


# --- augmentation ------------------------------------------------------------------------------


def random_deletion(words: list[str], p: float, rng: np.random.Generator) -> list[str]:
    """Each word dropped with probability ``p``; at least one word (a random one) is kept."""
    if p <= 0 or not words:
        return list(words)
    keep = rng.random(len(words)) >= p
    if not keep.any():
        return [words[int(rng.integers(len(words)))]]
    return [w for w, k in zip(words, keep) if k]


def random_swap(words: list[str], n: int, rng: np.random.Generator) -> list[str]:
    """``n`` swaps of two words at random positions."""
    words = list(words)
    if n <= 0 or len(words) < 2:
        return words
    for _ in range(n):
        i, j = rng.integers(len(words), size=2)
        words[i], words[j] = words[j], words[i]
    return words


@dataclass(frozen=True)
class TextAugment:
    """The augmentation of a run's training texts (fields as in ``DataConfig``)."""

    text_aug_prob: float = 0.5
    word_delete: float = 0.0
    word_swap: float = 0.0

    @classmethod
    def from_config(cls, data_config: Any) -> "TextAugment":
        return cls(**{k: float(getattr(data_config, k)) for k in cls.__dataclass_fields__})

    @property
    def active(self) -> bool:
        return self.text_aug_prob > 0 and (self.word_delete > 0 or self.word_swap > 0)

    def edit(self, text: str, rng: np.random.Generator) -> str:
        words = text.split()
        words = random_deletion(words, self.word_delete, rng)
        if self.word_swap > 0:
            words = random_swap(words, math.ceil(self.word_swap * len(words)), rng)
        return " ".join(words)

    def texts(self, texts: Sequence[str], seed: int, epoch: int) -> list[str]:
        """The texts of ``epoch``: a share ``text_aug_prob`` edited, the rest as they are."""
        if not self.active:
            return list(texts)
        rng = np.random.default_rng([int(seed), int(epoch), 0xEDA])
        chosen = rng.random(len(texts)) < self.text_aug_prob
        return [self.edit(t, rng) if c else t for t, c in zip(texts, chosen)]


class AugmentedTextBatches:
    """Training batches whose texts are edited anew each epoch, then tokenized.

    Behaves as ``pretune.data.collate.Batches`` (``set_epoch``, ``len``, iteration); pairs,
    when the task has them, are edited with the same rule (independently of their texts)."""

    def __init__(self, split: Any, augment: TextAugment, tokenizer: Any, max_length: int,
                 batch_size: int, *, pad_id: int, seed: int):
        self.split, self.augment = split, augment
        self.tokenizer, self.max_length = tokenizer, max_length
        self.batch_size, self.pad_id, self.seed = batch_size, pad_id, seed
        self.epoch = 0
        self._built: tuple[int, Any] | None = None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        n = len(self.split.texts)
        return math.ceil(n / self.batch_size) if n else 0

    def batches(self):
        """The ``Batches`` of the current epoch's edited texts."""
        from pretune.data.collate import Batches
        from pretune.data.tokenize import encode

        if self._built is None or self._built[0] != self.epoch:
            texts = self.augment.texts(self.split.texts, self.seed, self.epoch)
            pairs = (None if self.split.pairs is None
                     else self.augment.texts(self.split.pairs, self.seed + 1, self.epoch))
            enc = encode(texts, pairs, self.split.labels, self.tokenizer, self.max_length)
            batches = Batches(enc, self.batch_size, pad_id=self.pad_id, shuffle=True,
                              seed=self.seed)
            self._built = (self.epoch, batches)
        batches = self._built[1]
        batches.set_epoch(self.epoch)
        return batches

    def __iter__(self) -> Iterator[dict]:
        return iter(self.batches())
