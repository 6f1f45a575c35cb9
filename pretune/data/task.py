"""From data sources to a checked task: columns, labels, train and valid splits.

A task is single-label classification, regression (a number per text), multi-label
classification (a set of labels per text) or token classification (a tag per word, see
``pretune.data.tokens``); ``detect_task`` tells the first three apart from the label column, and
lists of words beside lists of tags make a token task, unless ``DataConfig.task`` names one.

``load_task`` reads the training (and validation) data named by a ``DataConfig``, finds the
text, text-pair and label columns, checks every text and label once, maps labels to ids, samples
and splits as configured, and fingerprints the result. ``read_inputs`` does the column and text
part for prediction inputs, which need no label.

Row numbers in messages are counted as a user sees the source: in a CSV or TSV file row 1 is
the header, so the first example is row 2; in JSON lines, Parquet and datasets it is row 1.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import re
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import pandas as pd

from pretune.config import DataConfig
from pretune.errors import DataError
from pretune.data import tokens
from pretune.data.readers import dataset_splits, is_dataset_source, read_table

logger = logging.getLogger(__name__)

# Detected column names, in order of preference (matched case-insensitively).
TEXT_COLUMNS = (
    "text", "sentence", "sentence1", "question", "question1", "premise", "review", "content",
    "document", "text_a", "sentence_a",
)
PAIR_COLUMNS = ("sentence2", "text_pair", "hypothesis", "question2", "text_b", "sentence_b")
LABEL_COLUMNS = ("label", "labels", "target", "class", "y", "category", "score")
# Text and pair columns that come together (GLUE, SuperGLUE, NLI ...), tried before TEXT_COLUMNS
# so that, for example, QNLI's (question, sentence) is read as a pair, not as one text.
PAIR_SCHEMAS = (
    ("sentence1", "sentence2"), ("premise", "hypothesis"), ("question1", "question2"),
    ("question", "sentence"), ("question", "passage"), ("text", "text_pair"),
    ("text_a", "text_b"), ("sentence_a", "sentence_b"),
)

_INT_TEXT = re.compile(r"^\s*[+-]?\d+(\.0*)?\s*$")

TASK_KINDS = ("classification", "regression", "multilabel", "token")
# transformers' problem_type knows no token task; "token_classification" is ours (it selects
# AutoModelForTokenClassification and is not written into a model's config).
PROBLEM_TYPES = {"classification": "single_label_classification", "regression": "regression",
                 "multilabel": "multi_label_classification", "token": "token_classification"}
# Whole-number labels are class codes when they are few (at most this many distinct values) or
# exactly 0..k-1 or 1..k; other whole numbers (counts, years, prices) are regression targets.
MAX_CODED_CLASSES = 50


@dataclass
class Split:
    """The examples of one split: texts, optional second texts of a pair, and labels."""

    texts: list[str]
    pairs: list[str] | None  # second text of a pair task, else None
    # classification: int64 label ids (n,); regression: float64 targets in the data's own
    # units (n,); multilabel: float32 0/1 indicators (n, number of labels); token: an object
    # array of int64 tag-id arrays, one per sentence, one id per word
    labels: np.ndarray
    words: list[list[str]] | None = None  # token: each sentence's words (texts: them joined)

    def __len__(self) -> int:
        return len(self.texts)

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Split":
        """The examples at ``indices``, in that order."""
        idx = np.asarray(indices, dtype=np.int64)
        return Split(
            texts=[self.texts[i] for i in idx],
            pairs=None if self.pairs is None else [self.pairs[i] for i in idx],
            labels=self.labels[idx],
            words=None if self.words is None else [self.words[i] for i in idx],
        )


@dataclass
class TaskData:
    """A checked task, ready to tokenize."""

    train: Split
    valid: Split
    # index = label id; used as id2label. Regression: the label column's name (one output).
    label_names: list[str]
    text_column: str
    text_pair_column: str | None
    label_column: str
    fingerprint: str  # sha256 hex of the train+valid content (texts, pairs, labels) and columns
    valid_source: str  # "file": separate validation data (a file or a dataset split);
    # "split": held out of the training data
    kind: str = "classification"  # classification | regression | multilabel | token
    scheme: str | None = None  # token: the tag scheme (IOB1, IOB2, BIOES)

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def problem_type(self) -> str:
        """The task in transformers' words (``PretrainedConfig.problem_type``)."""
        return PROBLEM_TYPES[self.kind]

    def target_scale(self) -> tuple[float, float]:
        """Regression: (mean, std) of the training targets, the standardization saved with a
        model; (0, 1) when every target is the same (nothing to scale by)."""
        y = np.asarray(self.train.labels, dtype=np.float64)
        mean, std = float(y.mean()), float(y.std())
        return (mean, std) if std > 0 and math.isfinite(std) else (mean, 1.0)

    @property
    def id2label(self) -> dict[int, str]:
        return dict(enumerate(self.label_names))

    @property
    def label2id(self) -> dict[str, int]:
        return {name: i for i, name in enumerate(self.label_names)}


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
    from pretune.data import images

    if images.detect_modality(cfg) == "image":
        return images.load_image_task(cfg, seed)
    train_is_dataset = is_dataset_source(cfg.train)
    frame = read_table(cfg.train, split=cfg.dataset_split_train if train_is_dataset else None)
    token_cols = _token_columns(frame, cfg)
    if token_cols is not None:
        return _load_token_task(cfg, seed, frame, token_cols)
    cols = _resolve_columns(
        frame, "--train", text=cfg.text_column, pair=cfg.text_pair_column,
        label=cfg.label_column, need_label=True,
    )
    assert cols.label is not None
    logger.info(
        "Columns: text=%s%s, label=%s", cols.text,
        f", text pair={cols.pair}" if cols.pair else "", cols.label,
    )

    texts = _texts(frame, cols.text, "--train")
    pairs = _texts(frame, cols.pair, "--train") if cols.pair else None
    kind = detect_task(frame, cols.label, task=cfg.task, delimiter=cfg.label_delimiter)
    if cfg.task == "auto":
        logger.info("Task: %s (detected from column '%s')", kind, cols.label)
    if kind == "regression":
        targets = _targets(frame, cols.label, "--train")
        if len(np.unique(targets)) < 2:
            raise DataError(
                f"Regression needs at least two different targets in column '{cols.label}', but "
                f"every row has {targets[0]:g}. Pass data with varied targets, or --set "
                f"task=classification."
            )
        label_names = [str(cols.label)]
        label2id: dict[str, int] = {}
        train = Split(texts, pairs, targets)
    elif kind == "multilabel":
        sets = _label_sets(frame, cols.label, "--train", cfg.label_delimiter)
        found = set().union(*sets)
        if not found:
            raise DataError(
                f"Multi-label data needs at least one label in column '{cols.label}', but every "
                f"row has an empty label list. Pass data whose rows name their labels."
            )
        label_names = _order_names(found)
        label2id = {name: i for i, name in enumerate(label_names)}
        train = Split(texts, pairs, _indicators(sets, label2id))
    else:
        names, order = _label_names(frame, cols.label, "--train")
        found = set(names)
        if len(found) < 2:
            raise DataError(
                f"--train needs at least two classes in column '{cols.label}', but every row has "
                f"label {found.pop()!r}. Pass data with examples of two or more classes."
            )
        label_names = order(found)
        label2id = {name: i for i, name in enumerate(label_names)}
        train = Split(texts, pairs, np.array([label2id[n] for n in names], dtype=np.int64))

    if cfg.train_rows is not None and cfg.train_rows < len(train):
        train = train.subset(_sample(train.labels, cfg.train_rows, seed))
        logger.info("Sampled %d training rows (seed %d)", len(train), seed)

    valid_frame, valid_flag = None, "--valid"
    if cfg.valid:
        valid_is_dataset = is_dataset_source(cfg.valid)
        valid_frame = read_table(
            cfg.valid, split=cfg.dataset_split_valid if valid_is_dataset else None
        )
    elif train_is_dataset and cfg.dataset_split_valid in dataset_splits(cfg.train):
        valid_frame = read_table(cfg.train, split=cfg.dataset_split_valid)
        valid_flag = f"The '{cfg.dataset_split_valid}' split of --train"

    if valid_frame is not None:
        valid = _valid_split(valid_frame, valid_flag, cols, label2id, kind, cfg.label_delimiter)
        valid_source = "file"
    else:
        train_idx, valid_idx = _split(train.labels, cfg.valid_fraction, seed)
        train, valid = train.subset(train_idx), train.subset(valid_idx)
        valid_source = "split"
        logger.info(
            "No validation data given: held out %d of %d training rows (%g, seed %d)",
            len(valid), len(train) + len(valid), cfg.valid_fraction, seed,
        )
    if cfg.unlabeled:  # checked with the rest of the data, not first inside a trial
        from pretune.data.unlabeled import read_unlabeled

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


