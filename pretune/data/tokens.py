"""Token classification data: sentences as words with a tag each, checked and aligned to tokens.

A token-classification source is a table (JSON lines, Parquet, a Hugging Face dataset) with a
column of word lists and a column of tag lists of the same lengths (``tokens``/``tags``,
``words``, ``ner_tags``, ``labels`` are detected), or a CoNLL text file (``.conll``: one
``word ... tag`` per line, a blank line between sentences; ``pretune.data.readers`` reads it
into such a table). Tags follow IOB1, IOB2 or BIOES (``scheme_of``); anything else is refused.

``encode_words`` turns sentences into model inputs: each word's tag goes on its first sub-word
token, the other sub-tokens are ignored by the loss (-100) unless ``all_subtokens``. Sentences
longer than ``max_length`` tokens become windows that overlap by ``stride`` tokens; each word is
labelled (and later read) in the one window where it has the most context on both sides, so
scores and predictions count every word once. ``windows_of`` is that windowing from a
tokenizer's word ids alone, without torch or transformers: the ONNX runtime
(``pretune.deploy.runtime``) feeds it from the ``tokenizers`` library. ``word_predictions``
and ``add_tags`` are ``pretune predict``'s reading of per-token probabilities as tags, shared
by the torch and ONNX paths; ``entity_spans`` reads predicted tags back as entities with
character offsets, for ``pretune predict --entities``. ``sentence_outputs`` lays a model's
per-word probabilities out as one array per split (sentences, words, tags), which the final
assembly averages and scores across models, and ``on_windows`` places such per-word values
back on a model's windows (a distilled student's soft labels).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pretune.data.tokenize import Encoded
from pretune.errors import DataError, ModelError

WORD_COLUMNS = ("tokens", "words")
TAG_COLUMNS = ("tags", "ner_tags", "labels", "label")
IGNORE = -100  # the loss's ignore_index: sub-tokens and special tokens
SCHEMES = ("IOB1", "IOB2", "BIOES")
_TAG = re.compile(r"^([BIES])-(.+)$")
_WORD = re.compile(r"\w+(?:[-'.]\w+)*|[^\w\s]")


# --- detecting and reading -----------------------------------------------------------------


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _find(columns: Sequence[str], name: str) -> str | None:
    if name in columns:
        return name
    folded = [c for c in columns if str(c).lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def token_columns(frame: pd.DataFrame, *, text: str | None = None,
                  label: str | None = None) -> tuple[str, str | None] | None:
    """(words column, tags column or None) when ``frame`` holds lists of words, else None.

    The words column is ``text`` when given, else the first of ``WORD_COLUMNS`` whose first
    cells are lists; the tags column is ``label`` when given, else the first of ``TAG_COLUMNS``
    holding lists."""
    columns = list(frame.columns)
    head = frame.head(20)

    def listed(column: str | None) -> bool:
        return column is not None and len(head) > 0 and all(_is_list(v) for v in head[column])

    words = _find(columns, text) if text is not None else next(
        (c for n in WORD_COLUMNS if listed(c := _find(columns, n))), None)
    if not listed(words):
        return None
    tags = _find(columns, label) if label is not None else next(
        (c for n in TAG_COLUMNS if listed(c := _find(columns, n))), None)
    return words, tags if listed(tags) else None


def read_conll(path) -> pd.DataFrame:
    """A CoNLL file as a table of ``tokens`` and ``tags`` lists: the first field of each line
    is the word, the last its tag; a blank line ends a sentence; ``-DOCSTART-`` lines are
    skipped. Row numbers in messages count sentences from 1."""
    words: list[list[str]] = []
    tags: list[list[str]] = []
    sentence: list[tuple[str, str]] = []
    with open(path, encoding="utf-8-sig") as f:
        for number, line in enumerate(f, 1):
            fields = line.split()
            if not fields or fields[0] == "-DOCSTART-":
                if sentence:
                    words.append([w for w, _ in sentence])
                    tags.append([t for _, t in sentence])
                    sentence = []
                continue
            if len(fields) < 2:
                raise DataError(
                    f"A CoNLL file needs a word and a tag on every line, but line {number} of "
                    f"{path} has only {fields[0]!r}. Add its tag (for example 'O') or separate "
                    f"sentences by an empty line."
                )
            sentence.append((fields[0], fields[-1]))
    if sentence:
        words.append([w for w, _ in sentence])
        tags.append([t for _, t in sentence])
    if not words:
        raise DataError(
            f"A CoNLL file must hold at least one sentence, but {path} has none. Write one "
            f"'word tag' per line with an empty line between sentences."
        )
    frame = pd.DataFrame({"tokens": words, "tags": tags})
    frame.attrs["first_row"] = 1
    return frame


def split_words(text: str) -> list[str]:
    """Raw text as words, the way CoNLL data is tokenized: runs of letters and digits (with
    inner hyphens, apostrophes and dots) and single punctuation marks."""
    return _WORD.findall(text)


# --- checking ------------------------------------------------------------------------------


def _row(frame: pd.DataFrame, i: int) -> int:
    return i + int(frame.attrs.get("first_row", 1))


def sentences(frame: pd.DataFrame, words_column: str, tags_column: str | None,
              flag: str, tag_names: Sequence[str] | None = None
              ) -> tuple[list[list[str]], list[list[str]] | None]:
    """Every row's words (and tags, named), checked: non-empty lists of the same length.
    Integer tags are named by ``tag_names`` (``--label-names``), else by a Hugging Face
    ``Sequence(ClassLabel)`` feature's names."""
    names = tag_names or (frame.attrs.get("class_names", {}).get(tags_column)
                          if tags_column else None)
    all_words: list[list[str]] = []
    all_tags: list[list[str]] | None = [] if tags_column else None
    for i, value in enumerate(frame[words_column].tolist()):
        if not _is_list(value) or len(value) == 0:
            what = "an empty sentence" if _is_list(value) else f"{value!r}, not a list of words"
            raise DataError(
                f"Token classification needs a list of words in every row of column "
                f"'{words_column}', but {flag} row {_row(frame, i)} has {what}. Remove that row "
                f"or write its words as a list."
            )
        all_words.append([str(w) for w in value])
    if all_tags is None:
        return all_words, None
    for i, (words, value) in enumerate(zip(all_words, frame[tags_column].tolist())):
        if not _is_list(value) or len(value) != len(words):
            got = f"{len(value)} tags" if _is_list(value) else f"{value!r}"
            raise DataError(
                f"Token classification needs one tag per word, but {flag} row {_row(frame, i)} "
                f"has {len(words)} words in '{words_column}' and {got} in '{tags_column}'. Fix "
                f"that row so both lists have the same length."
            )
        all_tags.append([_tag_name(t, names, flag, frame, i, tags_column) for t in value])
    return all_words, all_tags


