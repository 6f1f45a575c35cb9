"""From data sources to a checked task: columns, labels, train and valid splits.

A task is single-label classification, regression (a number per text), multi-label
classification (a set of labels per text) or token classification (a tag per word, see
``pretune.data.tokens``); ``detect_task`` tells the first three apart from the label column, and
lists of words beside lists of tags make a token task, unless ``DataConfig.task`` names one.

``load_task`` reads the training (and validation) data named by a ``DataConfig``, finds the
text, text-pair and label columns, checks every text and label once, maps labels to ids, samples
and splits as configured, and fingerprints the result. ``read_inputs`` does the column and text
part for prediction inputs, which need no label, and ``read_sentences`` the sentences a token
classification model tags.

Row numbers in messages are counted as a user sees the source: in a CSV or TSV file row 1 is
the header, so the first example is row 2; in JSON lines, Parquet and datasets it is row 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

import numpy as np
import pandas as pd

from pretune.config import DataConfig
from pretune.data import images, tokens
from pretune.data.columns import (  # noqa: F401 - the column names are public here too
    LABEL_COLUMNS, PAIR_COLUMNS, PAIR_SCHEMAS, TEXT_COLUMNS, Columns, find_column, listing,
    resolve_columns, text_values,
)
from pretune.data.examples import PROBLEM_TYPES, TASK_KINDS, Split, TaskData  # noqa: F401
from pretune.data.labels import (  # noqa: F401 - detect_task is public here too
    MAX_CODED_CLASSES, class_ids, class_names, detect_task, indicators, label_sets, order_names,
    regression_targets,
)
from pretune.data.readers import dataset_splits, is_dataset_source, read_table
from pretune.data.sampling import holdout, sample_rows
from pretune.data.unlabeled import read_unlabeled
from pretune.errors import DataError

logger = logging.getLogger(__name__)


# --- public entry points ----------------------------------------------------------------------


def load_task(cfg: DataConfig, seed: int) -> TaskData:
    """Read, check, sample and split the data described by ``cfg``.

    Raises ``DataError`` for anything the user can fix: missing columns, empty texts or labels,
    a single class, validation labels the training data lacks, mismatched columns.
    """
    if not cfg.train:
        raise DataError(
            "Training data is needed, but --train was not given. Pass --train with a CSV, TSV, "
            "JSONL or Parquet file or a Hugging Face dataset."
        )
    if images.detect_modality(cfg) == "image":
        return images.load_image_task(cfg, seed)
    train_is_dataset = is_dataset_source(cfg.train)
    frame = read_table(cfg.train, split=cfg.dataset_split_train if train_is_dataset else None)
    token_cols = _token_columns(frame, cfg)
    if token_cols is not None:
        return _load_token_task(cfg, seed, frame, token_cols)
    cols = resolve_columns(
        frame, "--train", text=cfg.text_column, pair=cfg.text_pair_column,
        label=cfg.label_column, need_label=True,
    )
    assert cols.label is not None
    logger.info(
        "Columns: text=%s%s, label=%s", cols.text,
        f", text pair={cols.pair}" if cols.pair else "", cols.label,
    )

    kind = detect_task(frame, cols.label, task=cfg.task, delimiter=cfg.label_delimiter)
    if cfg.task == "auto":
        logger.info("Task: %s (detected from column '%s')", kind, cols.label)
    train, label_names, label2id = _train_split(frame, cols, kind, cfg.label_delimiter)
    if cfg.train_rows is not None and cfg.train_rows < len(train):
        train = train.subset(sample_rows(train.labels, cfg.train_rows, seed))
        logger.info("Sampled %d training rows (seed %d)", len(train), seed)

    valid_frame, valid_flag = _valid_frame(cfg)
    if valid_frame is not None:
        valid = _valid_split(valid_frame, valid_flag, cols, label2id, kind, cfg.label_delimiter)
        valid_source = "file"
    else:
        train, valid = _hold_out(train, cfg, seed)
        valid_source = "split"
    if cfg.unlabeled:  # checked with the rest of the data, not first inside a trial
        read_unlabeled(cfg.unlabeled, cfg.text_column)

    return TaskData(
        train=train,
        valid=valid,
        label_names=label_names,
        text_column=cols.text,
        text_pair_column=cols.pair,
        label_column=cols.label,
        fingerprint=_fingerprint(cols, label_names, train, valid, kind),
        valid_source=valid_source,
        kind=kind,
    )


def _train_split(frame: pd.DataFrame, cols: Columns, kind: str, delimiter: str | None
                 ) -> tuple[Split, list[str], dict[str, int]]:
    """The training examples of a text task, its label names (in id order) and their ids."""
    assert cols.label is not None
    texts = text_values(frame, cols.text, "--train")
    pairs = text_values(frame, cols.pair, "--train") if cols.pair else None
    if kind == "regression":
        targets = regression_targets(frame, cols.label, "--train")
        if len(np.unique(targets)) < 2:
            raise DataError(
                f"Regression needs at least two different targets in column '{cols.label}', but "
                f"every row has {targets[0]:g}. Pass data with varied targets, or --set "
                f"task=classification."
            )
        return Split(texts, pairs, targets), [str(cols.label)], {}
    if kind == "multilabel":
        sets = label_sets(frame, cols.label, "--train", delimiter)
        found = set().union(*sets)
        if not found:
            raise DataError(
                f"Multi-label data needs at least one label in column '{cols.label}', but every "
                f"row has an empty label list. Pass data whose rows name their labels."
            )
        label_names = order_names(found)
        label2id = {name: i for i, name in enumerate(label_names)}
        return Split(texts, pairs, indicators(sets, label2id)), label_names, label2id
    names, order = class_names(frame, cols.label, "--train")
    found = set(names)
    if len(found) < 2:
        raise DataError(
            f"--train needs at least two classes in column '{cols.label}', but every row has "
            f"label {found.pop()!r}. Pass data with examples of two or more classes."
        )
    label_names, label2id, labels = class_ids(names, order)
    return Split(texts, pairs, labels), label_names, label2id


def _valid_frame(cfg: DataConfig) -> tuple[pd.DataFrame | None, str]:
    """The validation data (--valid, or the training dataset's validation split) and how
    messages name it; (None, "--valid") when there is none and part of --train is held out."""
    if cfg.valid:
        split = cfg.dataset_split_valid if is_dataset_source(cfg.valid) else None
        return read_table(cfg.valid, split=split), "--valid"
    if is_dataset_source(cfg.train) and cfg.dataset_split_valid in dataset_splits(cfg.train):
        return (read_table(cfg.train, split=cfg.dataset_split_valid),
                f"The '{cfg.dataset_split_valid}' split of --train")
    return None, "--valid"


def _hold_out(train: Split, cfg: DataConfig, seed: int) -> tuple[Split, Split]:
    """(train, valid): ``cfg.valid_fraction`` of the training examples held out."""
    train_idx, valid_idx = holdout(train.labels, cfg.valid_fraction, seed)
    train, valid = train.subset(train_idx), train.subset(valid_idx)
    logger.info(
        "No validation data given: held out %d of %d training rows (%g, seed %d)",
        len(valid), len(train) + len(valid), cfg.valid_fraction, seed,
    )
    return train, valid


def task_of(cfg: DataConfig) -> str:
    """The task of ``cfg``'s training data: ``cfg.task``, or when that is "auto", the task
    its label column holds (``detect_task``; this reads the training data)."""
    if cfg.task != "auto":
        return cfg.task
    if not cfg.train:
        return "classification"  # load_task says what is missing
    if images.detect_modality(cfg) == "image":
        return "classification"  # images: a folder per class or a label column
    is_dataset = is_dataset_source(cfg.train)
    frame = read_table(cfg.train, split=cfg.dataset_split_train if is_dataset else None)
    if _token_columns(frame, cfg) is not None:
        return "token"
    cols = resolve_columns(frame, "--train", text=cfg.text_column, pair=cfg.text_pair_column,
                            label=cfg.label_column, need_label=True)
    assert cols.label is not None
    return detect_task(frame, cols.label, delimiter=cfg.label_delimiter)


def read_inputs(
    source: str,
    *,
    text_column: str | None = None,
    text_pair_column: str | None = None,
    split: str | None = None,
    detect_pair: bool = True,
) -> tuple[list[str], list[str] | None, pd.DataFrame]:
    """Texts (and second texts of pairs) to predict on, and the frame they came from.

    Columns are detected as in ``load_task``; no label column is needed. Pass the training
    run's columns, and ``detect_pair=False`` when the model was trained on single texts, so a
    file that happens to hold a pair-like column is not read as pairs.
    """
    frame = read_table(source, split=split)
    cols = resolve_columns(
        frame, "--input", text=text_column, pair=text_pair_column, label=None,
        need_label=False, detect_pair=detect_pair,
    )
    texts = text_values(frame, cols.text, "--input")
    pairs = text_values(frame, cols.pair, "--input") if cols.pair else None
    return texts, pairs, frame


def read_sentences(source: str, text_column: str | None = None
                   ) -> tuple[list[list[str]], list[str], pd.DataFrame]:
    """The sentences a token classification model tags in ``source``: a table with a column
    of word lists, or texts, which are split into words (``tokens.split_words``). Returns each
    sentence's words, its text (the input text, or the words joined by spaces: what entity
    offsets count in) and the rows the predictions go beside (texts also get their words in
    ``tokens``)."""
    frame = read_table(source)
    found = tokens.token_columns(frame, text=text_column)
    if found is not None:
        words, _ = tokens.sentences(frame, found[0], None, "--input")
        return words, [" ".join(w) for w in words], frame.reset_index(drop=True).copy()
    texts, _, frame = read_inputs(source, text_column=text_column, detect_pair=False)
    words = [tokens.split_words(t) for t in texts]
    empty = next((i for i, w in enumerate(words) if not w), None)
    if empty is not None:
        raise DataError(
            f"Token classification needs words to tag, but --input row "
            f"{empty + int(frame.attrs.get('first_row', 1))} has none. Remove that row."
        )
    result = frame.reset_index(drop=True).copy()
    result["tokens"] = words
    return words, texts, result


# --- token classification ---------------------------------------------------------------------


def _token_columns(frame: pd.DataFrame, cfg: DataConfig) -> tuple[str, str] | None:
    """(words, tags) columns when ``cfg`` and the data make a token task, else None.
    DataError for a token task without a tags column, and for word lists beside a label
    column that holds one label per row (a classification and token file mixed)."""
    if cfg.task not in ("auto", "token"):
        return None
    found = tokens.token_columns(frame, text=cfg.text_column, label=cfg.label_column)
    if found is None:
        if cfg.task == "token":
            raise DataError(
                f"Token classification needs a column of word lists, but --train has columns "
                f"({listing(list(frame.columns))}) and none of them holds lists. Pass "
                f"--text-column with the column of word lists, or a .conll file."
            )
        return None
    words, tags = found
    if tags is None:
        label = cfg.label_column or next(
            (c for n in tokens.TAG_COLUMNS + LABEL_COLUMNS if (c := find_column(list(frame.columns), n))),
            None)
        what = (f"its label column '{label}' holds one label per row, not a list of tags"
                if label else "it has no column of tag lists")
        raise DataError(
            f"Token classification needs a list of tags beside each list of words, but --train "
            f"has word lists in '{words}' and {what}. Give every row a tags list as long as its "
            f"words (or pass --label-column), or use a text column for sentence labels."
        )
    return words, tags


def _load_token_task(cfg: DataConfig, seed: int, frame: pd.DataFrame,
                     columns: tuple[str, str]) -> TaskData:
    """``load_task`` for token classification: sentences, tag ids, the tag scheme."""
    words_col, tags_col = columns
    logger.info("Task: token classification (words=%s, tags=%s)", words_col, tags_col)
    names = [n.strip() for n in cfg.label_names.split(",")] if cfg.label_names else None
    words, tags = tokens.sentences(frame, words_col, tags_col, "--train", names)
    assert tags is not None
    scheme = tokens.scheme_of(tags, "--train")
    found = {t for row in tags for t in row}
    if found == {"O"}:
        raise DataError(
            "Token classification needs entities to learn, but every tag of --train is O. Pass "
            "data whose sentences tag some of their words."
        )
    label_names = sorted(found, key=lambda t: (t != "O", t[2:], t[:1]))
    label2id = {name: i for i, name in enumerate(label_names)}
    train = _token_split(words, tags, label2id)
    if cfg.train_rows is not None and cfg.train_rows < len(train):
        train = train.subset(sample_rows(train.labels, cfg.train_rows, seed))
        logger.info("Sampled %d training sentences (seed %d)", len(train), seed)

    valid_frame, flag = _valid_frame(cfg)
    if valid_frame is not None:
        valid_cols = tokens.token_columns(valid_frame, text=words_col, label=tags_col)
        if valid_cols is None or valid_cols[1] is None:  # a .conll file beside a table, say
            valid_cols = tokens.token_columns(valid_frame)
        if valid_cols is None or valid_cols[1] is None:
            raise DataError(
                f"{flag} must have the same columns as --train (word lists in '{words_col}', "
                f"tag lists in '{tags_col}'), but got ({listing(list(valid_frame.columns))}). "
                f"Rename the columns or pass a token classification file."
            )
        v_words, v_tags = tokens.sentences(valid_frame, *valid_cols, flag, names)
        assert v_tags is not None
        unknown = sorted({t for row in v_tags for t in row} - set(label2id))
        if unknown:
            raise DataError(
                f"{flag} must only have tags that --train has ({listing(label_names, 10)}), but "
                f"it also has {', '.join(unknown[:10])}. Remove those sentences or add examples "
                f"of them to --train."
            )
        valid, valid_source = _token_split(v_words, v_tags, label2id), "file"
    else:
        train_idx, valid_idx = holdout(train.labels, cfg.valid_fraction, seed)
        train, valid, valid_source = train.subset(train_idx), train.subset(valid_idx), "split"
    return TaskData(
        train=train, valid=valid, label_names=label_names, text_column=words_col,
        text_pair_column=None, label_column=tags_col,
        fingerprint=_token_fingerprint(words_col, tags_col, label_names, train, valid),
        valid_source=valid_source, kind="token", scheme=scheme,
    )


def _token_split(words: list[list[str]], tags: list[list[str]], label2id: dict[str, int]) -> Split:
    labels = np.empty(len(words), dtype=object)
    for i, row in enumerate(tags):
        labels[i] = np.array([label2id[t] for t in row], dtype=np.int64)
    return Split(texts=[" ".join(w) for w in words], pairs=None, labels=labels, words=words)


def _token_fingerprint(words_col: str, tags_col: str, label_names: list[str], train: Split,
                       valid: Split) -> str:
    h = hashlib.sha256()
    h.update(json.dumps([words_col, tags_col, label_names, "token"]).encode())
    for split in (train, valid):
        h.update(json.dumps(split.words).encode())
        h.update(json.dumps([row.tolist() for row in split.labels]).encode())
    return h.hexdigest()


# --- columns ----------------------------------------------------------------------------------


# --- values -----------------------------------------------------------------------------------


def _valid_split(
    frame: pd.DataFrame, flag: str, cols: Columns, label2id: dict[str, int],
    kind: str = "classification", delimiter: str | None = None,
) -> Split:
    """The validation data, checked against the training data's columns and labels."""
    needed = [c for c in (cols.text, cols.pair, cols.label) if c is not None]
    found = {c: find_column(list(frame.columns), c) for c in needed}
    absent = [c for c in needed if found[c] is None]
    if absent:
        option = {cols.text: "--text-column", cols.pair: "--text-pair-column",
                  cols.label: "--label-column"}[absent[0]]
        raise DataError(
            f"{flag} must have the same columns as --train ({', '.join(needed)}), but got "
            f"({listing(list(frame.columns))}). Rename the column or pass {option}."
        )
    texts = text_values(frame, found[cols.text], flag)  # type: ignore[arg-type]
    pairs = text_values(frame, found[cols.pair], flag) if cols.pair else None  # type: ignore[arg-type]
    if kind == "regression":
        return Split(texts, pairs, regression_targets(frame, found[cols.label], flag))  # type: ignore[arg-type]
    if kind == "multilabel":
        sets = label_sets(frame, found[cols.label], flag, delimiter)  # type: ignore[arg-type]
        names = sorted(set().union(*sets))
    else:
        names, _ = class_names(frame, found[cols.label], flag)  # type: ignore[arg-type]
    unknown = sorted(set(names) - set(label2id))
    if unknown:
        more = f" ... ({len(unknown)} in all)" if len(unknown) > 10 else ""
        shown = ", ".join(unknown[:10]) + more
        raise DataError(
            f"{flag} must only have labels that --train has ({listing(list(label2id), 10)}), "
            f"but it also has {shown}. Remove those rows or add examples of them to --train."
        )
    if kind == "multilabel":
        return Split(texts, pairs, indicators(sets, label2id))
    return Split(texts, pairs, np.array([label2id[n] for n in names], dtype=np.int64))


# --- the task and its labels --------------------------------------------------------------------


# --- sampling and splitting -------------------------------------------------------------------


def _fingerprint(cols: Columns, label_names: list[str], train: Split, valid: Split,
                 kind: str = "classification") -> str:
    """sha256 of the columns, the label names, the task (unless classification) and every
    text, pair and label of both splits."""
    h = hashlib.sha256()
    head: list[Any] = [cols.text, cols.pair, cols.label, label_names]
    if kind != "classification":
        head.append(kind)
    h.update(json.dumps(head).encode())
    dtype = "<i8" if kind == "classification" else "<f8"
    for split in (train, valid):
        h.update(json.dumps(split.texts).encode())
        h.update(json.dumps(split.pairs).encode())
        h.update(np.ascontiguousarray(split.labels, dtype=dtype).tobytes())
    return h.hexdigest()
