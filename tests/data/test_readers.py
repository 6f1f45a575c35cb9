"""read_table: every supported format, Hugging Face datasets, and the errors users can fix."""

from __future__ import annotations

import sys

import pandas as pd
import pytest

from pretune.data.readers import dataset_splits, is_hub_name, read_table
from pretune.errors import DataError, MissingExtraError

FRAME = pd.DataFrame(
    {
        "text": ['a film , "quoted" and long', "NA", "12", "tab\tinside", "plain"],
        "label": ["pos", "neg", "pos", "neg", "pos"],
    }
)


def _one_line_error(excinfo) -> str:
    message = str(excinfo.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    "name, write",
    [
        ("d.csv", lambda f, p: f.to_csv(p, index=False)),
        ("d.tsv", lambda f, p: f.to_csv(p, sep="\t", index=False)),
        ("d.csv.gz", lambda f, p: f.to_csv(p, index=False)),
        ("d.jsonl", lambda f, p: f.to_json(p, orient="records", lines=True)),
        ("d.json", lambda f, p: f.to_json(p, orient="records")),  # a JSON array
        ("d.parquet", lambda f, p: f.to_parquet(p)),
        ("d.pq", lambda f, p: f.to_parquet(p)),
    ],
)
def test_round_trip_of_every_format(tmp_path, name, write):
    path = tmp_path / name
    write(FRAME, path)
    got = read_table(str(path))
    assert list(got.columns) == ["text", "label"]
    assert got["text"].tolist() == FRAME["text"].tolist()  # "NA" and "12" stay text
    assert got["label"].tolist() == FRAME["label"].tolist()