def _tag_name(tag: Any, names: list[str] | None, flag: str, frame, i: int, column: str) -> str:
    if isinstance(tag, str) and tag.strip():
        return tag.strip()
    if names is not None and isinstance(tag, (int, np.integer)) and 0 <= int(tag) < len(names):
        return str(names[int(tag)])
    if names is not None and isinstance(tag, (int, np.integer)):
        raise DataError(
            f"Integer tags must be ids of the {len(names)} tag names given, but {flag} row "
            f"{_row(frame, i)} of column '{column}' has {tag}. Pass --label-names with a name "
            f"for every id, in order."
        )
    raise DataError(
        f"Token classification needs tag names such as B-PER, I-PER and O, but {flag} row "
        f"{_row(frame, i)} of column '{column}' has {tag!r}. Write the tags as names, or pass "
        f"--label-names O,B-PER,I-PER,... to name integer tags in id order."
    )


def scheme_of(tag_lists: Sequence[Sequence[str]], flag: str = "--train") -> str:
    """The tag scheme: BIOES when E- or S- tags occur, IOB1 when an I- tag starts an entity
    (after O, or after a tag of another type), else IOB2. DataError for a tag that is neither
    O nor PREFIX-TYPE with PREFIX one of B, I, E, S."""
    prefixes: set[str] = set()
    iob1 = False
    for row, tags in enumerate(tag_lists, 1):
        previous = "O"
        for tag in tags:
            if tag != "O":
                match = _TAG.match(tag)
                if match is None:
                    raise DataError(
                        f"Token tags must follow IOB1, IOB2 or BIOES (O, or B-, I-, E-, S- and "
                        f"an entity type), but {flag} sentence {row} has the tag {tag!r}. Write "
                        f"the tags in one of those schemes, for example B-PER I-PER O."
                    )
                prefix, kind = match.groups()
                prefixes.add(prefix)
                if prefix == "I" and (previous == "O" or previous[2:] != kind):
                    iob1 = True
            previous = tag
    if prefixes & {"E", "S"}:
        return "BIOES"
    return "IOB1" if iob1 else "IOB2"


