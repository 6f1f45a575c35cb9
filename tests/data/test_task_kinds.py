"""The task of a label column (classification, regression, multi-label), forced or detected,
and how regression targets and label sets are read, split and checked."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from pretune.config import DataConfig
from pretune.data.task import detect_task, load_task, task_of
from pretune.errors import DataError


def _frame(labels) -> pd.DataFrame:
    return pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})


def _save(frame: pd.DataFrame, path) -> str:
    kind = str(path).rsplit(".", 1)[-1]
    if kind == "csv":
        frame.to_csv(path, index=False)
    elif kind == "jsonl":
        frame.to_json(path, orient="records", lines=True)
    else:
        frame.to_parquet(path)
    return str(path)


@pytest.mark.parametrize("labels", [
    [0, 1] * 30,                              # binary codes
    list(range(5)) * 12,                      # 0..4
    [str(i) for i in range(1, 6)] * 12,       # "1".."5" as text (a CSV read as strings)
    [float(i % 3) for i in range(60)],        # whole floats: 0.0, 1.0, 2.0
    list(range(120)),                         # 120 classes coded 0..119
    ["pos", "neg"] * 30,
])
def test_integer_codes_and_names_stay_classification(labels):
    assert detect_task(_frame(labels), "label") == "classification"


@pytest.mark.parametrize("labels", [
    [0.5, 1.25, 3.0, 2.75] * 10,              # fractional numbers
    ["0.5", "1.25", "3", "2.75"] * 10,        # the same as text
    [i * 7 + 1000 for i in range(60)],        # 60 distinct whole numbers, not 0..k-1 or 1..k
])
def test_numbers_that_are_not_class_codes_are_regression(labels):
    assert detect_task(_frame(labels), "label") == "regression"


def test_label_lists_are_multilabel_in_every_format(tmp_path):
    lists = [["a"], ["a", "b"], [], ["c"]] * 5
    as_json = _frame([json.dumps(x) for x in lists])
    as_lists = _frame(lists)
    for frame, path in ((as_json, tmp_path / "t.csv"), (as_lists, tmp_path / "t.jsonl"),
                        (as_lists, tmp_path / "t.parquet")):
        cfg = DataConfig(train=_save(frame, path), valid_fraction=0.2)
        assert task_of(cfg) == "multilabel"
        task = load_task(cfg, seed=0)
        assert task.kind == "multilabel" and task.label_names == ["a", "b", "c"]
        both = np.concatenate([task.train.labels, task.valid.labels])
        assert both.shape == (20, 3) and both.dtype == np.float32
        assert sorted(both.sum(axis=0).tolist()) == [5.0, 5.0, 10.0]  # c: 5, b: 5, a: 10


def test_a_delimiter_reads_label_texts_as_sets(tmp_path):
    frame = _frame(["sports|music", "music", "", "food | sports"] * 5)
    path = _save(frame, tmp_path / "t.csv")
    task = load_task(DataConfig(train=path, label_delimiter="|", valid_fraction=0.2), seed=0)
    assert task.kind == "multilabel" and task.label_names == ["food", "music", "sports"]
    every = np.concatenate([task.train.labels, task.valid.labels])
    assert every.sum() == 5 * 5  # 2 + 1 + 0 + 2 labels per 4 rows


def test_the_task_setting_overrides_detection(tmp_path):
    path = _save(_frame([0, 1, 2, 3] * 10), tmp_path / "t.csv")
    assert load_task(DataConfig(train=path), seed=0).kind == "classification"
    task = load_task(DataConfig(train=path, task="regression"), seed=0)
    assert task.kind == "regression" and task.label_names == ["label"]
    assert task.train.labels.dtype == np.float64 and task.problem_type == "regression"
    mean, std = task.target_scale()
    assert mean == pytest.approx(task.train.labels.mean())
    assert std == pytest.approx(task.train.labels.std())


def test_regression_targets_are_split_plainly_and_kept_in_their_units(tmp_path):
    y = np.linspace(100.0, 200.0, 50)
    path = _save(_frame(y), tmp_path / "t.csv")
    task = load_task(DataConfig(train=path, valid_fraction=0.2, train_rows=40), seed=0)
    assert task.kind == "regression"
    assert len(task.valid) == 8 and len(task.train) == 32
    assert set(task.train.labels) | set(task.valid.labels) <= set(y)


def test_regression_with_a_text_target_names_the_row(tmp_path):
    frame = _frame(["1.5", "2.5", "oops", "3.5"])
    path = _save(frame, tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"row 4 has 'oops'.*task=classification"):
        load_task(DataConfig(train=path, task="regression"), seed=0)


def test_multilabel_validation_labels_must_be_known(tmp_path):
    train = _save(_frame([json.dumps(["a"]), json.dumps(["b"])] * 5), tmp_path / "train.csv")
    valid = _save(_frame([json.dumps(["a", "z"])]), tmp_path / "valid.csv")
    with pytest.raises(DataError, match="also has z"):
        load_task(DataConfig(train=train, valid=valid), seed=0)


def test_a_multilabel_row_that_is_not_a_list_says_how_to_write_it(tmp_path):
    path = _save(_frame([json.dumps(["a"]), "b"] * 3), tmp_path / "t.csv")
    with pytest.raises(DataError, match=r"label_delimiter"):
        load_task(DataConfig(train=path, task="multilabel"), seed=0)


def test_classification_fingerprints_are_computed_as_before_tasks_existed(tmp_path):
    """A search started before tasks existed continues: its data fingerprint is the same."""
    import hashlib

    path = _save(_frame(["x", "y"] * 10), tmp_path / "t.csv")
    task = load_task(DataConfig(train=path), seed=0)
    h = hashlib.sha256()
    h.update(json.dumps(["text", None, "label", ["x", "y"]]).encode())
    for split in (task.train, task.valid):
        h.update(json.dumps(split.texts).encode())
        h.update(json.dumps(split.pairs).encode())
        h.update(np.ascontiguousarray(split.labels, dtype="<i8").tobytes())
    assert task.fingerprint == h.hexdigest()