def task_of(cfg: DataConfig) -> str:
    """The task of ``cfg``'s training data: ``cfg.task``, or when that is "auto", the task
    its label column holds (``detect_task``; this reads the training data)."""
    if cfg.task != "auto":
        return cfg.task
    if not cfg.train:
        return "classification"  # load_task says what is missing
    from pretune.data import images

    if images.detect_modality(cfg) == "image":
        return "classification"  # images: a folder per class or a label column
    is_dataset = is_dataset_source(cfg.train)
    frame = read_table(cfg.train, split=cfg.dataset_split_train if is_dataset else None)
    if _token_columns(frame, cfg) is not None:
        return "token"
    cols = _resolve_columns(frame, "--train", text=cfg.text_column, pair=cfg.text_pair_column,
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
    cols = _resolve_columns(
        frame, "--input", text=text_column, pair=text_pair_column, label=None,
        need_label=False, detect_pair=detect_pair,
    )
    texts = _texts(frame, cols.text, "--input")
    pairs = _texts(frame, cols.pair, "--input") if cols.pair else None
    return texts, pairs, frame


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
                f"({_listing(list(frame.columns))}) and none of them holds lists. Pass "
                f"--text-column with the column of word lists, or a .conll file."
            )
        return None
    words, tags = found
    if tags is None:
        label = cfg.label_column or next(
            (c for n in tokens.TAG_COLUMNS + LABEL_COLUMNS if (c := _find(list(frame.columns), n))),
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
        train = train.subset(_sample(train.labels, cfg.train_rows, seed))
        logger.info("Sampled %d training sentences (seed %d)", len(train), seed)

    valid_frame, flag = None, "--valid"
    if cfg.valid:
        valid_frame = read_table(cfg.valid, split=cfg.dataset_split_valid
                                 if is_dataset_source(cfg.valid) else None)
    elif is_dataset_source(cfg.train) and cfg.dataset_split_valid in dataset_splits(cfg.train):
        valid_frame = read_table(cfg.train, split=cfg.dataset_split_valid)
        flag = f"The '{cfg.dataset_split_valid}' split of --train"
    if valid_frame is not None:
        valid_cols = tokens.token_columns(valid_frame, text=words_col, label=tags_col)
        if valid_cols is None or valid_cols[1] is None:  # a .conll file beside a table, say
            valid_cols = tokens.token_columns(valid_frame)
        if valid_cols is None or valid_cols[1] is None:
            raise DataError(
                f"{flag} must have the same columns as --train (word lists in '{words_col}', "
                f"tag lists in '{tags_col}'), but got ({_listing(list(valid_frame.columns))}). "
                f"Rename the columns or pass a token classification file."
            )
        v_words, v_tags = tokens.sentences(valid_frame, *valid_cols, flag, names)
        assert v_tags is not None
        unknown = sorted({t for row in v_tags for t in row} - set(label2id))
        if unknown:
            raise DataError(
                f"{flag} must only have tags that --train has ({_listing(label_names, 10)}), but "
                f"it also has {', '.join(unknown[:10])}. Remove those sentences or add examples "
                f"of them to --train."
            )
        valid, valid_source = _token_split(v_words, v_tags, label2id), "file"
    else:
        train_idx, valid_idx = _split(train.labels, cfg.valid_fraction, seed)
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


@dataclass(frozen=True)
class _Columns:
    text: str
    pair: str | None
    label: str | None


def _find(columns: Sequence[str], name: str) -> str | None:
    """The column called ``name``: exact match first, then a unique case-insensitive one."""
    if name in columns:
        return name
    folded = [c for c in columns if c.lower() == name.lower()]
    return folded[0] if len(folded) == 1 else None


def _listing(columns: Sequence[str], limit: int = 20) -> str:
    shown = ", ".join(columns[:limit])
    return shown + (f", ... ({len(columns)} in all)" if len(columns) > limit else "")


def _given(frame: pd.DataFrame, name: str, flag: str, option: str) -> str:
    """The column a user named with ``option``; DataError when the frame lacks it."""
    found = _find(list(frame.columns), name)
    if found is None:
        raise DataError(
            f"{flag} must have the column '{name}' given by {option}, but found columns "
            f"({_listing(list(frame.columns))}). Pass {option} with one of those names."
        )
    return found


def _resolve_columns(
    frame: pd.DataFrame,
    flag: str,
    *,
    text: str | None,
    pair: str | None,
    label: str | None,
    need_label: bool,
    detect_pair: bool = True,
) -> _Columns:
    columns = list(frame.columns)

    if label is not None:
        label = _given(frame, label, flag, "--label-column")
    else:
        label = next((c for n in LABEL_COLUMNS if (c := _find(columns, n))), None)
        if label is None and need_label:
            raise DataError(
                f"{flag} must have a label column, but found columns ({_listing(columns)}). "
                f"Pass --label-column with the name of the label column."
            )

    if pair is not None:
        pair = _given(frame, pair, flag, "--text-pair-column")
    if text is not None:
        text = _given(frame, text, flag, "--text-column")
    else:
        for first, second in PAIR_SCHEMAS:
            a, b = _find(columns, first), _find(columns, second)
            if a and b and (pair is None and detect_pair or pair == b):
                text, pair = a, b
                break
    if text is None:
        taken = {label, pair}
        text = next((c for n in TEXT_COLUMNS if (c := _find(columns, n)) and c not in taken), None)
    if text is None:
        # The only column holding text, not counting the label and likely label columns.
        skip = {label, pair} | {c for c in columns if c.lower() in LABEL_COLUMNS}
        texty = [c for c in columns if c not in skip and _looks_like_text(frame[c])]
        if len(texty) == 1:
            text = texty[0]
            logger.info("%s: using '%s', its only text column, as the text", flag, text)
    if text is None:
        raise DataError(
            f"{flag} must have a text column, but found columns ({_listing(columns)}). "
            f"Pass --text-column with the name of the text column."
        )
    if pair is None and detect_pair:
        taken = {label, text}
        pair = next((c for n in PAIR_COLUMNS if (c := _find(columns, n)) and c not in taken), None)

    chosen = [c for c in (text, pair, label) if c is not None]
    if len(set(chosen)) < len(chosen):
        raise DataError(
            f"The text, text pair and label columns must differ, but {flag} uses '{text}' for "
            f"text{f', {pair!r} for the pair' if pair else ''} and '{label}' for the label. "
            f"Pass --text-column, --text-pair-column and --label-column with different columns."
        )
    return _Columns(text=text, pair=pair, label=label)


def _looks_like_text(series: pd.Series) -> bool:
    """True when (a sample of) the column holds strings that are not all numbers."""
    for value in series.head(1000):
        if isinstance(value, str) and value.strip():
            try:
                float(value)
            except ValueError:
                return True
    return False


# --- values -----------------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value))


def _row(frame: pd.DataFrame, i: int) -> int:
    return i + int(frame.attrs.get("first_row", 1))


def _texts(frame: pd.DataFrame, column: str, flag: str) -> list[str]:
    """The column as a list of non-empty strings; numbers become their text."""
    out: list[str] = []
    bad: list[int] = []
    first_problem = ""
    for i, value in enumerate(frame[column].tolist()):
        if isinstance(value, str):
            if value.strip():
                out.append(value)
                continue
            problem = "empty"
        elif _is_missing(value):
            problem = "empty"
        elif isinstance(value, (bool, int, float, np.number)):
            out.append(str(value))
            continue
        else:
            problem = f"a {type(value).__name__}, not text"
        if not bad:
            first_problem = problem
        bad.append(i)
    if bad:
        raise DataError(
            f"{flag} must have text in every row of column '{column}', but row "
            f"{_row(frame, bad[0])} is {first_problem} ({len(bad)} such rows in all). Remove "
            f"those rows or fill them in."
        )
    return out


def _label_names(frame: pd.DataFrame, column: str, flag: str) -> tuple[list[str], Any]:
    """Each row's label as a name, and a function that orders a set of names into ids.

    Whole numbers (ints, integral floats, digit strings from CSV) are ordered numerically, Hugging
    Face ``ClassLabel`` names keep the dataset's order, anything else is sorted as strings.
    """
    values = frame[column].tolist()
    class_names: list[str] | None = frame.attrs.get("class_names", {}).get(column)

    def missing(i: int, what: str) -> DataError:
        return DataError(
            f"{flag} must have a label in every row of column '{column}', but row "
            f"{_row(frame, i)} has {what}. Remove that row or give it a label."
        )

    for i, value in enumerate(values):
        if _is_missing(value) or (isinstance(value, str) and not value.strip()):
            raise missing(i, "none")

    if class_names is not None:  # a datasets ClassLabel: ids index its names
        names = []
        for i, value in enumerate(values):
            if not 0 <= int(value) < len(class_names):
                raise missing(i, f"{value} (not one of its {len(class_names)} classes)")
            names.append(class_names[int(value)])
        return names, lambda found: list(class_names)

    if all(_is_whole(v) for v in values):
        names = [str(int(float(v))) for v in values]
        return names, lambda found: sorted(found, key=int)
    names = [v.strip() if isinstance(v, str) else str(v) for v in values]
    return names, lambda found: sorted(found)


def _is_whole(value: Any) -> bool:
    if isinstance(value, bool):
        return False
    if isinstance(value, (int, np.integer)):
        return True
    if isinstance(value, (float, np.floating)):
        return float(value).is_integer()
    return isinstance(value, str) and bool(_INT_TEXT.match(value))


def _valid_split(
    frame: pd.DataFrame, flag: str, cols: _Columns, label2id: dict[str, int],
    kind: str = "classification", delimiter: str | None = None,
) -> Split:
    """The validation data, checked against the training data's columns and labels."""
    needed = [c for c in (cols.text, cols.pair, cols.label) if c is not None]
    found = {c: _find(list(frame.columns), c) for c in needed}
    absent = [c for c in needed if found[c] is None]
    if absent:
        option = {cols.text: "--text-column", cols.pair: "--text-pair-column",
                  cols.label: "--label-column"}[absent[0]]
        raise DataError(
            f"{flag} must have the same columns as --train ({', '.join(needed)}), but got "
            f"({_listing(list(frame.columns))}). Rename the column or pass {option}."
        )
    texts = _texts(frame, found[cols.text], flag)  # type: ignore[arg-type]
    pairs = _texts(frame, found[cols.pair], flag) if cols.pair else None  # type: ignore[arg-type]
    if kind == "regression":
        return Split(texts, pairs, _targets(frame, found[cols.label], flag))  # type: ignore[arg-type]
    if kind == "multilabel":
        sets = _label_sets(frame, found[cols.label], flag, delimiter)  # type: ignore[arg-type]
        names = sorted(set().union(*sets))
    else:
        names, _ = _label_names(frame, found[cols.label], flag)  # type: ignore[arg-type]
    unknown = sorted(set(names) - set(label2id))
    if unknown:
        more = f" ... ({len(unknown)} in all)" if len(unknown) > 10 else ""
        shown = ", ".join(unknown[:10]) + more
        raise DataError(
            f"{flag} must only have labels that --train has ({_listing(list(label2id), 10)}), "
            f"but it also has {shown}. Remove those rows or add examples of them to --train."
        )
    if kind == "multilabel":
        return Split(texts, pairs, _indicators(sets, label2id))
    return Split(texts, pairs, np.array([label2id[n] for n in names], dtype=np.int64))


# --- the task and its labels --------------------------------------------------------------------


def detect_task(frame: pd.DataFrame, column: str, *, task: str = "auto",
                delimiter: str | None = None) -> str:
    """The task the label ``column`` holds, unless ``task`` names one.

    - multilabel: lists (JSON lines, Parquet, datasets), texts that are JSON lists
      (``'["a", "b"]'`` in a CSV), or any labels when ``delimiter`` is given;
    - regression: numbers that are not all whole, or whole numbers that do not look like class
      codes (more than ``MAX_CODED_CLASSES`` distinct values that are not 0..k-1 or 1..k);
    - classification: everything else, so integer-coded classes (0/1, 0..4) stay classes.
    """
    if task != "auto":
        return task
    if delimiter is not None:
        return "multilabel"
    if frame.attrs.get("class_names", {}).get(column) is not None:
        return "classification"
    values = [v for v in frame[column].tolist() if not _is_missing(v)]
    if not values:
        return "classification"  # _label_names reports the missing labels
    if all(_is_list(v) or (isinstance(v, str) and _json_list(v) is not None) for v in values):
        return "multilabel"
    numbers = [_number(v) for v in values]
    if any(x is None for x in numbers):
        return "classification"
    if not all(float(x).is_integer() for x in numbers):  # type: ignore[union-attr]
        return "regression"
    distinct = sorted({int(x) for x in numbers})  # type: ignore[arg-type]
    coded = distinct in (list(range(len(distinct))), list(range(1, len(distinct) + 1)))
    return "classification" if coded or len(distinct) <= MAX_CODED_CLASSES else "regression"


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple, np.ndarray))