# --- aligning words to tokens ------------------------------------------------------------------


@dataclass
class Windows:
    """Sentences encoded as token windows: ``encoded`` (its labels per token, or None), the
    sentence of each window (``rows``), and for each window the word whose prediction is read
    at each token position (-1 where none is)."""

    encoded: Any  # pretune.data.tokenize.Encoded
    rows: np.ndarray
    word_at: list[np.ndarray]


def encode_words(words: Sequence[Sequence[str]], tags: Sequence[np.ndarray] | None, tokenizer,
                 max_length: int, *, stride: int = 32, all_subtokens: bool = False,
                 inside: dict[int, int] | None = None) -> Windows:
    """Tokenize sentences given as words into windows of at most ``max_length`` tokens with a
    transformers fast tokenizer; ``windows_of`` says how ``tags`` (each sentence's tag ids)
    are placed on the tokens."""
    if not getattr(tokenizer, "is_fast", False):
        raise ModelError(
            f"Token classification aligns words to sub-word tokens with a fast tokenizer, but "
            f"{type(tokenizer).__name__} is not one. Use a model that has a tokenizer.json."
        )
    stride = window_stride(stride, max_length, tokenizer.num_special_tokens_to_add())
    out = tokenizer([list(w) for w in words], is_split_into_words=True, truncation=True,
                    max_length=max_length, stride=stride, return_overflowing_tokens=True,
                    padding=False, return_attention_mask=False, return_token_type_ids=False)
    rows = np.asarray(out["overflow_to_sample_mapping"], dtype=np.int64)
    word_ids = [out.word_ids(w) for w in range(len(rows))]
    return windows_of(list(out["input_ids"]), rows, word_ids, tags,
                      all_subtokens=all_subtokens, inside=inside)