def test_csv_keeps_empty_cells_detectable_and_numbers_as_strings(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\nfine,1\n,0\n")
    got = read_table(path)
    assert got["text"].tolist() == ["fine", ""]
    assert got["label"].tolist() == ["1", "0"]
    assert got.attrs["first_row"] == 2  # row 1 is the header


def test_jsonl_skips_blank_lines_and_keeps_nulls_missing(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n\n{"text": null, "label": 0}\n')
    got = read_table(path)
    assert len(got) == 2
    assert pd.isna(got["text"][1])
    assert got["label"].tolist() == [1, 0]


def _dataset_dict(tmp_path):
    datasets = pytest.importorskip("datasets")
    frame = pd.DataFrame({"sentence": ["good", "bad", "fine"], "label": [1, 0, 1]})
    features = datasets.Features(
        {"sentence": datasets.Value("string"), "label": datasets.ClassLabel(names=["neg", "pos"])}
    )
    dd = datasets.DatasetDict(
        train=datasets.Dataset.from_pandas(frame, features=features),
        validation=datasets.Dataset.from_pandas(frame.head(2), features=features),
    )
    path = tmp_path / "dd"
    dd.save_to_disk(str(path))
    return path


def test_saved_dataset_dict_reads_the_chosen_split_with_class_names(tmp_path):
    path = _dataset_dict(tmp_path)
    train = read_table(str(path), split="train")
    valid = read_table(str(path), split="validation")
    assert train["sentence"].tolist() == ["good", "bad", "fine"]
    assert len(valid) == 2
    assert train.attrs["class_names"] == {"label": ["neg", "pos"]}
    assert dataset_splits(str(path)) == ["train", "validation"]


def test_saved_dataset_dict_needs_a_known_split(tmp_path):
    path = _dataset_dict(tmp_path)
    with pytest.raises(DataError) as excinfo:
        read_table(str(path))
    assert "train, validation" in _one_line_error(excinfo)
    with pytest.raises(DataError) as excinfo:
        read_table(str(path), split="test")
    assert "'test'" in _one_line_error(excinfo) and "train, validation" in str(excinfo.value)


def test_saved_single_dataset_ignores_split(tmp_path):
    datasets = pytest.importorskip("datasets")
    path = tmp_path / "ds"
    datasets.Dataset.from_pandas(FRAME).save_to_disk(str(path))
    got = read_table(str(path), split="train")
    assert got["text"].tolist() == FRAME["text"].tolist()
    assert dataset_splits(str(path)) == []


def test_hub_dataset_that_cannot_load_says_to_pass_a_local_file():
    pytest.importorskip("datasets")
    # conftest sets HF_HUB_OFFLINE=1, so this fails at once without touching the network.
    with pytest.raises(DataError) as excinfo:
        read_table("pretune-tests/no-such-dataset")
    message = _one_line_error(excinfo)
    assert "could not be loaded" in message and "local file" in message


def test_missing_datasets_extra_names_the_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # makes `import datasets` fail
    with pytest.raises(MissingExtraError) as excinfo:
        read_table("imdb")
    assert "pip install 'pretune[datasets]'" in str(excinfo.value)


@pytest.mark.parametrize("source", ["imdb", "stanfordnlp/sst2", "glue:sst2"])
def test_hub_names(source):
    assert is_hub_name(source)


@pytest.mark.parametrize("source", ["data/train.csv", "train.csv", "./data/x", "/abs/x", "a/b/c"])
def test_paths_are_not_hub_names(source):
    assert not is_hub_name(source)


def test_missing_file(tmp_path):
    with pytest.raises(DataError) as excinfo:
        read_table(str(tmp_path / "nope.csv"))
    assert "nope.csv" in _one_line_error(excinfo) and "nothing exists" in str(excinfo.value)


def test_unknown_extension_lists_the_supported_ones(tmp_path):
    path = tmp_path / "data.xlsx"
    path.write_bytes(b"not really excel")
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    message = _one_line_error(excinfo)
    assert ".xlsx" in message and ".csv" in message and ".parquet" in message


@pytest.mark.parametrize(
    "name, content",
    [("e.csv", ""), ("h.csv", "text,label\n"), ("e.jsonl", "\n\n"), ("a.json", "[]")],
)
def test_empty_files(tmp_path, name, content):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    message = _one_line_error(excinfo)
    assert "at least one row" in message and name in message


def test_empty_parquet(tmp_path):
    path = tmp_path / "e.parquet"
    FRAME.head(0).to_parquet(path)
    with pytest.raises(DataError, match="at least one row"):
        read_table(path)


def test_bad_json_line_is_named(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b", label: 0}\n')
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    assert "line 2" in _one_line_error(excinfo)


def test_unparsable_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,label\na,1\nb,0,extra,fields\n")
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    assert "could not be parsed" in _one_line_error(excinfo)


@pytest.mark.parametrize("name,sep", [("d.csv", ","), ("d.tsv", "\t"), ("d.csv.gz", ",")])
def test_a_header_that_repeats_a_column_name_is_refused_naming_it(tmp_path, name, sep):
    """pandas would keep both as 'text' and 'text.1' and pretune would use one of them."""
    import gzip

    content = sep.join(["text", "text", "label"]) + "\n" + sep.join(["good", "fine", "pos"]) + "\n"
    path = tmp_path / name
    if name.endswith(".gz"):
        path.write_bytes(gzip.compress(content.encode()))
    else:
        path.write_text(content)
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    line = _one_line_error(excinfo)
    assert "header must name each column once" in line, line
    assert "names 'text' 2 times (header: text, text, label)" in line, line
    assert line.endswith("Rename or remove the repeated column so that each name appears once.")


def test_a_header_with_distinct_names_reads_as_before(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text("text,text_pair,label,\na,b,pos,\n")  # a blank last name is not a repeat
    frame = read_table(path)
    assert list(frame.columns) == ["text", "text_pair", "label", "Unnamed: 3"]


def test_unparsable_parquet(tmp_path):
    path = tmp_path / "d.parquet"
    path.write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(DataError) as excinfo:
        read_table(path)
    assert "could not be parsed" in _one_line_error(excinfo)


def test_non_utf8_csv(tmp_path):
    path = tmp_path / "d.csv"
    path.write_bytes("text,label\ncaf\xe9,1\n".encode("latin-1"))
    with pytest.raises(DataError, match="UTF-8"):
        read_table(path)


def test_plain_directory_is_refused(tmp_path):
    with pytest.raises(DataError, match="save_to_disk"):
        read_table(tmp_path)