def _json_list(text: str) -> list | None:
    text = text.strip()
    if not (text.startswith("[") and text.endswith("]")):
        return None
    try:
        value = json.loads(text)
    except ValueError:
        return None
    return value if isinstance(value, list) else None


def _number(value: Any) -> float | None:
    """``value`` as a finite float (numbers and numeric texts), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float, np.integer, np.floating)):
        x = float(value)
    elif isinstance(value, str):
        try:
            x = float(value.strip())
        except ValueError:
            return None
    else:
        return None
    return x if math.isfinite(x) else None


def _targets(frame: pd.DataFrame, column: str, flag: str) -> np.ndarray:
    """The regression targets of ``column`` as float64; DataError names the first bad row."""
    out = np.empty(len(frame), dtype=np.float64)
    for i, value in enumerate(frame[column].tolist()):
        x = None if _is_missing(value) else _number(value)
        if x is None:
            what = "no target" if _is_missing(value) else f"{value!r}, not a finite number"
            raise DataError(
                f"Regression needs a number in every row of column '{column}', but {flag} row "
                f"{_row(frame, i)} has {what}. Fix or remove that row, or --set "
                f"task=classification if the labels are classes."
            )
        out[i] = x
    return out


def _label_sets(frame: pd.DataFrame, column: str, flag: str,
                delimiter: str | None) -> list[set[str]]:
    """Each row's set of label names: lists, JSON-list texts, or texts split on ``delimiter``."""
    out: list[set[str]] = []
    for i, value in enumerate(frame[column].tolist()):
        if _is_list(value):
            items = list(value)
        elif delimiter is not None and (_is_missing(value) or isinstance(value, str)):
            items = [] if _is_missing(value) else value.split(delimiter)
        elif isinstance(value, str) and (found := _json_list(value)) is not None:
            items = found
        else:
            how = (f"texts split on {delimiter!r}" if delimiter is not None else
                   'lists such as ["sports", "politics"] ([] for none)')
            raise DataError(
                f"Multi-label data needs a list of labels in every row of column '{column}', "
                f"but {flag} row {_row(frame, i)} has {value!r}. Write the labels as {how}, "
                f"or pass --set label_delimiter='|' for texts like 'sports|politics'."
            )
        names = set()
        for item in items:
            if _is_missing(item) or isinstance(item, (list, dict, tuple)):
                raise DataError(
                    f"Multi-label lists must hold label names, but {flag} row {_row(frame, i)} of "
                    f"column '{column}' holds {item!r}. Write each label as a name or a number."
                )
            name = str(int(item)) if _is_whole(item) and not isinstance(item, str) else str(item).strip()
            if name:
                names.add(name)
        out.append(names)
    return out


