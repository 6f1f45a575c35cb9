"""Read a table of examples from a file or a Hugging Face dataset into a DataFrame.

``read_table`` is the only entry point. It picks the reader by extension (CSV, TSV, JSON lines
or a JSON array, Parquet, each optionally gzipped) or reads a Hugging Face dataset: a directory
written by ``datasets.save_to_disk`` or a hub name such as ``imdb`` or ``glue:sst2``.

CSV and TSV cells are read as strings with no NA conversion, so an empty cell is ``""`` and a
text such as "NA" stays text; label columns are interpreted later (``pretune.data.task``).

The returned frame has a fresh ``RangeIndex`` and two entries in ``DataFrame.attrs``:

- ``"first_row"``: the row number of the first example as a user counts it in the source
  (2 for CSV/TSV, where row 1 is the header; 1 otherwise), so row ``i`` is ``i + first_row``.
- ``"class_names"``: ``{column: [names]}`` for Hugging Face ``ClassLabel`` columns (and
  sequences of ``ClassLabel``: token tags).
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import re
from pathlib import Path
from typing import Any

import pandas as pd

from pretune.errors import DataError, MissingExtraError

logger = logging.getLogger(__name__)

# extension -> format
FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".jsonl": "json",
    ".json": "json",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".conll": "conll",  # token classification: "word ... tag" lines (pretune.data.tokens)
    ".txt": "txt",  # CoNLL lines when every line ends in a tag, else one text per line
}
SUPPORTED = (".csv, .tsv, .jsonl, .json, .parquet, .pq (CSV, TSV and JSON may be .gz), .conll, "
             ".txt")

# Suffixes that mark a source as a file path even when nothing exists there.
_FILE_SUFFIXES = set(FORMATS) | {
    ".gz", ".txt", ".xlsx", ".xls", ".arrow", ".feather", ".zip", ".bz2", ".xz", ".zst",
    ".ndjson", ".pkl", ".pickle", ".h5", ".hdf5", ".orc", ".avro", ".yaml", ".yml",
}
# "name", "owner/name", optionally ":config" (as in "glue:sst2").
_HUB_NAME = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?(:[\w.-]+)?$")


def read_table(source: str | os.PathLike, *, split: str | None = None) -> pd.DataFrame:
    """Read ``source`` into a DataFrame with at least one row.

    ``split`` picks the split of a Hugging Face ``DatasetDict`` (saved or on the hub); it is
    ignored for plain files and for a saved single ``Dataset``. Raises ``DataError`` for a
    missing, empty, unreadable or unsupported source.
    """
    text = str(source)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        frame = _read_saved_dataset(path, split)
    elif path.exists():
        frame = _read_file(path)
    elif is_hub_name(text):
        frame = _read_hub_dataset(text, split)
    else:
        raise DataError(
            f"A data source must be an existing file or a Hugging Face dataset, but nothing "
            f"exists at {text} (resolved to {path.resolve()}). Check the path."
        )
    if len(frame) == 0:
        columns = ", ".join(map(str, frame.columns)) or "none"
        raise DataError(
            f"A data file must have at least one row of data, but {text} has none (columns: "
            f"{columns}). Add rows or pass another file."
        )
    attrs = dict(frame.attrs)
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    frame.attrs.update(attrs)  # attrs propagation is not guaranteed across pandas versions
    logger.debug("Read %d rows with columns %s from %s", len(frame), list(frame.columns), text)
    return frame


def is_hub_name(source: str) -> bool:
    """True when ``source`` is not an existing path and reads as a hub dataset name."""
    if os.path.exists(os.path.expanduser(source)):
        return False
    suffix = Path(source.split(":", 1)[0]).suffix.lower()
    return bool(_HUB_NAME.match(source)) and suffix not in _FILE_SUFFIXES


def is_dataset_source(source: str | os.PathLike) -> bool:
    """True when ``source`` is a Hugging Face dataset (a saved directory or a hub name)."""
    text = str(source)
    path = Path(os.path.expanduser(text))
    return path.is_dir() or is_hub_name(text)


def dataset_splits(source: str | os.PathLike) -> list[str]:
    """The split names of a Hugging Face ``DatasetDict`` source; ``[]`` for anything else.

    For a hub name this asks the hub (or the local cache); when that fails it returns ``[]``.
    """
    text = str(source)
    path = Path(os.path.expanduser(text))
    if path.is_dir():
        meta = path / "dataset_dict.json"
        if meta.is_file():
            try:
                return list(json.loads(meta.read_text())["splits"])
            except (ValueError, KeyError, TypeError):
                return []
        return []
    if not is_hub_name(text):
        return []
    datasets = _import_datasets()
    name, config = _hub_parts(text)
    try:
        return list(datasets.get_dataset_split_names(name, config))
    except Exception as err:  # offline, unknown name, gated ...: the caller falls back
        logger.debug("Could not list the splits of %s: %s", text, err)
        return []


# --- files ------------------------------------------------------------------------------------


def _format_of(path: Path) -> tuple[str | None, bool]:
    """(format, gzipped) from the file name; format None when the extension is not supported."""
    suffixes = [s.lower() for s in path.suffixes]
    gzipped = bool(suffixes) and suffixes[-1] == ".gz"
    if gzipped:
        suffixes = suffixes[:-1]
    fmt = FORMATS.get(suffixes[-1]) if suffixes else None
    if gzipped and fmt == "parquet":
        fmt = None  # parquet compresses internally
    return fmt, gzipped


def _read_file(path: Path) -> pd.DataFrame:
    fmt, gzipped = _format_of(path)
    if fmt is None:
        got = "".join(path.suffixes) or "no extension"
        raise DataError(
            f"A data file must end in one of {SUPPORTED}, but {path} has {got}. Save it in one "
            f"of those formats or pass a Hugging Face dataset."
        )
    if path.stat().st_size == 0:
        raise DataError(
            f"A data file must have at least one row of data, but {path} is empty. Add rows or "
            f"pass another file."
        )
    if fmt in ("conll", "txt"):
        return _read_text(path, fmt)
    try:
        if fmt in ("csv", "tsv"):
            frame = _read_delimited(path, "\t" if fmt == "tsv" else ",")
            frame.attrs["first_row"] = 2  # row 1 is the header
            return frame
        if fmt == "json":
            frame = _read_json(path, gzipped)
        else:
            frame = pd.read_parquet(path)
    except DataError:
        raise
    except pd.errors.EmptyDataError:
        raise DataError(
            f"A data file must have at least one row of data, but {path} has no content. Add "
            f"rows or pass another file."
        ) from None
    except Exception as err:  # parser errors differ by format and library version
        raise DataError(
            f"A {fmt.upper()} file must be readable as {fmt.upper()}, but {path} could not be "
            f"parsed ({_first_line(err)}). Fix the file or save it again in that format."
        ) from err
    frame.attrs["first_row"] = 1
    return frame


_TAGGED_LINE = re.compile(r"^\S+(\s+\S+)*\s+(O|[BIESLU]-\S+)$")


def _read_text(path: Path, fmt: str) -> pd.DataFrame:
    """A .conll file, or a .txt file whose non-blank lines all end in a tag, as sentences of
    words and tags (``pretune.data.tokens.read_conll``); any other .txt file as one text per
    non-blank line, in a ``text`` column."""
    from pretune.data.tokens import read_conll

    try:
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except UnicodeDecodeError:
        raise DataError(
            f"A data file must be UTF-8 text, but {path} is in another encoding. Save it as "
            f"UTF-8."
        ) from None
    lines = [line for line in lines if line and not line.startswith("-DOCSTART-")]
    if fmt == "conll" or (lines and all(_TAGGED_LINE.match(line) for line in lines)):
        return read_conll(path)
    frame = pd.DataFrame({"text": lines})
    frame.attrs["first_row"] = 1
    return frame


def _read_delimited(path: Path, sep: str) -> pd.DataFrame:
    # Every cell as a string and no NA conversion: empty cells stay "" and are detectable.
    options = dict(sep=sep, dtype=str, keep_default_na=False, na_filter=False,
                   encoding="utf-8-sig", compression="infer")
    try:
        frame = pd.read_csv(path, **options)
        # pandas renames a repeated header name ("text", "text.1"), so read the header as written.
        header = pd.read_csv(path, header=None, nrows=1, **options).iloc[0].tolist()
    except UnicodeDecodeError:
        raise DataError(
            f"A data file must be UTF-8 text, but {path} is in another encoding. Save it as "
            f"UTF-8."
        ) from None
    repeated = [n for n in dict.fromkeys(header) if n.strip() and header.count(n) > 1]
    if repeated:
        names = ", ".join(f"'{n}' {header.count(n)} times" for n in repeated)
        raise DataError(
            f"A data file's header must name each column once, but {path} names {names} "
            f"(header: {', '.join(header)}). Rename or remove the repeated column so that each "
            f"name appears once."
        )
    return frame


def _read_json(path: Path, gzipped: bool) -> pd.DataFrame:
    """A JSON array of objects, or JSON lines (one object per line)."""
    opener: Any = gzip.open if gzipped else open
    with opener(path, "rt", encoding="utf-8-sig") as f:
        content = f.read()
    stripped = content.lstrip()
    if not stripped:
        raise DataError(
            f"A data file must have at least one row of data, but {path} has no content. Add "
            f"rows or pass another file."
        )
    if stripped.startswith("["):
        try:
            records = json.loads(stripped)
        except json.JSONDecodeError as err:
            raise DataError(
                f"A JSON file must hold an array of objects or one object per line, but {path} "
                f"could not be parsed ({err}). Fix the file."
            ) from None
    else:
        records = []
        for number, line in enumerate(content.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                records.append(json.loads(line))
            except json.JSONDecodeError as err:
                raise DataError(
                    f"A JSON lines file must hold one JSON object per line, but line {number} "
                    f"of {path} could not be parsed ({err}). Fix that line."
                ) from None
    bad = next((i for i, r in enumerate(records) if not isinstance(r, dict)), None)
    if bad is not None:
        raise DataError(
            f"A JSON data file must hold one object per example, but record {bad + 1} of {path} "
            f"is {type(records[bad]).__name__}. Write each example as an object such as "
            f'{{"text": "...", "label": "..."}}.'
        )
    return pd.DataFrame.from_records(records)


# --- Hugging Face datasets ----------------------------------------------------------------------


def _import_datasets() -> Any:
    try:
        import datasets
    except ImportError:
        raise MissingExtraError("datasets", "datasets", "Reading a Hugging Face dataset") from None
    return datasets


def _hub_parts(source: str) -> tuple[str, str | None]:
    name, _, config = source.partition(":")
    return name, (config or None)


def _read_saved_dataset(path: Path, split: str | None) -> pd.DataFrame:
    if not ((path / "dataset_dict.json").is_file() or (path / "state.json").is_file()):
        raise DataError(
            f"A data directory must be a dataset saved with datasets' save_to_disk, but {path} "
            f"is not one. Pass a data file (such as {path}/train.csv) instead."
        )
    datasets = _import_datasets()
    try:
        loaded = datasets.load_from_disk(str(path))
    except Exception as err:
        raise DataError(
            f"A saved Hugging Face dataset must be readable by datasets.load_from_disk, but "
            f"{path} could not be loaded ({_first_line(err)}). Save it again or pass a local file."
        ) from err
    return _to_frame(loaded, split, str(path))


def _read_hub_dataset(source: str, split: str | None) -> pd.DataFrame:
    datasets = _import_datasets()
    name, config = _hub_parts(source)
    try:
        loaded = datasets.load_dataset(name, config, split=split)
    except Exception as err:  # offline, unknown name, unknown split, gated ...
        raise DataError(
            f"A Hugging Face dataset must be loadable, but {source}"
            f"{f' (split {split})' if split else ''} could not be loaded ({_first_line(err)}). "
            f"Check the name and your connection, or pass a local file (CSV, JSONL or Parquet)."
        ) from err
    return _to_frame(loaded, split, source)


def _to_frame(loaded: Any, split: str | None, source: str) -> pd.DataFrame:
    """A Dataset, or the chosen split of a DatasetDict, as a DataFrame."""
    datasets = _import_datasets()
    if isinstance(loaded, dict):  # a DatasetDict
        names = list(loaded.keys())
        if split is None and len(names) == 1:
            split = names[0]
        if split not in names:
            raise DataError(
                f"A Hugging Face dataset with several splits needs one picked, but "
                f"{'split ' + repr(split) + ' is not in ' if split else 'none was given for '}"
                f"{source}, which has {', '.join(names)}. Pass one of those split names."
            )
        loaded = loaded[split]
    elif split is not None:
        logger.debug("%s is a single dataset; split %r is ignored", source, split)
    frame = loaded.to_pandas()
    class_names = {  # ClassLabel columns, and sequences of ClassLabel (token tags)
        col: list(label.names)
        for col, feat in loaded.features.items()
        if isinstance(label := getattr(feat, "feature", feat), datasets.ClassLabel)
    }
    frame.attrs["first_row"] = 1
    frame.attrs["class_names"] = class_names
    return frame


def _first_line(err: BaseException) -> str:
    """A short, one-line description of an exception for a user-facing message."""
    text = " ".join(str(err).split()) or type(err).__name__
    return text if len(text) <= 200 else text[:197] + "..."
