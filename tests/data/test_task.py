"""load_task and read_inputs: columns, labels, splits, sampling, fingerprints and data errors."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pandas as pd
import pytest

from pretune.config import DataConfig
from pretune.data.task import load_task, read_inputs
from pretune.errors import DataError


def _write(frame: pd.DataFrame, path) -> str:
    suffix = str(path).rsplit(".", 1)[-1]
    if suffix == "csv":
        frame.to_csv(path, index=False)
    elif suffix == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return str(path)


def _imbalanced(n: int = 300, minority: float = 0.2) -> pd.DataFrame:
    """Unique texts, labels "a" (majority) and "b" (minority)."""
    k = int(n * minority)
    return pd.DataFrame(
        {"text": [f"row {i}" for i in range(n)], "label": ["b"] * k + ["a"] * (n - k)}
    )


def _labels_of(split, label_names) -> list[str]:
    return [label_names[i] for i in split.labels]


def _error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


# --- columns and labels -----------------------------------------------------------------------


def test_string_labels_sorted_and_ids_follow_the_rows(sentiment_csv):
    task = load_task(DataConfig(train=str(sentiment_csv)), seed=0)
    assert task.label_names == ["negative", "positive"]
    assert (task.text_column, task.text_pair_column, task.label_column) == ("text", None, "label")
    truth = dict(pd.read_csv(sentiment_csv).values.tolist())
    for split in (task.train, task.valid):
        assert split.labels.dtype == np.int64
        assert _labels_of(split, task.label_names) == [truth[t] for t in split.texts]


@pytest.mark.parametrize("suffix", ["csv", "jsonl", "parquet"])
def test_integer_labels_are_ordered_numerically(tmp_path, suffix):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(30)], "label": [10, 2, 1] * 10})
    task = load_task(DataConfig(train=_write(frame, tmp_path / f"d.{suffix}")), seed=0)
    assert task.label_names == ["1", "2", "10"]  # not "1", "10", "2"
    truth = dict(zip(frame.text, frame.label.astype(str)))
    assert _labels_of(task.train, task.label_names) == [truth[t] for t in task.train.texts]


def test_boolean_labels(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": [True, False] * 10})
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.parquet")), seed=0)
    assert task.label_names == ["False", "True"]


def test_string_labels_with_stray_spaces_are_one_class(tmp_path):
    labels = ["pos", " pos", "neg", "neg "] * 5
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": labels})
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    assert task.label_names == ["neg", "pos"]


def test_sentence_pairs_are_detected_and_aligned(tmp_path):
    frame = pd.DataFrame({
        "sentence1": [f"first {i}" for i in range(40)],
        "sentence2": [f"second {i}" for i in range(40)],
        "label": [0, 1] * 20,
    })
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    assert (task.text_column, task.text_pair_column) == ("sentence1", "sentence2")
    for split in (task.train, task.valid):
        assert [p.replace("second", "first") for p in split.pairs] == split.texts


def test_question_sentence_is_read_as_a_pair(tmp_path):
    frame = pd.DataFrame({"question": ["q?"] * 10, "sentence": ["s."] * 10, "label": [0, 1] * 5})
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    assert (task.text_column, task.text_pair_column) == ("question", "sentence")


def test_column_overrides(tmp_path):
    frame = pd.DataFrame({"body": [f"t{i}" for i in range(20)], "stars": [1, 5] * 10, "text": "x"})
    path = _write(frame, tmp_path / "d.csv")
    cfg = DataConfig(train=path, text_column="body", label_column="stars")
    task = load_task(cfg, seed=0)
    assert (task.text_column, task.label_column) == ("body", "stars")
    assert set(task.train.texts) <= set(frame.body)


def test_the_only_text_column_is_used_when_no_name_matches(tmp_path):
    frame = pd.DataFrame(
        {"id": range(20), "body": [f"words {i}" for i in range(20)], "label": [0, 1] * 10}
    )
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    assert task.text_column == "body"


def test_numbers_in_a_text_column_become_text(tmp_path):
    frame = pd.DataFrame({"text": list(range(20)), "label": [0, 1] * 10})
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.jsonl")), seed=0)
    assert all(isinstance(t, str) for t in task.train.texts)
    assert "3" in task.train.texts + task.valid.texts


# --- validation data, splits and sampling -----------------------------------------------------


def test_valid_file_uses_the_train_label_ids(tmp_path):
    train = pd.DataFrame({"text": ["x", "y"] * 5, "label": ["b", "a"] * 5})
    valid = pd.DataFrame({"text": ["v1", "v2", "v3"], "label": ["a", "a", "b"]})
    train, valid = _write(train, tmp_path / "t.csv"), _write(valid, tmp_path / "v.jsonl")
    task = load_task(DataConfig(train=train, valid=valid), seed=0)
    assert task.valid_source == "file"
    assert len(task.train) == 10
    assert task.valid.texts == ["v1", "v2", "v3"]
    assert task.valid.labels.tolist() == [0, 0, 1]


def test_stratified_split_keeps_class_proportions(tmp_path):
    cfg = DataConfig(train=_write(_imbalanced(300, 0.2), tmp_path / "d.csv"), valid_fraction=0.2)
    for seed in range(5):  # a plain random split would miss the exact counts for some seed
        task = load_task(cfg, seed=seed)
        assert task.valid_source == "split"
        assert (len(task.train), len(task.valid)) == (240, 60)
        assert Counter(_labels_of(task.valid, task.label_names)) == {"a": 48, "b": 12}
        assert Counter(_labels_of(task.train, task.label_names)) == {"a": 192, "b": 48}
        assert not set(task.train.texts) & set(task.valid.texts)


def test_split_is_seeded(tmp_path):
    cfg = DataConfig(train=_write(_imbalanced(), tmp_path / "d.csv"))
    first, again, other = load_task(cfg, 0), load_task(cfg, 0), load_task(cfg, 1)
    assert first.valid.texts == again.valid.texts
    assert first.valid.texts != other.valid.texts


def test_split_falls_back_when_a_class_is_too_small(tmp_path):
    frame = pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["a"] * 19 + ["b"]})
    task = load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    assert len(task.train) + len(task.valid) == 20
    assert task.label_names == ["a", "b"]


def test_train_rows_samples_stratified_and_seeded(tmp_path):
    frame = _imbalanced(300, 0.2)
    train = _write(frame, tmp_path / "d.csv")
    valid = _write(frame.head(10), tmp_path / "v.csv")
    cfg = DataConfig(train=train, valid=valid, train_rows=100)
    for seed in range(5):
        task = load_task(cfg, seed=seed)
        assert len(task.train) == 100
        assert Counter(_labels_of(task.train, task.label_names)) == {"a": 80, "b": 20}
        assert set(task.train.texts) <= set(frame.text)
    first = load_task(cfg, seed=0).train.texts
    assert load_task(cfg, seed=0).train.texts == first
    assert load_task(cfg, seed=1).train.texts != first


def test_train_rows_happens_before_the_split(tmp_path):
    path = _write(_imbalanced(), tmp_path / "d.csv")
    cfg = DataConfig(train=path, train_rows=100, valid_fraction=0.1)
    task = load_task(cfg, seed=0)
    assert (len(task.train), len(task.valid)) == (90, 10)


def test_train_rows_above_the_row_count_keeps_all(tmp_path):
    cfg = DataConfig(train=_write(_imbalanced(50), tmp_path / "d.csv"), valid=None, train_rows=1000)
    task = load_task(cfg, seed=0)
    assert len(task.train) + len(task.valid) == 50


def test_dataset_dict_validation_split_is_used(tmp_path):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    frame = pd.DataFrame({"sentence": [f"s{i}" for i in range(20)], "label": [1, 0] * 10})
    datasets.DatasetDict(
        train=datasets.Dataset.from_pandas(frame, features=features),
        validation=datasets.Dataset.from_pandas(frame.head(4), features=features),
    ).save_to_disk(str(tmp_path / "dd"))
    task = load_task(DataConfig(train=str(tmp_path / "dd")), seed=0)
    assert task.valid_source == "file"
    assert (len(task.train), len(task.valid)) == (20, 4)
    assert task.label_names == ["neg", "pos"]  # the ClassLabel names, in the dataset's order
    assert task.train.labels.tolist() == frame.label.tolist()


def test_single_dataset_without_validation_is_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_pandas(_imbalanced(100)).save_to_disk(str(tmp_path / "ds"))
    task = load_task(DataConfig(train=str(tmp_path / "ds")), seed=0)
    assert task.valid_source == "split"
    assert (len(task.train), len(task.valid)) == (90, 10)


def test_fingerprint_tracks_content_and_split(tmp_path):
    frame = _imbalanced(100)
    cfg = DataConfig(train=_write(frame, tmp_path / "d.csv"))
    base = load_task(cfg, seed=0).fingerprint
    assert len(base) == 64 and base == load_task(cfg, seed=0).fingerprint
    assert load_task(cfg, seed=1).fingerprint != base  # another split
    changed = frame.copy()
    changed.loc[0, "text"] = "row 0 edited"
    other = load_task(DataConfig(train=_write(changed, tmp_path / "e.csv")), seed=0)
    assert other.fingerprint != base


def test_real_sst2(sst2_dir):
    cfg = DataConfig(
        train=str(sst2_dir / "train.csv"), valid=str(sst2_dir / "validation.csv"), train_rows=2000
    )
    task = load_task(cfg, seed=0)
    assert task.label_names == ["0", "1"]
    assert (len(task.train), len(task.valid)) == (2000, 872)
    assert set(task.valid.labels.tolist()) == {0, 1}


# --- errors -----------------------------------------------------------------------------------


def test_missing_text_column_names_the_columns(tmp_path):
    frame = pd.DataFrame({"sentence_x": ["a b", "c d"], "extra": ["e f", "g h"], "label": [0, 1]})
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    message = _error(excinfo)
    assert "--train must have a text column" in message
    assert "(sentence_x, extra, label)" in message and "--text-column" in message


def test_missing_label_column_names_the_columns(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b"], "stars": [0, 1]})
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    message = _error(excinfo)
    assert "(text, stars)" in message and "--label-column" in message


def test_given_column_that_does_not_exist(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b"], "label": [0, 1]})
    cfg = DataConfig(train=_write(frame, tmp_path / "d.csv"), text_column="body")
    with pytest.raises(DataError) as excinfo:
        load_task(cfg, seed=0)
    message = _error(excinfo)
    assert "'body'" in message and "(text, label)" in message and "--text-column" in message


def test_single_class(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b", "c"], "label": ["pos"] * 3})
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=_write(frame, tmp_path / "d.csv")), seed=0)
    assert "at least two classes" in _error(excinfo) and "'pos'" in str(excinfo.value)


def test_valid_labels_missing_from_train_are_named(tmp_path):
    train = pd.DataFrame({"text": ["a", "b"] * 3, "label": ["neg", "pos"] * 3})
    valid = pd.DataFrame({"text": ["x", "y", "z"], "label": ["neg", "neutral", "mixed"]})
    train, valid = _write(train, tmp_path / "t.csv"), _write(valid, tmp_path / "v.csv")
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=train, valid=valid), seed=0)
    message = _error(excinfo)
    assert "--valid" in message and "mixed, neutral" in message


def test_valid_with_different_columns(tmp_path):
    train = _write(pd.DataFrame({"text": ["a", "b"] * 3, "label": [0, 1] * 3}), tmp_path / "t.csv")
    valid = _write(pd.DataFrame({"sentence": ["x", "y"], "label": [0, 1]}), tmp_path / "v.csv")
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=train, valid=valid), seed=0)
    message = _error(excinfo)
    assert message.startswith(
        "--valid must have the same columns as --train (text, label), but got (sentence, label)."
    )
    assert "--text-column" in message


@pytest.mark.parametrize(
    "name, content, row",
    [
        ("d.csv", "text,label\ngood,1\n,0\nbad,0\n", 3),  # CSV rows count the header as row 1
        ("d.csv", "text,label\ngood,1\nbad,0\n   ,1\n", 4),
        ("d.jsonl", '{"text": "good", "label": 1}\n{"text": null, "label": 0}\n', 2),
        ("d.jsonl", '{"text": "good", "label": 1}\n{"label": 0}\n', 2),
    ],
)
def test_empty_or_missing_text_names_column_and_row(tmp_path, name, content, row):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=str(path)), seed=0)
    message = _error(excinfo)
    assert "'text'" in message and f"row {row} " in message and "Remove those rows" in message


@pytest.mark.parametrize(
    "name, content, row",
    [
        ("d.csv", "text,label\ngood,1\nbad,\nok,0\n", 3),
        (
            "d.jsonl",
            '{"text": "good", "label": 1}\n{"text": "bad", "label": 0}\n'
            '{"text": "x", "label": null}\n',
            3,
        ),
    ],
)
def test_missing_label_names_the_row(tmp_path, name, content, row):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=str(path)), seed=0)
    message = _error(excinfo)
    assert "label in every row" in message and f"row {row} " in message


def test_empty_text_in_valid_is_reported_for_valid(tmp_path):
    train = _write(pd.DataFrame({"text": ["a", "b"] * 3, "label": [0, 1] * 3}), tmp_path / "t.csv")
    (tmp_path / "v.csv").write_text("text,label\nx,0\n,1\n")
    with pytest.raises(DataError) as excinfo:
        load_task(DataConfig(train=train, valid=str(tmp_path / "v.csv")), seed=0)
    assert _error(excinfo).startswith("--valid") and "row 3 " in str(excinfo.value)


def test_no_train_source():
    with pytest.raises(DataError, match="--train"):
        load_task(DataConfig(), seed=0)


# --- prediction inputs ------------------------------------------------------------------------


def test_read_inputs_needs_no_label(tmp_path):
    path = _write(pd.DataFrame({"id": [7, 8], "review": ["great", "awful"]}), tmp_path / "in.csv")
    texts, pairs, frame = read_inputs(path)
    assert texts == ["great", "awful"] and pairs is None
    assert frame["id"].tolist() == ["7", "8"]


def test_read_inputs_pairs_follow_the_training_columns(tmp_path):
    frame = pd.DataFrame({"sentence1": ["a", "b"], "sentence2": ["c", "d"], "label": [0, 1]})
    path = _write(frame, tmp_path / "in.csv")
    texts, pairs, _ = read_inputs(path)
    assert (texts, pairs) == (["a", "b"], ["c", "d"])
    texts, pairs, _ = read_inputs(path, text_column="sentence1", detect_pair=False)
    assert (texts, pairs) == (["a", "b"], None)


def test_read_inputs_empty_text_is_an_error(tmp_path):
    (tmp_path / "in.csv").write_text("text\nfine\n\"\"\n")
    with pytest.raises(DataError) as excinfo:
        read_inputs(str(tmp_path / "in.csv"))
    assert _error(excinfo).startswith("--input") and "row 3 " in str(excinfo.value)


def test_text_and_label_columns_must_differ(tmp_path):
    frame = pd.DataFrame({"text": ["a", "b"], "label": ["x", "y"]})
    cfg = DataConfig(train=_write(frame, tmp_path / "d.csv"), text_column="label")
    with pytest.raises(DataError) as excinfo:
        load_task(cfg, seed=0)
    assert "must differ" in _error(excinfo) and "'label'" in str(excinfo.value)