def _order_names(found: set[str]) -> list[str]:
    """Label names in id order: numerically when all are whole numbers, else sorted."""
    if all(_INT_TEXT.match(n) for n in found):
        return sorted(found, key=lambda n: int(float(n)))
    return sorted(found)


def _indicators(sets: list[set[str]], label2id: dict[str, int]) -> np.ndarray:
    """0/1 indicators (n, number of labels), float32: the targets of a multi-label model."""
    out = np.zeros((len(sets), len(label2id)), dtype=np.float32)
    for row, names in enumerate(sets):
        for name in names:
            out[row, label2id[name]] = 1.0
    return out


# --- sampling and splitting -------------------------------------------------------------------


def _sample(labels: np.ndarray, rows: int, seed: int) -> np.ndarray:
    """Indices of ``rows`` examples, stratified by label when every class allows it, sorted.
    Regression targets and label sets are sampled plainly."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if not _classes(labels):
        keep, _ = train_test_split(idx, train_size=rows, random_state=seed)
        return np.sort(keep)
    try:
        keep, _ = train_test_split(idx, train_size=rows, random_state=seed, stratify=labels)
    except ValueError:  # a class too small to stratify
        logger.info("Some class is too small to sample stratified; sampling plainly")
        keep, _ = train_test_split(idx, train_size=rows, random_state=seed)
    return np.sort(keep)


def _split(labels: np.ndarray, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, valid) indices, stratified by label when every class allows it, each sorted.
    Regression targets and label sets are split plainly."""
    from sklearn.model_selection import train_test_split

    idx = np.arange(len(labels))
    if not _classes(labels):
        train, valid = train_test_split(idx, test_size=fraction, random_state=seed)
        return np.sort(train), np.sort(valid)
    try:
        train, valid = train_test_split(
            idx, test_size=fraction, random_state=seed, stratify=labels
        )
    except ValueError:  # a class with a single row, or fewer valid rows than classes
        logger.info("Some class is too small to split stratified; splitting plainly")
        train, valid = train_test_split(idx, test_size=fraction, random_state=seed)
    return np.sort(train), np.sort(valid)


def _classes(labels: np.ndarray) -> bool:
    """Whether ``labels`` are class ids (one int per row), which can be stratified."""
    return labels.ndim == 1 and labels.dtype.kind in "iu"


def _fingerprint(cols: _Columns, label_names: list[str], train: Split, valid: Split,
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