def window_stride(stride: int, max_length: int, special: int) -> int:
    """The overlap of consecutive windows: ``stride`` tokens, but at most half the room a
    window has for words (``max_length`` less the ``special`` tokens the tokenizer adds)."""
    return max(0, min(int(stride), (max_length - special) // 2))


def windows_of(input_ids: Sequence[Sequence[int]], rows: Sequence[int],
               word_ids: Sequence[Sequence[int | None]], tags: Sequence[np.ndarray] | None = None,
               *, all_subtokens: bool = False, inside: dict[int, int] | None = None) -> Windows:
    """Windows from a tokenizer's output: each window's token ids, its sentence (``rows``) and
    the word of each of its tokens (None for special tokens), as the ``tokenizers`` library
    reports them. Needs neither torch nor transformers, so the ONNX runtime reads windows
    exactly as training and ``pretune predict`` do.

    A word's tag (from ``tags``) goes on its first sub-token in the window where the word has
    the most context; every other position gets -100, except that with ``all_subtokens`` the
    later sub-tokens of a word (in that window) get its tag too, a B- tag turned into the I-
    tag of its type by ``inside`` (tag id -> tag id)."""
    rows = np.asarray(rows, dtype=np.int64)
    word_ids = [list(ids) for ids in word_ids]
    word_at = _best_windows(rows, word_ids)
    labels = None
    if tags is not None:
        labels = np.empty(len(rows), dtype=object)
        for w, (row, ids, at) in enumerate(zip(rows, word_ids, word_at)):
            sentence = np.asarray(tags[row], dtype=np.int64)
            lab = np.full(len(ids), IGNORE, dtype=np.int64)
            chosen = at >= 0
            lab[chosen] = sentence[at[chosen]]
            if all_subtokens:
                owned = set(at[chosen].tolist())
                for p, word in enumerate(ids):
                    if word is not None and word in owned and at[p] < 0:
                        tag = int(sentence[word])
                        lab[p] = (inside or {}).get(tag, tag)
            labels[w] = lab
    encoded = Encoded(input_ids=[list(ids) for ids in input_ids], token_type_ids=None,
                      labels=labels)
    return Windows(encoded=encoded, rows=rows, word_at=word_at)


def _best_windows(rows: np.ndarray, word_ids: list[list[int | None]]) -> list[np.ndarray]:
    """For each window, the word read at each position: a word's first sub-token, in the window
    of its sentence where min(tokens before, tokens after) is largest (the first such window
    on ties); -1 elsewhere."""
    best: dict[tuple[int, int], tuple[int, int, int]] = {}  # (row, word) -> (score, window, pos)
    for w, (row, ids) in enumerate(zip(rows, word_ids)):
        content = [p for p, word in enumerate(ids) if word is not None]
        for k, p in enumerate(content):
            word = ids[p]
            if p > 0 and ids[p - 1] == word:
                continue  # not the word's first sub-token in this window
            score = min(k, len(content) - 1 - k)
            key = (int(row), int(word))
            if key not in best or score > best[key][0]:
                best[key] = (score, w, p)
    word_at = [np.full(len(ids), -1, dtype=np.int64) for ids in word_ids]
    for (_, word), (_, w, p) in best.items():
        word_at[w][p] = word
    return word_at


def inside_tags(label_names: Sequence[str]) -> dict[int, int]:
    """tag id -> the id of its I- tag, for B- tags whose I- tag exists (label_all_subtokens)."""
    ids = {name: i for i, name in enumerate(label_names)}
    return {i: ids[f"I-{name[2:]}"] for i, name in enumerate(label_names)
            if name.startswith("B-") and f"I-{name[2:]}" in ids}


def word_predictions(windows: Windows, probs: np.ndarray | Sequence[np.ndarray],
                     lengths: Sequence[int]) -> list[np.ndarray]:
    """Per-word probabilities (words, tags) of each sentence from per-window, per-token
    ``probs`` (windows, tokens, tags), padded or a list with one (tokens, tags) array per
    window; a word that no token stands for gets all zeros."""
    k = np.shape(probs[0])[-1] if len(probs) else 0
    out = [np.zeros((n, k), dtype=np.float32) for n in lengths]
    for w, (row, at) in enumerate(zip(windows.rows, windows.word_at)):
        positions = np.flatnonzero(at >= 0)
        out[row][at[positions]] = probs[w][positions]
    return out


def sentence_outputs(windows: Windows, probs: np.ndarray | Sequence[np.ndarray],
                     tags: Sequence[np.ndarray], outside: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Per-word probabilities and tags of whole sentences, from per-window, per-token ``probs``
    (what ``word_predictions`` reads) and each sentence's tag ids ``tags``: arrays
    (sentences, most words, tags) and (sentences, most words), padded with zeros and -100.
    A word no token stands for is read as tag ``outside`` (the O tag), as ``add_tags`` tags
    it. Models that window sentences differently give arrays of one shape, row for row, so
    their outputs can be averaged and scored together (``pretune.search.assemble``)."""
    lengths = [len(t) for t in tags]
    per_word = word_predictions(windows, probs, lengths)
    k = np.shape(probs[0])[-1] if len(probs) else 0
    width = max(lengths, default=0)
    outputs = np.zeros((len(lengths), width, k), dtype=np.float32)
    labels = np.full((len(lengths), width), IGNORE, dtype=np.int64)
    for row, (p, t) in enumerate(zip(per_word, tags)):
        p = p.copy()
        p[p.sum(axis=1) == 0, outside] = 1.0
        outputs[row, :len(t)] = p
        labels[row, :len(t)] = np.asarray(t, dtype=np.int64)
    return outputs, labels


def on_windows(windows: Windows, per_word: np.ndarray) -> np.ndarray:
    """Per-word values of whole sentences (sentences, words, k; ``sentence_outputs``' layout)
    placed where ``windows`` read each word, its first sub-token in the window that reads it:
    (windows, tokens of the widest window, k), NaN at every other position. A teacher's
    per-word logits become what a student trained on these windows learns from."""
    width = max((len(at) for at in windows.word_at), default=0)
    out = np.full((len(windows.rows), width, np.shape(per_word)[-1]), np.nan, dtype=np.float32)
    for w, (row, at) in enumerate(zip(windows.rows, windows.word_at)):
        positions = np.flatnonzero(at >= 0)
        out[w, positions] = per_word[row, at[positions]]
    return out


def word_offsets(text: str, words: Sequence[str]) -> list[tuple[int, int]]:
    """(start, end) character offsets of each word in ``text``, found left to right; a word
    that is not there in order (text changed by preprocessing) gets the end of the last one."""
    out, position = [], 0
    for word in words:
        start = text.find(word, position)
        if start < 0:
            out.append((position, position))
            continue
        position = start + len(word)
        out.append((start, position))
    return out


def entity_spans(text: str, words: Sequence[str], tags: Sequence[str],
                 scores: Sequence[float]) -> list[dict[str, Any]]:
    """The entities the ``tags`` of ``words`` make (seqeval's reading of IOB1, IOB2 and
    BIOES), each with its type, the character offsets of its first and last word in ``text``,
    its text, and its score: the mean probability of its words' predicted tags."""
    from seqeval.metrics.sequence_labeling import get_entities

    offsets = word_offsets(text, words)
    spans = []
    for kind, first, last in get_entities(list(tags)):
        start, end = offsets[first][0], offsets[last][1]
        spans.append({"type": kind, "start": start, "end": end, "text": text[start:end],
                      "score": round(float(np.mean(scores[first:last + 1])), 4)})
    return spans


# --- predicting ----------------------------------------------------------------------------


def add_tags(result: pd.DataFrame, per_word: Sequence[np.ndarray], names: Sequence[str],
             texts: Sequence[str], words: Sequence[Sequence[str]], *,
             entities: bool = False) -> pd.DataFrame:
    """``result`` with each sentence's tags in ``prediction``, from ``per_word`` probabilities
    (``word_predictions``; a word no token stands for is tagged O); with ``entities`` also the
    entities of each sentence (of ``texts`` and ``words``, see ``entity_spans``) in
    ``entities``."""
    names = [str(n) for n in names]
    outside = names.index("O") if "O" in names else 0
    result["prediction"] = [[names[int(row.argmax())] if row.sum() > 0 else names[outside]
                             for row in p] for p in per_word]
    if entities:
        result["entities"] = [entity_spans(text, w, tags, p.max(axis=1))
                              for text, w, tags, p in zip(texts, words, result["prediction"],
                                                          per_word)]
    return result
